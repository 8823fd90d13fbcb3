package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"testing"
)

// TestExplainAgreesWithGateway asks explain (the CLI with --resolve and
// /v1/explain with resolve=1) about a set of URLs and then sends each
// through the gateway: both must give the decision and code the gateway
// really answers with, including network safety on IP literals and on
// names that resolve to addresses the gateway never dials.
func TestExplainAgreesWithGateway(t *testing.T) {
	allowed := startHTTPUpstream(t, "127.0.0.1", nil)
	victim := startHTTPUpstream(t, victimAddress, nil)
	acme := credentials{tenant: "acme", token: "acme-token-explain"}
	g := newGateway(t)
	proxyPort := portOf(t, g.proxyAddr)
	dir := writeConfig(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			listen: %q
			admin_listen: %q
		`, g.proxyAddr, g.adminAddr)),
		"tenants/acme.yaml": tenantYAML(acme, yamlf(`
			rules:
			  - name: no-paste
			    action: deny
			    hosts: [%q]
			  - name: open
			    hosts: [%q, %q, %q, %q, "127.0.0.0/8", "169.254.169.254"]
			    ports: [80, %d, %d, %d]
		`, hostPaste, hostAPI, hostPaste, hostRebind, hostMetadata, allowed.port, victim.port, proxyPort)),
	})
	g.start(t, "--config", dir, "--log-format", "json")

	cases := []struct {
		name, url, decision, code string
	}{
		{"allowed name", allowed.url(hostAPI, "/a"), "allow", "ok"},
		{"allowed literal reopened by allow_cidrs", allowed.url("127.0.0.1", "/b"), "allow", "ok"},
		{"loopback literal outside allow_cidrs", victim.url(victimAddress, "/c"), "deny", "destination_ip_denied"},
		{"name resolving outside allow_cidrs", victim.url(hostRebind, "/d"), "deny", "destination_ip_denied"},
		{"metadata literal", "http://169.254.169.254/latest/meta-data/", "deny", "destination_ip_denied"},
		{"name resolving to metadata", "http://" + hostMetadata + "/latest/meta-data/", "deny", "destination_ip_denied"},
		{"the gateway's own listener", "http://127.0.0.1:" + strconv.Itoa(proxyPort) + "/", "deny", "destination_ip_denied"},
		{"denied by a rule", allowed.url(hostPaste, "/e"), "deny", "destination_not_allowed"},
		{"in no rule", allowed.url(hostOther, "/f"), "deny", "destination_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var cli struct{ Decision, Code string }
			res := egressgw(t, "explain", "--config", dir, "--tenant", acme.tenant, "--resolve", "--json", tc.url)
			assertExplainExit(t, res, tc.decision)
			if err := json.Unmarshal([]byte(res.stdout), &cli); err != nil {
				t.Fatalf("explain --json: %v; output:\n%s", err, res.output())
			}
			var admin struct{ Decision, Code string }
			query := url.Values{"tenant": {acme.tenant}, "url": {tc.url}, "resolve": {"1"}}
			if body := g.admin(t, "/v1/explain?"+query.Encode()); json.Unmarshal([]byte(body), &admin) != nil {
				t.Fatalf("/v1/explain: body %q", body)
			}

			before := snapshotReach(allowed, victim)
			resp := g.get(t, acme.header(), tc.url)
			gotCode := resp.Header.Get("X-Egressgw-Error")
			if resp.StatusCode == http.StatusOK && gotCode == "" {
				gotCode = "ok"
			}
			if tc.decision == "deny" {
				assertGatewayError(t, resp, http.StatusForbidden, tc.code)
				before.assertUnchanged(t)
			} else {
				readBody(t, resp)
			}
			if gotCode != tc.code {
				t.Errorf("the gateway answered %d with %q, want %q", resp.StatusCode, gotCode, tc.code)
			}
			if cli.Decision != tc.decision || cli.Code != gotCode {
				t.Errorf("explain says %s (%s), the gateway %s", cli.Decision, cli.Code, gotCode)
			}
			if admin.Decision != tc.decision || admin.Code != gotCode {
				t.Errorf("/v1/explain says %s (%s), the gateway %s", admin.Decision, admin.Code, gotCode)
			}
		})
	}
}
