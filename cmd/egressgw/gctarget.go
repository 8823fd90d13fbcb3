package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// The collector's target (GOGC) when GOGC is not set. The gateway's live
// heap is mostly its policy, metrics and trust roots, which every
// collection marks again, while what requests allocate dies young: the
// rarer the collections, the less of that marking each request pays for.
// A small live heap gets the highest target, 400 (collect at 5× the live
// heap), which takes about 5% of the instructions off a small request
// against 200; from gcSmallHeap the target slides down to 200 at twice
// that, and stays there. So the heap grows by at most gcSmallHeap×2
// (16 MiB) more than at 200, and a large policy's memory is what it was
// (docs/design.md, "Collector target").
const (
	gcPercentSmallHeap = 400
	gcPercentLargeHeap = 200
	gcSmallHeap        = 8 << 20
)

// gcPercentFor is the target for a live heap of live bytes: the one whose
// headroom above the live heap is 4× gcSmallHeap (32 MiB), between
// gcPercentLargeHeap and gcPercentSmallHeap.
func gcPercentFor(live uint64) int {
	if live <= gcSmallHeap {
		return gcPercentSmallHeap
	}
	p := int(gcSmallHeap * gcPercentSmallHeap / live)
	return max(p, gcPercentLargeHeap)
}

// gcTarget keeps the collector's target at gcPercentFor the live heap,
// and lowers it while a reload builds the next policy (boundReload).
type gcTarget struct {
	mu      sync.Mutex
	percent int  // the serving target, set unless held
	held    bool // a reload holds the target at reloadGCPercent
}

// gcFollowEvery is how often the target follows the live heap.
const gcFollowEvery = time.Second

// newGCTarget sets the serving target for the live heap now. With GOGC
// set it returns nil: the operator's setting stays.
func newGCTarget(gogcSet bool) *gcTarget {
	if gogcSet {
		return nil
	}
	t := &gcTarget{}
	t.follow(liveHeapBytes())
	return t
}

// run follows the live heap until ctx ends.
func (t *gcTarget) run(ctx context.Context) {
	if t == nil {
		return
	}
	tick := time.NewTicker(gcFollowEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.follow(liveHeapBytes())
		}
	}
}

// follow sets the serving target for a live heap of live bytes, unless a
// reload holds it.
func (t *gcTarget) follow(live uint64) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	p := gcPercentFor(live)
	if p == t.percent {
		return
	}
	t.percent = p
	if !t.held {
		debug.SetGCPercent(p)
	}
}

// boundReload lowers the target for a reload and returns the function
// that puts the serving target back once the reload is over.
func (t *gcTarget) boundReload() (done func()) {
	if t == nil {
		return boundReloadMemory()
	}
	t.mu.Lock()
	t.held = true
	debug.SetGCPercent(reloadGCPercent)
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		t.held = false
		debug.SetGCPercent(t.percent)
		t.mu.Unlock()
		debug.FreeOSMemory()
	}
}

// liveHeapBytes is the heap the last collection found live (0 before the
// first).
func liveHeapBytes() uint64 {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return sample[0].Value.Uint64()
}
