package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressgw/egressgw/budget"
)

// countingTCPServer counts every byte its connections receive.
type countingTCPServer struct {
	*pathTCPServer
	received atomic.Int64
}

func startCountingTCPServer(t *testing.T) *countingTCPServer {
	s := &countingTCPServer{}
	s.pathTCPServer = startPathTCPServer(t, "127.0.0.1", func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			s.received.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	return s
}

func TestPathBudgetRequestsExhaust(t *testing.T) {
	t.Parallel()
	spender := pathTenant{"spender", "spender-token-5e2b8c0a91"}
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	echoServer := startPathTCPServer(t, "127.0.0.1", echoConn)
	g := startPathGateway(t, "", map[string]string{
		"tenants/spender.yaml": spender.yaml(pathRule("api", []string{zoneAPI}, origin.port, echoServer.port) +
			"budgets:\n  - { name: daily, period: day, requests: 3 }\n  - { name: hourly, period: hour, requests: 100, egress: 1MiB }\n"),
	})
	for i := range 2 {
		resp := g.request(t, http.MethodGet, spender.auth(), origin.url(zoneAPI, "/spend"))
		body := pathBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d, body %q", i+1, resp.StatusCode, body)
		}
		lines := resp.Header.Values("X-Egressgw-Budget")
		if len(lines) != 2 {
			t.Fatalf("X-Egressgw-Budget %q: want one line per budget", lines)
		}
		wantDaily := fmt.Sprintf("daily; remaining-requests=%d; reset=", 2-i)
		if !strings.HasPrefix(lines[0], wantDaily) {
			t.Errorf("budget header %q, want it to start %q", lines[0], wantDaily)
		}
		if !strings.HasPrefix(lines[1], fmt.Sprintf("hourly; remaining-requests=%d; remaining-egress=", 99-i)) {
			t.Errorf("budget header %q", lines[1])
		}
		reset, err := strconv.Atoi(lines[0][strings.LastIndex(lines[0], "=")+1:])
		if err != nil || reset < 1 || reset > 24*3600 {
			t.Errorf("reset %q: want seconds to the end of the UTC day", lines[0])
		}
	}
	// The third is the last the daily budget holds: a tunnel's 200 carries the header too.
	resp, tunnel := g.connect(t, spender.auth(), echoServer.authority(zoneAPI))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: status %d", resp.StatusCode)
	}
	if h := resp.Header.Values("X-Egressgw-Budget"); len(h) != 2 || !strings.HasPrefix(h[0], "daily; remaining-requests=0; reset=") {
		t.Errorf("tunnel 200 X-Egressgw-Budget %q", h)
	}
	pingThroughTunnel(t, tunnel)
	tunnel.Close()

	e := g.expectRefused(t, http.MethodGet, spender.auth(), origin.url(zoneAPI, "/spent"), http.StatusTooManyRequests, "budget_exhausted", origin)
	if !strings.Contains(e.Message, `"daily"`) {
		t.Errorf("message %q does not name the budget", e.Message)
	}
	g.expectRefusedCONNECT(t, spender.auth(), echoServer.authority(zoneAPI), http.StatusTooManyRequests, "budget_exhausted", echoServer)
	resp = g.request(t, http.MethodGet, spender.auth(), origin.url(zoneAPI, "/spent"))
	pathBody(t, resp)
	retryAfter, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	_, end := budget.Day.Bounds(time.Now())
	if err != nil || retryAfter < 1 || retryAfter > int(time.Until(end)/time.Second)+2 {
		t.Errorf("Retry-After %q: want the seconds to the end of the UTC day", resp.Header.Get("Retry-After"))
	}
	g.audit.wait(t, "code", "budget_exhausted", "budget", "daily", "status", 429)
	g.assertQuotaRejections(t, spender.id, "budget", 3)
	if got, _ := g.metric(t, "egressgw_budget_used", map[string]string{"tenant": spender.id, "budget": "daily", "kind": "requests"}); got != 3 {
		t.Errorf("egressgw_budget_used{daily,requests} = %v, want 3", got)
	}
	if got, _ := g.metric(t, "egressgw_budget_limit", map[string]string{"tenant": spender.id, "budget": "hourly", "kind": "egress"}); got != 1<<20 {
		t.Errorf("egressgw_budget_limit{hourly,egress} = %v, want %d", got, 1<<20)
	}
	if _, found := g.metric(t, "egressgw_budget_limit", map[string]string{"tenant": spender.id, "budget": "daily", "kind": "egress"}); found {
		t.Error("a limit the budget does not set is exported")
	}
}

