package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressgw/egressgw/state"
)

// Admin tokens of the access tests, one per role.
const (
	accessOpsToken      = "e2e-admin-token-ops-0123456789"
	accessWatcherToken  = "e2e-admin-token-watcher-0123456789"
	accessApproverToken = "e2e-admin-token-alice-0123456789"
)

func accessGatewayYAML() string {
	return gatewayYAML(yamlf(`
		admin:
		  tokens:
		    - { name: ops, role: admin, token_sha256: %q }
		    - { name: watcher, role: viewer, token_sha256: %q }
		    - { name: alice, role: approver, tenants: [acme], token_sha256: %q }
	`, sha256Hex(accessOpsToken), sha256Hex(accessWatcherToken), sha256Hex(accessApproverToken)))
}

// adminCLI runs an access or grant command of the binary against g's
// admin listener, with token in EGRESSGW_ADMIN_TOKEN ("" for none).
func (g *gateway) adminCLI(t *testing.T, token string, args ...string) commandResult {
	t.Helper()
	env := childEnv()
	if token != "" {
		env = append(env, "EGRESSGW_ADMIN_TOKEN="+token)
	}
	return run(t, env, "", gatewayBinary, append(args, "--admin-url", "http://"+g.adminAddr)...)
}

// seedRefusals records refusals in the file state store of dir, as the
// gateway does for refused requests, before the gateway opens it.
func seedRefusals(t *testing.T, dir string, sightings ...state.Sighting) []string {
	t.Helper()
	store, err := state.NewFile(state.FileOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range sightings {
		ref, err := store.RecordRefusal(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ref.ID)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// The whole loop through the real binary and its CLI: list what a tenant
// was refused, approve it as a scoped approver, add and revoke grants as
// an admin, print the rule that makes a grant permanent and check that it
// loads; roles are enforced on the way; a restart keeps the requests and
// grants (the file backend, in the config directory's egressgw-state).
func TestAccessAndGrantCLI(t *testing.T) {
	t.Parallel()
	acme := credentials{"acme", "acme-access-token"}
	beta := credentials{"beta", "beta-access-token"}
	files := configFiles{
		"gateway.yaml":      accessGatewayYAML(),
		"tenants/acme.yaml": tenantYAML(acme, "rules: [{ hosts: [\"docs.python.org\"] }]\n"),
		"tenants/beta.yaml": tenantYAML(beta, "rules: [{ hosts: [\"docs.python.org\"] }]\n"),
	}
	dir := writeConfig(t, files)
	ids := seedRefusals(t, filepath.Join(dir, "egressgw-state"),
		state.Sighting{Tenant: "acme", Host: "files.pypi.org", Port: 443, Method: "CONNECT"},
		state.Sighting{Tenant: "beta", Host: "registry.npmjs.org", Port: 443, Method: "CONNECT"})
	acmeReq, betaReq := ids[0], ids[1]

	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")

	// Reading needs a token once tokens are configured.
	res := g.adminCLI(t, "", "access", "list")
	if res.exitCode != 1 || !strings.Contains(res.stderr, "admin_auth_required") || !strings.Contains(res.stderr, "EGRESSGW_ADMIN_TOKEN") {
		t.Errorf("access list without a token: exit %d, %q; want 1 with admin_auth_required and a word on EGRESSGW_ADMIN_TOKEN", res.exitCode, res.output())
	}
	res = g.adminCLI(t, accessWatcherToken, "access", "list", "--status", "pending")
	if res.exitCode != 0 || !strings.HasPrefix(res.stdout, "ID ") || !strings.Contains(res.stdout, acmeReq) || !strings.Contains(res.stdout, "files.pypi.org") || !strings.Contains(res.stdout, betaReq) {
		t.Fatalf("access list: exit %d\n%s", res.exitCode, res.output())
	}

	// A viewer may not decide; an approver may not decide another tenant's
	// request. Neither changes anything.
	res = g.adminCLI(t, accessWatcherToken, "access", "approve", acmeReq, "--for", "2h")
	if res.exitCode != 1 || !strings.Contains(res.stderr, "403 admin_auth_required") {
		t.Errorf("viewer approve: exit %d, %q; want 1 and 403 admin_auth_required", res.exitCode, res.output())
	}
	res = g.adminCLI(t, accessApproverToken, "access", "deny", betaReq)
	if res.exitCode != 1 || !strings.Contains(res.stderr, "403 admin_auth_required") {
		t.Errorf("approver of acme denies beta's request: exit %d, %q; want 1 and 403", res.exitCode, res.output())
	}
	var listed struct{ Requests []state.AccessRequest }
	res = g.adminCLI(t, accessWatcherToken, "access", "list", "--json", "--status", "pending")
	if err := json.Unmarshal([]byte(res.stdout), &listed); err != nil || len(listed.Requests) != 2 {
		t.Fatalf("pending requests after refused decisions: %v\n%s", err, res.output())
	}

	// Usage errors exit 2 without calling the gateway.
	if res = g.adminCLI(t, accessOpsToken, "grant", "revoke"); res.exitCode != 2 {
		t.Errorf("grant revoke without an ID: exit %d, want 2", res.exitCode)
	}
	if res = g.adminCLI(t, accessOpsToken, "access", "approve", acmeReq, "--for", "2h", "--ports", "https"); res.exitCode != 2 {
		t.Errorf("--ports https: exit %d, want 2", res.exitCode)
	}
	// A refused input is the API's 400, exit 1.
	res = g.adminCLI(t, accessApproverToken, "access", "approve", acmeReq, "--for", "2h", "--host", "*.org")
	if res.exitCode != 1 || !strings.Contains(res.stderr, "400 bad_request") {
		t.Errorf("approve *.org: exit %d, %q; want 1 and 400 bad_request", res.exitCode, res.output())
	}

	// The approver of acme approves acme's request with a wider pattern.
	res = g.adminCLI(t, accessApproverToken, "access", "approve", acmeReq, "--for", "2h", "--host", "*.pypi.org", "--note", "pip install")
	if res.exitCode != 0 || !strings.HasPrefix(res.stdout, "approved "+acmeReq+": gr_") || !strings.Contains(res.stdout, "*.pypi.org ports 443") {
		t.Fatalf("approve: exit %d\n%s", res.exitCode, res.output())
	}
	g.waitAudit(t, auditWith("kind", "admin", "action", "approve", "actor", "alice", "tenant", "acme", "access_request", acmeReq, "host", "*.pypi.org"))

	// An admin adds a grant with no request; the approver could not.
	res = g.adminCLI(t, accessApproverToken, "grant", "add", "--tenant", "beta", "--host", "api.example.org", "--for", "1h")
	if res.exitCode != 1 || !strings.Contains(res.stderr, "403 admin_auth_required") {
		t.Errorf("approver of acme adds a grant for beta: exit %d, %q", res.exitCode, res.output())
	}
	res = g.adminCLI(t, accessOpsToken, "grant", "add", "--tenant", "beta", "--host", "api.example.org", "--ports", "443,8443", "--methods", "GET", "--paths", "/v1/", "--for", "1h", "--json")
	var added struct{ Grant state.Grant }
	if err := json.Unmarshal([]byte(res.stdout), &added); res.exitCode != 0 || err != nil || added.Grant.ID == "" {
		t.Fatalf("grant add: exit %d, %v\n%s", res.exitCode, err, res.output())
	}
	betaGrant := added.Grant.ID

	res = g.adminCLI(t, accessWatcherToken, "grant", "list")
	if res.exitCode != 0 || !strings.Contains(res.stdout, betaGrant) || !strings.Contains(res.stdout, "*.pypi.org") || !strings.Contains(res.stdout, "443,8443") {
		t.Fatalf("grant list: exit %d\n%s", res.exitCode, res.output())
	}

	// The rule that makes beta's grant permanent passes check in beta's
	// tenant file.
	res = g.adminCLI(t, accessWatcherToken, "grant", "rule", betaGrant)
	if res.exitCode != 0 || !strings.Contains(res.stdout, "- name: grant-"+betaGrant) {
		t.Fatalf("grant rule: exit %d\n%s", res.exitCode, res.output())
	}
	permanent := writeConfig(t, configFiles{
		"tenants/beta.yaml": tenantYAML(beta, "rules:\n"+res.stdout),
	})
	if check := egressgw(t, "check", "--config", permanent); check.exitCode != 0 {
		t.Errorf("the printed rule does not pass check in a tenant file: exit %d\n%s\n%s", check.exitCode, res.stdout, check.output())
	}

	// Revoking ends the grant; beta's stays listed no more.
	res = g.adminCLI(t, accessOpsToken, "grant", "revoke", betaGrant)
	if res.exitCode != 0 || strings.TrimSpace(res.stdout) != "revoked "+betaGrant {
		t.Fatalf("grant revoke: exit %d\n%s", res.exitCode, res.output())
	}
	g.waitAudit(t, auditWith("kind", "admin", "action", "grant_revoke", "actor", "ops", "grant", betaGrant))
	if res = g.adminCLI(t, accessWatcherToken, "grant", "list", "--tenant", "beta"); strings.Contains(res.stdout, betaGrant) {
		t.Errorf("revoked grant still listed:\n%s", res.stdout)
	}
	if res = g.adminCLI(t, accessOpsToken, "grant", "revoke", betaGrant); res.exitCode != 1 || !strings.Contains(res.stderr, "404 not_found") {
		t.Errorf("revoking twice: exit %d, %q; want 1 and 404 not_found", res.exitCode, res.output())
	}
	// No admin token ever reaches the logs.
	for _, tok := range []string{accessOpsToken, accessWatcherToken, accessApproverToken} {
		if strings.Contains(g.stdout.String()+g.stderr.String(), tok) {
			t.Errorf("a log holds an admin token")
		}
	}

	// A restart on the same directory keeps the decided request and the
	// grant it created.
	if code := g.stop(t); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}
	g2 := newGateway(t)
	g2.start(t, "--config", dir, "--log-format", "json")
	res = g2.adminCLI(t, accessWatcherToken, "access", "list", "--json", "--tenant", "acme")
	if err := json.Unmarshal([]byte(res.stdout), &listed); err != nil || len(listed.Requests) != 1 || listed.Requests[0].Status != state.StatusApproved || listed.Requests[0].DecidedBy != "alice" {
		t.Errorf("acme's request after a restart: %v\n%s", err, res.output())
	}
	res = g2.adminCLI(t, accessWatcherToken, "grant", "list", "--json")
	var grants struct{ Grants []state.Grant }
	if err := json.Unmarshal([]byte(res.stdout), &grants); err != nil || len(grants.Grants) != 1 || grants.Grants[0].Host != "*.pypi.org" || grants.Grants[0].RequestID != acmeReq {
		t.Errorf("grants after a restart: %v\n%s", err, res.output())
	}
}

// With no admin tokens configured, the admin API reads (loopback setups)
// and refuses every write with 403 admin_auth_required.
func TestAdminWithoutTokensRefusesWrites(t *testing.T) {
	t.Parallel()
	acme := credentials{"acme", "acme-access-token"}
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, "rules: [{ hosts: [\"docs.python.org\"] }]\n"),
	})
	if res := g.adminCLI(t, "", "grant", "list"); res.exitCode != 0 || !strings.HasPrefix(res.stdout, "ID ") {
		t.Errorf("grant list without tokens configured: exit %d\n%s", res.exitCode, res.output())
	}
	res := g.adminCLI(t, "anything", "grant", "add", "--tenant", "acme", "--host", "api.example.org", "--for", "1h")
	if res.exitCode != 1 || !strings.Contains(res.stderr, "403 admin_auth_required") {
		t.Errorf("grant add without tokens configured: exit %d, %q; want 1 and 403 admin_auth_required", res.exitCode, res.output())
	}
	if res := g.adminCLI(t, "", "grant", "list", "--json"); !strings.Contains(res.stdout, `"grants": []`) {
		t.Errorf("a refused write added a grant:\n%s", res.stdout)
	}
	// The probes stay open, and so does the rest of the read API.
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/v1/config", "/v1/access-requests"} {
		if status, _, err := directGet("http://" + g.adminAddr + path); err != nil || status != http.StatusOK {
			t.Errorf("GET %s: %d %v", path, status, err)
		}
	}
}

// A state directory that cannot be used stops start-up with a clear
// message, instead of serving without grants.
func TestStateStoreThatCannotOpenFailsStart(t *testing.T) {
	t.Parallel()
	dir := writeConfig(t, configFiles{
		"gateway.yaml": gatewayYAML("state: { dir: not-a-directory }\n"),
	})
	if err := os.WriteFile(filepath.Join(dir, "not-a-directory"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := newGateway(t)
	res := run(t, nil, "", gatewayBinary, "serve", "--config", dir, "--listen", g.proxyAddr, "--admin-listen", g.adminAddr)
	if res.exitCode != 1 || !strings.Contains(res.stderr, "cannot open the state store") {
		t.Errorf("serve with a file as state.dir: exit %d\n%s", res.exitCode, res.output())
	}
}
