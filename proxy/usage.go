package proxy

import (
	"context"
	"sync/atomic"
	"time"
)

// tenantUsage is a tenant's bytes this minute, each way, for
// /v1/tenants/ID/usage: counted for every tenant, with or without a
// bandwidth limit, and without a shaper for those without one (their
// bytes take no shaper's path). One value per tenant id, handed from
// generation to generation (newTenantStates), so a reload does not reset
// it. Exchanges add to it as they account their bytes: at their end, and
// every usageAccountInterval while a tunnel or stream is open.
type tenantUsage struct {
	egress, ingress minuteBytes
}

// usageAccountInterval is how often the bytes of open tunnels and
// streams are added to their tenant's usage: how late, at most, the
// usage endpoint shows them, and how far a minute's count can be off at
// its turn.
const usageAccountInterval = time.Second

// minuteBytes is the bytes of the current minute and which minute that
// is, in one word, so that counting takes no lock: the Unix minute modulo
// 2^20 above 44 bits of bytes (16 TiB, far above what a minute moves).
type minuteBytes struct{ v atomic.Uint64 }

const minuteBytesBits = 44

func unixMinute(t time.Time) uint64 { return uint64(t.Unix()/60) % (1 << 20) }

// add counts n bytes moved at now.
func (m *minuteBytes) add(now time.Time, n int64) {
	if n <= 0 {
		return
	}
	current := unixMinute(now)
	for {
		old := m.v.Load()
		bytes := old & (1<<minuteBytesBits - 1)
		if old>>minuteBytesBits != current {
			bytes = 0 // a new minute starts from nothing
		}
		if m.v.CompareAndSwap(old, current<<minuteBytesBits|(bytes+uint64(n))&(1<<minuteBytesBits-1)) {
			return
		}
	}
}

// thisMinute returns the bytes counted in the minute of now.
func (m *minuteBytes) thisMinute(now time.Time) int64 {
	v := m.v.Load()
	if v>>minuteBytesBits != unixMinute(now) {
		return 0
	}
	return int64(v & (1<<minuteBytesBits - 1))
}

// accountUsage adds the bytes ex moved since it last did to its tenant's
// usage, as moved at now. Any goroutine may call it at any time: each
// byte is added once. A request inside an inspected tunnel adds nothing:
// the tunnel's own exchange counts the bytes that crossed it.
func (ex *exchange) accountUsage(now time.Time) {
	if ex.ts == nil || ex.inner {
		return
	}
	ex.ts.usage.egress.add(now, unaccounted(&ex.bytesUp, &ex.usageUp))
	ex.ts.usage.ingress.add(now, unaccounted(&ex.bytesDown, &ex.usageDown))
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
			}
		}
	}
}
