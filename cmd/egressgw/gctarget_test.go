package main

import (
	"runtime/debug"
	"testing"
)

func TestGCPercentFor(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 400}, // before the first collection
		{4 << 20, 400},
		{8 << 20, 400},
		{12 << 20, 266},
		{16 << 20, 200},
		{1 << 30, 200},
	} {
		if got := gcPercentFor(c.live); got != c.want {
			t.Errorf("gcPercentFor(%d MiB) = %d, want %d", c.live>>20, got, c.want)
		}
	}
}

// currentGCPercent reads the collector's target.
func currentGCPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// A reload holds the target low whatever the live heap does meanwhile;
// after it, the target is the one for the live heap as last seen.
func TestGCTargetReloadHoldsTheTarget(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	g := &gcTarget{}
	g.follow(1 << 20)
	if p := currentGCPercent(); p != 400 {
		t.Fatalf("target for a 1 MiB live heap: %d, want 400", p)
	}
	done := g.boundReload()
	if p := currentGCPercent(); p != reloadGCPercent {
		t.Fatalf("target during a reload: %d, want %d", p, reloadGCPercent)
	}
	g.follow(1 << 30)
	if p := currentGCPercent(); p != reloadGCPercent {
		t.Fatalf("target during a reload, after the heap grew: %d, want %d", p, reloadGCPercent)
	}
	done()
	if p := currentGCPercent(); p != 200 {
		t.Fatalf("target after the reload, for a 1 GiB live heap: %d, want 200", p)
	}
}

// With GOGC set there is no target to follow: a reload lowers and
// restores the operator's setting.
func TestGCTargetLeavesGOGCAlone(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(150))
	g := newGCTarget(true)
	if g != nil {
		t.Fatal("a target with GOGC set")
	}
	g.follow(1 << 20) // a nil target does nothing
	done := g.boundReload()
	if p := currentGCPercent(); p != reloadGCPercent {
		t.Fatalf("target during a reload: %d, want %d", p, reloadGCPercent)
	}
	done()
	if p := currentGCPercent(); p != 150 {
		t.Fatalf("target after the reload: %d, want GOGC's 150", p)
	}
}
