package quota

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestResultSeconds(t *testing.T) {
	tests := []struct {
		name      string
		d         time.Duration
		wantRetry int
		wantReset int
	}{
		{"zero", 0, 1, 0},
		{"one nanosecond", time.Nanosecond, 1, 1},
		{"just under a second", 999 * time.Millisecond, 1, 1},
		{"exactly one second", time.Second, 1, 1},
		{"just over one second", time.Second + time.Millisecond, 2, 2},
		{"ten seconds", 10 * time.Second, 10, 10},
		{"negative", -time.Second, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Result{RetryAfter: tt.d, ResetAfter: tt.d}
			if got := r.RetryAfterSeconds(); got != tt.wantRetry {
				t.Errorf("RetryAfterSeconds() = %d, want %d", got, tt.wantRetry)
			}
			if got := r.ResetSeconds(); got != tt.wantReset {
				t.Errorf("ResetSeconds() = %d, want %d", got, tt.wantReset)
			}
		})
	}
}

func TestMemoryBurstThenRefusal(t *testing.T) {
	tests := []struct {
		name             string
		limit            Limit
		wantBurst        int
		wantRetryAfter   time.Duration
		wantRetrySeconds int
	}{
		{"one per second, burst three", Limit{Rate: 1, Burst: 3}, 3, time.Second, 1},
		{"ten per second, burst five", Limit{Rate: 10, Burst: 5}, 5, 100 * time.Millisecond, 1},
		{"one every two seconds", Limit{Rate: 0.5, Burst: 1}, 1, 2 * time.Second, 2},
		{"one every 2.5 seconds rounds up", Limit{Rate: 0.4, Burst: 2}, 2, 2500 * time.Millisecond, 3},
		{"unset burst is the rate", Limit{Rate: 4}, 4, 250 * time.Millisecond, 1},
		{"unset burst below one rate is one", Limit{Rate: 0.2}, 1, 5 * time.Second, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			m := NewMemory(MemoryOptions{Clock: clock.Now})
			ctx := context.Background()
			interval := time.Duration(float64(time.Second) / tt.limit.Rate)
			for i := range tt.wantBurst {
				r, err := m.Allow(ctx, "acme", tt.limit)
				if err != nil {
					t.Fatal(err)
				}
				want := Result{
					Allowed:    true,
					Key:        "acme",
					Limit:      tt.wantBurst,
					Remaining:  tt.wantBurst - 1 - i,
					ResetAfter: time.Duration(i+1) * interval,
				}
				if r != want {
					t.Fatalf("request %d: got %+v, want %+v", i+1, r, want)
				}
			}
			r, err := m.Allow(ctx, "acme", tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if r.Allowed {
				t.Fatalf("request past the burst allowed: %+v", r)
			}
			if r.RetryAfter != tt.wantRetryAfter || r.RetryAfterSeconds() != tt.wantRetrySeconds {
				t.Errorf("RetryAfter = %v (%ds), want %v (%ds)", r.RetryAfter, r.RetryAfterSeconds(), tt.wantRetryAfter, tt.wantRetrySeconds)
			}
			if r.Remaining != 0 || r.Limit != tt.wantBurst {
				t.Errorf("refusal: Remaining %d Limit %d, want 0 and %d", r.Remaining, r.Limit, tt.wantBurst)
			}
			if want := time.Duration(tt.wantBurst) * interval; r.ResetAfter != want {
				t.Errorf("refusal ResetAfter = %v, want %v", r.ResetAfter, want)
			}
		})
	}
}

func TestMemoryRefill(t *testing.T) {
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now})
	ctx := context.Background()
	limit := Limit{Rate: 2, Burst: 4} // one token every 500ms
	allowed := func() bool {
		t.Helper()
		r, err := m.Allow(ctx, "acme", limit)
		if err != nil {
			t.Fatal(err)
		}
		return r.Allowed
	}
	drain := func() int {
		n := 0
		for allowed() {
			n++
		}
		return n
	}

	if n := drain(); n != 4 {
		t.Fatalf("fresh bucket allowed %d, want the burst of 4", n)
	}
	clock.Advance(499 * time.Millisecond)
	if allowed() {
		t.Fatal("allowed before one interval passed")
	}
	clock.Advance(time.Millisecond)
	if !allowed() {
		t.Fatal("refused after one interval")
	}
	if allowed() {
		t.Fatal("one interval gave more than one token")
	}
	clock.Advance(time.Hour)
	if n := drain(); n != 4 {
		t.Fatalf("after an hour idle allowed %d, want the burst of 4 (never more)", n)
	}
}

