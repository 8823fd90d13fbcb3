package policy

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// watchCounting runs Watch on dir and counts reloads by reason.
func watchCounting(t *testing.T, dir string, opts WatchOptions) (fileChanges, resyncs *atomic.Int64) {
	t.Helper()
	fileChanges, resyncs = new(atomic.Int64), new(atomic.Int64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, dir, opts, func(reason string) {
			if reason == "file change" {
				fileChanges.Add(1)
			} else {
				resyncs.Add(1)
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return fileChanges, resyncs
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatchReloadsOnEveryKindOfChange(t *testing.T) {
	edits := []struct {
		name string
		edit func(t *testing.T, dir string)
	}{
		{"write in a subdirectory", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "tenants", "a.yaml"), "id: b\n")
		}},
		{"new file", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "connectors", "new.yaml"), "name: x\n")
		}},
		{"rename over", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "tmp"), "listen: \":1\"\n")
			if err := os.Rename(filepath.Join(dir, "tmp"), filepath.Join(dir, "gateway.yaml")); err != nil {
				t.Fatal(err)
			}
		}},
		{"delete", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "tenants", "a.yaml")); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory created after start", func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, "hooks"), 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, e := range edits {
		t.Run(e.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, sub := range []string{"tenants", "connectors"} {
				if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			write(t, filepath.Join(dir, "gateway.yaml"), "")
			write(t, filepath.Join(dir, "tenants", "a.yaml"), "id: a\n")
			changes, _ := watchCounting(t, dir, WatchOptions{Debounce: 20 * time.Millisecond, Resync: time.Hour})
			time.Sleep(200 * time.Millisecond) // let the watches be registered before editing
			e.edit(t, dir)
			waitFor(t, "a reload", func() bool { return changes.Load() >= 1 })
		})
	}
}

func TestWatchCollapsesBurstsButNeverStarves(t *testing.T) {
	dir := t.TempDir()
	changes, _ := watchCounting(t, dir, WatchOptions{Debounce: 100 * time.Millisecond, Resync: time.Hour})
	time.Sleep(200 * time.Millisecond) // let the watches be registered
	// A burst of saves within one debounce interval is one reload.
	for i := range 10 {
		write(t, filepath.Join(dir, "gateway.yaml"), string(rune('a'+i)))
	}
	waitFor(t, "the burst's reload", func() bool { return changes.Load() >= 1 })
	time.Sleep(300 * time.Millisecond)
	if n := changes.Load(); n > 2 {
		t.Errorf("a burst of 10 writes caused %d reloads", n)
	}
	// A steady stream of edits longer than the debounce still reloads.
	before := changes.Load()
	for i := range 20 {
		write(t, filepath.Join(dir, "gateway.yaml"), string(rune('a'+i)))
		time.Sleep(30 * time.Millisecond)
	}
	waitFor(t, "reloads during a steady stream", func() bool { return changes.Load()-before >= 3 })
}

func TestWatchResyncs(t *testing.T) {
	_, resyncs := watchCounting(t, t.TempDir(), WatchOptions{Resync: 30 * time.Millisecond})
	waitFor(t, "periodic resyncs", func() bool { return resyncs.Load() >= 2 })
}

// A snapshot is unchanged only while every file its load read is: the
// YAML and the files it refers to, such as a hook script.
func TestSnapshotUnchanged(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "gateway.yaml"), "listen: \":3128\"\n")
	if err := os.MkdirAll(filepath.Join(dir, "connectors"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "hooks"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "connectors", "crm.yaml"), "name: crm\nhosts: [\"crm.example\"]\nhooks: { request: hooks/tag.tengo }\n")
	script := filepath.Join(dir, "hooks", "tag.tengo")
	write(t, script, "request.headers[\"X-Tag\"] = [\"a\"]\n")
	fsys := os.DirFS(dir)
	snap, err := Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Unchanged(fsys) {
		t.Fatal("a snapshot differs from the files it was just loaded from")
	}
	write(t, script, "request.headers[\"X-Tag\"] = [\"b\"]\n")
	if snap.Unchanged(fsys) {
		t.Error("an edited hook script went unnoticed: the reload would be skipped")
	}
	write(t, script, "request.headers[\"X-Tag\"] = [\"a\"]\n")
	if !snap.Unchanged(fsys) {
		t.Error("the script's original content counts as a change")
	}
	write(t, filepath.Join(dir, "gateway.yaml"), "listen: \":3129\"\n")
	if snap.Unchanged(fsys) {
		t.Error("an edited gateway.yaml went unnoticed")
	}
	write(t, filepath.Join(dir, "gateway.yaml"), "listen: \":3128\"\n")
	if err := os.Remove(script); err != nil {
		t.Fatal(err)
	}
	if snap.Unchanged(fsys) {
		t.Error("a removed hook script went unnoticed")
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
