package budget

import (
	"context"
	"testing"
	"time"

	"github.com/egressgw/egressgw/internal/redistest"
	"github.com/redis/go-redis/v9"
)

func TestRedisReplicasSpendOneBudget(t *testing.T) {
	srv := redistest.Start(t)
	prefix := redistest.UniquePrefix(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { client.Close() })
	// Redis expires keys by its own clock: the test's is now.
	c := &clock{t: time.Now().UTC()}
	budgets := map[string][]Budget{"acme": {{Name: "daily", Period: Day, Limit: Usage{Requests: 10}}}}
	replica := func() (*Ledger, *Meter) {
		l := newTestLedger(t, c, NewRedis(client, prefix), nil)
		l.SetBudgets(budgets)
		return l, l.Meter(Source{Tenant: "acme", Connector: "gh", Version: 1, Price: Price{PerRequest: 0.5}})
	}
	a, ma := replica()
	b, mb := replica()
	if allowed, _ := admitN(t, ma, c.Now(), 6); allowed != 6 {
		t.Fatalf("replica a allowed %d of 6", allowed)
	}
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// b reads the shared count on its first request of the period.
	if allowed, r := admitN(t, mb, c.Now(), 6); allowed != 4 || r.Budget != "daily" {
		t.Fatalf("replica b allowed %d after a's 6 were flushed; want 4", allowed)
	}
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if allowed, _ := admitN(t, ma, c.Now(), 1); allowed != 0 {
		t.Fatal("replica a admitted past the shared limit after a flush")
	}
	st, err := a.Statement(context.Background(), "acme", Day, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Lines) != 1 || st.Lines[0].Requests != 10 || st.Lines[0].Cost != 5 {
		t.Fatalf("shared statement %+v; want one line, 10 requests costing 5", st.Lines)
	}
	ttl, err := client.TTL(context.Background(), prefix+"budget:budgets:acme:day:"+itoa(dayStart(c.Now()).Unix())).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Expiry is set from the period's end, 40 days after it.
	if ttl < 39*24*time.Hour || ttl > 41*24*time.Hour {
		t.Fatalf("budget key has TTL %v; want an expiry", ttl)
	}
}

func TestRedisDownFailsClosed(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { client.Close() })
	c := newClock("2026-05-10T10:20:00Z")
	l := newTestLedger(t, c, NewRedis(client, redistest.UniquePrefix(t)), nil)
	l.SetBudgets(map[string][]Budget{"acme": {{Name: "daily", Period: Day, Limit: Usage{Requests: 10}}}})
	m := l.Meter(Source{Tenant: "acme"})
	admitN(t, m, c.Now(), 2)
	srv.Stop()
	if err := l.Flush(context.Background()); err == nil {
		t.Fatal("flush to a stopped redis succeeded")
	}
	if _, err := m.Admit(context.Background(), c.Now()); err == nil {
		t.Fatal("admitted while the counters could not be written")
	}
}

func dayStart(t time.Time) time.Time { s, _ := Day.Bounds(t); return s }

func itoa(n int64) string { return formatInt(n) }

func formatInt(n int64) string {
	var buf [20]byte
	i := len(buf)
	for n > 0 {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
	}
	return string(buf[i:])
}
