package hooks

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

var errRuntimeClosed = errors.New("hooks: runtime closed")

// scheduler hands out worker slots. When all are busy, waiting runs queue
// per tenant, and a freed slot goes to the waiting tenant that holds the
// fewest slots, the longest-waiting such tenant first (round robin among
// equals). A tenant with a thousand slow runs queued thus delays another
// tenant's run until the next slot frees, at most one of its runs, never
// by its whole queue; and a tenant alone uses every slot.
type scheduler struct {
	mu      sync.Mutex
	total   int
	idle    []*slot
	allIdle *sync.Cond              // signalled on release once closed
	queues  map[string]*tenantQueue // only tenants with waiting runs
	turns   []string                // tenants with waiting runs, next first
	// holding counts the slots each tenant holds; only tenants holding
	// one are present, so neither map outgrows the tenants active now.
	holding map[string]int
	closed  bool
}

type tenantQueue struct {
	waiters []*waiter
}

type waiter struct {
	granted chan *slot // buffered: release never blocks on a waiter
}

func newScheduler(slots []*slot) *scheduler {
	now := time.Now()
	for _, sl := range slots {
		sl.idleSince = now
	}
	s := &scheduler{
		total:   len(slots),
		idle:    slices.Clone(slots), // the last is handed out first
		queues:  make(map[string]*tenantQueue),
		holding: make(map[string]int),
	}
	s.allIdle = sync.NewCond(&s.mu)
	return s
}

// acquire returns a free slot, waiting for one in tenant's turn; it
// returns ctx's error if ctx ends first.
func (s *scheduler) acquire(ctx context.Context, tenant string) (*slot, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errRuntimeClosed
	}
	if n := len(s.idle); n > 0 {
		sl := s.idle[n-1]
		s.idle = s.idle[:n-1]
		s.hold(sl, tenant)
		s.mu.Unlock()
		return sl, nil
	}
	w := &waiter{granted: make(chan *slot, 1)}
	q := s.queues[tenant]
	if q == nil {
		q = &tenantQueue{}
		s.queues[tenant] = q
		s.turns = append(s.turns, tenant)
	}
	q.waiters = append(q.waiters, w)
	s.mu.Unlock()

	select {
	case sl := <-w.granted:
		if sl == nil {
			return nil, errRuntimeClosed
		}
		return sl, nil
	case <-ctx.Done():
	}

	s.mu.Lock()
	if i := slices.Index(q.waiters, w); i >= 0 {
		q.waiters = slices.Delete(q.waiters, i, i+1)
		if len(q.waiters) == 0 && s.queues[tenant] == q {
			delete(s.queues, tenant)
			s.turns = slices.DeleteFunc(s.turns, func(t string) bool { return t == tenant })
		}
		s.mu.Unlock()
		return nil, ctx.Err()
	}
	s.mu.Unlock()
	// Granted while ctx ended: pass the slot on.
	if sl := <-w.granted; sl != nil {
		s.release(sl)
	}
	return nil, ctx.Err()
}

func (s *scheduler) hold(sl *slot, tenant string) {
	sl.tenant = tenant
	s.holding[tenant]++
}

// release gives sl to the first waiting run of the tenant whose turn it
// is, or makes it idle.
func (s *scheduler) release(sl *slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holding[sl.tenant]--; s.holding[sl.tenant] <= 0 {
		delete(s.holding, sl.tenant)
	}
	s.handOff(sl, time.Now())
}

// handOff gives a free slot to the waiting run whose turn it is, or puts
// it on top of the idle stack, noting since when it is idle. s.mu is held.
func (s *scheduler) handOff(sl *slot, now time.Time) {
	if len(s.turns) == 0 {
		sl.idleSince = now
		s.idle = append(s.idle, sl)
		if s.closed {
			s.allIdle.Broadcast()
		}
		return
	}
	next := 0
	for i, t := range s.turns {
		if s.holding[t] < s.holding[s.turns[next]] {
			next = i
		}
	}
	tenant := s.turns[next]
	s.turns = slices.Delete(s.turns, next, next+1)
	q := s.queues[tenant]
	w := q.waiters[0]
	q.waiters = q.waiters[1:]
	if len(q.waiters) == 0 {
		delete(s.queues, tenant)
	} else {
		s.turns = append(s.turns, tenant) // to the back of the line
	}
	s.hold(sl, tenant)
	w.granted <- sl
}

// takeStale takes out of the idle stack the slots whose worker has been
// idle since before cutoff, except the keep workers nearest the top (the
// ones acquire hands out next), whatever their age. Nobody can acquire a
// taken slot until returnStale; the caller may stop its worker meanwhile.
func (s *scheduler) takeStale(cutoff time.Time, keep int) []*slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	var stale []*slot
	warm := 0
	for i := len(s.idle) - 1; i >= 0; i-- {
		switch sl := s.idle[i]; {
		case sl.proc == nil:
		case warm < keep:
			warm++
		case sl.idleSince.Before(cutoff):
			stale = append(stale, sl)
		}
	}
	s.idle = slices.DeleteFunc(s.idle, func(sl *slot) bool { return slices.Contains(stale, sl) })
	return stale
}

// returnStale gives back slots takeStale took: to runs that queued
// meanwhile, else to the bottom of the idle stack, below the slots whose
// workers still run, so that acquire prefers those.
func (s *scheduler) returnStale(slots []*slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for len(slots) > 0 && len(s.turns) > 0 {
		s.handOff(slots[0], now)
		slots = slots[1:]
	}
	for _, sl := range slots {
		sl.idleSince = now
	}
	s.idle = append(slices.Clone(slots), s.idle...)
	if s.closed {
		s.allIdle.Broadcast()
	}
}

// close fails every waiting run and every later acquire.
func (s *scheduler) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, q := range s.queues {
		for _, w := range q.waiters {
			w.granted <- nil
		}
	}
	clear(s.queues)
	s.turns = nil
}

// waitIdle waits, after close, until every slot is back, and returns them.
func (s *scheduler) waitIdle() []*slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.idle) < s.total {
		s.allIdle.Wait()
	}
	return slices.Clone(s.idle)
}