func TestPathBudgetEgressCutsTunnel(t *testing.T) {
	t.Parallel()
	leaky := pathTenant{"leaky", "leaky-token-8d1e4a7f20"}
	sink := startCountingTCPServer(t)
	const limit = 256 << 10
	g := startPathGateway(t, "", map[string]string{
		"tenants/leaky.yaml": leaky.yaml(pathRule("sink", []string{zoneAPI}, sink.port) +
			fmt.Sprintf("budgets:\n  - { name: exfil, period: month, egress: %d, warn_at: 0.5 }\n", limit)),
	})
	tunnel := g.tunnel(t, leaky, sink.authority(zoneAPI))
	chunk := make([]byte, 16<<10)
	var sent int64
	var werr error
	for sent < 4*limit {
		var n int
		n, werr = tunnel.Write(chunk)
		sent += int64(n)
		if werr != nil {
			break
		}
	}
	// The gateway closes the tunnel: the client's reads end.
	_ = tunnel.SetReadDeadline(time.Now().Add(pathGuard))
	if _, err := io.Copy(io.Discard, tunnel); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("tunnel not closed: %v", err)
	}
	rec := g.audit.wait(t, "tenant", leaky.id, "scheme", "tunnel", "code", "revoked", "budget", "exfil")
	eventually(t, func() error {
		if got := sink.received.Load(); got < limit || got > limit+32<<10 {
			return fmt.Errorf("upstream received %d bytes; want the limit %d and at most one 32 KiB step more", got, limit)
		}
		return nil
	})
	if !strings.Contains(fmt.Sprint(rec["reason"]), "exfil") {
		t.Errorf("reason %q does not name the budget", rec["reason"])
	}
	g.audit.wait(t, "kind", "budget_warning", "tenant", leaky.id, "budget", "exfil", "budget_kind", "egress")
	if got, _ := g.metric(t, "egressgw_budget_warnings_total", map[string]string{"tenant": leaky.id, "budget": "exfil"}); got != 1 {
		t.Errorf("egressgw_budget_warnings_total = %v, want 1", got)
	}
	// A spent byte budget refuses the next tunnel outright.
	g.expectRefusedCONNECT(t, leaky.auth(), sink.authority(zoneAPI), http.StatusTooManyRequests, "budget_exhausted", sink)
}

// unreadableCounters is a budget backend that can neither read nor write.
type unreadableCounters struct{ *budget.Memory }

func (unreadableCounters) Add(context.Context, []budget.Delta) error {
	return errors.New("connection refused")
}

func (unreadableCounters) Counts(context.Context, []budget.Key) ([]budget.Counts, error) {
	return nil, errors.New("connection refused")
}

func TestPathBudgetCountersUnavailableFailsClosed(t *testing.T) {
	t.Parallel()
	spender := pathTenant{"spender", "spender-token-5e2b8c0a91"}
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	g := newPathGateway(t)
	g.ledger = budget.New(budget.Options{Backend: unreadableCounters{budget.NewMemory(nil)}, FlushEvery: -1})
	t.Cleanup(func() { _ = g.ledger.Close() })
	g.serve(t, "", map[string]string{
		"tenants/spender.yaml": spender.yaml(pathRule("api", []string{zoneAPI}, origin.port) +
			"budgets:\n  - { name: daily, period: day, requests: 3 }\n"),
		"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI}, origin.port)),
	})
	g.expectRefused(t, http.MethodGet, spender.auth(), origin.url(zoneAPI, "/x"), http.StatusServiceUnavailable, "quota_unavailable", origin)
	g.expectRefusedCONNECT(t, spender.auth(), origin.authority(zoneAPI), http.StatusServiceUnavailable, "quota_unavailable", origin)
	// A tenant without budgets does not depend on the counters.
	g.expectAllowedGET(t, pathAcme, origin.url(zoneAPI, "/x"))
}

