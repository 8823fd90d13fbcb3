package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

var budgeted = credentials{tenant: "budgeted", token: "budgeted-token-4f7a0c2e93"}

// curlThrough fetches target through g as c with curl and returns the
// status and the X-Egressgw-Budget header lines.
func curlThrough(t *testing.T, g *gateway, c credentials, target string) (status int, budgetHeaders []string) {
	t.Helper()
	curl := lookPathOrSkip(t, "curl")
	res := run(t, clientEnv(), "", curl, "-sS", "--max-time", "20", "-D", "-", "-o", "/dev/null",
		"-x", "http://"+c.tenant+":"+c.token+"@"+g.proxyAddr, target)
	if res.exitCode != 0 {
		t.Fatalf("curl exit %d:\n%s", res.exitCode, res.output())
	}
	for _, line := range strings.Split(res.stdout, "\r\n") {
		if v, ok := strings.CutPrefix(line, "HTTP/1.1 "); ok {
			fmt.Sscanf(v, "%d", &status)
		}
		if v, ok := strings.CutPrefix(strings.ToLower(line), "x-egressgw-budget: "); ok {
			budgetHeaders = append(budgetHeaders, v)
		}
	}
	return status, budgetHeaders
}

// budgetLimit is egressgw_budget_limit for a budget of budgeted.
func budgetLimit(t *testing.T, g *gateway, budget, kind string) float64 {
	t.Helper()
	samples, err := g.metrics()
	if err != nil {
		t.Fatal(err)
	}
	v, _ := sumMetric(samples, "egressgw_budget_limit", map[string]string{"tenant": budgeted.tenant, "budget": budget, "kind": kind})
	return v
}

// A request budget lets exactly its limit through, a reload that raises
// it keeps what was counted, and a restart on the file state store never
// resets it.
func TestBudgetRequestsExactAcrossReloadAndRestart(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	tenant := func(limit int) string {
		return tenantYAML(budgeted, allowRule("api", []string{hostAPI}, origin.port)+
			fmt.Sprintf("budgets:\n  - { name: daily, period: day, requests: %d }\n", limit))
	}
	dir := writeConfig(t, configFiles{"gateway.yaml": gatewayYAML(""), "tenants/budgeted.yaml": tenant(5)})
	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")
	target := origin.url(hostAPI, "/budgeted")

	for i := range 5 {
		status, headers := curlThrough(t, g, budgeted, target)
		want := fmt.Sprintf("daily; remaining-requests=%d; reset=", 4-i)
		if status != http.StatusOK || len(headers) != 1 || !strings.HasPrefix(headers[0], want) {
			t.Fatalf("request %d: status %d, budget header %q; want 200 and %q...", i+1, status, headers, want)
		}
	}
	e := g.expectRefused(t, http.MethodGet, budgeted.header(), target, http.StatusTooManyRequests, "budget_exhausted", origin)
	if !strings.Contains(e.Message, `"daily"`) {
		t.Errorf("message %q does not name the budget", e.Message)
	}
	if status, _ := curlThrough(t, g, budgeted, target); status != http.StatusTooManyRequests {
		t.Fatalf("curl after the budget was spent: status %d, want 429", status)
	}

	// A reload to 7 keeps the 5 counted: two more pass.
	if err := os.WriteFile(filepath.Join(dir, "tenants", "budgeted.yaml"), []byte(tenant(7)), 0o644); err != nil {
		t.Fatal(err)
	}
	g.signal(t, syscall.SIGHUP)
	eventually(t, 10*time.Second, func() error {
		if v := budgetLimit(t, g, "daily", "requests"); v != 7 {
			return fmt.Errorf("budget limit %v after the reload, want 7", v)
		}
		return nil
	})
	for i := range 2 {
		if status, _ := curlThrough(t, g, budgeted, target); status != http.StatusOK {
			t.Fatalf("request %d after the reload: status %d, want 200", i+1, status)
		}
	}
	g.expectRefused(t, http.MethodGet, budgeted.header(), target, http.StatusTooManyRequests, "budget_exhausted", origin)
	if code := g.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// A restart on the same state directory: still spent.
	again := newGateway(t)
	again.start(t, "--config", dir, "--log-format", "json")
	again.expectRefused(t, http.MethodGet, budgeted.header(), target, http.StatusTooManyRequests, "budget_exhausted", origin)
	if got := len(origin.requestsTo("/budgeted")); got != 7 {
		t.Errorf("upstream served %d requests; want exactly the 7 the budget held", got)
	}
}

