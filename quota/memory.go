package quota

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Default bounds of the in-memory state.
const (
	// DefaultMaxKeys bounds the request-rate buckets a Memory keeps, and the
	// shapers a Bandwidth keeps. Keys come from configuration (tenants and
	// tenant×connector pairs), so the bound is only reached by a very large
	// policy; past it the least recently used key starts again full.
	DefaultMaxKeys = 100_000
	// DefaultIdleTTL is how long a key's state is kept after it stopped
	// mattering: a request bucket that has been full this long, a shaper
	// that has moved no byte this long. It must exceed the gateway's idle
	// timeout so that an open but quiet tunnel keeps its shaper.
	DefaultIdleTTL = 10 * time.Minute
)

// MemoryOptions configures a Memory. The zero value is ready to use.
type MemoryOptions struct {
	// MaxKeys bounds the number of request-rate buckets kept; 0 means
	// DefaultMaxKeys.
	MaxKeys int
	// IdleTTL is how long a bucket that is full is kept before it is dropped
	// (a dropped bucket comes back full, so dropping a full one changes
	// nothing a client can see); 0 means DefaultIdleTTL.
	IdleTTL time.Duration
	// Clock returns the current time; nil means time.Now. Tests inject a
	// fake clock so that nothing sleeps.
	Clock func() time.Time
}

// Memory is the in-process [Limiter]: request-rate buckets and concurrency
// slots of one gateway process. It starts no goroutine: idle buckets are
// dropped as a side effect of later calls, measured on its Clock.
type Memory struct {
	clock func() time.Time
	epoch time.Time // bucket times are nanoseconds since epoch, on clock
	idle  int64     // IdleTTL in nanoseconds

	// mu guards buckets. One lock around lookup, creation and the bucket
	// arithmetic makes get-or-create atomic and lets AllowBoth decide on two
	// buckets at once; it is held for well under a microsecond.
	mu      sync.Mutex
	buckets *simplelru.LRU[string, *bucket]

	// slotsMu guards slots, which holds only keys with at least one slot in
	// use: its size is bounded by the open requests and tunnels, and a key
	// leaves it when its last slot is released.
	slotsMu sync.Mutex
	slots   map[string]int
}

var _ Limiter = (*Memory)(nil)

// NewMemory returns an empty Memory.
func NewMemory(opts MemoryOptions) *Memory {
	maxKeys, idle, clock := stateDefaults(opts.MaxKeys, opts.IdleTTL, opts.Clock)
	buckets := newLRU[*bucket](maxKeys)
	return &Memory{
		clock:   clock,
		epoch:   clock(),
		idle:    int64(idle),
		buckets: buckets,
		slots:   make(map[string]int),
	}
}

// now returns the clock's time in nanoseconds since m.epoch. With time.Now
// both readings carry a monotonic clock, so wall-clock jumps do not refill
// or drain buckets.
func (m *Memory) now() int64 {
	return int64(m.clock().Sub(m.epoch))
}