// The ledger's statement is the sum of the audit lines, per connector
// version, at that version's price: cost is reproducible from the log.
func TestPathBudgetStatementEqualsAuditSums(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	echoServer := startPathTCPServer(t, "127.0.0.1", echoConn)
	price := budget.Price{PerRequest: 0.002, PerGiBEgress: 0.09, PerGiBIngress: 0.01}
	g := startPathGateway(t, "", map[string]string{
		"connectors/priced.yaml": fmt.Sprintf("name: priced\nversion: 3\nhosts: [%q]\nports: [%d]\nprice: { per_request: %v, per_gib_egress: %v, per_gib_ingress: %v }\n",
			zoneV1, origin.port, price.PerRequest, price.PerGiBEgress, price.PerGiBIngress),
		"tenants/acme.yaml": pathAcme.yaml("connectors: [priced]\n" + pathRule("api", []string{zoneAPI}, origin.port, echoServer.port) +
			"budgets:\n  - { name: daily, period: day, requests: 1000 }\n"),
	})
	client := g.client(t, pathAcme, nil)
	for i := range 5 {
		for _, target := range []string{origin.url(zoneV1, "/priced"), origin.url(zoneAPI, "/rules")} {
			resp, err := client.Post(target, "text/plain", strings.NewReader(strings.Repeat("x", 1000*(i+1))))
			if err != nil {
				t.Fatal(err)
			}
			pathBody(t, resp)
		}
	}
	tunnel := g.tunnel(t, pathAcme, echoServer.authority(zoneAPI))
	pingThroughTunnel(t, tunnel)
	tunnel.Close()
	eventually(t, func() error {
		if n := len(g.audit.records()); n < 11 {
			return fmt.Errorf("%d audit lines, want 11", n)
		}
		return nil
	})

	type key struct {
		connector string
		version   int
	}
	sums := map[key]*budget.Usage{}
	for _, rec := range g.audit.records() {
		if rec["tenant"] != pathAcme.id || rec["decision"] != "allow" {
			continue
		}
		k := key{}
		if c, ok := rec["connector"].(string); ok {
			k = key{c, int(rec["connector_version"].(float64))}
		}
		if sums[k] == nil {
			sums[k] = &budget.Usage{}
		}
		sums[k].Requests++
		sums[k].Egress += int64(rec["bytes_up"].(float64))
		sums[k].Ingress += int64(rec["bytes_down"].(float64))
	}
	st, err := g.Gateway.ledger.Statement(context.Background(), pathAcme.id, budget.Day, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Lines) != len(sums) {
		t.Fatalf("statement has %d lines, the audit log %d connector versions: %+v", len(st.Lines), len(sums), st.Lines)
	}
	for _, line := range st.Lines {
		want := sums[key{line.Connector, line.Version}]
		if want == nil {
			t.Fatalf("statement line %+v has no audit lines", line)
		}
		p := budget.Price{}
		if line.Connector == "priced" {
			p = price
		}
		want.Cost = p.Cost(*want)
		if line.Requests != want.Requests || line.Egress != want.Egress || line.Ingress != want.Ingress || math.Abs(line.Cost-want.Cost) > 1e-12 {
			t.Errorf("statement line %s@%d = %+v; audit sums %+v", line.Connector, line.Version, line.Usage, *want)
		}
	}
	if st.Lines[0].Connector != "priced" || st.Lines[0].Version != 3 || st.Lines[0].Cost == 0 {
		t.Errorf("first line %+v: want priced@3 with a cost", st.Lines[0])
	}
}

