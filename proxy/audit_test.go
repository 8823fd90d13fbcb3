package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
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
	a := newAuditLog(out, func(error) { reported.Add(1) })
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