// An opaque tunnel that sends more than its egress budget is closed after
// the step that reached it; the upstream gets at most one step more.
func TestBudgetEgressCutsOpaqueTunnel(t *testing.T) {
	t.Parallel()
	var received atomic.Int64
	sink := startTCPServer(t, "127.0.0.1", func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		received.Add(n)
	})
	const limit = 512 << 10
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"tenants/budgeted.yaml": tenantYAML(budgeted, allowRule("sink", []string{hostAPI}, sink.port)+
			fmt.Sprintf("budgets:\n  - { name: exfil, period: month, egress: %d }\n", limit)),
	})
	tunnel := g.tunnel(t, budgeted, sink.authority(hostAPI))
	chunk := make([]byte, 32<<10)
	for sent := 0; sent < 8*limit; sent += len(chunk) {
		if _, err := tunnel.Write(chunk); err != nil {
			break
		}
	}
	_ = tunnel.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, tunnel); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the tunnel was not closed: %v", err)
	}
	rec := g.waitAudit(t, auditWith("tenant", budgeted.tenant, "scheme", "tunnel", "code", "revoked", "budget", "exfil"))
	if up := auditNumber(rec, "bytes_up"); up < limit || up > limit+32<<10 {
		t.Errorf("audit bytes_up %v; want the limit %d and at most one 32 KiB step more", up, limit)
	}
	eventually(t, 10*time.Second, func() error {
		if got := received.Load(); got < limit || got > limit+32<<10 {
			return fmt.Errorf("upstream received %d bytes; want %d and at most one 32 KiB step more", got, limit)
		}
		return nil
	})
	g.expectRefusedCONNECT(t, budgeted.header(), sink.authority(hostAPI), http.StatusTooManyRequests, "budget_exhausted", sink)
}

// A cost budget spends at the connector's price.
func TestBudgetCostAtConnectorPrice(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML("budgets: { currency: EUR }\n"),
		"connectors/priced.yaml": yamlf(`
			name: priced
			version: 2
			hosts: [%q]
			ports: [%d]
			price: { per_request: 0.25 }
		`, hostAPI, origin.port),
		"tenants/budgeted.yaml": tenantYAML(budgeted, "connectors: [priced]\n"+
			"budgets:\n  - { name: spend, period: day, cost: 1.00, connectors: [priced] }\n"),
	})
	target := origin.url(hostAPI, "/priced")
	for i := range 4 {
		status, headers := curlThrough(t, g, budgeted, target)
		want := fmt.Sprintf("spend; remaining-cost=%.6f; reset=", 0.75-0.25*float64(i))
		if status != http.StatusOK || len(headers) != 1 || !strings.HasPrefix(headers[0], want) {
			t.Fatalf("request %d: status %d, header %q; want 200 and %q...", i+1, status, headers, want)
		}
	}
	g.expectRefused(t, http.MethodGet, budgeted.header(), target, http.StatusTooManyRequests, "budget_exhausted", origin)
	rec := g.waitAudit(t, auditWith("tenant", budgeted.tenant, "code", "ok"))
	if rec["connector"] != "priced" || auditNumber(rec, "connector_version") != 2 {
		t.Errorf("audit line names connector %v version %v; want priced 2", rec["connector"], rec["connector_version"])
	}
}

// Two replicas on one Redis spend one budget.
func TestBudgetReplicasShareThroughRedis(t *testing.T) {
	t.Parallel()
	rs := startRedis(t)
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	prefix := fmt.Sprintf("e2e:%s:%d:", t.Name(), time.Now().UnixNano())
	files := configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			quota:
			  backend: redis
			  redis: { addr: %q, prefix: %q }
		`, rs.addr, prefix)),
		"tenants/budgeted.yaml": tenantYAML(budgeted, allowRule("api", []string{hostAPI}, origin.port)+
			"budgets:\n  - { name: shared, period: day, requests: 10 }\n"),
	}
	a, b := startGateway(t, files), startGateway(t, files)
	target := origin.url(hostAPI, "/shared")
	for range 6 {
		a.expectAllowedGET(t, budgeted, target)
	}
	// a's counts reach Redis within its flush interval.
	client := redis.NewClient(&redis.Options{Addr: rs.addr})
	defer client.Close()
	dayStart := time.Now().UTC().Truncate(24 * time.Hour)
	key := fmt.Sprintf("%sbudget:budgets:%s:day:%d", prefix, budgeted.tenant, dayStart.Unix())
	eventually(t, 10*time.Second, func() error {
		if v, err := client.HGet(context.Background(), key, "shared:r").Int(); err != nil || v != 6 {
			return fmt.Errorf("redis %s shared:r = %d (%v), want 6", key, v, err)
		}
		return nil
	})
	for range 4 {
		b.expectAllowedGET(t, budgeted, target)
	}
	b.expectRefused(t, http.MethodGet, budgeted.header(), target, http.StatusTooManyRequests, "budget_exhausted", origin)
	// a sees b's four at its next flush: its gauge says so, and it refuses.
	eventually(t, 10*time.Second, func() error {
		samples, err := a.metrics()
		if err != nil {
			return err
		}
		if v, _ := sumMetric(samples, "egressgw_budget_used", map[string]string{"tenant": budgeted.tenant, "budget": "shared", "kind": "requests"}); v != 10 {
			return fmt.Errorf("replica a shows %v of the shared budget used, want 10", v)
		}
		return nil
	})
	a.expectRefused(t, http.MethodGet, budgeted.header(), target, http.StatusTooManyRequests, "budget_exhausted", origin)
	if got := len(origin.requestsTo("/shared")); got != 10 {
		t.Errorf("upstream served %d requests under a budget of 10 spent in turn by two replicas", got)
	}
}
