package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// credentials identify a tenant the way a sandbox does: user = tenant id,
// password = token.
type credentials struct {
	tenant string
	token  string
}

// basicAuth is the Proxy-Authorization value for c.
func basicAuth(c credentials) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.tenant+":"+c.token))
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// tenantCredentials are those of generated tenant i.
func tenantCredentials(i int) credentials {
	return credentials{tenant: fmt.Sprintf("tenant-%03d", i), token: fmt.Sprintf("bench-token-%03d", i)}
}

// The load is spread over the first loadTenantCount tenants, as many
// sandboxes would share one gateway; each has its own connection pool.
const loadTenantCount = 8

// Tenants of the inspected scenarios; they come on top of --tenants.
var (
	inspectPlainTenant  = credentials{tenant: "inspect-plain", token: "bench-token-inspect-plain"}
	inspectHookedTenant = credentials{tenant: "inspect-hooked", token: "bench-token-inspect-hooked"}
	sseRedactedTenant   = credentials{tenant: "sse-redacted", token: "bench-token-sse-redacted"}
)

const (
	interceptCAName  = "egressbench interception CA" // subject of the CA egressgw signs intercepted tunnels with
	redactionKeyEnv  = "EGRESSGW_REDACTION_KEY"
	headerHookScript = "hooks/bench_header.tengo"
)

// policyShape describes the egressgw config directory the harness writes:
// a realistic policy (tenants with connectors and rules of their own, the
// benchmark's upstreams allowed to the load tenants by a rule at the end of
// their lists), optionally with quotas and the inspected path.
type policyShape struct {
	tenants   int
	rules     int // connectors plus tenant rules
	plainPort int
	tlsPort   int
	auditPath string
	maxConns  int
	quotas    bool
	inspect   *interceptFiles // nil: no inspected path
	hooked    bool            // with inspect: also a connector with a header-edit hook and the pii profile
	// redactsResponses, with inspect: also a connector that redacts
	// responses with the pii profile, for the event streams.
	redactsResponses bool
}

// interceptFiles are what the inspected path needs: the gateway's signing
// CA and the root it verifies the TLS upstream with.
type interceptFiles struct {
	caCert, caKey, upstreamRoot string
}

// connectorCount is how many of the rules are connector files: one in
// five, as in a deployment where a few shared connectors serve many
// tenants who each add a handful of rules.
func (s policyShape) connectorCount() int { return max(1, s.rules/5) }

// tenantRuleCount is how many rules tenant i owns; together they make up
// the rules that are not connectors.
func (s policyShape) tenantRuleCount(i int) int {
	total := s.rules - s.connectorCount()
	n := total / s.tenants
	if i < total%s.tenants {
		n++
	}
	return n
}

// files renders the config directory: path relative to it → content.
func (s policyShape) files() map[string]string {
	files := map[string]string{"gateway.yaml": s.gatewayYAML()}
	for i := range s.connectorCount() {
		files[fmt.Sprintf("connectors/svc-%03d.yaml", i)] = connectorYAML(i)
	}
	for i := range s.tenants {
		files[fmt.Sprintf("tenants/tenant-%03d.yaml", i)] = s.tenantYAML(i)
	}
	if s.inspect != nil {
		files["connectors/bench-inspect.yaml"] = fmt.Sprintf(
			"name: bench-inspect\nversion: 1\nhosts: [\"127.0.0.1\"]\nports: [%d]\ninspect: true\n", s.tlsPort)
		files["tenants/inspect-plain.yaml"] = s.authYAML(inspectPlainTenant) + "connectors: [bench-inspect]\n" + s.quotaYAML()
	}
	if s.inspect != nil && s.hooked {
		files["connectors/bench-inspect-hooked.yaml"] = fmt.Sprintf(
			"name: bench-inspect-hooked\nversion: 1\nhosts: [\"127.0.0.1\"]\nports: [%d]\ninspect: true\n"+
				"hooks: { request: %s }\nredact: { request: [pii] }\n", s.tlsPort, headerHookScript)
		files[headerHookScript] = "// A header-edit hook: the cheapest transform a connector does.\nrequest.headers[\"" + hookHeader + "\"] = [\"edited\"]\n"
		files["tenants/inspect-hooked.yaml"] = s.authYAML(inspectHookedTenant) + "connectors: [bench-inspect-hooked]\n" + s.quotaYAML()
	}
	if s.inspect != nil && s.redactsResponses {
		files["connectors/bench-sse-redacted.yaml"] = fmt.Sprintf(
			"name: bench-sse-redacted\nversion: 1\nhosts: [\"127.0.0.1\"]\nports: [%d]\ninspect: true\nredact: { response: [pii] }\n", s.tlsPort)
		files["tenants/sse-redacted.yaml"] = s.authYAML(sseRedactedTenant) + "connectors: [bench-sse-redacted]\n" + s.quotaYAML()
	}
	return files
}