func TestMemoryKeysAreIndependent(t *testing.T) {
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now})
	ctx := context.Background()
	limit := Limit{Rate: 1, Burst: 2}
	for range 2 {
		if r, _ := m.Allow(ctx, "acme", limit); !r.Allowed {
			t.Fatal("acme refused within its burst")
		}
	}
	if r, _ := m.Allow(ctx, "acme", limit); r.Allowed {
		t.Fatal("acme allowed past its burst")
	}
	for range 2 {
		if r, _ := m.Allow(ctx, "globex", limit); !r.Allowed {
			t.Fatal("globex refused because acme is empty")
		}
	}
}

func TestMemoryUnlimited(t *testing.T) {
	m := NewMemory(MemoryOptions{Clock: newFakeClock().Now})
	ctx := context.Background()
	for _, l := range []Limit{{}, {Rate: 0, Burst: 10}, {Rate: -1}} {
		for range 1000 {
			r, err := m.Allow(ctx, "acme", l)
			if err != nil || !r.Allowed || r.Limit != 0 {
				t.Fatalf("limit %+v: got %+v, %v; want allowed with no RateLimit headers", l, r, err)
			}
		}
	}
	if n := m.buckets.Len(); n != 0 {
		t.Errorf("unlimited calls left %d buckets, want none", n)
	}
}

// TestMemoryReload checks what a config reload does: the policy is rebuilt
// and passes limits again on every call; state follows the key.
func TestMemoryReload(t *testing.T) {
	tests := []struct {
		name  string
		after Limit
		// at the moment of the reload, the bucket is drained
		wantAllowedAtOnce int
		wantRetryAfter    time.Duration
	}{
		{"unchanged limit keeps the empty bucket", Limit{Rate: 1, Burst: 10}, 0, time.Second},
		{"higher rate refills faster at once", Limit{Rate: 100, Burst: 10}, 0, 10 * time.Millisecond},
		{"bigger burst is not a fresh burst", Limit{Rate: 1, Burst: 50}, 0, time.Second},
		{"lower rate refills slower", Limit{Rate: 0.1, Burst: 10}, 0, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			m := NewMemory(MemoryOptions{Clock: clock.Now})
			ctx := context.Background()
			before := Limit{Rate: 1, Burst: 10}
			for range 10 {
				if r, _ := m.Allow(ctx, "acme", before); !r.Allowed {
					t.Fatal("refused within the burst")
				}
			}
			// Reload: same key, possibly new limit.
			got := 0
			var last Result
			for range 100 {
				r, err := m.Allow(ctx, "acme", tt.after)
				if err != nil {
					t.Fatal(err)
				}
				last = r
				if !r.Allowed {
					break
				}
				got++
			}
			if got != tt.wantAllowedAtOnce {
				t.Errorf("allowed %d at once after the reload, want %d", got, tt.wantAllowedAtOnce)
			}
			if last.RetryAfter != tt.wantRetryAfter {
				t.Errorf("RetryAfter = %v, want %v", last.RetryAfter, tt.wantRetryAfter)
			}
			if last.Limit != tt.after.burst() {
				t.Errorf("Limit = %d, want the new burst %d", last.Limit, tt.after.burst())
			}
		})
	}
}

func TestMemoryReloadKeepsPartialTokens(t *testing.T) {
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now})
	ctx := context.Background()
	for range 4 {
		m.Allow(ctx, "acme", Limit{Rate: 1, Burst: 10})
	}
	// Six tokens left; a smaller burst caps them, a bigger one keeps six.
	tests := []struct {
		limit Limit
		want  int
	}{
		{Limit{Rate: 1, Burst: 20}, 6},
		{Limit{Rate: 1, Burst: 3}, 3},
	}
	for _, tt := range tests {
		r, err := m.Peek(ctx, "acme", tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		if r.Remaining != tt.want {
			t.Errorf("limit %+v: %d tokens, want %d", tt.limit, r.Remaining, tt.want)
		}
	}
}

