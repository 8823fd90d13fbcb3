package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/egressgw/egressgw/budget"
)

// adminAs fetches path from the admin listener with token ("" for none).
func (g *pathGateway) adminAs(t *testing.T, token, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+g.adminAddr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: pathGuard}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET admin %s: %v", path, err)
	}
	return resp.StatusCode, pathBody(t, resp)
}

// What a tenant's traffic amounted to is read back three ways, each the
// asking tenant's alone: the admin statement per connector version with
// its cost, the admin usage's budgets, and the tenant's own /v1/policy.
func TestPathStatementAndBudgets(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	beta := pathTenant{"beta", "beta-token-6a0d3f9c27"}
	g := startPathGateway(t, adminTokensYAML()+"budgets: { currency: EUR }\n", map[string]string{
		"connectors/priced.yaml": fmt.Sprintf("name: priced\nversion: 2\nhosts: [%q]\nports: [%d]\nprice: { per_request: 0.25, per_gib_egress: 2 }\n", zoneV2, origin.port),
		"tenants/acme.yaml": pathAcme.yaml("connectors: [priced]\n" + pathRule("api", []string{zoneAPI}, origin.port) +
			"budgets:\n  - { name: daily, period: day, requests: 100, cost: 10, connectors: [priced], warn_at: 0.8 }\n" +
			"  - { name: uploads, period: hour, egress: 1MiB }\n"),
		"tenants/beta.yaml": beta.yaml(pathRule("api", []string{zoneAPI}, origin.port) +
			"budgets:\n  - { name: beta-secret-budget, period: month, requests: 5 }\n"),
	})
	for range 2 {
		g.expectAllowedGET(t, pathAcme, origin.url(zoneV2, "/priced"))
	}
	upload := strings.Repeat("u", 1000)
	resp, err := g.client(t, pathAcme, nil).Post(origin.url(zoneAPI, "/upload"), "text/plain", strings.NewReader(upload))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	g.expectAllowedGET(t, beta, origin.url(zoneAPI, "/beta"))

	// The statement: the priced connector's line, then the rules'.
	var st budget.Statement
	eventually(t, func() error {
		status, body := g.adminAs(t, viewerTok, "/v1/tenants/acme/statement")
		if status != http.StatusOK {
			return fmt.Errorf("statement: %d %s", status, body)
		}
		st = budget.Statement{}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err
		}
		if len(st.Lines) != 2 || st.Lines[1].Egress < int64(len(upload)) {
			return fmt.Errorf("statement lines %+v: want the priced connector's and the rules' with the upload", st.Lines)
		}
		return nil
	})
	priced, rules := st.Lines[0], st.Lines[1]
	if st.Tenant != "acme" || st.Period != budget.Day || st.Currency != "EUR" || !st.End.Equal(st.Start.AddDate(0, 0, 1)) {
		t.Errorf("statement head %+v", st)
	}
	if priced.Connector != "priced" || priced.Version != 2 || priced.Requests != 2 || priced.Ingress == 0 {
		t.Errorf("priced line %+v", priced)
	}
	if want := 2*0.25 + float64(priced.Egress)/(1<<30)*2; math.Abs(priced.Cost-want) > 1e-9 {
		t.Errorf("priced cost %v, want %v at the connector's price", priced.Cost, want)
	}
	if rules.Connector != "" || rules.Requests != 1 || rules.Cost != 0 {
		t.Errorf("rules line %+v: want one request, no price", rules)
	}
	if st.Total.Requests != 3 || st.Total.Egress != priced.Egress+rules.Egress || math.Abs(st.Total.Cost-priced.Cost) > 1e-9 {
		t.Errorf("total %+v, lines %+v", st.Total, st.Lines)
	}
	for _, body := range []string{mustAdmin(t, g, approverAcme, "/v1/tenants/beta/statement?period=month")} {
		if !strings.Contains(body, `"tenant": "beta"`) || strings.Contains(body, "priced") {
			t.Errorf("beta's statement, read by an approver of acme: %s", body)
		}
	}
	if body := mustAdmin(t, g, viewerTok, "/v1/tenants/acme/statement?period=hour&at=2020-01-01T10:00:00Z"); !strings.Contains(body, `"lines": []`) || !strings.Contains(body, `"start": "2020-01-01T10:00:00Z"`) {
		t.Errorf("an hour without traffic: %s", body)
	}

	// Budgets, as the admin usage and the tenant itself see them.
	var usage struct {
		Budgets []budgetView `json:"budgets"`
	}
	if err := json.Unmarshal([]byte(mustAdmin(t, g, viewerTok, "/v1/tenants/acme/usage")), &usage); err != nil {
		t.Fatal(err)
	}
	checkBudgets := func(where string, got []budgetView) {
		t.Helper()
		if len(got) != 2 || got[0].Name != "daily" || got[1].Name != "uploads" {
			t.Fatalf("%s: budgets %+v, want daily and uploads in file order", where, got)
		}
		daily, uploads := got[0], got[1]
		if daily.Used.Requests != 2 || daily.Limit.Requests != 100 || daily.Remaining.Requests == nil || *daily.Remaining.Requests != 98 ||
			daily.Remaining.Cost == nil || math.Abs(*daily.Remaining.Cost-(10-daily.Used.Cost)) > 1e-9 || daily.Remaining.Egress != nil || daily.Exhausted {
			t.Errorf("%s: daily %+v remaining %+v", where, daily.Status, daily.Remaining)
		}
		if uploads.Used.Egress < int64(len(upload)) || uploads.Remaining.Egress == nil || *uploads.Remaining.Egress != 1<<20-uploads.Used.Egress ||
			uploads.Remaining.Requests != nil || uploads.Reset.Sub(daily.Reset) > 0 {
			t.Errorf("%s: uploads %+v remaining %+v", where, uploads.Status, uploads.Remaining)
		}
	}
	checkBudgets("admin usage", usage.Budgets)
	resp = g.request(t, http.MethodGet, pathAcme.auth(), "http://egressgw.internal/v1/policy")
	body := pathBody(t, resp)
	var self struct {
		Budgets []budgetView `json:"budgets"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &self) != nil {
		t.Fatalf("self-service policy: %d %s", resp.StatusCode, body)
	}
	checkBudgets("tenant's own policy", self.Budgets)
	if strings.Contains(body, "beta-secret-budget") {
		t.Errorf("acme sees beta's budget: %s", body)
	}
}

// mustAdmin fetches an admin path with token and fails unless it is a 200.
func mustAdmin(t *testing.T, g *pathGateway, token, path string) string {
	t.Helper()
	status, body := g.adminAs(t, token, path)
	if status != http.StatusOK {
		t.Fatalf("GET admin %s: %d %s", path, status, body)
	}
	return body
}
