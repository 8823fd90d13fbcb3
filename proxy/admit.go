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
// tunnel already holds), a concurrency slot. It returns the rate decision,
// whose RateLimit headers the response carries (setRateLimitHeaders).
func (ex *exchange) admit(ctx context.Context, holdsSlot bool) (quota.Result, outcome) {
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
		return quota.Result{}, o
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
		return quota.Result{}, o
	}

	if holdsSlot && tenant.Quota.MaxConcurrent > 0 {
		slot, err := limiter.Acquire(ctx, tenant.QuotaKey, tenant.Quota.MaxConcurrent)
		ex.slot = slot // released by finish, on every path
		// A request that passed unchecked is counted once, however many
		// checks did.
		if o := ex.quotaOutcome(slot.FailedOpen && !res.FailedOpen, err); !o.ok() {
			return quota.Result{}, o
		}
		if !slot.Acquired {
			ex.gw.metrics.quotaRejection(tenant.ID, "concurrency")
			return quota.Result{}, refused(policy.CodeConcurrencyLimited, fmt.Sprintf(
				"tenant %q already has %d requests and tunnels open, its max_concurrent; close some or retry later", tenant.ID, tenant.Quota.MaxConcurrent))
		}
	}
	// Budgets last: a request a quota refused is not counted against them.
	if o := ex.admitBudget(ctx); !o.ok() {
		return quota.Result{}, o
	}
	return res, outcome{}
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
// for a tunnel's 200, the RateLimit headers of the token its CONNECT took
// (docs/reference.md, "What clients see").
func (ex *exchange) setAllowedHeaders(h http.Header) {
	h["X-Request-Id"] = ex.requestIDValue[:]
	ex.setRateLimitHeaders(h, ex.rate)
	ex.setBudgetHeaders(h)
}

// setRateLimitHeaders adds the RateLimit headers of res, the request-rate
// decision admit made, when a request-rate quota applied.
// Canonical keys are written directly (as Set would, without
// canonicalising per call); the values share one backing array, the
// exchange's, and the numbers one string.
func (ex *exchange) setRateLimitHeaders(h http.Header, res quota.Result) {
	if res.Limit <= 0 {
		return
	}
	var buf [3 * 20]byte
	digits := strconv.AppendInt(buf[:0], int64(res.Limit), 10)
	limitEnd := len(digits)
	digits = strconv.AppendInt(digits, int64(res.Remaining), 10)
	remainingEnd := len(digits)
	digits = strconv.AppendInt(digits, int64(res.ResetSeconds()), 10)
	numbers := string(digits)
	values := ex.rateLimitValues[:]
	values[0], values[1], values[2] = numbers[:limitEnd], numbers[limitEnd:remainingEnd], numbers[remainingEnd:]
	h["Ratelimit-Limit"] = values[0:1:1]
	h["Ratelimit-Remaining"] = values[1:2:2]
	h["Ratelimit-Reset"] = values[2:3:3]
}

// shapers returns the tenant's bandwidth shapers, nil where unlimited,
// under the exchange's own policy generation (docs/admins.md, "Saving:
// reload": requests in flight finish under the policy they started
// with). A request inside an inspected tunnel gets none: the tunnel's own
// connection is shaped already. Each lookup takes the shapers' registry
// lock: a path asks once, and only for the directions it carries.
func (ex *exchange) shapers() (egress, ingress *quota.Shaper) {
	return ex.egressShaper(), ex.ingressShaper()
}

func (ex *exchange) egressShaper() *quota.Shaper {
	if ex.inner {
		return nil
	}
	return ex.shaper(ex.ts.egressKey, ex.tenant.Quota.EgressBytes)
}

func (ex *exchange) ingressShaper() *quota.Shaper {
	if ex.inner {
		return nil
	}
	return ex.shaper(ex.ts.ingressKey, ex.tenant.Quota.IngressBytes)
}

// shaper is the shaper of key at limit bytes a second; nil, and no lookup
// at all, when limit is unlimited (a shaper left from an earlier limit was
// already set unlimited by the reload). A shaper is the tenant's, shared
// with the exchanges of newer generations: once a reload has replaced
// this exchange's generation, it joins the shaper the reload left (set to
// the new limit) rather than set it back to its own older limit.
func (ex *exchange) shaper(key string, limit int64) *quota.Shaper {
	if limit <= 0 {
		return nil
	}
	if ex.gw.runtime.Load() != ex.rt {
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
