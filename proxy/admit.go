package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// admit is the quota step of the request path: a token from the tenant's
// and the connector's buckets, then, for requests and tunnels that hold a
// connection open (not requests inside an inspected tunnel, which its
// tunnel already holds), a concurrency slot.
func (ex *exchange) admit(ctx context.Context, holdsSlot bool) outcome {
	tenant := ex.tenant
	limiter := ex.gw.quota
	// Keys and limits were compiled at load (docs/design.md).
	connector, connectorBucket := ex.connector, ex.connectorBucket

	var res quota.Result
	var err error
	switch {
	case !connectorBucket.Limit.Unlimited():
		res, err = limiter.AllowBoth(ctx, quota.Bucket{Key: tenant.QuotaKey, Limit: tenant.Quota.Rate}, connectorBucket)
	case !tenant.Quota.Rate.Unlimited():
		res, err = limiter.Allow(ctx, tenant.QuotaKey, tenant.Quota.Rate)
	}
	if o := ex.quotaOutcome(res.FailedOpen, err); !o.ok() {
		return o
	}
	if res.Limit > 0 && !res.Allowed {
		retryAfter := res.RetryAfterSeconds()
		which := "tenant"
		if res.Key != tenant.QuotaKey {
			which = "connector " + connector.Name
		}
		ex.gw.metrics.quotaRejection(tenant.ID, "rate")
		o := refused(policy.CodeRateLimited, fmt.Sprintf(
			"tenant %q is over its request rate (%s limit of %d burst); retry after %d s", tenant.ID, which, res.Limit, retryAfter))
		o.retryAfter = retryAfter
		return o
	}
	ex.rate = res

	if holdsSlot && tenant.Quota.MaxConcurrent > 0 {
		slot, err := limiter.Acquire(ctx, tenant.QuotaKey, tenant.Quota.MaxConcurrent)
		ex.slot = slot // released by finish, on every path
		// A request that passed unchecked is counted once, however many
		// checks did.
		if o := ex.quotaOutcome(slot.FailedOpen && !res.FailedOpen, err); !o.ok() {
			return o
		}
		if !slot.Acquired {
			ex.gw.metrics.quotaRejection(tenant.ID, "concurrency")
			return refused(policy.CodeConcurrencyLimited, fmt.Sprintf(
				"tenant %q already has %d requests and tunnels open, its max_concurrent; close some or retry later", tenant.ID, tenant.Quota.MaxConcurrent))
		}
	}
	return outcome{}
}

// quotaOutcome handles the quota backend failing: with on_error: deny
// the request is refused with 503, with allow it passes and is counted.
func (ex *exchange) quotaOutcome(failedOpen bool, err error) outcome {
	if failedOpen {
		ex.gw.metrics.quotaFailedOpen(ex.tenant.ID)
		ex.gw.failOpen.note(ex.gw, ex.id)
	}
	if err == nil {
		return outcome{}
	}
	if errors.Is(err, quota.ErrUnavailable) {
		ex.gw.metrics.quotaRejection(ex.tenant.ID, "unavailable")
		ex.gw.log.Warn("quota backend unavailable", "request_id", ex.id, "error", err)
		return refused(policy.CodeQuotaUnavailable, "the quota backend is unreachable and the gateway fails closed; retry shortly")
	}
	// The client went away while the backend was being asked.
	return refused(policy.CodeQuotaUnavailable, "the quota check did not complete")
}

// setAllowedHeaders adds to an allowed response its X-Request-Id and,
// when it passed a request-rate quota, the RateLimit headers
// (docs/reference.md, "What clients see").
// Canonical keys are written directly (as Set would, without
// canonicalising per call); the values share one backing array and the
// numbers one string.
func (ex *exchange) setAllowedHeaders(h http.Header) {
	if ex.rate.Limit <= 0 {
		h["X-Request-Id"] = []string{ex.id}
		return
	}
	var buf [3 * 20]byte
	digits := strconv.AppendInt(buf[:0], int64(ex.rate.Limit), 10)
	limitEnd := len(digits)
	digits = strconv.AppendInt(digits, int64(ex.rate.Remaining), 10)
	remainingEnd := len(digits)
	digits = strconv.AppendInt(digits, int64(ex.rate.ResetSeconds()), 10)
	numbers := string(digits)
	values := []string{ex.id, numbers[:limitEnd], numbers[limitEnd:remainingEnd], numbers[remainingEnd:]}
	h["X-Request-Id"] = values[0:1:1]
	h["Ratelimit-Limit"] = values[1:2:2]
	h["Ratelimit-Remaining"] = values[2:3:3]
	h["Ratelimit-Reset"] = values[3:4:4]
}

// shapers returns the tenant's bandwidth shapers, nil where unlimited,
// under the exchange's own policy generation (docs/admins.md, "Saving:
// reload": requests in flight finish under the policy they started
// with). They are looked up
// once per exchange: a plain request needs them twice (its body, then the
// response's), and a lookup takes the shapers' registry lock.
func (ex *exchange) shapers() (egress, ingress *quota.Shaper) {
	ex.shapersOnce.Do(func() {
		q := ex.tenant.Quota
		// A shaper is the tenant's, shared with the exchanges of newer
		// generations: once a reload has replaced this exchange's, it joins
		// the shaper the reload left (set to the new limit) rather than set
		// it back to its own older limit.
		replaced := ex.gw.runtime.Load() != ex.rt
		ex.egress = ex.shaper(ex.ts.egressKey, q.EgressBytes, replaced)
		ex.ingress = ex.shaper(ex.ts.ingressKey, q.IngressBytes, replaced)
	})
	return ex.egress, ex.ingress
}

// shaper is the shaper of key at limit bytes a second; nil, and no lookup
// at all, when limit is unlimited (a shaper left from an earlier limit was
// already set unlimited by the reload).
func (ex *exchange) shaper(key string, limit int64, replaced bool) *quota.Shaper {
	if limit <= 0 {
		return nil
	}
	if replaced {
		if s := ex.gw.bandwidth.Lookup(key); s != nil {
			return s
		}
	}
	return ex.gw.bandwidth.Shaper(key, limit)
}

// failOpenWarning says in the log, at most every failOpenWarnEvery, that
// requests are let through without a quota check (quota.redis.on_error:
// allow): the metric counts them, but an operator reads the log first.
type failOpenWarning struct {
	lastWarned atomic.Int64 // unix seconds
	unwarned   atomic.Int64
}

const failOpenWarnEvery = 10 * time.Second

func (w *failOpenWarning) note(g *Gateway, requestID string) {
	n := w.unwarned.Add(1)
	now, last := g.now().Unix(), w.lastWarned.Load()
	if now-last < int64(failOpenWarnEvery/time.Second) || !w.lastWarned.CompareAndSwap(last, now) {
		return
	}
	w.unwarned.Add(-n)
	g.log.Warn("quota backend unreachable: requests pass without a quota check (quota.redis.on_error: allow)",
		"request_id", requestID, "unchecked_since_last_warning", n)
}
