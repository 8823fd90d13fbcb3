package quota

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressgw/egressgw/internal/redistest"

	"github.com/redis/go-redis/v9"
)

func newTestRedis(tb testing.TB, srv *redistest.Server, opts RedisOptions) *Redis {
	tb.Helper()
	opts.Addr = srv.Addr
	r, err := NewRedis(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := r.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return r
}

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNewRedisRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts RedisOptions
		want string
	}{
		{"unknown on_error", RedisOptions{Addr: "127.0.0.1:6379", OnError: "maybe"}, `on_error "maybe"`},
		{"empty addr", RedisOptions{}, "addr is empty"},
		{"bad URL hides its content", RedisOptions{Addr: "redis://user:s3cret@host:notaport"}, "not a valid redis:// URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRedis(tt.opts)
			if err == nil {
				r.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %q, want it to say %q and hold no password", err, tt.want)
			}
		})
	}
}

func TestRedisReplicasShareOneRateLimit(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.UniquePrefix(t)
	replicas := []*Redis{
		newTestRedis(t, srv, RedisOptions{Prefix: prefix}),
		newTestRedis(t, srv, RedisOptions{Prefix: prefix}),
	}
	ctx := context.Background()
	// Ten tokens, refilling one per 1000 s: nothing refills during the test.
	limit := Limit{Rate: 0.001, Burst: 10}
	allowed := 0
	var refusal Result
	for i := range 40 {
		r, err := replicas[i%2].Allow(ctx, "acme", limit)
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed {
			allowed++
			if r.Limit != 10 || r.Remaining != 10-allowed {
				t.Errorf("request %d: Limit %d Remaining %d, want 10 and %d", i, r.Limit, r.Remaining, 10-allowed)
			}
		} else {
			refusal = r
		}
	}
	if allowed != 10 {
		t.Errorf("two replicas allowed %d requests in total, want the shared burst of 10", allowed)
	}
	if refusal.Key != "acme" || refusal.RetryAfter < 999*time.Second || refusal.RetryAfterSeconds() < 999 {
		t.Errorf("refusal %+v: want key acme and a retry after about 1000 s", refusal)
	}

	// Another tenant is not affected.
	if r, err := replicas[0].Allow(ctx, "globex", limit); err != nil || !r.Allowed {
		t.Errorf("globex: %+v, %v", r, err)
	}
}

func TestRedisReloadKeepsStateForUnchangedLimit(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.UniquePrefix(t)
	ctx := context.Background()
	limit := Limit{Rate: 0.001, Burst: 3}
	before := newTestRedis(t, srv, RedisOptions{Prefix: prefix})
	for range 3 {
		before.Allow(ctx, "acme", limit)
	}
	// A reload rebuilds the policy; even a new backend value (a restarted
	// replica) finds the same state.
	after := newTestRedis(t, srv, RedisOptions{Prefix: prefix})
	if r, err := after.Allow(ctx, "acme", limit); err != nil || r.Allowed {
		t.Fatalf("unchanged limit after reload: %+v, %v; want refused (no fresh burst)", r, err)
	}
	changed := Limit{Rate: 100, Burst: 5}
	if r, err := after.Allow(ctx, "acme", changed); err != nil || !r.Allowed || r.Limit != 5 {
		t.Fatalf("changed limit after reload: %+v, %v; want allowed under the new limit", r, err)
	}
}

func TestRedisAllowBoth(t *testing.T) {
	srv := redistest.Start(t)
	r := newTestRedis(t, srv, RedisOptions{Prefix: redistest.UniquePrefix(t)})
	ctx := context.Background()
	tenant := Bucket{"acme", Limit{Rate: 0.001, Burst: 5}}
	connector := Bucket{"acme|github", Limit{Rate: 0.001, Burst: 2}}

	res, err := r.AllowBoth(ctx, tenant, connector)
	if err != nil || !res.Allowed || res.Key != "acme|github" || res.Remaining != 1 {
		t.Fatalf("first request: %+v, %v; want allowed, reporting the connector with 1 left", res, err)
	}
	r.AllowBoth(ctx, tenant, connector)
	res, err = r.AllowBoth(ctx, tenant, connector)
	if err != nil || res.Allowed || res.Key != "acme|github" || res.RetryAfterSeconds() < 1 {
		t.Fatalf("third request: %+v, %v; want refused by the connector", res, err)
	}
	peek, err := r.Peek(ctx, tenant.Key, tenant.Limit)
	if err != nil || peek.Remaining != 3 {
		t.Errorf("tenant bucket after a connector refusal: %+v, %v; want 3 tokens (none spent on the refusal)", peek, err)
	}

	// The other way round: an empty tenant bucket spends no token of a
	// connector that still has some.
	other := Bucket{"acme|crm", Limit{Rate: 0.001, Burst: 2}}
	for range 3 {
		r.Allow(ctx, tenant.Key, tenant.Limit)
	}
	res, err = r.AllowBoth(ctx, tenant, other)
	if err != nil || res.Allowed || res.Key != "acme" {
		t.Fatalf("with the tenant empty: %+v, %v; want refused by the tenant", res, err)
	}
	if peek, err := r.Peek(ctx, other.Key, other.Limit); err != nil || peek.Remaining != 2 {
		t.Errorf("connector bucket after a tenant refusal: %+v, %v; want 2 tokens", peek, err)
	}
}