func (s policyShape) gatewayYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, `# written by egressbench
network:
  allow_cidrs: ["127.0.0.1/32"]   # the benchmark's upstreams are on loopback
limits:
  max_connections: %d
  shutdown_grace: 1s
audit:
  output: %q
`, s.maxConns, s.auditPath)
	if s.quotas {
		b.WriteString("quota:\n  backend: memory\n")
	}
	if s.inspect != nil {
		// The CAs live in the benchmark's directory, beside the config
		// directory: the gateway reads files outside it only from
		// directories it is told of (docs/admins.md, "Where config files
		// may live").
		var dirs []string
		for _, f := range []string{s.inspect.caCert, s.inspect.caKey, s.inspect.upstreamRoot} {
			if d := strconv.Quote(filepath.Dir(f)); filepath.IsAbs(f) && !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		}
		if len(dirs) > 0 {
			fmt.Fprintf(&b, "config:\n  allow_paths: [%s]\n", strings.Join(dirs, ", "))
		}
		fmt.Fprintf(&b, `tls:
  ca_cert: %q
  ca_key: %q
  upstream_roots: [%q]
`, s.inspect.caCert, s.inspect.caKey, s.inspect.upstreamRoot)
	}
	if s.inspect != nil && (s.hooked || s.redactsResponses) {
		fmt.Fprintf(&b, `redaction:
  hmac_key: { env: %s }
  profiles:
    pii:
      detectors: [email, credit_card, us_ssn, phone]
      json_fields: ["password", "*.ssn", "user.date_of_birth"]
      action: mask
`, redactionKeyEnv)
	}
	return b.String()
}

// connectorYAML is shared connector i: alternately exact and wildcard
// hosts, on 443 or on 80 and 443.
func connectorYAML(i int) string {
	hosts := fmt.Sprintf(`["api.svc-%03d.example.com", "uploads.svc-%03d.example.com"]`, i, i)
	if i%2 == 1 {
		hosts = fmt.Sprintf(`["*.svc-%03d.example.net"]`, i)
	}
	ports := "[443]"
	if i%3 == 0 {
		ports = "[80, 443]"
	}
	return fmt.Sprintf("name: svc-%03d\nversion: 1\nhosts: %s\nports: %s\n", i, hosts, ports)
}

func (s policyShape) authYAML(c credentials) string {
	return fmt.Sprintf("id: %s\nauth:\n  token_sha256: %q\n", c.tenant, sha256Hex(c.token))
}

// quotaYAML is a tenant quota far above anything the benchmark sends, so
// it is evaluated on every request and never binds.
func (s policyShape) quotaYAML() string {
	if !s.quotas {
		return ""
	}
	return `quota:
  requests_per_second: 1000000
  burst: 1000000
  max_concurrent: 100000
  bandwidth: { egress: 64GiB, ingress: 64GiB }
`
}

// tenantYAML is tenant i: five connectors and its share of the rules; a
// load tenant's last rule allows the benchmark's upstreams, so every rule
// before it is considered first.
func (s policyShape) tenantYAML(i int) string {
	var b strings.Builder
	b.WriteString(s.authYAML(tenantCredentials(i)))
	n := s.connectorCount()
	refs := make([]string, 0, 5)
	for j := range min(5, n) {
		refs = append(refs, fmt.Sprintf("svc-%03d", (i*5+j)%n))
	}
	fmt.Fprintf(&b, "connectors: [%s]\n", strings.Join(refs, ", "))
	b.WriteString(s.quotaYAML())
	count := s.tenantRuleCount(i)
	if count == 0 {
		return b.String()
	}
	b.WriteString("rules:\n")
	for r := range count {
		if i < loadTenantCount && r == count-1 {
			fmt.Fprintf(&b, "  - name: bench-upstreams\n    hosts: [\"127.0.0.1\"]\n    ports: [%d, %d]\n", s.plainPort, s.tlsPort)
			continue
		}
		switch r % 4 {
		case 0:
			fmt.Fprintf(&b, "  - name: docs-%d\n    hosts: [\"docs-%d.t%03d.example.org\"]\n    ports: [443]\n", r, r, i)
		case 1:
			fmt.Fprintf(&b, "  - name: cdn-%d\n    hosts: [\"*.cdn-%d.t%03d.example.org\"]\n", r, r, i)
		case 2:
			fmt.Fprintf(&b, "  - name: no-paste-%d\n    action: deny\n    hosts: [\"paste-%d.t%03d.example.org\", \"*.paste-%d.t%03d.example.org\"]\n", r, r, i, r, i)
		default:
			fmt.Fprintf(&b, "  - name: files-%d\n    hosts: [\"files-%d.t%03d.example.org\"]\n    ports: [80]\n    methods: [GET, HEAD]\n    paths: [\"/pub/\"]\n", r, r, i)
		}
	}
	return b.String()
}

// gatewayPolicy is the config directory egressgw serves in the benchmark,
// and what the harness learnt while writing it.
type gatewayPolicy struct {
	dir       string
	auditPath string
	env       []string // extra environment for egressgw (the redaction key)
	notes     []string
	// inspectUnavailable, hookedUnavailable and redactedUnavailable say
	// why the plain inspected scenarios, the inspected + hook + redaction
	// one and the redacted event streams cannot run; "" when they can.
	inspectUnavailable  string
	hookedUnavailable   string
	redactedUnavailable string
}