// Allow takes one token from key's bucket if it has one. An unlimited l
// allows without keeping any state.
func (m *Memory) Allow(_ context.Context, key string, l Limit) (Result, error) {
	if l.Unlimited() {
		return Result{Allowed: true}, nil
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep(now)
	b := m.bucketFor(key, l, now)
	r, tat := b.take(now)
	if r.Allowed {
		b.tat = tat
	}
	r.Key = key
	return r, nil
}

// AllowBoth takes one token from each bucket, or none: both buckets are
// decided under one lock, so a refusal by either spends nothing. An
// unlimited bucket is skipped.
func (m *Memory) AllowBoth(ctx context.Context, first, second Bucket) (Result, error) {
	switch {
	case first.Limit.Unlimited():
		return m.Allow(ctx, second.Key, second.Limit)
	case second.Limit.Unlimited():
		return m.Allow(ctx, first.Key, first.Limit)
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep(now)
	a := m.bucketFor(first.Key, first.Limit, now)
	b := m.bucketFor(second.Key, second.Limit, now)
	if a == b {
		// The same key twice: one bucket, one token.
		r, tat := a.take(now)
		if r.Allowed {
			a.tat = tat
		}
		r.Key = first.Key
		return r, nil
	}
	ra, tatA := a.take(now)
	ra.Key = first.Key
	rb, tatB := b.take(now)
	rb.Key = second.Key
	switch {
	case !ra.Allowed:
		return ra, nil
	case !rb.Allowed:
		return rb, nil
	}
	a.tat, b.tat = tatA, tatB
	return tighter(ra, rb), nil
}

// Peek reports key's bucket without taking a token and without creating it.
func (m *Memory) Peek(_ context.Context, key string, l Limit) (Result, error) {
	if l.Unlimited() {
		return Result{Allowed: true}, nil
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.buckets.Peek(key)
	if !ok {
		b = newBucket(l, now)
	} else {
		// Work on a copy: a limit change is applied by the next Allow.
		copied := *b
		b = &copied
		b.setLimit(l, now)
	}
	r := b.peek(now)
	r.Key = key
	return r, nil
}

// bucketFor returns key's bucket set to l, creating it full. The caller holds
// m.mu.
func (m *Memory) bucketFor(key string, l Limit, now int64) *bucket {
	b, ok := m.buckets.Get(key)
	if !ok {
		b = newBucket(l, now)
		m.buckets.Add(key, b)
		return b
	}
	b.setLimit(l, now)
	return b
}

// sweep drops up to two least recently used buckets that have been full for
// the idle TTL. Called on every Allow before the lookup (so it never drops a
// bucket about to be charged), it keeps pace with the creation of new buckets
// without a goroutine or a timer. The caller holds m.mu.
func (m *Memory) sweep(now int64) {
	for range 2 {
		key, b, ok := m.buckets.GetOldest()
		if !ok || now-b.tat < m.idle {
			return
		}
		m.buckets.Remove(key)
	}
}

// Acquire takes one of key's max concurrency slots if one is free. A max of
// 0 or less means no limit: the slot is granted and nothing is counted.
func (m *Memory) Acquire(_ context.Context, key string, max int) (Slot, error) {
	if max <= 0 {
		return Slot{Acquired: true}, nil
	}
	m.slotsMu.Lock()
	defer m.slotsMu.Unlock()
	if m.slots[key] >= max {
		return Slot{}, nil
	}
	m.slots[key]++
	l := memoryLeases.Get().(*memoryLease)
	l.memory, l.key = m, key
	return Slot{Acquired: true, lease: l, ticket: l.use.Load()}, nil
}

// InUse returns the number of key's slots held now.
func (m *Memory) InUse(_ context.Context, key string) (int, error) {
	m.slotsMu.Lock()
	defer m.slotsMu.Unlock()
	return m.slots[key], nil
}

// Close does nothing: a Memory holds no goroutine, file or connection. It
// exists so that Memory is a [Limiter].
func (m *Memory) Close() error { return nil }

// memoryLease is one slot held in a Memory. Leases are recycled, so that
// admitting a request allocates nothing: each use of a lease has its own
// number, and only a Slot holding the current one releases it, so that
// releasing a Slot again after its lease went to another request is still
// harmless.
type memoryLease struct {
	memory *Memory
	key    string
	use    atomic.Uint64
}

var memoryLeases = sync.Pool{New: func() any { return new(memoryLease) }}

func (l *memoryLease) release(ticket uint64) {
	if !l.use.CompareAndSwap(ticket, ticket+1) {
		return
	}
	m, key := l.memory, l.key
	l.memory, l.key = nil, ""
	memoryLeases.Put(l)
	m.slotsMu.Lock()
	defer m.slotsMu.Unlock()
	// While this lease was held the key's count was at least 1, so the
	// entry exists; it is deleted with its last slot.
	if m.slots[key] <= 1 {
		delete(m.slots, key)
		return
	}
	m.slots[key]--
}

// bucket is a token bucket kept as a GCRA "theoretical arrival time", the
// same representation redis_rate uses: the bucket is full when tat <= now,
// and each token taken moves tat one interval later. It holds one integer of
// state, so refilling needs no timer and no floating point.
type bucket struct {
	tat      int64 // nanoseconds since epoch
	interval int64 // nanoseconds per token
	burst    int64
}

func newBucket(l Limit, now int64) *bucket {
	return &bucket{tat: now, interval: int64(l.interval()), burst: int64(l.burst())}
}

// capacity returns the time it takes to refill a whole bucket.
func (b *bucket) capacity() int64 {
	if b.burst > math.MaxInt64/b.interval {
		return math.MaxInt64
	}
	return b.interval * b.burst
}

// setLimit switches the bucket to l, keeping the tokens it holds now (at most
// the new burst). Keeping tokens rather than tat matters when the rate
// changes: a drained bucket whose rate is raised tenfold must refill ten
// times faster at once, not first wait out its old debt.
func (b *bucket) setLimit(l Limit, now int64) {
	interval, burst := int64(l.interval()), int64(l.burst())
	if interval == b.interval && burst == b.burst {
		return
	}
	debt := max(b.tat, now) - now
	tokens := float64(b.capacity()-debt) / float64(b.interval)
	tokens = min(max(tokens, 0), float64(burst))
	b.interval, b.burst = interval, burst
	b.tat = now + b.capacity() - int64(tokens*float64(interval))
}

// take decides one request at now. It returns the result and the tat to
// store if the caller commits the token; it changes nothing itself.
func (b *bucket) take(now int64) (Result, int64) {
	tat := max(b.tat, now)
	next := tat + b.interval
	allowAt := next - b.capacity()
	if now < allowAt {
		return Result{
			Limit:      int(b.burst),
			RetryAfter: time.Duration(allowAt - now),
			ResetAfter: time.Duration(tat - now),
		}, b.tat
	}
	return Result{
		Allowed:    true,
		Limit:      int(b.burst),
		Remaining:  int((now - allowAt) / b.interval),
		ResetAfter: time.Duration(next - now),
	}, next
}

// peek describes the bucket at now without a request: Remaining is the whole
// tokens available, and Allowed whether there is at least one.
func (b *bucket) peek(now int64) Result {
	tat := max(b.tat, now)
	available := (b.capacity() - (tat - now)) / b.interval
	r := Result{
		Allowed:    available >= 1,
		Limit:      int(b.burst),
		Remaining:  int(available),
		ResetAfter: time.Duration(tat - now),
	}
	if !r.Allowed {
		r.RetryAfter = time.Duration(tat - b.capacity() + b.interval - now)
	}
	return r
}
