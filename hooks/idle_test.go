package hooks

import (
	"context"
	"errors"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startAllWorkers fills every slot with a running worker, as a burst of
// max_concurrent runs at once would.
func startAllWorkers(t *testing.T, rt *Runtime) {
	t.Helper()
	holdingAllSlots(t, rt, func() {
		for _, sl := range rt.slots {
			if sl.proc == nil {
				p, err := startWorker(rt.exe)
				if err != nil {
					t.Fatal(err)
				}
				sl.proc = p
			}
		}
	})
}

// idleWorkers counts the idle slots whose worker is running.
func (s *scheduler) idleWorkers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, sl := range s.idle {
		if sl.proc != nil {
			n++
		}
	}
	return n
}

func processExists(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// After a burst, workers left idle stop, all but the one runs take first;
// the pool then starts workers again as runs need them.
func TestIdleWorkersStop(t *testing.T) {
	rt := newTestRuntimeIdle(t, RuntimeConfig{MaxConcurrent: 3}, 100*time.Millisecond)
	startAllWorkers(t, rt)
	before := workerPIDs(t, rt)
	if len(before) != 3 {
		t.Fatalf("%d workers after the burst, want 3", len(before))
	}
	for deadline := time.Now().Add(10 * time.Second); rt.sched.idleWorkers() > keepWarmWorkers; {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still running 10 s after the burst, want %d", rt.sched.idleWorkers(), keepWarmWorkers)
		}
		time.Sleep(10 * time.Millisecond)
	}
	after := workerPIDs(t, rt)
	if len(after) != keepWarmWorkers || !slices.Contains(before, after[0]) {
		t.Fatalf("workers %v after idling, want one of %v", after, before)
	}
	// A worker exits at end of input, promptly (a race-detector build
	// after a second's pause).
	for _, pid := range before {
		for deadline := time.Now().Add(10 * time.Second); pid != after[0] && processExists(pid); {
			if time.Now().After(deadline) {
				t.Fatalf("stopped worker %d still exists 10 s later", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// With the warm worker busy, a run goes to a slot whose worker was
	// stopped and starts one there.
	warm, err := rt.sched.acquire(context.Background(), "holder")
	if err != nil {
		t.Fatal(err)
	}
	held := true
	defer func() {
		if held {
			rt.sched.release(warm)
		}
	}()
	if warm.proc == nil || warm.proc.cmd.Process.Pid != after[0] {
		t.Fatalf("the first slot handed out is not the warm worker's")
	}
	expectHealthy(t, rt)
	held = false
	rt.sched.release(warm)
	if n := len(workerPIDs(t, rt)); n != 2 {
		t.Errorf("%d workers after a run beside the warm one, want 2", n)
	}
}

// The reaper takes idle slots while runs come and go and the runtime
// closes: no run fails for it, and Close leaves no worker behind.
func TestIdleReaperWithRunsAndClose(t *testing.T) {
	rt, err := newRuntime(RuntimeConfig{MaxConcurrent: 4, Defaults: Limits{Timeout: 10 * time.Second}}, 4*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	s := mustCompile(t, "hooks/quick.tengo", `request.headers["X-Ok"] = "yes"`)
	stop := time.Now().Add(500 * time.Millisecond)
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				out, _, err := rt.RunRequest(context.Background(), s, sampleMeta, sampleRequest(), Limits{})
				if err != nil || len(out.Headers["X-Ok"]) != 1 {
					t.Errorf("run while the reaper works: %v", err)
					return
				}
				time.Sleep(8 * time.Millisecond) // gaps longer than idleTTL, so slots go idle
			}
		}()
	}
	wg.Wait()
	pids := workerPIDs(t, rt)
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	// Close waits for the reaper, and so for the workers it was stopping.
	if rt.reaped.Load() == 0 {
		t.Error("the reaper stopped no worker between runs; the test did not exercise it")
	}
	for _, pid := range pids {
		if processExists(pid) {
			t.Errorf("worker %d still exists after Close", pid)
		}
	}
	if n := rt.sched.idleWorkers(); n != 0 {
		t.Errorf("%d slots still hold a worker after Close", n)
	}
}
