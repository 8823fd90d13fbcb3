package proxy

import (
	"sync"
	"testing"
)

// TestApplyPublishesOnePolicy: what the admin API reports as live (Live)
// is the policy requests are served with, also while reloads race: never
// a generation that requests do not see yet, and after the last Apply the
// very same one, numbered without gaps.
func TestApplyPublishesOnePolicy(t *testing.T) {
	g := benchGateway(t, "listen: \"127.0.0.1:3128\"\n", "rules: [{ name: r, hosts: [\"a.example\"], ports: [443] }]\n")
	snap := g.Live().Snapshot
	const appliers, applies = 2, 40

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			reported := g.Live()
			served := g.runtime.Load().live
			if served.Generation < reported.Generation {
				t.Errorf("Live reported generation %d while requests were served generation %d", reported.Generation, served.Generation)
				return
			}
		}
	})
	var appliedWG sync.WaitGroup
	for range appliers {
		appliedWG.Go(func() {
			for range applies {
				g.Apply(snap)
			}
		})
	}
	appliedWG.Wait()
	close(stop)
	wg.Wait()

	reported, served := g.Live(), g.runtime.Load().live
	if reported != served {
		t.Errorf("after the reloads, Live is generation %d and requests get generation %d", reported.Generation, served.Generation)
	}
	if want := uint64(1 + appliers*applies); served.Generation != want {
		t.Errorf("generation %d after %d applies, want %d", served.Generation, 1+appliers*applies, want)
	}
}
