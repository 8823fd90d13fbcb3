package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Limit is a request-rate limit: a token bucket that refills at Rate tokens
// per second and holds at most Burst tokens. A request takes one token.
//
// A Rate that is zero, negative or NaN means no limit. A Burst below 1 means
// max(1, ceil(Rate)), so that `requests_per_second: 5` alone allows five
// requests at once.
type Limit struct {
	Rate  float64 // tokens added per second
	Burst int     // tokens the bucket holds when full
}

// Unlimited reports whether l imposes no limit at all.
func (l Limit) Unlimited() bool {
	return !(l.Rate > 0) || math.IsInf(l.Rate, 1)
}

// burst returns the bucket size with the default for an unset Burst applied.
func (l Limit) burst() int {
	if l.Burst >= 1 {
		return l.Burst
	}
	return max(1, int(math.Ceil(l.Rate)))
}

// maxInterval caps the time one token takes to refill, so that absurdly low
// rates cannot overflow the arithmetic.
const maxInterval = 365 * 24 * time.Hour

// interval returns the time one token takes to refill, between 1 ns and
// maxInterval. Both backends work in whole intervals, so they agree.
func (l Limit) interval() time.Duration {
	ns := math.Round(float64(time.Second) / l.Rate)
	if ns >= float64(maxInterval) {
		return maxInterval
	}
	return max(time.Duration(ns), 1)
}

// Bucket names one request-rate bucket and the limit that applies to it now.
type Bucket struct {
	Key   string
	Limit Limit
}

// Result is the outcome of taking a token, or of looking at a bucket. Its
// fields are what the client sees: Retry-After on a refusal, RateLimit-Limit,
// RateLimit-Remaining and RateLimit-Reset on an allowed response.
type Result struct {
	// Allowed reports whether the request may proceed.
	Allowed bool
	// Key is the bucket the other fields describe: the one that refused, or
	// when allowed the one with the fewest tokens left. Empty when no bucket
	// applied (every limit unlimited, or the backend failed open).
	Key string
	// Limit is the bucket's size (RateLimit-Limit). Zero when no bucket
	// applied: send no RateLimit headers then.
	Limit int
	// Remaining is the number of whole tokens left after this request
	// (RateLimit-Remaining).
	Remaining int
	// RetryAfter is, when refused, the time until a token is available; zero
	// when allowed. Use RetryAfterSeconds for the header.
	RetryAfter time.Duration
	// ResetAfter is the time until the bucket is full again. Use
	// ResetSeconds for the RateLimit-Reset header.
	ResetAfter time.Duration
	// FailedOpen reports that the backend could not be asked and the request
	// was allowed anyway because the backend was configured with FailOpen.
	// The proxy counts such requests.
	FailedOpen bool
}

// RetryAfterSeconds returns RetryAfter in whole seconds, rounded up and never
// below 1, as the Retry-After header needs: "Retry-After: 0" would invite an
// immediate retry that is refused again.
func (r Result) RetryAfterSeconds() int {
	return max(1, ceilSeconds(r.RetryAfter))
}

// ResetSeconds returns ResetAfter in whole seconds, rounded up (0 when the
// bucket is full), for the RateLimit-Reset header.
func (r Result) ResetSeconds() int {
	return ceilSeconds(r.ResetAfter)
}

func ceilSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int((d + time.Second - 1) / time.Second)
}

// tighter returns the result a client should see when a request passed two
// buckets: the one closer to refusing.
func tighter(a, b Result) Result {
	if a.Limit == 0 {
		return b
	}
	if b.Limit == 0 {
		return a
	}
	if b.Remaining < a.Remaining || (b.Remaining == a.Remaining && b.ResetAfter > a.ResetAfter) {
		return b
	}
	return a
}

// Slot is one concurrency slot: an open request or tunnel counted against a
// key's maximum. Release it exactly when the request or tunnel ends; calling
// Release more than once, or on a Slot that was not acquired, is harmless, so
// `defer slot.Release()` right after Acquire is always correct.
type Slot struct {
	// Acquired reports whether the slot was granted. False means the key
	// already holds its maximum: answer 429 concurrency_limited.
	Acquired bool
	// FailedOpen reports that the backend could not be asked and the slot
	// was granted anyway because the backend was configured with FailOpen.
	FailedOpen bool

	lease  lease
	ticket uint64 // which use of a recycled lease this slot holds
}

// Release gives the slot back. It is idempotent.
func (s Slot) Release() {
	if s.lease != nil {
		s.lease.release(s.ticket)
	}
}

// lease is what a backend needs to give one slot back. A backend may
// recycle its leases: ticket tells the use a Slot holds from later ones.
type lease interface{ release(ticket uint64) }

// Limiter admits requests: request-rate buckets and concurrency slots, per
// key, with the limit given on each call. [Memory] and [Redis] implement it.
type Limiter interface {
	// Allow takes one token from key's bucket if it has one.
	Allow(ctx context.Context, key string, l Limit) (Result, error)
	// AllowBoth takes one token from each bucket, or none: a request must
	// pass both the tenant's and the tenant×connector bucket, and a refusal
	// by one must not spend a token of the other.
	AllowBoth(ctx context.Context, first, second Bucket) (Result, error)
	// Peek reports key's bucket as Allow would see it, without taking a
	// token: Remaining is the whole tokens available now.
	Peek(ctx context.Context, key string, l Limit) (Result, error)
	// Acquire takes one of key's max concurrency slots if one is free. A max
	// of 0 or less means no limit.
	Acquire(ctx context.Context, key string, max int) (Slot, error)
	// InUse returns the number of key's slots held now.
	InUse(ctx context.Context, key string) (int, error)
	// Close releases the backend's resources.
	Close() error
}

// ErrUnavailable is wrapped by every error a [Limiter] returns because its
// backend could not be reached. With OnError FailClosed the proxy answers
// 503 quota_unavailable on it.
var ErrUnavailable = errors.New("quota backend unavailable")

// OnError says what a shared backend does when it cannot be reached. Its
// values are the spellings of gateway.yaml's quota.redis.on_error.
type OnError string

const (
	// FailClosed refuses: the call returns an error wrapping ErrUnavailable.
	// The zero OnError means FailClosed.
	FailClosed OnError = "deny"
	// FailOpen admits: the call returns an allowed Result or acquired Slot
	// with FailedOpen set.
	FailOpen OnError = "allow"
)

// stateDefaults fills the bounds of per-key state that a backend's options
// leave unset.
func stateDefaults(maxKeys int, idle time.Duration, clock func() time.Time) (int, time.Duration, func() time.Time) {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	if idle <= 0 {
		idle = DefaultIdleTTL
	}
	if clock == nil {
		clock = time.Now
	}
	return maxKeys, idle, clock
}

// newLRU makes the bounded map per-key state lives in; size is at least 1.
func newLRU[V any](size int) *simplelru.LRU[string, V] {
	lru, err := simplelru.NewLRU[string, V](size, nil)
	if err != nil {
		// NewLRU fails only for a size below 1, which stateDefaults excludes.
		panic(fmt.Sprintf("quota: %v", err))
	}
	return lru
}
