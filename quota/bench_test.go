package quota

import (
	"context"
	"strconv"
	"testing"

	"github.com/egressgw/egressgw/internal/redistest"
)

// The admit step runs on every request: these measure what it adds. The
// memory benchmarks use the real clock, as the gateway does.

// plenty never runs out during a benchmark, so every call takes the
// allowing path (the refusing one does the same work).
var plenty = Limit{Rate: 1e9, Burst: 1e9}

func BenchmarkMemoryAllow(b *testing.B) {
	m := NewMemory(MemoryOptions{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if r, err := m.Allow(ctx, "acme", plenty); err != nil || !r.Allowed {
			b.Fatal(r, err)
		}
	}
}

func BenchmarkMemoryAllowBoth(b *testing.B) {
	m := NewMemory(MemoryOptions{})
	ctx := context.Background()
	tenant, connector := Bucket{"acme", plenty}, Bucket{"acme|github", plenty}
	b.ReportAllocs()
	for b.Loop() {
		if r, err := m.AllowBoth(ctx, tenant, connector); err != nil || !r.Allowed {
			b.Fatal(r, err)
		}
	}
}

// BenchmarkMemoryAllowParallel is many tenants' requests at once on all
// cores: it shows what the single lock costs under contention.
func BenchmarkMemoryAllowParallel(b *testing.B) {
	m := NewMemory(MemoryOptions{})
	ctx := context.Background()
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = "tenant-" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			m.Allow(ctx, keys[i%len(keys)], plenty)
		}
	})
}

func BenchmarkMemoryAcquire(b *testing.B) {
	m := NewMemory(MemoryOptions{})
	ctx := context.Background()
	// Other requests of the tenant hold slots, as they would.
	for range 10 {
		m.Acquire(ctx, "acme", 1000)
	}
	b.ReportAllocs()
	for b.Loop() {
		s, err := m.Acquire(ctx, "acme", 1000)
		if err != nil || !s.Acquired {
			b.Fatal(s, err)
		}
		s.Release()
	}
}

func BenchmarkRedisAllow(b *testing.B) {
	srv := redistest.Start(b)
	r := newTestRedis(b, srv, RedisOptions{Prefix: redistest.UniquePrefix(b)})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if res, err := r.Allow(ctx, "acme", plenty); err != nil || !res.Allowed {
			b.Fatal(res, err)
		}
	}
}

func BenchmarkRedisAllowBoth(b *testing.B) {
	srv := redistest.Start(b)
	r := newTestRedis(b, srv, RedisOptions{Prefix: redistest.UniquePrefix(b)})
	ctx := context.Background()
	tenant, connector := Bucket{"acme", plenty}, Bucket{"acme|github", plenty}
	b.ReportAllocs()
	for b.Loop() {
		if res, err := r.AllowBoth(ctx, tenant, connector); err != nil || !res.Allowed {
			b.Fatal(res, err)
		}
	}
}

// BenchmarkRedisAcquire is one slot taken and given back: two round trips.
func BenchmarkRedisAcquire(b *testing.B) {
	srv := redistest.Start(b)
	r := newTestRedis(b, srv, RedisOptions{Prefix: redistest.UniquePrefix(b)})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		s, err := r.Acquire(ctx, "acme", 1000)
		if err != nil || !s.Acquired {
			b.Fatal(s, err)
		}
		s.Release()
	}
}
