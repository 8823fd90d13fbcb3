package proxy

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/egressgw/egressgw/budget"
)

// threeBudgets are the budgets the benchmarks put on a tenant: one per
// period, each limiting something, none binding.
const threeBudgets = "budgets:\n" +
	"  - { name: hourly, period: hour, requests: 1000000000000, egress: 1000GiB }\n" +
	"  - { name: daily, period: day, ingress: 1000GiB, cost: 1000000, warn_at: 0.9 }\n" +
	"  - { name: monthly, period: month, requests: 1000000000000 }\n"

// benchMeter is a meter of tenant acme under n of the benchmarks' budgets.
func benchMeter(tb testing.TB, n int) *budget.Meter {
	l := budget.New(budget.Options{FlushEvery: -1})
	tb.Cleanup(func() { _ = l.Close() })
	all := []budget.Budget{
		{Name: "hourly", Period: budget.Hour, Limit: budget.Usage{Requests: 1e12, Egress: 1 << 50}},
		{Name: "daily", Period: budget.Day, Limit: budget.Usage{Ingress: 1 << 50, Cost: 1e6}, WarnAt: 0.9},
		{Name: "monthly", Period: budget.Month, Limit: budget.Usage{Requests: 1e12}},
	}
	l.SetBudgets(map[string][]budget.Budget{"acme": all[:n]})
	return l.Meter(budget.Source{Tenant: "acme", Connector: "c", Version: 1, Price: budget.Price{PerGiBIngress: 0.01}})
}

// startBudgetRelay is startRelay for a tunnel of an exchange counted on m:
// with budgets, charged per step.
func startBudgetRelay(tb testing.TB, m *budget.Meter, wrap func(net.Conn) net.Conn) *relayUnderTest {
	clientFar, clientNear := tcpPair(tb)
	upstreamNear, upstreamFar := tcpPair(tb)
	r := &relayUnderTest{client: clientFar, upstream: upstreamFar, done: make(chan struct{})}
	ex := &exchange{gw: &Gateway{}}
	ex.budget.meter = m
	tun := &tunnel{ex: ex, client: wrap(clientNear), upstream: wrap(upstreamNear)}
	tun.lastActivity.touch(time.Now())
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	client := tun.meter(ctx, tun.client, true, nil, &ex.bytesDown, time.Minute)
	upstream := tun.meter(ctx, tun.upstream, false, nil, &ex.bytesUp, time.Minute)
	go func() {
		defer close(r.done)
		relay(client, upstream, true, tun.close, nil, nil)
	}()
	return r
}

// BenchmarkTunnelRelayBudgets moves bytes upstream to client through a
// tunnel without budgets (splice where it can, and the copy) and with
// three (the copy, charged per 32 KiB step); compare within one run.
func BenchmarkTunnelRelayBudgets(b *testing.B) {
	chunk := make([]byte, 256<<10)
	for _, c := range []struct {
		name    string
		budgets int
		wrap    func(net.Conn) net.Conn
	}{
		{"splice no-budgets", 0, func(c net.Conn) net.Conn { return wrapped{c} }},
		{"copy no-budgets", 0, func(c net.Conn) net.Conn { return opaque{c} }},
		{"three-budgets", 3, func(c net.Conn) net.Conn { return wrapped{c} }},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := startBudgetRelay(b, benchMeter(b, c.budgets), c.wrap)
			b.SetBytes(int64(len(chunk)))
			go func() {
				for range b.N {
					if _, err := r.upstream.Write(chunk); err != nil {
						return
					}
				}
				_ = r.upstream.CloseWrite()
			}()
			b.ResetTimer()
			if n, err := io.Copy(io.Discard, r.client); err != nil || n != int64(b.N*len(chunk)) {
				b.Fatalf("received %d, %v; want %d", n, err, b.N*len(chunk))
			}
		})
	}
}
