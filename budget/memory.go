package budget

import (
	"context"
	"sync"
	"time"
)

// Memory is a Backend in the process's memory: the counters of a gateway
// without a state store, and the base of the file backend.
type Memory struct {
	mu       sync.Mutex
	counts   map[Key]Counts
	prices   map[Key]Price
	now      func() time.Time
	pruned   time.Time
	onChange func() error // called with mu held after an Add
}

// NewMemory returns an empty Memory backend; now (nil: time.Now) decides
// which periods are old enough to forget.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{counts: map[Key]Counts{}, prices: map[Key]Price{}, now: now}
}

// Add adds deltas. With onChange (the file backend's write) failing,
// nothing is added: the Ledger sends the same deltas again.
func (m *Memory) Add(_ context.Context, deltas []Delta) error {
	if len(deltas) == 0 {
		return nil // nothing counted: the file is not rewritten
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.add(deltas, 1)
	if m.onChange != nil {
		if err := m.onChange(); err != nil {
			m.add(deltas, -1)
			return err
		}
	}
	if now := m.now(); now.Sub(m.pruned) > time.Hour {
		m.prune(now)
		m.pruned = now
	}
	return nil
}

func (m *Memory) add(deltas []Delta, sign int64) {
	for _, d := range deltas {
		c := m.counts[d.Key]
		for i := range c {
			c[i] += sign * d.Counts[i]
		}
		m.counts[d.Key] = c
		if d.Key.Budget == "" {
			m.prices[d.Key] = d.Price
		}
	}
}

// prune forgets the periods that ended longer than their retention ago,
// so the maps do not grow without bound.
func (m *Memory) prune(now time.Time) {
	for k := range m.counts {
		if _, end := k.Period.Bounds(k.Start); now.Sub(end) > retention(k.Period) {
			delete(m.counts, k)
			delete(m.prices, k)
		}
	}
}

// Counts reads counters.
func (m *Memory) Counts(_ context.Context, keys []Key) ([]Counts, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Counts, len(keys))
	for i, k := range keys {
		out[i] = m.counts[k]
	}
	return out, nil
}

// Lines reads a tenant's lines of one period.
func (m *Memory) Lines(_ context.Context, tenant string, p Period, start time.Time) ([]StoredLine, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []StoredLine
	for k, c := range m.counts {
		if k.Budget == "" && k.Tenant == tenant && k.Period == p && k.Start.Equal(start) {
			out = append(out, StoredLine{Connector: k.Connector, Version: k.Version, Price: m.prices[k], Counts: c})
		}
	}
	return out, nil
}

// Close does nothing.
func (m *Memory) Close() error { return nil }