func TestMemoryAllowBoth(t *testing.T) {
	tenant := Limit{Rate: 1, Burst: 5}
	connector := Limit{Rate: 1, Burst: 2}
	tests := []struct {
		name          string
		drain         string // key emptied before the call
		wantAllowed   bool
		wantKey       string
		wantTenant    int // tokens left afterwards
		wantConnector int
	}{
		{"both allow: the tighter bucket is reported", "", true, "acme|github", 4, 1},
		{"connector empty: tenant keeps its token", "acme|github", false, "acme|github", 5, 0},
		{"tenant empty: connector keeps its token", "acme", false, "acme", 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			m := NewMemory(MemoryOptions{Clock: clock.Now})
			ctx := context.Background()
			limits := map[string]Limit{"acme": tenant, "acme|github": connector}
			if tt.drain != "" {
				for {
					if r, _ := m.Allow(ctx, tt.drain, limits[tt.drain]); !r.Allowed {
						break
					}
				}
			}
			r, err := m.AllowBoth(ctx, Bucket{"acme", tenant}, Bucket{"acme|github", connector})
			if err != nil {
				t.Fatal(err)
			}
			if r.Allowed != tt.wantAllowed || r.Key != tt.wantKey {
				t.Errorf("got Allowed %v Key %q, want %v %q", r.Allowed, r.Key, tt.wantAllowed, tt.wantKey)
			}
			if !r.Allowed && r.RetryAfter <= 0 {
				t.Errorf("refusal without RetryAfter: %+v", r)
			}
			for key, want := range map[string]int{"acme": tt.wantTenant, "acme|github": tt.wantConnector} {
				p, _ := m.Peek(ctx, key, limits[key])
				if p.Remaining != want {
					t.Errorf("%s has %d tokens, want %d", key, p.Remaining, want)
				}
			}
		})
	}
}

func TestMemoryAllowBothSkipsUnlimited(t *testing.T) {
	m := NewMemory(MemoryOptions{Clock: newFakeClock().Now})
	ctx := context.Background()
	limited := Limit{Rate: 1, Burst: 1}
	for _, tt := range []struct {
		name          string
		first, second Bucket
		wantKey       string
	}{
		{"tenant unlimited", Bucket{"t1", Limit{}}, Bucket{"t1|c", limited}, "t1|c"},
		{"connector unlimited", Bucket{"t2", limited}, Bucket{"t2|c", Limit{}}, "t2"},
		{"same key twice takes one token", Bucket{"t3", limited}, Bucket{"t3", limited}, "t3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := m.AllowBoth(ctx, tt.first, tt.second)
			if err != nil || !r.Allowed || r.Key != tt.wantKey {
				t.Fatalf("first call: %+v, %v; want allowed by %q", r, err, tt.wantKey)
			}
			if r, _ := m.AllowBoth(ctx, tt.first, tt.second); r.Allowed {
				t.Fatalf("second call allowed past a burst of 1: %+v", r)
			}
		})
	}
	r, err := m.AllowBoth(ctx, Bucket{"t4", Limit{}}, Bucket{"t4|c", Limit{}})
	if err != nil || !r.Allowed || r.Limit != 0 {
		t.Fatalf("both unlimited: %+v, %v", r, err)
	}
}

func TestMemoryPeekTakesNothing(t *testing.T) {
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now})
	ctx := context.Background()
	limit := Limit{Rate: 1, Burst: 2}
	for range 10 {
		r, err := m.Peek(ctx, "acme", limit)
		if err != nil || !r.Allowed || r.Remaining != 2 || r.Limit != 2 {
			t.Fatalf("peek at a fresh bucket: %+v, %v", r, err)
		}
	}
	if n := m.buckets.Len(); n != 0 {
		t.Errorf("peek created %d buckets, want none", n)
	}
	m.Allow(ctx, "acme", limit)
	m.Allow(ctx, "acme", limit)
	r, _ := m.Peek(ctx, "acme", limit)
	if r.Allowed || r.Remaining != 0 || r.RetryAfter != time.Second || r.ResetAfter != 2*time.Second {
		t.Errorf("peek at an empty bucket: %+v", r)
	}
}

func TestMemoryConcurrentAllowNeverExceedsBurst(t *testing.T) {
	m := NewMemory(MemoryOptions{Clock: newFakeClock().Now})
	ctx := context.Background()
	limit := Limit{Rate: 1, Burst: 50}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				r, _ := m.AllowBoth(ctx, Bucket{"acme", limit}, Bucket{"acme|github", Limit{Rate: 1, Burst: 80}})
				if r.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != 50 {
		t.Errorf("800 concurrent requests at a frozen clock: %d allowed, want exactly the burst of 50", got)
	}
}

