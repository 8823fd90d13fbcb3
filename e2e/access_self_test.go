package e2e

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressgw/egressgw/state"
)

// selfServiceFixture is a gateway with tenants acme and beta and an admin
// token, for the tenant's own endpoint.
func selfServiceGateway(t *testing.T, extraGateway string, acmeBody string) (*gateway, credentials, credentials) {
	t.Helper()
	acme := credentials{"acme", "acme-self-token"}
	beta := credentials{"beta", "beta-self-token"}
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			admin:
			  tokens:
			    - { name: ops, role: admin, token_sha256: %q }
		`, sha256Hex(accessOpsToken)) + extraGateway),
		"tenants/acme.yaml": tenantYAML(acme, acmeBody),
		"tenants/beta.yaml": tenantYAML(beta, "rules: [{ name: beta-private-rule, hosts: [\"beta-private.test\"] }]\n"),
	})
	return g, acme, beta
}

// The examples of docs/sandbox-runtimes.md, "Asking the gateway", run as a
// sandbox runs them: curl and Python's urllib with HTTP_PROXY holding the
// tenant's credentials. The request they file, with its reason, is what
// the admin CLI lists.
func TestSelfServiceDocsExamples(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	g, acme, beta := selfServiceGateway(t, "", "rules: [{ name: docs, hosts: [\"docs.python.org\"] }]\n")

	var shell, py string
	for _, b := range readDocBlocks(t, filepath.Join(repoRoot(t), "docs", "sandbox-runtimes.md")) {
		if b.marker != "sandbox" {
			continue
		}
		switch b.arg {
		case "sh":
			shell = b.text
		case "python":
			py = b.text
		}
	}
	if shell == "" || py == "" {
		t.Fatal("docs/sandbox-runtimes.md has no <!-- test: sandbox sh --> and <!-- test: sandbox python --> blocks")
	}
	env := append(childEnv(), "HTTP_PROXY="+g.proxyURL(acme), "http_proxy="+g.proxyURL(acme), "PATH="+filepath.Dir(curl)+":"+filepath.Dir(python)+":/usr/bin:/bin")

	res := run(t, env, t.TempDir(), "sh", "-e", "-c", shell)
	if res.exitCode != 0 {
		t.Fatalf("the shell example failed: exit %d\n%s", res.exitCode, res.output())
	}
	for _, want := range []string{`"tenant": "acme"`, `"name": "docs"`, `"decision": "deny"`, `"status": "pending"`, `"reason": "pip install requests"`} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("the shell example's output lacks %s:\n%s", want, res.stdout)
		}
	}
	res = run(t, env, t.TempDir(), python, "-c", py)
	if res.exitCode != 0 {
		t.Fatalf("the Python example failed: exit %d\n%s", res.exitCode, res.output())
	}
	for _, want := range []string{"tenant acme rules ['docs']", "check deny", "filed req_", "pending"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("the Python example's output lacks %q:\n%s", want, res.stdout)
		}
	}

	// Both filings are one request; the admin sees it with its reason.
	res = g.adminCLI(t, accessOpsToken, "access", "list", "--json")
	var listed struct{ Requests []state.AccessRequest }
	if err := json.Unmarshal([]byte(res.stdout), &listed); err != nil || res.exitCode != 0 {
		t.Fatalf("access list --json: exit %d, %v\n%s", res.exitCode, err, res.output())
	}
	if len(listed.Requests) != 1 {
		t.Fatalf("requests %+v, want the one filed", listed.Requests)
	}
	r := listed.Requests[0]
	if r.Tenant != "acme" || r.Host != "pypi.org" || r.Port != 443 || r.Method != "GET" || r.Path != "/simple/" || r.Reason != "pip install requests" || r.Count != 2 || r.Status != state.StatusPending {
		t.Errorf("listed %+v", r)
	}

	// Each answer was one audit line, with the endpoint's rule, and
	// never a query value.
	for _, path := range []string{"/v1/policy", "/v1/check", "/v1/access-requests"} {
		rec := g.waitAudit(t, auditWith("tenant", "acme", "host", "egressgw.internal", "path", path, "rule", "self_service", "decision", "allow"))
		if strings.Contains(g.stdout.String(), "pypi.org/simple") {
			t.Errorf("an audit line holds the checked URL: %v", rec)
		}
	}

	// Beta sees its own, none of acme's; and acme none of beta's.
	resp := g.get(t, beta.header(), "http://egressgw.internal/v1/access-requests")
	if body := readBody(t, resp); resp.StatusCode != 200 || strings.Contains(body, "pypi.org") || !strings.Contains(body, `"requests": []`) {
		t.Errorf("beta's requests: %d %s", resp.StatusCode, body)
	}
	resp = g.get(t, acme.header(), "http://egressgw.internal/v1/policy")
	if body := readBody(t, resp); resp.StatusCode != 200 || strings.Contains(body, "beta-private") {
		t.Errorf("acme's policy: %d %s", resp.StatusCode, body)
	}
}

// Errors on the endpoint are the gateway's JSON errors; credentials come
// first; a CONNECT to the name is refused; none of it reaches anything.
func TestSelfServiceErrorsThroughTheBinary(t *testing.T) {
	t.Parallel()
	up := startHTTPUpstream(t, "127.0.0.1", nil)
	// other.test resolves to the upstream's address: renamed to it, the
	// endpoint still never dials it, though the tenant's rule allows it.
	g, acme, _ := selfServiceGateway(t, "self_service: { host: other.test }\n",
		yamlf(`
			quota: { requests_per_second: 0.001, burst: 3 }
			rules: [{ name: other, hosts: [%q], ports: [%d] }]
		`, hostOther, up.port))

	resp := g.get(t, "", up.url(hostOther, "/v1/policy"))
	assertGatewayError(t, resp, http.StatusProxyAuthRequired, "proxy_auth_required")
	resp = g.get(t, acme.header(), up.url(hostOther, "/v1/nothing"))
	assertGatewayError(t, resp, http.StatusNotFound, "not_found")
	resp = g.request(t, http.MethodDelete, acme.header(), up.url(hostOther, "/v1/policy"))
	assertGatewayError(t, resp, http.StatusMethodNotAllowed, "method_not_allowed")
	resp, conn := g.connect(t, acme.header(), up.authority(hostOther))
	conn.Close()
	assertGatewayError(t, resp, http.StatusBadRequest, "bad_request")
	// The burst of 3 is spent (the CONNECT was refused before the quota).
	resp = g.get(t, acme.header(), up.url(hostOther, "/v1/policy"))
	body := readBody(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(body, `"tenant": "acme"`) {
		t.Fatalf("policy: %d %s", resp.StatusCode, body)
	}
	resp = g.get(t, acme.header(), up.url(hostOther, "/v1/policy"))
	assertGatewayError(t, resp, http.StatusTooManyRequests, "rate_limited")
	if n := up.reached(); n != 0 {
		t.Errorf("the upstream behind the name was reached %d times", n)
	}
}
