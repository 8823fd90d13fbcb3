package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/egressgw/egressgw/budget"
)

// TestUsageCommandShowsStatementAndBudgets: through the real binary, a
// tenant spends a request budget of one priced connector and uploads
// through its own rule; `egressgw usage` then prints both lines with
// their cost and the total, and the spent budget; --json is the admin
// API's statement; an unknown tenant exits 1 with not_found.
func TestUsageCommandShowsStatementAndBudgets(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		greet.ServeHTTP(w, r)
	}))
	g := startGateway(t, configFiles{
		"gateway.yaml": accessGatewayYAML() + "budgets: { currency: EUR }\n",
		"connectors/priced.yaml": yamlf(`
			name: priced
			version: 3
			hosts: [%q]
			ports: [%d]
			price: { per_request: 0.01 }
		`, hostSub, origin.port),
		"tenants/acme.yaml": tenantYAML(acme, "connectors: [priced]\n"+allowRule("api", []string{hostAPI}, origin.port)+yamlf(`
			budgets:
			  - { name: daily, period: day, requests: 3, connectors: [priced] }
			  - { name: uploads, period: day, egress: 1MiB }
		`)),
	})
	client := g.client(t, acme)
	for range 3 {
		if status, body := fetch(t, client, origin.url(hostSub, "/priced")); status != http.StatusOK {
			t.Fatalf("GET through the priced connector: %d %s", status, body)
		}
	}
	before := snapshotReach(origin)
	g.expectRefused(t, http.MethodGet, acme.header(), origin.url(hostSub, "/spent"), http.StatusTooManyRequests, "budget_exhausted", origin)
	before.assertUnchanged(t)
	resp, err := client.Post(origin.url(hostAPI, "/upload"), "text/plain", strings.NewReader(strings.Repeat("u", 2000)))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload through the rule: %d", resp.StatusCode)
	}

	// The upload's bytes are counted once its exchange ends, just after
	// the client has the response.
	var table string
	eventually(t, scaled(requestTimeout), func() error {
		res := g.adminCLI(t, accessWatcherToken, "usage", "--tenant", "acme")
		if res.exitCode != 0 {
			t.Fatalf("egressgw usage: exit %d\n%s", res.exitCode, res.output())
		}
		table = res.stdout
		for _, line := range strings.Split(table, "\n") {
			// (rules and grants)  REQUESTS  BYTES UP...
			if f := strings.Fields(line); len(f) > 4 && f[0] == "(rules" && f[3] == "1" && f[4] != "0" {
				return nil
			}
		}
		return fmt.Errorf("the upload is not in the statement yet:\n%s", table)
	})
	fields := map[string][]string{}
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			fields[f[0]] = f
		}
	}
	if f := fields["priced@3"]; len(f) != 8 || f[1] != "3" || f[6] != "0.0300" || f[7] != "EUR" {
		t.Errorf("priced line %q: want 3 requests costing 0.0300 EUR\n%s", f, table)
	}
	if f := fields["TOTAL"]; len(f) != 8 || f[1] != "4" || f[6] != "0.0300" {
		t.Errorf("total line %q: want 4 requests, 0.0300 EUR\n%s", f, table)
	}
	if f := fields["daily"]; len(f) < 8 || f[2] != "3/3" || f[6] != "exhausted" {
		t.Errorf("daily budget %q: want 3/3 requests, exhausted\n%s", f, table)
	}
	if f := strings.Join(fields["uploads"], " "); !strings.HasPrefix(f, "uploads day - 2.0 KiB/1.0 MiB - - ok ") {
		t.Errorf("uploads budget %q: want 2.0 KiB of 1.0 MiB egress used, ok\n%s", f, table)
	}

	res := g.adminCLI(t, accessWatcherToken, "usage", "--tenant", "acme", "--period", "month", "--json")
	var st budget.Statement
	if err := json.Unmarshal([]byte(res.stdout), &st); res.exitCode != 0 || err != nil {
		t.Fatalf("usage --json: exit %d, %v\n%s", res.exitCode, err, res.output())
	}
	if st.Period != budget.Month || st.Currency != "EUR" || st.Total.Requests != 4 || len(st.Lines) != 2 || st.Lines[0].Version != 3 || st.Lines[1].Egress < 2000 {
		t.Errorf("usage --json: %+v", st)
	}

	res = g.adminCLI(t, accessWatcherToken, "usage", "--tenant", "nobody")
	if res.exitCode != 1 || res.stdout != "" || !strings.Contains(res.stderr, "not_found") {
		t.Errorf("usage of an unknown tenant: exit %d\n%s", res.exitCode, res.output())
	}
}
