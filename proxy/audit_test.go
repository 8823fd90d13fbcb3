package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// flakyWriter fails its first writes after writing part of what it is
// given, as a disk that fills up and then recovers does.
type flakyWriter struct {
	mu       sync.Mutex
	failures int
	out      bytes.Buffer
}

func (w *flakyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failures > 0 {
		w.failures--
		n := len(p) / 3
		w.out.Write(p[:n])
		return n, errors.New("no space left on device")
	}
	return w.out.Write(p)
}

func (w *flakyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.String()
}

// Lines from many requests arrive whole, each once and in each writer's
// order, even when writes fail for a while; the failure is reported once.
func TestAuditLogSurvivesFailedWrites(t *testing.T) {
	out := &flakyWriter{failures: 3}
	var reported atomic.Int32
	a := newAuditLog(out, auditOptions{onError: func(error) { reported.Add(1) }})
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rec := sampleAuditRecord()
			for i := range each {
				rec.Path = fmt.Sprintf("/w%d/%d", w, i)
				if err := a.write(&rec); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	err := a.close()
	for try := 0; err != nil && try < 3; try++ {
		err = a.flush() // failures left for close's own flush: try again
	}
	if err != nil {
		t.Fatal(err)
	}
	if out.failures != 0 {
		t.Fatalf("%d failures never met: the test did not exercise them", out.failures)
	}
	next := map[string]int{}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	for _, line := range lines {
		var w, i int
		at := strings.Index(line, `"path":"/w`)
		if at < 0 {
			t.Fatalf("not a whole line: %q", line)
		}
		if _, err := fmt.Sscanf(line[at+len(`"path":"/w`):], "%d/%d", &w, &i); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		key := fmt.Sprint(w)
		if i != next[key] {
			t.Fatalf("writer %d: line %d after %d: lost, repeated or reordered", w, i, next[key]-1)
		}
		next[key]++
	}
	if len(lines) != writers*each {
		t.Fatalf("%d lines, want %d", len(lines), writers*each)
	}
	if reported.Load() > 1 {
		t.Errorf("one run of failures reported %d times", reported.Load())
	}
}

// switchWriter fails every write until it is given somewhere to write.
type switchWriter struct {
	mu     sync.Mutex
	fail   io.Writer // a writer that refuses, e.g. /dev/full
	out    *bytes.Buffer
	writes int
}

func (w *switchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	if w.out == nil {
		return w.fail.Write(p)
	}
	return w.out.Write(p)
}

func (w *switchWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

func (w *switchWriter) recover() *bytes.Buffer {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.out = &bytes.Buffer{}
	return w.out
}

// While the audit output refuses every write (/dev/full: ENOSPC), the log
// holds at most its backlog bound, copies nothing per retry, never holds a
// request longer than its wait bound, and counts the lines it drops; when
// the output recovers, every line it kept is written once, in order.
func TestAuditLogBoundedWhileWritesFail(t *testing.T) {
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer full.Close()
	out := &switchWriter{fail: full}
	reg := prometheus.NewRegistry()
	var reported atomic.Int32
	var dropReports []int64
	var dropMu sync.Mutex
	const maxWait = 100 * time.Millisecond
	a := newAuditLog(out, auditOptions{
		onError: func(err error) {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("write error %v, want ENOSPC", err)
			}
			reported.Add(1)
		},
		onDrop: func(n int64, ended bool) {
			dropMu.Lock()
			defer dropMu.Unlock()
			if ended {
				dropReports = append(dropReports, n)
			}
		},
		maxWait:  maxWait,
		registry: reg,
	})
	// 30 KB lines: 24 MB in all, three times the bound.
	const writers, each = 4, 200
	big := strings.Repeat("p", 30<<10)
	var wg sync.WaitGroup
	var slowest atomic.Int64
	for w := range writers {
		wg.Go(func() {
			rec := sampleAuditRecord()
			for i := range each {
				rec.Path = fmt.Sprintf("/w%d/%d/%s", w, i, big)
				start := time.Now()
				if err := a.write(&rec); err != nil {
					t.Error(err)
					return
				}
				if d := time.Since(start); d > time.Duration(slowest.Load()) {
					slowest.Store(int64(d))
				}
				if held := a.backlog(); held > auditBacklog+len(rec.Path)+1024 {
					t.Errorf("backlog %d bytes, bound %d", held, auditBacklog)
				}
			}
		})
	}
	wg.Wait()
	// A request waits for room at most maxWait (generous margin for a
	// loaded machine): a stuck disk never holds requests for ever.
	if d := time.Duration(slowest.Load()); d > maxWait+5*time.Second {
		t.Errorf("a write waited %v for a backlog that never drains", d)
	}
	dropped := int64(gathered(t, reg, "egressgw_audit_dropped_lines_total"))
	if dropped == 0 {
		t.Fatal("no line dropped: the test never filled the backlog")
	}

	// Retries copy nothing: ten of them allocate next to no memory.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	writesBefore := out.count()
	time.Sleep(10 * auditFlushInterval)
	runtime.ReadMemStats(&after)
	retries := out.count() - writesBefore
	if retries < 3 {
		t.Fatalf("%d retries in 1 s", retries)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("%d retries allocated %d bytes: the backlog is copied", retries, grew)
	}
	if n := gathered(t, reg, "egressgw_audit_write_errors_total"); n < 3 {
		t.Errorf("write errors counted %v", n)
	}
	if n := gathered(t, reg, "egressgw_audit_backlog_bytes"); n < auditBacklog/2 || n > auditBacklog+64<<10 {
		t.Errorf("backlog gauge %v bytes, want about the bound %d", n, auditBacklog)
	}

	good := out.recover()
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(good.String(), "\n"), "\n")
	next := map[int]int{}
	for _, line := range lines {
		var w, i int
		at := strings.Index(line, `"path":"/w`)
		if at < 0 {
			t.Fatalf("not a whole line: %.80q", line)
		}
		if _, err := fmt.Sscanf(line[at+len(`"path":"/w`):], "%d/%d/", &w, &i); err != nil {
			t.Fatalf("line %.80q: %v", line, err)
		}
		if i < next[w] {
			t.Fatalf("writer %d: line %d after %d: repeated or reordered", w, i, next[w]-1)
		}
		next[w] = i + 1
	}
	if got := int64(len(lines)) + dropped; got != writers*each {
		t.Errorf("%d lines written + %d dropped = %d, want %d", len(lines), dropped, got, writers*each)
	}
	if reported.Load() != 1 {
		t.Errorf("one run of failures reported %d times", reported.Load())
	}
	dropMu.Lock()
	defer dropMu.Unlock()
	if len(dropReports) != 1 || dropReports[0] != dropped {
		t.Errorf("recovery reported drops %v, want [%d]", dropReports, dropped)
	}
	if a.backlog() != 0 {
		t.Errorf("backlog %d after recovery", a.backlog())
	}
}

// gathered is the value of reg's metric name (no labels).
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