// writeGatewayPolicy writes the benchmark policy and asks `egressgw check`
// which optional parts this build accepts: quotas are omitted with a note
// when refused; the inspected path is marked not available. The base
// policy must be accepted.
func writeGatewayPolicy(ctx context.Context, env *benchEnv, binary string) (*gatewayPolicy, error) {
	plain, tlsPort := env.up.ports()
	shape := policyShape{
		tenants:   env.opts.tenants,
		rules:     env.opts.rules,
		plainPort: plain,
		tlsPort:   tlsPort,
		auditPath: filepath.Join(env.dir, "egressgw-audit.log"),
		maxConns:  max(10000, 2*env.opts.idleTunnels+8*env.opts.concurrency),
	}
	p := &gatewayPolicy{dir: filepath.Join(env.dir, "egressgw-config"), auditPath: shape.auditPath, env: []string{redactionKeyEnv + "=egressbench-redaction-key"}}
	check := func(s policyShape) (refusal string, err error) {
		if err := writeConfigDir(p.dir, s.files()); err != nil {
			return "", err
		}
		return egressgwCheck(ctx, binary, p.dir, p.env)
	}
	refusal, err := check(shape)
	if err != nil {
		return nil, err
	}
	if refusal != "" {
		return nil, fmt.Errorf("egressgw check refused the benchmark policy (%d tenants, %d rules):\n%s", shape.tenants, shape.rules, refusal)
	}

	withQuotas := shape
	withQuotas.quotas = true
	if refusal, err = check(withQuotas); err != nil {
		return nil, err
	}
	if refusal == "" {
		shape = withQuotas
		p.notes = append(p.notes, "egressgw: tenant quotas on, far above the offered load (1e6 req/s, 100000 concurrent, 64 GiB/s)")
	} else {
		p.notes = append(p.notes, "egressgw: quotas omitted, this build refuses them (egressgw check: "+summarizeRefusal(refusal)+")")
	}

	switch {
	case !env.opts.inspected:
		p.inspectUnavailable = "not run (--inspected=false)"
		p.hookedUnavailable, p.redactedUnavailable = p.inspectUnavailable, p.inspectUnavailable
	default:
		withInspect := shape
		withInspect.inspect = &interceptFiles{caCert: env.interceptCAFile, caKey: env.interceptKeyFile, upstreamRoot: env.upstreamCAFile}
		if refusal, err = check(withInspect); err != nil {
			return nil, err
		}
		if refusal != "" {
			p.inspectUnavailable = "not available in this build (egressgw check: " + summarizeRefusal(refusal) + ")"
			p.hookedUnavailable, p.redactedUnavailable = p.inspectUnavailable, p.inspectUnavailable
			break
		}
		shape = withInspect
		withRedaction := shape
		withRedaction.redactsResponses = true
		if refusal, err = check(withRedaction); err != nil {
			return nil, err
		}
		if refusal != "" {
			p.redactedUnavailable = "not available in this build (egressgw check: " + summarizeRefusal(refusal) + ")"
		} else {
			shape = withRedaction
		}
		withHooks := shape
		withHooks.hooked = true
		if refusal, err = check(withHooks); err != nil {
			return nil, err
		}
		if refusal != "" {
			p.hookedUnavailable = "not available in this build (egressgw check: " + summarizeRefusal(refusal) + ")"
			break
		}
		shape = withHooks
	}

	if err := writeConfigDir(p.dir, shape.files()); err != nil {
		return nil, err
	}
	p.notes = append(p.notes, fmt.Sprintf("egressgw: %d tenants, %d connectors + %d tenant rules, audit log to a file",
		shape.tenants, shape.connectorCount(), shape.rules-shape.connectorCount()))
	return p, nil
}

// writeConfigDir replaces dir with files.
func writeConfigDir(dir string, files map[string]string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clear config dir: %w", err)
	}
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("config dir: %w", err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// egressgwCheck runs `egressgw check --config dir`: "" when the config is
// accepted, the refusal (egressgw's output) when it exits 1, an error when
// the check could not run.
func egressgwCheck(ctx context.Context, binary, dir string, extraEnv []string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "check", "--config", dir)
	cmd.Env = append(childEnv(), extraEnv...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return "", nil
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return strings.TrimSpace(string(out)), nil
	default:
		return "", fmt.Errorf("egressgw check: %w\n%s", err, out)
	}
}

// summarizeRefusal is the first problem egressgw check reported, and how
// many more there were, for a one-line note.
func summarizeRefusal(out string) string {
	var problems []string
	for _, line := range strings.Split(out, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "warning:") {
			problems = append(problems, line)
		}
	}
	switch len(problems) {
	case 0:
		return "refused"
	case 1:
		return problems[0]
	default:
		return fmt.Sprintf("%s; and %d more", problems[0], len(problems)-1)
	}
}