func TestMemoryAcquire(t *testing.T) {
	m := NewMemory(MemoryOptions{})
	ctx := context.Background()
	inUse := func(key string) int {
		t.Helper()
		n, err := m.InUse(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	var slots []Slot
	for i := range 3 {
		s, err := m.Acquire(ctx, "acme", 3)
		if err != nil || !s.Acquired {
			t.Fatalf("slot %d of 3: %+v, %v", i+1, s, err)
		}
		slots = append(slots, s)
	}
	over, err := m.Acquire(ctx, "acme", 3)
	if err != nil || over.Acquired {
		t.Fatalf("slot past the max: %+v, %v; want refused", over, err)
	}
	over.Release() // harmless on a refused slot
	if s, _ := m.Acquire(ctx, "globex", 1); !s.Acquired {
		t.Fatal("another key is limited by acme's slots")
	}
	if got := inUse("acme"); got != 3 {
		t.Fatalf("InUse = %d, want 3", got)
	}

	slots[0].Release()
	slots[0].Release() // idempotent: must not free a second slot
	if got := inUse("acme"); got != 2 {
		t.Fatalf("after one release (twice) InUse = %d, want 2", got)
	}
	s, _ := m.Acquire(ctx, "acme", 3)
	if !s.Acquired {
		t.Fatal("a released slot cannot be taken again")
	}
	if again, _ := m.Acquire(ctx, "acme", 3); again.Acquired {
		t.Fatal("double release freed an extra slot")
	}
	// Leases are recycled: the slot just taken may hold slots[0]'s lease.
	// Releasing the old copy once more must still free nothing.
	slots[0].Release()
	if got := inUse("acme"); got != 3 {
		t.Fatalf("a stale release freed a slot another request holds: InUse = %d, want 3", got)
	}

	// A reload that lowers the max applies to the next Acquire.
	if s, _ := m.Acquire(ctx, "acme", 2); s.Acquired {
		t.Fatal("acquired with 3 in use and a new max of 2")
	}

	for _, s := range append(slots[1:], s) {
		s.Release()
	}
	if got := inUse("acme"); got != 0 {
		t.Fatalf("after releasing all InUse = %d", got)
	}
	m.slotsMu.Lock()
	_, kept := m.slots["acme"]
	m.slotsMu.Unlock()
	if kept {
		t.Error("a key with no slot in use is still stored")
	}
}

func TestMemoryAcquireUnlimited(t *testing.T) {
	m := NewMemory(MemoryOptions{})
	for range 100 {
		s, err := m.Acquire(context.Background(), "acme", 0)
		if err != nil || !s.Acquired {
			t.Fatalf("max 0: %+v, %v; want acquired", s, err)
		}
		defer s.Release()
	}
	if n, _ := m.InUse(context.Background(), "acme"); n != 0 {
		t.Errorf("unlimited slots were counted: %d", n)
	}
}

func TestMemoryConcurrentAcquireNeverExceedsMax(t *testing.T) {
	m := NewMemory(MemoryOptions{})
	ctx := context.Background()
	const max = 5
	var held, peak atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				s, _ := m.Acquire(ctx, "acme", max)
				if !s.Acquired {
					continue
				}
				n := held.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				held.Add(-1)
				s.Release()
				s.Release()
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > max {
		t.Errorf("%d slots held at once, max %d", p, max)
	}
	if n, _ := m.InUse(ctx, "acme"); n != 0 {
		t.Errorf("InUse = %d after every slot was released", n)
	}
}

func TestMemoryBoundedKeys(t *testing.T) {
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now, MaxKeys: 100})
	ctx := context.Background()
	for i := range 10_000 {
		m.Allow(ctx, fmt.Sprintf("tenant-%d|connector", i), Limit{Rate: 1, Burst: 1})
	}
	if n := m.buckets.Len(); n > 100 {
		t.Errorf("%d buckets kept, want at most MaxKeys=100", n)
	}
}

func TestMemoryIdleExpiry(t *testing.T) {
	clock := newFakeClock()
	m := NewMemory(MemoryOptions{Clock: clock.Now, IdleTTL: time.Minute})
	ctx := context.Background()
	fast := Limit{Rate: 10, Burst: 1}         // full again after 100ms
	slow := Limit{Rate: 1.0 / 3600, Burst: 1} // full again after an hour

	m.Allow(ctx, "idle", fast)
	m.Allow(ctx, "in-debt", slow)
	clock.Advance(2 * time.Minute)
	// Any later call sweeps.
	m.Allow(ctx, "other", fast)
	m.Allow(ctx, "other", fast)

	if _, ok := m.buckets.Peek("idle"); ok {
		t.Error("a bucket full and unused for longer than IdleTTL was kept")
	}
	if _, ok := m.buckets.Peek("in-debt"); !ok {
		t.Fatal("a bucket still refilling was dropped: its next request would get a fresh burst")
	}
	if r, _ := m.Allow(ctx, "in-debt", slow); r.Allowed {
		t.Error("the in-debt bucket allowed a request before refilling")
	}
	clock.Advance(time.Hour + 2*time.Minute)
	m.Allow(ctx, "other", fast)
	m.Allow(ctx, "other", fast)
	if _, ok := m.buckets.Peek("in-debt"); ok {
		t.Error("the in-debt bucket was kept after refilling and idling")
	}
	if n := m.buckets.Len(); n != 1 {
		t.Errorf("%d buckets left, want only the one just used", n)
	}
}
