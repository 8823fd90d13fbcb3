package policy

import "sync/atomic"

// Holder publishes the live snapshot. Readers take the current one with
// Load and keep it for the whole request; Swap replaces it atomically.
type Holder struct {
	current atomic.Pointer[Live]
}

// Live is a published snapshot with the generation it was published as.
type Live struct {
	*Snapshot
	Generation uint64
}

// Load returns the live snapshot, or nil before the first Swap.
func (h *Holder) Load() *Live { return h.current.Load() }

// Swap publishes s as the next generation and returns it.
func (h *Holder) Swap(s *Snapshot) *Live {
	for {
		prev := h.current.Load()
		next := &Live{Snapshot: s, Generation: 1}
		if prev != nil {
			next.Generation = prev.Generation + 1
		}
		if h.current.CompareAndSwap(prev, next) {
			return next
		}
	}
}
