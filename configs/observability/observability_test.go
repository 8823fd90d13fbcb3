package observability_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// specMetrics are the metrics of docs/operators.md, "Metrics" (prefix egressgw_) with their
// labels (the bounded ones §8 allows: tenant, connector, decision, code,
// and each metric's own), plus
// egressgw_config_last_success_timestamp_seconds and the audit log's
// health (egressgw_audit_*), which the gateway also exports. Dashboards and alerts may use these and nothing
// else of the gateway's, so a renamed metric or label fails here instead
// of leaving an empty panel or an alert that never fires.
var specMetrics = map[string][]string{
	"egressgw_requests_total":                        {"tenant", "decision", "code"},
	"egressgw_request_duration_seconds":              {"decision"},
	"egressgw_bytes_total":                           {"tenant", "direction"},
	"egressgw_active_tunnels":                        {"tenant"},
	"egressgw_quota_rejections_total":                {"tenant", "kind"},
	"egressgw_hook_runs_total":                       {"connector", "result"},
	"egressgw_hook_duration_seconds":                 {"connector"},
	"egressgw_redactions_total":                      {"profile", "detector"},
	"egressgw_config_reloads_total":                  {"result"},
	"egressgw_config_generation":                     {},
	"egressgw_config_last_success_timestamp_seconds": {},
	"egressgw_audit_dropped_lines_total":             {},
	"egressgw_audit_write_errors_total":              {},
	"egressgw_state_errors_total":                    {"operation"},
}

// histograms are exported as NAME_bucket (with le), NAME_count and NAME_sum.
var histograms = []string{"egressgw_request_duration_seconds", "egressgw_hook_duration_seconds"}

// prometheusMetrics are series Prometheus itself makes for every target.
var prometheusMetrics = map[string][]string{"up": {}}

// targetLabels are attached by Prometheus to every series it scrapes
// (job, instance) or by Kubernetes service discovery.
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

// labelValues are the values the gateway gives bounded labels (docs/reference.md and
// §8); a matcher on another value would never match.
var labelValues = map[string][]string{
	"decision":  {"allow", "deny", "report"},
	"direction": {"egress", "ingress"},
	"kind":      {"rate", "concurrency", "unavailable"},
	"operation": {"read_grants", "record_refusal"},
	"code": {"ok", "proxy_auth_required", "destination_not_allowed", "destination_ip_denied", "bad_request",
		"rate_limited", "concurrency_limited", "quota_unavailable", "body_too_large", "hook_denied", "hook_failed",
		"dns_failure", "upstream_unreachable", "upstream_timeout", "client_closed", "upstream_failed_midway", "revoked",
		"event_too_large"},
}

// reloadResults are egressgw_config_reloads_total's result values.
var reloadResults = []string{"success", "error"}

// metricLabels returns the labels a series named name may carry, and
// whether the name is allowed at all.
func metricLabels(name string) ([]string, bool) {
	if labels, ok := specMetrics[name]; ok && !slices.Contains(histograms, name) {
		return append(slices.Clone(labels), targetLabels...), true
	}
	if labels, ok := prometheusMetrics[name]; ok {
		return append(slices.Clone(labels), targetLabels...), true
	}
	for _, h := range histograms {
		switch name {
		case h + "_bucket":
			return append(append(slices.Clone(specMetrics[h]), "le"), targetLabels...), true
		case h + "_count", h + "_sum":
			return append(slices.Clone(specMetrics[h]), targetLabels...), true
		}
	}
	return nil, false
}

// ---- a small PromQL reader ----

// matcher is one label matcher of a selector.
type matcher struct {
	label, op, value string
}

// selector is one metric selector: name{matchers}.
type selector struct {
	metric   string
	matchers []matcher
}

// promExpr is what the checks need of a PromQL expression.
type promExpr struct {
	selectors []selector
	grouping  []string // labels of by, without, on and ignoring clauses
	functions []string
}

// functions PromQL (and Grafana's label_values) knows; a name outside this
// list followed by "(" is a typo.
var functions = []string{
	"sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "count_values", "group", "stddev", "stdvar",
	"rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "resets", "changes",
	"histogram_quantile", "absent", "absent_over_time", "time", "vector", "scalar", "clamp_min", "clamp_max", "clamp",
	"abs", "ceil", "floor", "round", "sort", "sort_desc", "label_replace", "label_join", "timestamp",
	"avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
	"label_values",
}

