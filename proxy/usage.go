package proxy

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/egressgw/egressgw/quota"
)

// tenantUsage is a tenant's bytes this minute, each way, for
// /v1/tenants/ID/usage: counted for every tenant, with or without a
// bandwidth limit, and without a shaper for those without one (their
// bytes take no shaper's path). One value per tenant id, handed from
// generation to generation (newTenantStates), so a reload does not reset
// it. Exchanges add to it as they account their bytes: at their end, and
// every usageAccountInterval while a tunnel or stream is open.
type tenantUsage struct {
	egress, ingress quota.MinuteBytes
}

// usageAccountInterval is how often the bytes of open tunnels and
// streams are added to their tenant's usage: how late, at most, the
// usage endpoint shows them, and how far a minute's count can be off at
// its turn.
const usageAccountInterval = time.Second

// accountUsage adds the bytes ex moved since it last did to its tenant's
// usage, as moved at now. Any goroutine may call it at any time: each
// byte is added once. A request inside an inspected tunnel adds nothing:
// the tunnel's own exchange counts the bytes that crossed it.
func (ex *exchange) accountUsage(now time.Time) {
	if ex.ts == nil || ex.inner {
		return
	}
	ex.ts.usage.egress.Add(now, unaccounted(&ex.bytesUp, &ex.usageUp))
	ex.ts.usage.ingress.Add(now, unaccounted(&ex.bytesDown, &ex.usageDown))
}

// unaccounted moves accounted up to total and returns by how much; the
// totals only grow, so concurrent callers split the difference, never
// count it twice.
func unaccounted(total, accounted *atomic.Int64) int64 {
	for {
		done, now := accounted.Load(), total.Load()
		if now <= done {
			return 0
		}
		if accounted.CompareAndSwap(done, now) {
			return now - done
		}
	}
}

// accountOpenExchanges adds the bytes of open tunnels and streams to
// their tenants' usage every usageAccountInterval until ctx ends: their
// audit lines, which account the rest, come only when they end.
func (g *Gateway) accountOpenExchanges(ctx context.Context) {
	tick := time.NewTicker(usageAccountInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := g.now()
		for _, t := range g.tunnels.snapshot() {
			if t.ex != nil {
				t.ex.accountUsage(now)
				if t.ex.chargeBudget() {
					t.budgetSpent()
				}
			}
		}
	}
}
