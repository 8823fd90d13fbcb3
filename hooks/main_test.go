package hooks

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary serve as its own hook worker: a Runtime
// starts workers from the running executable.
func TestMain(m *testing.M) {
	WorkerMain()
	os.Exit(m.Run())
}

// newTestRuntime builds a runtime for a test. Unless the test says
// otherwise, runs get a timeout far above the 50ms default: a loaded
// machine (or the race detector) can stall a trivial script that long,
// and only the timeout tests are about timeouts.
func newTestRuntime(t testing.TB, cfg RuntimeConfig) *Runtime {
	t.Helper()
	return newTestRuntimeIdle(t, cfg, workerIdleTTL)
}

// newTestRuntimeIdle is newTestRuntime whose idle workers stop after
// idleTTL.
func newTestRuntimeIdle(t testing.TB, cfg RuntimeConfig, idleTTL time.Duration) *Runtime {
	t.Helper()
	if cfg.Defaults.Timeout == 0 {
		cfg.Defaults.Timeout = 10 * time.Second
	}
	rt, err := newRuntime(cfg, idleTTL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var stderr []string
		holdingAllSlots(t, rt, func() {
			for _, sl := range rt.slots {
				if sl.proc != nil {
					stderr = append(stderr, sl.proc.stderr.String())
				}
			}
		})
		rt.Close()
		// A race detected inside a worker is reported on its stderr.
		for _, s := range stderr {
			if strings.Contains(s, "DATA RACE") {
				t.Errorf("a hook worker reported a data race:\n%s", s)
			}
		}
	})
	return rt
}

// holdingAllSlots runs f while the test holds every slot: a run's
// goroutine may still be replacing its worker after RunRequest returned,
// and only the holder of a slot may look at it.
func holdingAllSlots(t testing.TB, rt *Runtime, f func()) {
	t.Helper()
	var held []*slot
	for range rt.slots {
		sl, err := rt.sched.acquire(context.Background(), "test")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, sl)
	}
	defer func() {
		// In reverse, so that the idle stack is as it was.
		for _, sl := range slices.Backward(held) {
			rt.sched.release(sl)
		}
	}()
	f()
}

// workerPID is the process id of the worker in the first slot that has
// one, 0 if none.
func workerPID(t testing.TB, rt *Runtime) (pid int) {
	holdingAllSlots(t, rt, func() {
		for _, sl := range rt.slots {
			if sl.proc != nil {
				pid = sl.proc.cmd.Process.Pid
				return
			}
		}
	})
	return pid
}

// workerPIDs are the process ids of every running worker.
func workerPIDs(t testing.TB, rt *Runtime) (pids []int) {
	holdingAllSlots(t, rt, func() {
		for _, sl := range rt.slots {
			if sl.proc != nil {
				pids = append(pids, sl.proc.cmd.Process.Pid)
			}
		}
	})
	return pids
}

func mustCompile(tb testing.TB, name, src string) *Script {
	tb.Helper()
	s, err := Compile(name, []byte(src))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// runError asserts err is a *RunError of kind and returns it.
func runError(t *testing.T, err error, kind FailureKind) *RunError {
	t.Helper()
	var re *RunError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T), want a *RunError of kind %s", err, err, kind)
	}
	if re.Kind != kind {
		t.Fatalf("error %q has kind %s, want %s", re, re.Kind, kind)
	}
	if strings.Contains(re.Error(), "goroutine ") || strings.Contains(re.Error(), ".go:") {
		t.Errorf("error %q looks like it holds a Go stack trace", re)
	}
	return re
}

// waitFor polls cond until it holds, failing the test after a generous
// while: the machine running the tests may be busy.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func sampleRequest() Request {
	return Request{
		Method: "POST", URL: "https://api.example.com/v1/items?page=2", Scheme: "https",
		Host: "api.example.com", Port: 443, Path: "/v1/items", Query: "page=2",
		Headers: map[string][]string{
			"Accept":         {"*/*"},
			"Content-Type":   {"application/json; charset=utf-8"},
			"Content-Length": {"31"},
			"Connection":     {"keep-alive"},
		},
		Body: []byte(`{"name": "widget", "count": 1}`),
	}
}

var sampleMeta = Meta{Tenant: "acme", Connector: "crm", ConnectorVersion: 2}

func sampleResponse() Response {
	return Response{
		Status: 200,
		Headers: map[string][]string{
			"Content-Type":      {"application/json"},
			"Transfer-Encoding": {"chunked"},
			"Set-Cookie":        {"a=1", "b=2"},
		},
		Body: []byte(`{"user": {"name": "Ada", "ssn": "123-45-6789"}}`),
	}
}