// aggregations may take their by/without clause before their parentheses.
var aggregations = []string{"sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "count_values", "group", "stddev", "stdvar"}

var (
	groupingKeywords = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
	otherKeywords    = []string{"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
)

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentChar(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

// parsePromQL reads the selectors, grouping labels and functions of expr.
// It is a scanner, not a full parser: enough to name what the expression
// depends on. Grafana variables ($job, ${x}, $__rate_interval) are skipped.
func parsePromQL(expr string) (promExpr, error) {
	var out promExpr
	s := expr
	i := 0
	skipSpace := func() {
		for i < len(s) && strings.ContainsRune(" \t\r\n", rune(s[i])) {
			i++
		}
	}
	ident := func() string {
		start := i
		for i < len(s) && isIdentChar(s[i]) {
			i++
		}
		return s[start:i]
	}
	str := func() (string, error) {
		quote := s[i]
		i++
		var b strings.Builder
		for i < len(s) && s[i] != quote {
			if s[i] == '\\' && i+1 < len(s) {
				i++
			}
			b.WriteByte(s[i])
			i++
		}
		if i >= len(s) {
			return "", fmt.Errorf("unterminated string in %q", expr)
		}
		i++
		return b.String(), nil
	}
	for i < len(s) {
		c := s[i]
		switch {
		case strings.ContainsRune(" \t\r\n", rune(c)):
			i++
		case c == '"' || c == '\'' || c == '`':
			if _, err := str(); err != nil {
				return out, err
			}
		case c == '$':
			i++
			if i < len(s) && s[i] == '{' {
				end := strings.IndexByte(s[i:], '}')
				if end < 0 {
					return out, fmt.Errorf("unterminated ${ in %q", expr)
				}
				i += end + 1
			} else {
				ident()
			}
		case c == '[':
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return out, fmt.Errorf("unterminated [ in %q", expr)
			}
			i += end + 1
		case c == '{':
			return out, fmt.Errorf("a selector without a metric name in %q", expr)
		case c >= '0' && c <= '9' || c == '.':
			for i < len(s) && (isIdentChar(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(c):
			name := ident()
			skipSpace()
			next := byte(0)
			if i < len(s) {
				next = s[i]
			}
			switch {
			case slices.Contains(groupingKeywords, name):
				if next != '(' {
					continue // group_left without labels
				}
				end := strings.IndexByte(s[i:], ')')
				if end < 0 {
					return out, fmt.Errorf("unterminated %s ( in %q", name, expr)
				}
				for _, l := range strings.Split(s[i+1:i+end], ",") {
					if l = strings.TrimSpace(l); l != "" {
						out.grouping = append(out.grouping, l)
					}
				}
				i += end + 1
			case next == '(' || slices.Contains(aggregations, name): // sum by (x) (...)
				if !slices.Contains(functions, name) {
					return out, fmt.Errorf("unknown function %s( in %q", name, expr)
				}
				out.functions = append(out.functions, name)
			case slices.Contains(otherKeywords, name):
			default:
				sel := selector{metric: name}
				if next == '{' {
					i++
					for {
						skipSpace()
						if i < len(s) && s[i] == ',' {
							i++
							skipSpace()
						}
						if i >= len(s) {
							return out, fmt.Errorf("unterminated { in %q", expr)
						}
						if s[i] == '}' {
							i++
							break
						}
						label := ident()
						skipSpace()
						start := i
						for i < len(s) && strings.ContainsRune("=!~", rune(s[i])) {
							i++
						}
						op := s[start:i]
						skipSpace()
						if label == "" || op == "" || i >= len(s) || !strings.ContainsRune("\"'`", rune(s[i])) {
							return out, fmt.Errorf("malformed matcher in %q", expr)
						}
						value, err := str()
						if err != nil {
							return out, err
						}
						sel.matchers = append(sel.matchers, matcher{label, op, value})
					}
				}
				out.selectors = append(out.selectors, sel)
			}
		default:
			i++ // operators, parentheses, commas
		}
	}
	return out, nil
}

// labelsOf returns every label the expression's series may carry.
func (p promExpr) labelsOf() []string {
	var out []string
	for _, s := range p.selectors {
		labels, _ := metricLabels(s.metric)
		out = append(out, labels...)
	}
	return out
}

// aggregated reports whether the result's labels are those of by/on
// clauses rather than the series'.
func (p promExpr) aggregated() bool {
	return slices.ContainsFunc(p.functions, func(f string) bool { return slices.Contains(aggregations, f) })
}

// resultLabels are the labels a result series of the expression can have,
// for legends and alert annotations.
func (p promExpr) resultLabels() []string {
	if p.aggregated() {
		return p.grouping
	}
	return p.labelsOf()
}

// checkExpr fails the test for every metric, label or label value of expr
// that the gateway does not export. where names the expression's place.
func checkExpr(t *testing.T, where, expr string) promExpr {
	t.Helper()
	p, err := parsePromQL(expr)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return p
	}
	if len(p.selectors) == 0 {
		t.Errorf("%s: %q uses no metric", where, expr)
	}
	for _, sel := range p.selectors {
		labels, ok := metricLabels(sel.metric)
		if !ok {
			t.Errorf("%s: metric %s is not one of docs/operators.md (%v)", where, sel.metric, slices.Sorted(maps.Keys(specMetrics)))
			continue
		}
		for _, m := range sel.matchers {
			if !slices.Contains(labels, m.label) {
				t.Errorf("%s: %s has no label %q (it has %v)", where, sel.metric, m.label, labels)
				continue
			}
			known := labelValues[m.label]
			if m.label == "result" && sel.metric == "egressgw_config_reloads_total" {
				known = reloadResults
			}
			if known == nil || strings.ContainsAny(m.value, "$*.+?()[]\\") {
				continue // free-form, or a variable or pattern
			}
			for _, v := range strings.Split(m.value, "|") {
				if !slices.Contains(known, v) {
					t.Errorf("%s: %s{%s%s%q}: %q is not a value the gateway gives %s (%v)", where, sel.metric, m.label, m.op, m.value, v, m.label, known)
				}
			}
		}
	}
	all := p.labelsOf()
	for _, l := range p.grouping {
		if !slices.Contains(all, l) {
			t.Errorf("%s: groups by %q, which none of its metrics carries", where, l)
		}
	}
	return p
}

// templateLabels finds {{x}} (Grafana legends) and {{ $labels.x }}
// (alert templates).
var (
	legendLabel   = regexp.MustCompile(`\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}`)
	templateLabel = regexp.MustCompile(`\$labels\.([A-Za-z_][A-Za-z0-9_]*)`)
)

// ---- the dashboard ----

type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr         string         `json:"expr"`
		RefID        string         `json:"refId"`
		LegendFormat string         `json:"legendFormat"`
		Datasource   *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

const datasourceVar = "${datasource}"

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	var d dashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		t.Fatalf("grafana-dashboard.json: trailing data after the dashboard")
	}
	return d
}

func TestGrafanaDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 30 {
		t.Errorf("dashboard uid %q, title %q, schemaVersion %d: want a uid, a title and a current schema", d.UID, d.Title, d.SchemaVersion)
	}

	variables := map[string]bool{}
	for _, v := range d.Templating.List {
		variables[v.Name] = true
		switch v.Type {
		case "datasource":
			var query string
			if err := json.Unmarshal(v.Query, &query); err != nil || query != "prometheus" || v.Name != "datasource" {
				t.Errorf("datasource variable %q with query %s: want a variable named datasource of type prometheus", v.Name, v.Query)
			}
		case "query":
			if v.Datasource == nil || v.Datasource.UID != datasourceVar {
				t.Errorf("variable %s: datasource %+v, want uid %s", v.Name, v.Datasource, datasourceVar)
			}
			var q struct{ Query string }
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Errorf("variable %s: query %s: %v", v.Name, v.Query, err)
				continue
			}
			m := regexp.MustCompile(`^label_values\((.*),\s*([a-z_]+)\)$`).FindStringSubmatch(q.Query)
			if m == nil {
				t.Errorf("variable %s: query %q, want label_values(SELECTOR, LABEL)", v.Name, q.Query)
				continue
			}
			p := checkExpr(t, "variable "+v.Name, m[1])
			if !slices.Contains(p.labelsOf(), m[2]) {
				t.Errorf("variable %s: label_values of %q, which %s does not carry", v.Name, m[2], m[1])
			}
		}
	}
	if !variables["datasource"] {
		t.Fatal("the dashboard has no datasource variable: it would be tied to one Grafana's data source")
	}

	used := map[string]bool{}
	ids := map[int]string{}
	var check func(panels []panel)
	check = func(panels []panel) {
		for _, p := range panels {
			where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("%s: id also used by %q", where, prev)
			}
			ids[p.ID] = p.Title
			if p.GridPos == nil || p.GridPos.W < 1 || p.GridPos.H < 1 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("%s: gridPos %+v does not fit Grafana's 24 columns", where, p.GridPos)
			}
			if p.Type == "row" {
				check(p.Panels)
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != datasourceVar {
				t.Errorf("%s: datasource %+v, want uid %s", where, p.Datasource, datasourceVar)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no queries", where)
			}
			refs := map[string]bool{}
			for _, target := range p.Targets {
				if refs[target.RefID] || target.RefID == "" {
					t.Errorf("%s: refId %q is empty or repeated", where, target.RefID)
				}
				refs[target.RefID] = true
				if target.Datasource != nil && target.Datasource.UID != datasourceVar {
					t.Errorf("%s: query datasource %+v, want uid %s", where, target.Datasource, datasourceVar)
				}
				for _, v := range regexp.MustCompile(`\$\{?([A-Za-z_]+)`).FindAllStringSubmatch(target.Expr, -1) {
					if !variables[v[1]] && !strings.HasPrefix(v[1], "__") {
						t.Errorf("%s: query uses $%s, which the dashboard does not define", where, v[1])
					}
				}
				pe := checkExpr(t, where, target.Expr)
				for _, sel := range pe.selectors {
					used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(sel.metric, "_bucket"), "_count"), "_sum")] = true
				}
				for _, m := range legendLabel.FindAllStringSubmatch(target.LegendFormat, -1) {
					if !slices.Contains(pe.resultLabels(), m[1]) {
						t.Errorf("%s: legend {{%s}} is not a label of the query's result (%v)", where, m[1], pe.resultLabels())
					}
				}
			}
		}
	}
	check(d.Panels)
	for name := range specMetrics {
		if !used[name] {
			t.Errorf("no panel shows %s", name)
		}
	}
}