// With quota.redis.on_error: allow, unreadable budget counters let
// requests through unchecked, as the quota backend does, and say so.
func TestPathBudgetCountersUnavailableFailsOpenWhenAllowed(t *testing.T) {
	t.Parallel()
	spender := pathTenant{"spender", "spender-token-5e2b8c0a91"}
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	g := newPathGateway(t)
	g.ledger = budget.New(budget.Options{Backend: unreadableCounters{budget.NewMemory(nil)}, FlushEvery: -1})
	t.Cleanup(func() { _ = g.ledger.Close() })
	g.serve(t, "quota: { redis: { on_error: allow } }\n", map[string]string{
		"tenants/spender.yaml": spender.yaml(pathRule("api", []string{zoneAPI}, origin.port) +
			"budgets:\n  - { name: daily, period: day, requests: 3 }\n"),
	})
	g.expectAllowedGET(t, spender, origin.url(zoneAPI, "/x"))
	if got, _ := g.metric(t, "egressgw_quota_fail_open_total", map[string]string{"tenant": spender.id}); got != 1 {
		t.Errorf("egressgw_quota_fail_open_total = %v, want 1", got)
	}
}

// An inspected tunnel is charged as its bytes cross: a response that
// spends the ingress budget has its tunnel closed mid-body.
func TestPathBudgetIngressCutsInspectedTunnel(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 4<<20)
	origin := startPathUpstream(t, "127.0.0.1", true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, big)
	}))
	const limit = 512 << 10
	g := startPathGateway(t, pathInspecting, pathInspectingFiles(t, map[string]string{
		"connectors/api.yaml": fmt.Sprintf("name: api\ninspect: true\nhosts: [%q]\nports: [%d]\n", zoneAPI, origin.port),
		"tenants/acme.yaml": pathAcme.yaml("connectors: [api]\n" +
			fmt.Sprintf("budgets:\n  - { name: downloads, period: day, ingress: %d, connectors: [api] }\n", limit)),
	}))
	tunnel := g.tunnel(t, pathAcme, origin.authority(zoneAPI))
	conn := tls.Client(tunnel, &tls.Config{ServerName: zoneAPI, RootCAs: zoneRoots(t)})
	_ = conn.SetDeadline(time.Now().Add(pathGuard))
	fmt.Fprintf(conn, "GET /big HTTP/1.1\r\nHost: %s\r\n\r\n", origin.authority(zoneAPI))
	got, _ := io.Copy(io.Discard, conn)
	if got >= int64(len(big)) || got < limit-64<<10 {
		t.Fatalf("client read %d bytes of a %d-byte body under an ingress budget of %d; want it cut near the limit", got, len(big), limit)
	}
	rec := g.audit.wait(t, "scheme", "tunnel", "code", "revoked", "budget", "downloads")
	if down := rec["bytes_down"].(float64); down < limit || down > limit+64<<10 {
		t.Errorf("tunnel bytes_down %v; want the limit %d and at most a step or two more", down, limit)
	}
	g.expectRefusedCONNECT(t, pathAcme.auth(), origin.authority(zoneAPI), http.StatusTooManyRequests, "budget_exhausted", origin)
}

// Every budget that applies gets its line, however many the tenant has:
// past the exchange's own room for them, the lines are allocated.
func TestPathBudgetHeaderForEveryBudget(t *testing.T) {
	t.Parallel()
	spender := pathTenant{"many", "many-budgets-token-7f3a1c"}
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	var budgets strings.Builder
	budgets.WriteString("budgets:\n")
	const count = 7
	for i := range count {
		fmt.Fprintf(&budgets, "  - { name: b%d, period: day, requests: %d }\n", i, 100+i)
	}
	g := startPathGateway(t, "", map[string]string{
		"tenants/many.yaml": spender.yaml(pathRule("api", []string{zoneAPI}, origin.port) + budgets.String()),
	})
	resp := g.request(t, http.MethodGet, spender.auth(), origin.url(zoneAPI, "/spend"))
	if body := pathBody(t, resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %q", resp.StatusCode, body)
	}
	lines := resp.Header.Values("X-Egressgw-Budget")
	if len(lines) != count {
		t.Fatalf("X-Egressgw-Budget %q: want %d lines, one per budget", lines, count)
	}
	for i, line := range lines {
		if want := fmt.Sprintf("b%d; remaining-requests=%d; reset=", i, 100+i-1); !strings.HasPrefix(line, want) {
			t.Errorf("line %d %q, want it to start %q", i, line, want)
		}
	}
}
