package proxy

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/egressgw/egressgw/policy"
)

// otherTenants is the tenant label for tenants past max_tenant_labels.
const otherTenants = "_other"

// metrics are the gateway's Prometheus series (docs/operators.md, "Metrics"), registered on the
// gateway's own registry so that several gateways can live in one process.
// Labels come from fixed sets only; never a host or a path.
type metrics struct {
	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	allowedDuration prometheus.Observer // duration{decision=allow}
	bytes           *prometheus.CounterVec
	activeTunnels   *prometheus.GaugeVec
	reloads         *prometheus.CounterVec
	quotaRejects    *prometheus.CounterVec
	quotaFailOpen   *prometheus.CounterVec
	quotaRate       *prometheus.GaugeVec
	// budgetWarnings counts budgets crossing warn_at; budget_used and
	// budget_limit are read at scrape time (budgetCollector).
	budgetWarnings    *prometheus.CounterVec
	budgetFlushErrors prometheus.Counter
	hookRuns          *prometheus.CounterVec
	redactions        *prometheus.CounterVec
	hookDuration      *prometheus.HistogramVec
	generation        prometheus.Gauge
	lastReloadTime    prometheus.Gauge

	labelsMu   sync.Mutex
	maxTenants int
	tenants    map[string]struct{} // tenants given their own label value, at most maxTenants
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "egressgw_requests_total", Help: "Requests and tunnels by tenant, decision and code.",
		}, []string{"tenant", "decision", "code"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "egressgw_request_duration_seconds", Help: "Time from arrival to the end of the response or tunnel.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"decision"}),
		bytes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "egressgw_bytes_total", Help: "Body and tunnel bytes by tenant; egress is client to upstream.",
		}, []string{"tenant", "direction"}),
		activeTunnels: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "egressgw_active_tunnels", Help: "Open CONNECT tunnels by tenant.",
		}, []string{"tenant"}),
		quotaRejects: f.NewCounterVec(prometheus.CounterOpts{
			Name: "egressgw_quota_rejections_total", Help: "Requests refused by quota, by kind: rate, concurrency, unavailable or budget.",
		}, []string{"tenant", "kind"}),
		quotaFailOpen: f.NewCounterVec(prometheus.CounterOpts{
			Name: "egressgw_quota_fail_open_total", Help: "Requests let through without a quota check because the backend was unreachable and on_error is allow.",
		}, []string{"tenant"}),
		quotaRate: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "egressgw_quota_requests_per_second", Help: "Each tenant's request rate limit (quota.requests_per_second); no series for a tenant without one.",
		}, []string{"tenant"}),
		budgetWarnings: f.NewCounterVec(prometheus.CounterOpts{
			Name: "egressgw_budget_warnings_total", Help: "Budgets crossing their warn_at, once per budget, limit and period on each replica.",
		}, []string{"tenant", "budget"}),
		budgetFlushErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "egressgw_budget_flush_errors_total", Help: "Flushes of the budget counters to Redis or the state directory that failed.",
		}),
		hookRuns: f.NewCounterVec(prometheus.CounterOpts{
			Name: "egressgw_hook_runs_total", Help: "Hook runs by connector and result: ok, denied, body_too_large, or how the run failed.",
		}, []string{"connector", "result"}),
		hookDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "egressgw_hook_duration_seconds", Help: "Time a hook run took, waiting for a worker included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"connector"}),
		redactions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "egressgw_redactions_total", Help: "Values redacted, by profile and detector (or field rule).",
		}, []string{"profile", "detector"}),
		reloads: f.NewCounterVec(prometheus.CounterOpts{
			Name: "egressgw_config_reloads_total", Help: "Config loads by result (success or error).",
		}, []string{"result"}),
		generation: f.NewGauge(prometheus.GaugeOpts{
			Name: "egressgw_config_generation", Help: "Generation of the policy being served.",
		}),
		lastReloadTime: f.NewGauge(prometheus.GaugeOpts{
			Name: "egressgw_config_last_success_timestamp_seconds", Help: "When the served policy was loaded.",
		}),
		tenants: map[string]struct{}{},
	}
	m.allowedDuration = m.duration.WithLabelValues("allow")
	return m
}

func (m *metrics) setMaxTenants(n int) {
	m.labelsMu.Lock()
	m.maxTenants = n
	m.labelsMu.Unlock()
}

// tenantLabel bounds the tenant label: the first maxTenants tenants seen
// get their own value, later ones share "_other". An empty tenant (not yet
// identified) is reported as "_none".
func (m *metrics) tenantLabel(id string) string {
	if id == "" {
		return "_none"
	}
	m.labelsMu.Lock()
	defer m.labelsMu.Unlock()
	if _, ok := m.tenants[id]; ok {
		return id
	}
	if len(m.tenants) >= m.maxTenants {
		return otherTenants
	}
	m.tenants[id] = struct{}{}
	return id
}

// forgetRemovedTenants drops the series of tenants that a reload removed,
// and frees their label slots, so that tenant churn cannot grow the
// registry.
func (m *metrics) forgetRemovedTenants(prev, next interface{ TenantIDs() []string }) {
	keep := map[string]bool{}
	for _, id := range next.TenantIDs() {
		keep[id] = true
	}
	m.labelsMu.Lock()
	defer m.labelsMu.Unlock()
	for _, id := range prev.TenantIDs() {
		if keep[id] {
			continue
		}
		if _, labelled := m.tenants[id]; !labelled {
			continue
		}
		delete(m.tenants, id)
		match := prometheus.Labels{"tenant": id}
		m.requests.DeletePartialMatch(match)
		m.bytes.DeletePartialMatch(match)
		m.activeTunnels.DeletePartialMatch(match)
		m.quotaRejects.DeletePartialMatch(match)
		m.quotaFailOpen.DeletePartialMatch(match)
		m.quotaRate.DeletePartialMatch(match)
	}
}

// setQuotaRates exports the request rate limit of every tenant of snap,
// so that alerts can compare a tenant's request rate with its limit
// before requests are refused (docs/operators.md, "Dashboards and
// alerts"). A tenant without a limit, or counted under "_other", has no
// series: one limit could not stand for many tenants.
func (m *metrics) setQuotaRates(snap *policy.Snapshot) {
	for _, id := range snap.TenantIDs() {
		t, ok := snap.Tenant(id)
		if !ok {
			continue
		}
		if t.Quota.Rate.Unlimited() {
			m.quotaRate.DeleteLabelValues(id)
			continue
		}
		if m.tenantLabel(id) == id {
			m.quotaRate.WithLabelValues(id).Set(t.Quota.Rate.Rate)
		}
	}
}

// observeDuration records an exchange's duration; the allowed series,
// which nearly every exchange is, is resolved once.
func (m *metrics) observeDuration(decision string, elapsed time.Duration) {
	if decision == "allow" {
		m.allowedDuration.Observe(elapsed.Seconds())
		return
	}
	m.duration.WithLabelValues(decision).Observe(elapsed.Seconds())
}

func (m *metrics) quotaRejection(tenant, kind string) {
	m.quotaRejects.WithLabelValues(m.tenantLabel(tenant), kind).Inc()
}

func (m *metrics) quotaFailedOpen(tenant string) {
	m.quotaFailOpen.WithLabelValues(m.tenantLabel(tenant)).Inc()
}

func (m *metrics) hookRun(connector, result string, elapsed time.Duration) {
	m.hookRuns.WithLabelValues(connector, result).Inc()
	if elapsed > 0 {
		m.hookDuration.WithLabelValues(connector).Observe(elapsed.Seconds())
	}
}
