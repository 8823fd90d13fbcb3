package state

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/egressgw/egressgw/internal/redistest"

	"github.com/redis/go-redis/v9"
)

func newTestRedis(tb testing.TB, addr, prefix string, opts Options) *Redis {
	tb.Helper()
	r, err := NewRedis(RedisOptions{Options: opts, Addr: addr, Prefix: prefix, Timeout: time.Second})
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

func TestRedisContract(t *testing.T) {
	srv := redistest.Start(t)
	testStoreContract(t, func(t *testing.T, opts Options) Store {
		return newTestRedis(t, srv.Addr, redistest.UniquePrefix(t), opts)
	})
}

// Two replicas on one Redis see each other's requests and grants, and
// learn of a change by polling the version.
func TestRedisReplicasShareState(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	prefix := redistest.UniquePrefix(t)
	a := newTestRedis(t, srv.Addr, prefix, Options{})
	b := newTestRedis(t, srv.Addr, prefix, Options{})

	refA, err := a.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "pypi.org", Port: 443})
	if err != nil {
		t.Fatal(err)
	}
	refB, err := b.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "pypi.org", Port: 443})
	if err != nil || refB != refA {
		t.Fatalf("replica b: %+v, %v; want the same request %+v", refB, err, refA)
	}
	rs, err := b.ListRequests(ctx, Filter{})
	if err != nil || len(rs) != 1 || rs[0].Count != 2 {
		t.Fatalf("replica b lists %+v, %v; want one request counted twice", rs, err)
	}

	seen, err := b.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g, err := a.Approve(ctx, refA.ID, GrantSpec{ExpiresAt: time.Now().Add(time.Hour), By: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	// What a replica does: poll the version each second, re-read grants
	// when it changed.
	waitGrants := func(want int) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			v, err := b.Version(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if v != seen {
				seen = v
				gs, err := b.Grants(ctx, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				if len(gs) == want {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica b did not see %d grants within 2s", want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitGrants(1)
	if err := b.RevokeGrant(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	if gs, err := a.Grants(ctx, time.Now()); err != nil || len(gs) != 0 {
		t.Fatalf("replica a after b revoked: %+v, %v", gs, err)
	}
	g2, err := b.AddGrant(ctx, GrantSpec{Tenant: "t2", Host: "*.example.com", Ports: []int{443}, ExpiresAt: time.Now().Add(time.Hour), By: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	if gs, err := a.Grants(ctx, time.Now()); err != nil || len(gs) != 1 || gs[0].ID != g2.ID {
		t.Fatalf("replica a sees %+v, %v; want %s", gs, err, g2.ID)
	}
}

// A grant's key expires with it in Redis itself, whichever replica reads.
func TestRedisGrantKeyExpiresWithGrant(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	prefix := redistest.UniquePrefix(t)
	s := newTestRedis(t, srv.Addr, prefix, Options{})
	exp := time.Now().Add(90 * time.Minute).Truncate(time.Millisecond).Add(123 * time.Millisecond)
	g, err := s.AddGrant(ctx, GrantSpec{Tenant: "t1", Host: "a.example", Ports: []int{443}, ExpiresAt: exp, By: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	at, err := s.client.PExpireTime(ctx, prefix+"access:grant:"+g.ID).Result()
	if err != nil {
		t.Fatal(err)
	}
	if got := time.UnixMilli(int64(at / time.Millisecond)); !got.Equal(exp) {
		t.Fatalf("grant key expires at %v, want %v", got, exp)
	}
}

// An unreadable store grants nothing: Redis down, or a stored grant that
// does not decode.
func TestRedisFailsClosed(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	prefix := redistest.UniquePrefix(t)
	s := newTestRedis(t, srv.Addr, prefix, Options{})
	good, err := s.AddGrant(ctx, GrantSpec{Tenant: "t1", Host: "a.example", Ports: []int{443}, ExpiresAt: time.Now().Add(time.Hour), By: "admin"})
	if err != nil {
		t.Fatal(err)
	}

	for name, value := range map[string]string{
		"not json":      "{garbage",
		"unknown field": `{"id":"X","extra":1}`,
		"port 0":        `{"id":"gr_bad","tenant":"t1","host":"b.example","ports":[0],"expires_at":"2999-01-01T00:00:00Z","created_at":"2026-01-01T00:00:00Z","approved_by":"a"}`,
		"wrong id":      `{"id":"gr_other","tenant":"t1","host":"b.example","ports":[443],"expires_at":"2999-01-01T00:00:00Z","created_at":"2026-01-01T00:00:00Z","approved_by":"a"}`,
	} {
		t.Run(name, func(t *testing.T) {
			if err := s.client.Set(ctx, prefix+"access:grant:gr_bad", value, time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
			if err := s.client.ZAdd(ctx, prefix+"access:grants", redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: "gr_bad"}).Err(); err != nil {
				t.Fatal(err)
			}
			gs, err := s.Grants(ctx, time.Now())
			if !errors.Is(err, ErrCorrupt) || gs != nil {
				t.Fatalf("Grants with a corrupt grant beside %s: %+v, %v; want none and ErrCorrupt", good.ID, gs, err)
			}
		})
	}
	if err := s.client.Del(ctx, prefix+"access:grant:gr_bad").Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.client.HSet(ctx, prefix+"access:req:bad", "id", "req_x", "tenant", "t", "host", "h", "port", "99999", "count", "1", "status", "pending").Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.client.ZAdd(ctx, prefix+"access:seen", redis.Z{Score: 1, Member: "bad"}).Err(); err != nil {
		t.Fatal(err)
	}
	if rs, err := s.ListRequests(ctx, Filter{}); !errors.Is(err, ErrCorrupt) || rs != nil {
		t.Fatalf("ListRequests with a corrupt request: %+v, %v; want ErrCorrupt", rs, err)
	}

	srv.Stop()
	if gs, err := s.Grants(ctx, time.Now()); err == nil || gs != nil {
		t.Fatalf("Grants with Redis down: %+v, %v; want an error and none", gs, err)
	}
	if _, err := s.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "a.example", Port: 443}); err == nil {
		t.Fatal("RecordRefusal with Redis down: no error")
	}
	if _, err := s.Version(ctx); err == nil {
		t.Fatal("Version with Redis down: no error")
	}
}

func TestNewRedisRefusesBadAddr(t *testing.T) {
	for _, addr := range []string{"", "redis://user:secret@[::1"} {
		_, err := NewRedis(RedisOptions{Addr: addr})
		if err == nil {
			t.Errorf("NewRedis(%q): no error", addr)
			continue
		}
		if bytes.Contains([]byte(err.Error()), []byte("secret")) {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

// A Redis that lost its data (a restart without persistence) must not count
// the version back up to a value a replica saw before: that replica would
// keep applying grants Redis no longer has.
func TestRedisVersionAfterDataLoss(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	prefix := redistest.UniquePrefix(t)
	s := newTestRedis(t, srv.Addr, prefix, Options{})
	changes := func() uint64 {
		t.Helper()
		ref, err := s.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "a.example", Port: 443})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Approve(ctx, ref.ID, GrantSpec{ExpiresAt: time.Now().Add(time.Hour), By: "a"}); err != nil {
			t.Fatal(err)
		}
		v, err := s.Version(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	before := changes()
	if err := s.client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Version(ctx); err != nil || v == before {
		t.Fatalf("version %d after the data was lost, %v; want a change from %d", v, err, before)
	}
	if after := changes(); after == before {
		t.Fatalf("the same changes after a data loss brought the version back to %d", before)
	}
}