func TestRedisKeysCarryPrefix(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.UniquePrefix(t)
	r := newTestRedis(t, srv, RedisOptions{Prefix: prefix})
	ctx := context.Background()
	if _, err := r.Allow(ctx, "acme", Limit{Rate: 1, Burst: 5}); err != nil {
		t.Fatal(err)
	}
	slot, err := r.Acquire(ctx, "acme", 5)
	if err != nil || !slot.Acquired {
		t.Fatalf("Acquire: %+v, %v", slot, err)
	}
	defer slot.Release()
	keys, err := r.client.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Errorf("keys %q, want one rate and one slots key", keys)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix+"rate:acme") && !strings.HasPrefix(k, prefix+"slots:acme") {
			t.Errorf("key %q does not start with the prefix %q", k, prefix)
		}
	}
}

func TestRedisLeasesAreShared(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.UniquePrefix(t)
	a := newTestRedis(t, srv, RedisOptions{Prefix: prefix})
	b := newTestRedis(t, srv, RedisOptions{Prefix: prefix})
	ctx := context.Background()

	sa, err := a.Acquire(ctx, "acme", 2)
	if err != nil || !sa.Acquired {
		t.Fatalf("replica a: %+v, %v", sa, err)
	}
	sb, err := b.Acquire(ctx, "acme", 2)
	if err != nil || !sb.Acquired {
		t.Fatalf("replica b: %+v, %v", sb, err)
	}
	for _, r := range []*Redis{a, b} {
		if s, err := r.Acquire(ctx, "acme", 2); err != nil || s.Acquired {
			t.Fatalf("third slot with max 2: %+v, %v; want refused", s, err)
		}
	}
	if n, err := a.InUse(ctx, "acme"); err != nil || n != 2 {
		t.Errorf("InUse = %d, %v; want 2", n, err)
	}
	sb.Release()
	sb.Release() // idempotent
	s, err := a.Acquire(ctx, "acme", 2)
	if err != nil || !s.Acquired {
		t.Fatalf("after b released: %+v, %v", s, err)
	}
	if again, _ := b.Acquire(ctx, "acme", 2); again.Acquired {
		t.Fatal("a double release freed an extra slot")
	}
	sa.Release()
	s.Release()
	if n, err := b.InUse(ctx, "acme"); err != nil || n != 0 {
		t.Errorf("InUse after all released = %d, %v", n, err)
	}
	if n := len(a.leases) + len(b.leases); n != 0 {
		t.Errorf("%d released leases still refreshed", n)
	}
}