// ---- the alerts ----

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func TestPrometheusAlerts(t *testing.T) {
	raw, err := os.ReadFile("prometheus-alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("prometheus-alerts.yaml: %v", err)
	}
	serviceName := gatewayServiceName(t)
	// What each required alert must watch: a metric, and for upstream
	// errors every code of docs/reference.md, "What clients see" for them.
	required := map[string][]string{
		"EgressgwConfigReloadFailing":     {"egressgw_config_reloads_total", "error"},
		"EgressgwTenantNearQuota":         {"egressgw_quota_rejections_total"},
		"EgressgwHookFailureRate":         {"egressgw_requests_total", "hook_failed"},
		"EgressgwUpstreamErrors":          {"egressgw_requests_total", "upstream_unreachable", "upstream_timeout", "dns_failure"},
		"EgressgwDown":                    {"up"},
		"EgressgwQuotaBackendUnavailable": {"egressgw_quota_rejections_total", "unavailable"},
		"EgressgwStateStoreUnreadable":    {"egressgw_state_errors_total", "read_grants"},
	}
	seen := map[string]bool{}
	for _, g := range rf.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: want a name and rules", g.Name)
		}
		for _, r := range g.Rules {
			where := "alert " + r.Alert
			if r.Alert == "" || r.Record != "" {
				t.Errorf("group %s: a rule that is not an alert (%q %q)", g.Name, r.Alert, r.Record)
				continue
			}
			if seen[r.Alert] {
				t.Errorf("%s: defined twice", where)
			}
			seen[r.Alert] = true
			if sev := r.Labels["severity"]; sev != "warning" && sev != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", where, sev)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for %q: %v", where, r.For, err)
				}
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want summary and description annotations", where)
			}
			p := checkExpr(t, where, r.Expr)
			for _, sel := range p.selectors {
				job := ""
				for _, m := range sel.matchers {
					if m.label == "job" {
						job = m.value
					}
				}
				if job != serviceName {
					t.Errorf("%s: %s selects job %q; want job=%q, the Service servicemonitor.yaml scrapes", where, sel.metric, job, serviceName)
				}
			}
			for _, text := range r.Annotations {
				for _, m := range templateLabel.FindAllStringSubmatch(text, -1) {
					if !slices.Contains(p.resultLabels(), m[1]) {
						t.Errorf("%s: annotation uses $labels.%s, which the alert's series do not carry (%v)", where, m[1], p.resultLabels())
					}
				}
			}
			for _, word := range required[r.Alert] {
				if !strings.Contains(r.Expr, word) {
					t.Errorf("%s: expr does not watch %s", where, word)
				}
			}
		}
	}
	for name := range required {
		if !seen[name] {
			t.Errorf("no alert %s", name)
		}
	}
}

