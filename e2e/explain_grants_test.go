package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// explainTrace decodes explain --json strictly: every field it prints is
// one of the trace's.
func explainTrace(t *testing.T, res commandResult) policy.Trace {
	t.Helper()
	if res.exitCode != 0 {
		t.Fatalf("explain --json: exit %d\n%s", res.exitCode, res.output())
	}
	dec := json.NewDecoder(strings.NewReader(res.stdout))
	dec.DisallowUnknownFields()
	var tr policy.Trace
	if err := dec.Decode(&tr); err != nil {
		t.Fatalf("explain --json: %v\n%s", err, res.output())
	}
	return tr
}

// A grant added through the CLI shows in `egressgw explain --admin-url`:
// a rule grant:ID with its expiry, and the rule that allows; the same
// question without --admin-url reads the config alone, denies, and says
// grants are not shown. Its --json is the local --json's structure.
// Without a token the gateway refuses, and explain exits 1.
func TestExplainAdminURLShowsGrant(t *testing.T) {
	t.Parallel()
	files := configFiles{
		"gateway.yaml": accessGatewayYAML(),
		"tenants/acme.yaml": tenantYAML(acme, yamlf(`
			rules:
			  - { name: docs, hosts: [%q] }
			  - { name: no-paste, action: deny, hosts: [%q] }
		`, hostSub, hostPaste)),
	}
	dir := writeConfig(t, files)
	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")
	grant := g.addGrant(t, "--tenant", "acme", "--host", hostOther, "--ports", "443", "--for", "1h")
	rule := "grant:" + grant.ID
	target := "https://" + hostOther + "/simple/"
	adminURL := "http://" + g.adminAddr
	explainAt := func(token string, args ...string) commandResult {
		env := childEnv()
		if token != "" {
			env = append(env, "EGRESSGW_ADMIN_TOKEN="+token)
		}
		return run(t, env, "", gatewayBinary, append([]string{"explain", "--tenant", "acme"}, args...)...)
	}

	// The gateway applies the grant within its refresh window.
	var res commandResult
	eventually(t, 10*time.Second, func() error {
		res = explainAt(accessWatcherToken, "--admin-url", adminURL, target)
		if res.exitCode != 0 || !strings.Contains(res.stdout, `decision: ALLOW (ok) by "`+rule+`"`) {
			return fmt.Errorf("explain --admin-url: exit %d\n%s", res.exitCode, res.output())
		}
		return nil
	})
	grantLine := `  MATCH    allow grant "` + rule + `" (expires ` + grant.ExpiresAt.UTC().Format(time.RFC3339) + `): host and port match`
	if !strings.Contains(res.stdout, grantLine+"\n") || strings.Contains(res.stdout, "not shown") {
		t.Errorf("explain --admin-url: want the line %q and no word of grants not shown:\n%s", grantLine, res.output())
	}

	// The config directory alone knows no grant.
	res = explainAt("", "--config", dir, target)
	if res.exitCode != 0 || !strings.Contains(res.stdout, "decision: DENY (destination_not_allowed)\n") || strings.Contains(res.stdout, rule) ||
		!strings.Contains(res.stdout, "grants:   not shown") || !strings.Contains(res.stdout, "--admin-url") {
		t.Errorf("explain --config: want a denial and a line saying grants are not shown and how to see them:\n%s", res.output())
	}

	// No token: the gateway's 401, exit 1, nothing on stdout.
	res = explainAt("", "--admin-url", adminURL, target)
	if res.exitCode != 1 || res.stdout != "" || !strings.Contains(res.stderr, "401 admin_auth_required") || !strings.Contains(res.stderr, "EGRESSGW_ADMIN_TOKEN") {
		t.Errorf("explain --admin-url without a token: exit %d; want 1, admin_auth_required and a word on EGRESSGW_ADMIN_TOKEN\n%s", res.exitCode, res.output())
	}
	// An unknown tenant: exit 1.
	res = run(t, append(childEnv(), "EGRESSGW_ADMIN_TOKEN="+accessWatcherToken), "", gatewayBinary,
		"explain", "--admin-url", adminURL, "--tenant", "nobody", target)
	if res.exitCode != 1 || res.stdout != "" || !strings.Contains(res.stderr, "unknown tenant nobody") {
		t.Errorf("explain --admin-url --tenant nobody: exit %d; want 1 naming the tenant\n%s", res.exitCode, res.output())
	}

	// --json: the gateway's trace decodes as the local one does; for a
	// URL a rule decides, the two agree but for the grants listed.
	granted := explainTrace(t, explainAt(accessWatcherToken, "--admin-url", adminURL, "--json", target))
	if granted.Decision != "allow" || granted.Rule != rule {
		t.Errorf("explain --admin-url --json: %s by %q, want allow by %q", granted.Decision, granted.Rule, rule)
	}
	docs := "https://" + hostSub + "/guide"
	remote := explainTrace(t, explainAt(accessWatcherToken, "--admin-url", adminURL, "--json", docs))
	local := explainTrace(t, explainAt("", "--config", dir, "--json", docs))
	isGrant := func(r policy.RuleTrace) bool { return r.Kind == policy.KindGrant }
	if !slices.ContainsFunc(remote.Rules, func(r policy.RuleTrace) bool { return r.Name == rule && !r.Matched && !r.ExpiresAt.IsZero() }) {
		t.Errorf("explain --admin-url --json %s lists no unmatched %s with its expiry: %+v", docs, rule, remote.Rules)
	}
	remote.Rules = slices.DeleteFunc(remote.Rules, isGrant)
	for i := range remote.Steps {
		remote.Steps[i].Rules = slices.DeleteFunc(remote.Steps[i].Rules, isGrant)
	}
	a, _ := json.Marshal(remote)
	b, _ := json.Marshal(local)
	if string(a) != string(b) || local.Decision != "allow" || local.Rule != "docs" {
		t.Errorf("the gateway's trace, grants left out, differs from the local one:\nremote %s\nlocal  %s", a, b)
	}
}
