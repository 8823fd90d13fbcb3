package budget

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is an injected clock the tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(s string) *clock {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return &clock{t: t}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(s string) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// newTestLedger is a Ledger flushed only by hand, on b (nil: memory).
func newTestLedger(t *testing.T, c *clock, b Backend, warn func(Warning)) *Ledger {
	t.Helper()
	l := New(Options{Backend: b, Now: c.Now, FlushEvery: -1, Currency: "USD", OnWarn: warn})
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func admitN(t *testing.T, m *Meter, now time.Time, n int) (allowed int, refusal Refusal) {
	t.Helper()
	for range n {
		r, err := m.Admit(context.Background(), now)
		if err != nil {
			t.Fatal(err)
		}
		if r.Refused() {
			return allowed, r
		}
		allowed++
	}
	return allowed, Refusal{}
}

func TestRequestBudgetExhaustsExactly(t *testing.T) {
	c := newClock("2026-05-10T10:20:00Z")
	l := newTestLedger(t, c, nil, nil)
	l.SetBudgets(map[string][]Budget{"acme": {{Name: "daily", Period: Day, Limit: Usage{Requests: 5}}}})
	m := l.Meter(Source{Tenant: "acme"})
	allowed, r := admitN(t, m, c.Now(), 6)
	if allowed != 5 || !r.Refused() {
		t.Fatalf("allowed %d then refusal %+v; want 5 then a refusal", allowed, r)
	}
	if r.Budget != "daily" || r.Period != Day || !r.Reset.Equal(time.Date(2026, 5, 11, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("refusal %+v: want budget daily, reset at the next UTC midnight", r)
	}
	st, err := l.Budgets(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Used.Requests != 5 || !st[0].Exhausted {
		t.Errorf("status %+v: want 5 used, exhausted (the refused request is not counted)", st[0])
	}
}

func TestRequestBudgetExactUnderConcurrency(t *testing.T) {
	c := newClock("2026-05-10T10:20:00Z")
	l := newTestLedger(t, c, nil, nil)
	const limit = 1000
	l.SetBudgets(map[string][]Budget{"acme": {
		{Name: "roomy", Period: Month, Limit: Usage{Requests: 10 * limit}},
		{Name: "daily", Period: Day, Limit: Usage{Requests: limit}},
		{Name: "hourly", Period: Hour, Limit: Usage{Requests: 5 * limit}},
	}})
	m := l.Meter(Source{Tenant: "acme"})
	var allowed atomic.Int64
	var wg sync.WaitGroup
	stopFlushing := make(chan struct{})
	go func() { // flushes race with admissions, as the flusher's would
		for {
			select {
			case <-stopFlushing:
				return
			default:
				_ = l.Flush(context.Background())
			}
		}
	}()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				r, err := m.Admit(context.Background(), c.Now())
				if err != nil {
					t.Error(err)
					return
				}
				if !r.Refused() {
					allowed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(stopFlushing)
	if allowed.Load() != limit {
		t.Fatalf("allowed %d of 3200 concurrent requests; want exactly %d", allowed.Load(), limit)
	}
	st, err := l.Budgets(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Used.Requests != limit {
			t.Errorf("budget %s used %d; want %d: refused requests were rolled back", s.Name, s.Used.Requests, limit)
		}
	}
}

func TestBudgetRollsOverAtPeriodEnd(t *testing.T) {
	c := newClock("2026-02-28T23:59:00Z")
	l := newTestLedger(t, c, nil, nil)
	l.SetBudgets(map[string][]Budget{"acme": {
		{Name: "hourly", Period: Hour, Limit: Usage{Requests: 2}},
		{Name: "monthly", Period: Month, Limit: Usage{Requests: 3}},
	}})
	m := l.Meter(Source{Tenant: "acme"})
	if allowed, r := admitN(t, m, c.Now(), 3); allowed != 2 || r.Budget != "hourly" {
		t.Fatalf("allowed %d, refused by %q; want 2, hourly", allowed, r.Budget)
	}
	c.set("2026-02-28T23:59:59Z")
	if _, err := l.Budgets(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if allowed, _ := admitN(t, m, c.Now(), 1); allowed != 0 {
		t.Fatal("a spent hour let a request through before it ended")
	}
	c.set("2026-03-01T00:00:00Z") // a new hour and a new month
	if allowed, r := admitN(t, m, c.Now(), 3); allowed != 2 || r.Budget != "hourly" {
		t.Fatalf("after rollover allowed %d, refused by %q; want 2 then hourly", allowed, r.Budget)
	}
	c.set("2026-03-01T01:00:00Z")
	if allowed, r := admitN(t, m, c.Now(), 3); allowed != 1 || r.Budget != "monthly" {
		t.Fatalf("next hour allowed %d, refused by %q; want 1 then monthly", allowed, r.Budget)
	}
	if !r0(t, l).Reset.Equal(time.Date(2026, 3, 1, 2, 0, 0, 0, time.UTC)) {
		t.Errorf("hourly resets at %v", r0(t, l).Reset)
	}
}

func r0(t *testing.T, l *Ledger) Status {
	st, err := l.Budgets(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	return st[0]
}

func TestByteAndCostBudgets(t *testing.T) {
	c := newClock("2026-05-10T10:20:00Z")
	l := newTestLedger(t, c, nil, nil)
	l.SetBudgets(map[string][]Budget{"acme": {
		{Name: "egress", Period: Day, Limit: Usage{Egress: 1000}, Connectors: []string{"openai"}},
		{Name: "spend", Period: Day, Limit: Usage{Cost: 0.01}},
	}})
	openai := l.Meter(Source{Tenant: "acme", Connector: "openai", Version: 2, Price: Price{PerRequest: 0.002}})
	rules := l.Meter(Source{Tenant: "acme"})
	if openai.Budgets() != 2 || rules.Budgets() != 1 {
		t.Fatalf("openai under %d budgets, rules under %d; want 2 and 1", openai.Budgets(), rules.Budgets())
	}
	if _, r := admitN(t, openai, c.Now(), 1); r.Refused() {
		t.Fatal(r)
	}
	if openai.Charge(999, 0) {
		t.Fatal("999 of 1000 bytes: spent")
	}
	if rules.Charge(5000, 0) {
		t.Fatal("rules traffic spent the openai egress budget")
	}
	if !openai.Charge(1, 0) {
		t.Fatal("1000 of 1000 bytes: not spent")
	}
	if _, r := admitN(t, openai, c.Now(), 1); r.Budget != "egress" {
		t.Fatalf("refusal %+v; want egress", r)
	}
	// The cost budget: 0.002 a request, 0.01 in all: four more fit.
	if allowed, r := admitN(t, rules, c.Now(), 10); allowed != 10 || r.Refused() {
		t.Fatalf("rules traffic costs nothing, yet allowed %d, %+v", allowed, r)
	}
	l.SetBudgets(map[string][]Budget{"acme": {{Name: "spend", Period: Day, Limit: Usage{Cost: 0.01}}}})
	openai = l.Meter(Source{Tenant: "acme", Connector: "openai", Version: 2, Price: Price{PerRequest: 0.002}})
	if allowed, r := admitN(t, openai, c.Now(), 10); allowed != 4 || r.Budget != "spend" {
		t.Fatalf("allowed %d, refusal %+v; want 4 (0.002 + 4 x 0.002 = 0.01), then spend", allowed, r)
	}
	st, err := l.Statement(context.Background(), "acme", Day, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Lines) != 2 || st.Lines[0].Connector != "openai" || st.Lines[0].Version != 2 || st.Lines[1].Connector != "" {
		t.Fatalf("lines %+v: want openai@2 then the rules' line", st.Lines)
	}
	if st.Lines[0].Requests != 5 || st.Lines[0].Egress != 1000 || math.Abs(st.Lines[0].Cost-0.01) > 1e-12 {
		t.Errorf("openai line %+v: want 5 requests, 1000 bytes out, cost 0.01", st.Lines[0])
	}
	if st.Total.Requests != 15 || st.Total.Egress != 6000 || st.Currency != "USD" {
		t.Errorf("total %+v %s", st.Total, st.Currency)
	}
}

func TestWarnCrossedOncePerPeriod(t *testing.T) {
	c := newClock("2026-05-10T10:20:00Z")
	var mu sync.Mutex
	var warnings []Warning
	l := newTestLedger(t, c, nil, func(w Warning) {
		mu.Lock()
		defer mu.Unlock()
		warnings = append(warnings, w)
	})
	l.SetBudgets(map[string][]Budget{"acme": {{Name: "daily", Period: Day, WarnAt: 0.8, Limit: Usage{Requests: 10, Egress: 100}}}})
	m := l.Meter(Source{Tenant: "acme"})
	tests := []struct {
		name     string
		act      func()
		want     int
		wantKind string
	}{
		{"below", func() { admitN(t, m, c.Now(), 7) }, 0, ""},
		{"crossing 8 of 10 requests", func() { admitN(t, m, c.Now(), 1) }, 1, "requests"},
		{"past it again", func() { admitN(t, m, c.Now(), 2) }, 1, ""},
		{"egress crossing", func() { m.Charge(90, 0) }, 2, "egress"},
		{"egress again", func() { m.Charge(5, 0) }, 2, ""},
		{"next day, crossing again", func() { c.set("2026-05-11T00:00:00Z"); admitN(t, m, c.Now(), 8) }, 3, "requests"},
	}
	for _, tc := range tests {
		tc.act()
		mu.Lock()
		got := len(warnings)
		var last Warning
		if got > 0 {
			last = warnings[got-1]
		}
		mu.Unlock()
		if got != tc.want {
			t.Fatalf("%s: %d warnings; want %d", tc.name, got, tc.want)
		}
		if tc.wantKind != "" && (last.Kind != tc.wantKind || last.Budget != "daily" || last.Tenant != "acme") {
			t.Errorf("%s: warning %+v", tc.name, last)
		}
	}
}

func TestReloadKeepsCounts(t *testing.T) {
	c := newClock("2026-05-10T10:20:00Z")
	l := newTestLedger(t, c, nil, nil)
	l.SetBudgets(map[string][]Budget{"acme": {{Name: "daily", Period: Day, Limit: Usage{Requests: 5}}}})
	admitN(t, l.Meter(Source{Tenant: "acme", Connector: "gh", Version: 1}), c.Now(), 3)
	// A reload: a new version of the connector and a higher limit.
	l.SetBudgets(map[string][]Budget{"acme": {{Name: "daily", Period: Day, Limit: Usage{Requests: 6}}}})
	if allowed, _ := admitN(t, l.Meter(Source{Tenant: "acme", Connector: "gh", Version: 2}), c.Now(), 5); allowed != 3 {
		t.Fatalf("after the reload allowed %d; want 3 (6 less the 3 counted before)", allowed)
	}
}

// failingBackend fails every call while down is set.
type failingBackend struct {
	*Memory
	down atomic.Bool
}

func (f *failingBackend) Add(ctx context.Context, d []Delta) error {
	if f.down.Load() {
		return errors.New("connection refused")
	}
	return f.Memory.Add(ctx, d)
}

func (f *failingBackend) Counts(ctx context.Context, k []Key) ([]Counts, error) {
	if f.down.Load() {
		return nil, errors.New("connection refused")
	}
	return f.Memory.Counts(ctx, k)
}

func TestUnreadableCountersFailClosedAndKeepCounts(t *testing.T) {
	c := newClock("2026-05-10T10:20:00Z")
	b := &failingBackend{Memory: NewMemory(c.Now)}
	l := newTestLedger(t, c, b, nil)
	l.SetBudgets(map[string][]Budget{"acme": {{Name: "daily", Period: Day, Limit: Usage{Requests: 5}}}})
	m := l.Meter(Source{Tenant: "acme"})
	free := l.Meter(Source{Tenant: "other"})
	b.down.Store(true)
	if _, err := m.Admit(context.Background(), c.Now()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("first read of a budget with the backend down: %v; want ErrUnavailable", err)
	}
	b.down.Store(false)
	admitN(t, m, c.Now(), 3)
	b.down.Store(true)
	if err := l.Flush(context.Background()); err == nil {
		t.Fatal("flush with the backend down succeeded")
	}
	if _, err := m.Admit(context.Background(), c.Now()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("admit after a failed flush: %v; want ErrUnavailable", err)
	}
	if r, err := free.Admit(context.Background(), c.Now()); err != nil || r.Refused() {
		t.Fatalf("a tenant without budgets: %v %+v; want admitted", err, r)
	}
	b.down.Store(false)
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	counts, _ := b.Memory.Counts(context.Background(), []Key{{Tenant: "acme", Budget: "daily", Period: Day, Start: time.Date(2026, 5, 10, 0, 0, 0, 0, time.UTC)}})
	if counts[0][requests] != 3 {
		t.Fatalf("backend holds %d requests after recovery; want 3, sent once", counts[0][requests])
	}
	if allowed, _ := admitN(t, m, c.Now(), 5); allowed != 2 {
		t.Fatalf("allowed %d after recovery; want 2", allowed)
	}
}

func TestFileCountersSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	c := newClock("2026-05-10T10:20:00Z")
	budgets := map[string][]Budget{"acme": {{Name: "daily", Period: Day, Limit: Usage{Requests: 5, Egress: 1 << 20}}}}
	open := func() *Ledger {
		f, err := NewFile(dir, c.Now)
		if err != nil {
			t.Fatal(err)
		}
		l := New(Options{Backend: f, Now: c.Now, FlushEvery: -1})
		l.SetBudgets(budgets)
		return l
	}
	l := open()
	m := l.Meter(Source{Tenant: "acme", Connector: "gh", Version: 3, Price: Price{PerGiBEgress: 1}})
	admitN(t, m, c.Now(), 3)
	m.Charge(1000, 2000)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open()
	defer l.Close()
	m = l.Meter(Source{Tenant: "acme", Connector: "gh", Version: 3})
	if allowed, _ := admitN(t, m, c.Now(), 5); allowed != 2 {
		t.Fatalf("after reopening allowed %d; want 2 of 5", allowed)
	}
	st, err := l.Statement(context.Background(), "acme", Month, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Lines) != 1 || st.Lines[0].Requests != 5 || st.Lines[0].Egress != 1000 || st.Lines[0].Ingress != 2000 {
		t.Fatalf("statement lines %+v", st.Lines)
	}
}

func TestFileCountersUnreadableRefused(t *testing.T) {
	dir := t.TempDir()
	if err := writeAtomic(dir, CountersFile, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFile(dir, nil); err == nil || !strings.Contains(err.Error(), CountersFile) {
		t.Fatalf("NewFile on a broken file: %v; want an error naming it, never a fresh start", err)
	}
}

func TestCountWhileUnavailableIsKept(t *testing.T) {
	c := newClock("2026-05-10T10:20:00Z")
	b := &failingBackend{Memory: NewMemory(c.Now)}
	l := newTestLedger(t, c, b, nil)
	l.SetBudgets(map[string][]Budget{"acme": {{Name: "daily", Period: Day, Limit: Usage{Requests: 5}}}})
	m := l.Meter(Source{Tenant: "acme"})
	admitN(t, m, c.Now(), 1)
	b.down.Store(true)
	if err := l.Flush(context.Background()); err == nil {
		t.Fatal("flush succeeded with the backend down")
	}
	m.Count(c.Now()) // let through unchecked
	m.Count(c.Now())
	b.down.Store(false)
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if allowed, _ := admitN(t, m, c.Now(), 5); allowed != 2 {
		t.Fatalf("allowed %d after 3 counted; want 2", allowed)
	}
}