// ---- the ServiceMonitor ----

type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec yaml.Node `yaml:"spec"`
}

func readObjects(t *testing.T, file string) []k8sObject {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []k8sObject
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if o.Kind != "" {
			out = append(out, o)
		}
	}
}

type serviceSpec struct {
	Ports []struct {
		Name string `yaml:"name"`
	} `yaml:"ports"`
}

// gatewayService is the egressgw Service of the Kubernetes example.
func gatewayService(t *testing.T) (k8sObject, serviceSpec) {
	t.Helper()
	for _, o := range readObjects(t, "../kubernetes/egressgw.yaml") {
		if o.Kind == "Service" && o.Metadata.Name == "egressgw" {
			var spec serviceSpec
			if err := o.Spec.Decode(&spec); err != nil {
				t.Fatal(err)
			}
			return o, spec
		}
	}
	t.Fatal("configs/kubernetes/egressgw.yaml has no Service egressgw")
	return k8sObject{}, serviceSpec{}
}

func gatewayServiceName(t *testing.T) string {
	t.Helper()
	svc, _ := gatewayService(t)
	return svc.Metadata.Name
}

func TestServiceMonitorScrapesTheGateway(t *testing.T) {
	svc, svcSpec := gatewayService(t)
	objects := readObjects(t, "servicemonitor.yaml")
	if len(objects) != 1 || objects[0].Kind != "ServiceMonitor" {
		t.Fatalf("servicemonitor.yaml: want one ServiceMonitor, got %d objects", len(objects))
	}
	var spec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		NamespaceSelector struct {
			MatchNames []string `yaml:"matchNames"`
		} `yaml:"namespaceSelector"`
		JobLabel  string `yaml:"jobLabel"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
	}
	if err := objects[0].Spec.Decode(&spec); err != nil {
		t.Fatal(err)
	}
	if len(spec.Selector.MatchLabels) == 0 {
		t.Error("the ServiceMonitor selects every Service")
	}
	for k, v := range spec.Selector.MatchLabels {
		if svc.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the Service's labels %v", k, v, svc.Metadata.Labels)
		}
	}
	if !slices.Contains(spec.NamespaceSelector.MatchNames, svc.Metadata.Namespace) {
		t.Errorf("namespaceSelector %v misses the Service's namespace %s", spec.NamespaceSelector.MatchNames, svc.Metadata.Namespace)
	}
	if spec.JobLabel != "" {
		t.Errorf("jobLabel %q: the alerts expect job to be the Service's name", spec.JobLabel)
	}
	for _, ep := range spec.Endpoints {
		if !slices.ContainsFunc(svcSpec.Ports, func(p struct {
			Name string `yaml:"name"`
		}) bool {
			return p.Name == ep.Port
		}) {
			t.Errorf("endpoint port %q is not a port name of the Service", ep.Port)
		}
		if ep.Path != "/metrics" {
			t.Errorf("endpoint path %q, want /metrics", ep.Path)
		}
	}
}

// TestParsePromQL keeps the reader itself honest on the shapes the files
// use.
func TestParsePromQL(t *testing.T) {
	p, err := parsePromQL(`sum by (job, code) (rate(egressgw_requests_total{job="egressgw", code=~"a|b"}[5m])) / ignoring (code) group_left sum by (job) (rate(egressgw_requests_total{job=~"$job"}[$__rate_interval])) > 0.05 and up == 1`)
	if err != nil {
		t.Fatal(err)
	}
	var metrics []string
	for _, s := range p.selectors {
		metrics = append(metrics, s.metric)
	}
	if !slices.Equal(metrics, []string{"egressgw_requests_total", "egressgw_requests_total", "up"}) {
		t.Errorf("metrics %v", metrics)
	}
	if !slices.Equal(p.grouping, []string{"job", "code", "code", "job"}) {
		t.Errorf("grouping %v", p.grouping)
	}
	if got := p.selectors[0].matchers; len(got) != 2 || got[1] != (matcher{"code", "=~", "a|b"}) {
		t.Errorf("matchers %v", got)
	}
	for _, bad := range []string{`sum(rte(x[5m]))`, `{job="x"}`, `x{job="x"`, `x{job=}`} {
		if _, err := parsePromQL(bad); err == nil {
			t.Errorf("parsePromQL(%q) accepted it", bad)
		}
	}
}