func TestRedisLeaseOfDeadReplicaExpires(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.UniquePrefix(t)
	const ttl = 600 * time.Millisecond
	holder, err := NewRedis(RedisOptions{Addr: srv.Addr, Prefix: prefix, LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	other := newTestRedis(t, srv, RedisOptions{Prefix: prefix, LeaseTTL: ttl})
	ctx := context.Background()

	if s, err := holder.Acquire(ctx, "acme", 1); err != nil || !s.Acquired {
		t.Fatalf("holder: %+v, %v", s, err)
	}
	// While the holder lives it renews its lease: the slot stays taken for
	// several TTLs.
	start := time.Now()
	for time.Since(start) < 3*ttl {
		s, err := other.Acquire(ctx, "acme", 1)
		if err != nil {
			t.Fatal(err)
		}
		if s.Acquired {
			t.Fatalf("slot came free %v after it was taken although its holder renews it", time.Since(start))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The holder dies: it stops renewing and never releases.
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	var slot Slot
	eventually(t, 10*ttl, "the dead replica's lease expires", func() bool {
		slot, err = other.Acquire(ctx, "acme", 1)
		if err != nil {
			t.Fatal(err)
		}
		return slot.Acquired
	})
	slot.Release()
	t.Logf("slot of the dead replica came free %v after it died (lease TTL %v)", time.Since(died), ttl)
}

func TestRedisUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.UniquePrefix(t)
	deny := newTestRedis(t, srv, RedisOptions{Prefix: prefix})
	allow := newTestRedis(t, srv, RedisOptions{Prefix: prefix, OnError: FailOpen})
	ctx := context.Background()
	limit := Limit{Rate: 10, Burst: 10}
	for _, r := range []*Redis{deny, allow} {
		if res, err := r.Allow(ctx, "acme", limit); err != nil || !res.Allowed || res.FailedOpen {
			t.Fatalf("Redis up: %+v, %v", res, err)
		}
	}

	srv.Stop()

	t.Run("deny refuses with ErrUnavailable", func(t *testing.T) {
		if _, err := deny.Allow(ctx, "acme", limit); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Allow: %v, want ErrUnavailable", err)
		}
		if _, err := deny.AllowBoth(ctx, Bucket{"acme", limit}, Bucket{"acme|github", limit}); !errors.Is(err, ErrUnavailable) {
			t.Errorf("AllowBoth: %v, want ErrUnavailable", err)
		}
		if s, err := deny.Acquire(ctx, "acme", 5); !errors.Is(err, ErrUnavailable) || s.Acquired {
			t.Errorf("Acquire: %+v, %v; want not acquired and ErrUnavailable", s, err)
		}
		if _, err := deny.InUse(ctx, "acme"); !errors.Is(err, ErrUnavailable) {
			t.Errorf("InUse: %v, want ErrUnavailable", err)
		}
	})
	t.Run("allow lets through and says so", func(t *testing.T) {
		res, err := allow.Allow(ctx, "acme", limit)
		if err != nil || !res.Allowed || !res.FailedOpen || res.Limit != 0 {
			t.Errorf("Allow: %+v, %v; want allowed, FailedOpen, no RateLimit headers", res, err)
		}
		res, err = allow.AllowBoth(ctx, Bucket{"acme", limit}, Bucket{"acme|github", limit})
		if err != nil || !res.Allowed || !res.FailedOpen {
			t.Errorf("AllowBoth: %+v, %v; want allowed and FailedOpen", res, err)
		}
		s, err := allow.Acquire(ctx, "acme", 5)
		if err != nil || !s.Acquired || !s.FailedOpen {
			t.Errorf("Acquire: %+v, %v; want acquired and FailedOpen", s, err)
		}
		s.Release()
		// Reading usage admits nothing, so it reports the outage.
		if _, err := allow.Peek(ctx, "acme", limit); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Peek: %v, want ErrUnavailable", err)
		}
	})
	t.Run("a request that gave up is not failed open", func(t *testing.T) {
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		res, err := allow.Allow(cancelled, "acme", limit)
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) || res.Allowed {
			t.Errorf("Allow with a cancelled context: %+v, %v; want context.Canceled", res, err)
		}
	})

	srv.Start()

	eventually(t, 10*time.Second, "the deny backend recovers when Redis is back", func() bool {
		res, err := deny.Allow(ctx, "acme", limit)
		return err == nil && res.Allowed && !res.FailedOpen
	})
	eventually(t, 10*time.Second, "the allow backend checks again when Redis is back", func() bool {
		res, err := allow.Allow(ctx, "acme", limit)
		return err == nil && res.Allowed && !res.FailedOpen && res.Limit == 10
	})
	s, err := deny.Acquire(ctx, "acme", 1)
	if err != nil || !s.Acquired {
		t.Fatalf("Acquire after recovery: %+v, %v", s, err)
	}
	s.Release()
}

// A slow Redis, not a down one: the acquire script times out on the
// gateway's side but runs on Redis afterwards. The lease it adds must not
// be left to hold a slot until it expires.
func TestRedisSlowAcquireLeavesNoLease(t *testing.T) {
	srv := redistest.Start(t, "--enable-debug-command", "yes")
	r := newTestRedis(t, srv, RedisOptions{Prefix: redistest.UniquePrefix(t), Timeout: 100 * time.Millisecond, LeaseTTL: time.Minute, OnError: FailOpen})
	ctx := context.Background()
	// Load the script first, as a running gateway has: otherwise the
	// stalled call is an EVALSHA that finds no script and adds nothing.
	warm, err := r.Acquire(ctx, "acme", 2)
	if err != nil || !warm.Acquired {
		t.Fatalf("warm-up Acquire: %+v, %v", warm, err)
	}
	warm.Release()
	stall := redis.NewClient(&redis.Options{Addr: srv.Addr, DisableIdentity: true})
	defer stall.Close()
	slept := make(chan error, 1)
	go func() { slept <- stall.Do(ctx, "DEBUG", "SLEEP", "0.8").Err() }()
	time.Sleep(100 * time.Millisecond) // the sleep has begun: Redis answers nothing until it ends

	s, err := r.Acquire(ctx, "acme", 2)
	if err != nil || !s.Acquired || !s.FailedOpen {
		t.Fatalf("Acquire against a stalled Redis: %+v, %v; want failed open", s, err)
	}
	s.Release()
	if err := <-slept; err != nil {
		t.Fatalf("DEBUG SLEEP: %v", err)
	}
	eventually(t, 5*time.Second, "no lease left once Redis answers again", func() bool {
		n, err := r.InUse(ctx, "acme")
		return err == nil && n == 0
	})
	if s, err := r.Acquire(ctx, "acme", 2); err != nil || !s.Acquired || s.FailedOpen {
		t.Fatalf("Acquire after the stall: %+v, %v; want a real slot", s, err)
	}
}

