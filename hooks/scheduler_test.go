package hooks

import (
	"context"
	"slices"
	"sync"
	"testing"
)

// The scheduler serves tenants in turn, whatever the length of their
// queues: after A's first waiter, B's single waiter goes next.
func TestSchedulerTakesTurns(t *testing.T) {
	only := &slot{}
	s := newScheduler([]*slot{only})
	held, err := s.acquire(context.Background(), "holder")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)
	queued := func(tenant string) int {
		s.mu.Lock()
		defer s.mu.Unlock()
		if q := s.queues[tenant]; q != nil {
			return len(q.waiters)
		}
		return 0
	}
	enqueue := func(tenant, name string) {
		before := queued(tenant)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sl, err := s.acquire(context.Background(), tenant)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			s.release(sl)
		}()
		waitFor(t, name+" to queue", func() bool { return queued(tenant) > before })
	}
	enqueue("a", "a1")
	enqueue("a", "a2")
	enqueue("a", "a3")
	enqueue("b", "b1")
	enqueue("c", "c1")
	s.release(held)
	wg.Wait()
	if want := []string{"a1", "b1", "c1", "a2", "a3"}; !slices.Equal(order, want) {
		t.Errorf("served %v, want %v", order, want)
	}
	if len(s.queues) != 0 || len(s.turns) != 0 {
		t.Errorf("scheduler kept state for tenants without waiters: %v %v", s.queues, s.turns)
	}
}

// A waiter that gives up leaves no trace, and a slot granted to it at the
// same moment is passed on rather than lost.
func TestSchedulerCancelledWaiter(t *testing.T) {
	only := &slot{}
	s := newScheduler([]*slot{only})
	held, _ := s.acquire(context.Background(), "holder")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := s.acquire(ctx, "a")
		done <- err
	}()
	waitFor(t, "a to queue", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.turns) == 1
	})
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("acquire: %v, want context.Canceled", err)
	}
	s.release(held)
	sl, err := s.acquire(context.Background(), "b")
	if err != nil || sl != only {
		t.Fatalf("slot lost after a cancelled waiter: %v", err)
	}
	if len(s.queues) != 0 || len(s.turns) != 0 {
		t.Errorf("state left behind: %v %v", s.queues, s.turns)
	}
}

// A tenant holding fewer slots goes first, even if it queued later.
func TestSchedulerPrefersTenantHoldingLess(t *testing.T) {
	s := newScheduler([]*slot{{}, {}})
	first, _ := s.acquire(context.Background(), "a")
	second, _ := s.acquire(context.Background(), "a")
	got := make(chan string, 2)
	for _, tenant := range []string{"a", "b"} {
		go func() {
			sl, err := s.acquire(context.Background(), tenant)
			if err != nil {
				t.Error(err)
			}
			got <- tenant
			_ = sl // held until the end of the test
		}()
		waitFor(t, tenant+" to queue", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.queues[tenant] != nil
		})
	}
	s.release(first) // a still holds one, b none: b goes first
	if tenant := <-got; tenant != "b" {
		t.Errorf("first freed slot went to %s, want b", tenant)
	}
	s.release(second)
	if tenant := <-got; tenant != "a" {
		t.Errorf("second freed slot went to %s, want a", tenant)
	}
}
