//go:build linux

package hooks

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// Tenant A floods the gateway with scripts that spin until their timeout;
// tenant B's trivial hook still answers within about one of A's runs (it
// takes the next slot that frees), where a first-come-first-served queue
// would make it wait for all of A's queued runs (here seven timeouts).
func TestFairnessUnderFlood(t *testing.T) {
	const (
		slots     = 2
		floodPerA = 16
	)
	// Long enough that scheduling noise on a busy machine (and the race
	// detector's slowness) stays small next to it.
	slowTimeout := 400 * time.Millisecond
	if raceEnabled {
		slowTimeout = 1200 * time.Millisecond
	}
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: slots})
	spin := mustCompile(t, "hooks/spin.tengo", `for {}`)
	quick := mustCompile(t, "hooks/quick.tengo", `request.headers["X-B"] = "ok"`)
	// Start the second worker now, so B does not pay for it.
	warm := make(chan struct{})
	for range slots {
		go func() {
			rt.RunRequest(context.Background(), quick, Meta{Tenant: "warm"}, sampleRequest(), Limits{})
			warm <- struct{}{}
		}()
	}
	for range slots {
		<-warm
	}

	ctx, stop := context.WithCancel(context.Background())
	var flood sync.WaitGroup
	for range floodPerA {
		flood.Add(1)
		go func() {
			defer flood.Done()
			for ctx.Err() == nil {
				rt.RunRequest(ctx, spin, Meta{Tenant: "a"}, sampleRequest(), Limits{Timeout: slowTimeout})
			}
		}()
	}
	waitFor(t, "tenant a's runs to queue", func() bool {
		rt.sched.mu.Lock()
		defer rt.sched.mu.Unlock()
		q := rt.sched.queues["a"]
		return q != nil && len(q.waiters) >= floodPerA-slots
	})

	var latencies []time.Duration
	for range 8 {
		start := time.Now()
		out, _, err := rt.RunRequest(context.Background(), quick, Meta{Tenant: "b"}, sampleRequest(), Limits{})
		latencies = append(latencies, time.Since(start))
		if err != nil || len(out.Headers["X-B"]) != 1 {
			t.Fatalf("tenant b's run: %v", err)
		}
	}
	stop()
	flood.Wait()

	slices.Sort(latencies)
	t.Logf("tenant b's latencies under tenant a's flood of %d spinning runs (timeout %s): %v; workers replaced: %d",
		floodPerA, slowTimeout, latencies, rt.retired.Load())
	// One of A's runs may have to finish first; the rest is margin for a
	// busy machine. FIFO would need about seven.
	if worst := latencies[len(latencies)-1]; worst > 3*slowTimeout {
		t.Errorf("tenant b waited up to %s, want under %s", worst, 3*slowTimeout)
	}
	if median := latencies[len(latencies)/2]; median > 3*slowTimeout/2 {
		t.Errorf("tenant b's median latency %s, want under %s", median, 3*slowTimeout/2)
	}
}