// A Redis restart without persistence loses every lease: the replica
// that holds them re-creates them as it reconnects, before its first
// command on the new connection, and reconnects within a second even if
// it has nothing else to send, so the cap holds across replicas.
func TestRedisRestartRecreatesLeases(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.UniquePrefix(t)
	// Renewals every 20 s: within this test only the reconnect can bring
	// the leases back.
	holder := newTestRedis(t, srv, RedisOptions{Prefix: prefix, LeaseTTL: time.Minute})
	other := newTestRedis(t, srv, RedisOptions{Prefix: prefix, LeaseTTL: time.Minute})
	ctx := context.Background()
	const max = 20
	for i := range max {
		if s, err := holder.Acquire(ctx, "acme", max); err != nil || !s.Acquired {
			t.Fatalf("slot %d: %+v, %v", i, s, err)
		}
	}
	refused := func(who string, r *Redis) {
		t.Helper()
		s, err := r.Acquire(ctx, "acme", max)
		if err != nil || s.Acquired {
			n, _ := other.InUse(ctx, "acme")
			t.Fatalf("%s: acquire beyond the cap after the restart: %+v, %v; want refused (Redis counts %d)", who, s, err, n)
		}
	}

	srv.Stop()
	srv.Start()
	// The holder's own next acquire is decided with its leases back.
	refused("holder, at once", holder)
	refused("other", other)

	srv.Stop()
	srv.Start()
	// Another replica finds them back within the heartbeat, although the
	// holder sends nothing meanwhile.
	eventually(t, 5*time.Second, "the held leases are counted again without the holder's traffic", func() bool {
		n, err := other.InUse(ctx, "acme")
		return err == nil && n == max
	})
	refused("other", other)
	refused("holder", holder)
}

// After Redis hangs, no request is refused for slots that are not in use:
// releases that failed during the hang and acquires given up on (which
// Redis still runs when it wakes) leave no lease behind.
func TestRedisHangLeavesNoStaleLeases(t *testing.T) {
	srv := redistest.Start(t, "--enable-debug-command", "yes")
	r := newTestRedis(t, srv, RedisOptions{Prefix: redistest.UniquePrefix(t), Timeout: 100 * time.Millisecond, LeaseTTL: time.Minute})
	ctx := context.Background()
	const max = 10
	var held []Slot
	for i := range 6 {
		s, err := r.Acquire(ctx, "acme", max)
		if err != nil || !s.Acquired {
			t.Fatalf("slot %d: %+v, %v", i, s, err)
		}
		held = append(held, s)
	}

	stall := redis.NewClient(&redis.Options{Addr: srv.Addr, DisableIdentity: true})
	defer stall.Close()
	slept := make(chan error, 1)
	go func() { slept <- stall.Do(ctx, "DEBUG", "SLEEP", "1.5").Err() }()
	time.Sleep(100 * time.Millisecond) // the sleep has begun

	// During the hang: four requests end, and four more try to start.
	var wg sync.WaitGroup
	for _, s := range held[2:] {
		wg.Go(s.Release)
	}
	for range 4 {
		wg.Go(func() {
			if s, err := r.Acquire(ctx, "acme", max); err == nil || s.Acquired {
				t.Errorf("Acquire against a hung Redis: %+v, %v; want quota unavailable", s, err)
			}
		})
	}
	wg.Wait()
	if err := <-slept; err != nil {
		t.Fatalf("DEBUG SLEEP: %v", err)
	}

	// Two slots are in use: eight more must be granted at once, the ninth
	// refused.
	for i := range max - 2 {
		s, err := r.Acquire(ctx, "acme", max)
		if err != nil || !s.Acquired {
			n, _ := r.InUse(ctx, "acme")
			t.Fatalf("acquire %d after the hang with 2 of %d slots in use: %+v, %v (Redis counts %d)", i+1, max, s, err, n)
		}
	}
	if s, err := r.Acquire(ctx, "acme", max); err != nil || s.Acquired {
		t.Fatalf("acquire beyond the cap: %+v, %v; want refused", s, err)
	}
	// Nothing the hang left behind comes back later either.
	time.Sleep(300 * time.Millisecond)
	if n, err := r.InUse(ctx, "acme"); err != nil || n != max {
		t.Errorf("InUse %d, %v; want %d", n, err, max)
	}
}
