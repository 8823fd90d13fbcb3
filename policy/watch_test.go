package policy

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
)

// watchCounting runs Watch on dir and counts reloads by reason.
func watchCounting(t *testing.T, dir string, opts WatchOptions) (fileChanges, resyncs *atomic.Int64) {
	t.Helper()
	fileChanges, resyncs = new(atomic.Int64), new(atomic.Int64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	started := make(chan struct{})
	opts.Started = func() { close(started) }
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
	select {
	case <-started: // edits from here on are seen
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("Watch ended before watching: %v", err)
	}
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
			e.edit(t, dir)
			waitFor(t, "a reload", func() bool { return changes.Load() >= 1 })
		})
	}
}

func TestWatchCollapsesBurstsButNeverStarves(t *testing.T) {
	dir := t.TempDir()
	changes, _ := watchCounting(t, dir, WatchOptions{Debounce: 100 * time.Millisecond, Resync: time.Hour})
	// A burst of saves within one debounce interval is one reload.
	for i := range 10 {
		write(t, filepath.Join(dir, "gateway.yaml"), string(rune('a'+i)))
	}
	waitFor(t, "the burst's reload", func() bool { return changes.Load() >= 1 })
	time.Sleep(300 * time.Millisecond)
	if n := changes.Load(); n > 2 {
		t.Errorf("a burst of 10 writes caused %d reloads", n)
	}
}

// A stream of edits that never pauses for the debounce window still
// reloads, MaxWait after it began, and again while it goes on.
func TestWatchStreamReloadsAfterMaxWait(t *testing.T) {
	dir := t.TempDir()
	changes, _ := watchCounting(t, dir, WatchOptions{Debounce: 200 * time.Millisecond, MaxWait: 300 * time.Millisecond, Resync: time.Hour})
	stop := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(stop); i++ {
		write(t, filepath.Join(dir, "gateway.yaml"), string(rune('a'+i%26)))
		time.Sleep(20 * time.Millisecond)
		if changes.Load() >= 2 {
			return // reloaded twice while the stream never paused
		}
	}
	t.Fatalf("%d reloads during 3 s of edits 20 ms apart with MaxWait 300ms, want at least 2", changes.Load())
}

// A file written in place in chunks, with pauses shorter than the debounce
// window, is read once, whole: never while it is half-written.
func TestWatchWaitsForSlowWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gateway.yaml")
	var chunks []string
	for i := range 10 {
		chunks = append(chunks, fmt.Sprintf("# chunk %d of a slow save\n", i))
	}
	whole := strings.Join(chunks, "")
	write(t, path, "# before\n")
	var mu sync.Mutex
	var seen []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, dir, WatchOptions{Debounce: 400 * time.Millisecond, MaxWait: 5 * time.Second, Resync: time.Hour}, func(string) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			seen = append(seen, string(data))
			mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range chunks {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := f.WriteString(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload after the save", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > 0
	})
	time.Sleep(time.Second) // two debounce windows for a late second reload to show
	mu.Lock()
	defer mu.Unlock()
	for i, got := range seen {
		if got != whole {
			t.Errorf("reload %d read %d of %d bytes: a half-written file", i+1, len(got), len(whole))
		}
	}
	if len(seen) != 1 {
		t.Errorf("%d reloads for one save, want 1", len(seen))
	}
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

// watchLoading runs Watch on dir the way serve does: each reload loads the
// directory and, when it validates, makes it the live snapshot whose
// referenced files are watched. It counts the reloads due to events.
func watchLoading(t *testing.T, dir string) *atomic.Int64 {
	t.Helper()
	var live atomic.Pointer[Snapshot]
	snap, err := Load(os.DirFS(dir), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	live.Store(snap)
	changes := new(atomic.Int64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// The resync interval is far beyond the test's deadlines: only events
	// can make the test pass.
	opts := WatchOptions{Debounce: 20 * time.Millisecond, Resync: time.Hour, Files: func() []string {
		return live.Load().Referenced()
	}}
	go func() {
		done <- Watch(ctx, dir, opts, func(reason string) {
			if snap, err := Load(os.DirFS(dir), time.Now()); err == nil {
				live.Store(snap)
			}
			if reason == "file change" {
				changes.Add(1)
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return changes
}

// editUntilReload repeats edit until a reload follows it: the watches are
// (re)registered asynchronously, so an edit made just before may go unseen.
func editUntilReload(t *testing.T, what string, changes *atomic.Int64, edit func()) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		before := changes.Load()
		edit()
		retry := time.Now().Add(250 * time.Millisecond)
		for changes.Load() == before && time.Now().Before(retry) {
			time.Sleep(10 * time.Millisecond)
		}
		if changes.Load() > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for a reload after %s", what)
		}
	}
}

func secretsYAML(file string) string {
	allow := ""
	if filepath.IsAbs(file) {
		// Outside the config directory: its test directory (t.TempDir's
		// own) must be allowed, and may lose the file's directory.
		allow = "config: { allow_paths: [" + filepath.Dir(filepath.Dir(file)) + "] }\n"
	}
	return allow + "secrets:\n  token: { file: " + file + " }\n"
}

// A file the config refers to outside tenants/, connectors/ and hooks/ is
// watched like the YAML, wherever it lives, and the watched set follows
// the config as it changes.
func TestWatchReloadsOnReferencedFileChange(t *testing.T) {
	type env struct{ dir, outside string }
	mkdir := func(t *testing.T, path string) {
		t.Helper()
		if err := os.MkdirAll(path, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rename := func(t *testing.T, from, to string) {
		t.Helper()
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		setup func(t *testing.T, e env)
		steps []struct {
			what string
			edit func(t *testing.T, e env, i int)
		}
	}{
		{
			name: "secret in its own subdirectory, written in place",
			setup: func(t *testing.T, e env) {
				mkdir(t, filepath.Join(e.dir, "secrets"))
				write(t, filepath.Join(e.dir, "secrets", "token"), "token-value-0")
				write(t, filepath.Join(e.dir, "gateway.yaml"), secretsYAML("secrets/token"))
			},
			steps: []struct {
				what string
				edit func(t *testing.T, e env, i int)
			}{
				{"an in-place write", func(t *testing.T, e env, i int) {
					write(t, filepath.Join(e.dir, "secrets", "token"), fmt.Sprintf("token-value-%d", i))
				}},
			},
		},
		{
			name: "absolute path outside the config directory, saved by rename",
			setup: func(t *testing.T, e env) {
				write(t, filepath.Join(e.outside, "token"), "token-value-0")
				write(t, filepath.Join(e.dir, "gateway.yaml"), secretsYAML(filepath.Join(e.outside, "token")))
			},
			steps: []struct {
				what string
				edit func(t *testing.T, e env, i int)
			}{
				{"a save by rename", func(t *testing.T, e env, i int) {
					write(t, filepath.Join(e.outside, "token.tmp"), fmt.Sprintf("token-value-%d", i))
					rename(t, filepath.Join(e.outside, "token.tmp"), filepath.Join(e.outside, "token"))
				}},
			},
		},
		{
			name: "symlinked directory swapped",
			setup: func(t *testing.T, e env) {
				mkdir(t, filepath.Join(e.dir, "secrets-v1"))
				write(t, filepath.Join(e.dir, "secrets-v1", "token"), "token-value-0")
				if err := os.Symlink("secrets-v1", filepath.Join(e.dir, "secrets")); err != nil {
					t.Fatal(err)
				}
				write(t, filepath.Join(e.dir, "gateway.yaml"), secretsYAML("secrets/token"))
			},
			steps: []struct {
				what string
				edit func(t *testing.T, e env, i int)
			}{
				{"the swap", func(t *testing.T, e env, i int) {
					v := fmt.Sprintf("secrets-v%d", i+2)
					mkdir(t, filepath.Join(e.dir, v))
					write(t, filepath.Join(e.dir, v, "token"), "token-value-swapped")
					if err := os.Symlink(v, filepath.Join(e.dir, "secrets.tmp")); err != nil {
						t.Fatal(err)
					}
					rename(t, filepath.Join(e.dir, "secrets.tmp"), filepath.Join(e.dir, "secrets"))
				}},
				// The watch must have moved to the directory the link points to now.
				{"a write in the new directory", func(t *testing.T, e env, i int) {
					write(t, filepath.Join(e.dir, "secrets", "token"), fmt.Sprintf("token-value-%d", i))
				}},
			},
		},
		{
			name: "reference added by a reload",
			setup: func(t *testing.T, e env) {
				write(t, filepath.Join(e.outside, "token"), "token-value-0")
				write(t, filepath.Join(e.dir, "gateway.yaml"), "")
			},
			steps: []struct {
				what string
				edit func(t *testing.T, e env, i int)
			}{
				{"the config refers to a new file", func(t *testing.T, e env, i int) {
					write(t, filepath.Join(e.dir, "gateway.yaml"), secretsYAML(filepath.Join(e.outside, "token")))
				}},
				{"a write to the new file", func(t *testing.T, e env, i int) {
					write(t, filepath.Join(e.outside, "token"), fmt.Sprintf("token-value-%d", i))
				}},
			},
		},
		{
			name: "directory removed and recreated",
			setup: func(t *testing.T, e env) {
				mkdir(t, filepath.Join(e.outside, "sub"))
				write(t, filepath.Join(e.outside, "sub", "token"), "token-value-0")
				write(t, filepath.Join(e.dir, "gateway.yaml"), secretsYAML(filepath.Join(e.outside, "sub", "token")))
			},
			steps: []struct {
				what string
				edit func(t *testing.T, e env, i int)
			}{
				// Touching gateway.yaml makes the reload certain even if
				// the removal came before the watches were registered.
				{"the removal", func(t *testing.T, e env, i int) {
					if err := os.RemoveAll(filepath.Join(e.outside, "sub")); err != nil {
						t.Fatal(err)
					}
					write(t, filepath.Join(e.dir, "gateway.yaml"), secretsYAML(filepath.Join(e.outside, "sub", "token")))
				}},
				// The live policy still refers to the missing directory:
				// its parent is watched until it comes back.
				{"the directory's return", func(t *testing.T, e env, i int) {
					if err := os.RemoveAll(filepath.Join(e.outside, "sub")); err != nil {
						t.Fatal(err)
					}
					mkdir(t, filepath.Join(e.outside, "sub"))
					write(t, filepath.Join(e.outside, "sub", "token"), fmt.Sprintf("token-value-%d", i))
				}},
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := env{dir: t.TempDir(), outside: t.TempDir()}
			c.setup(t, e)
			changes := watchLoading(t, e.dir)
			for _, s := range c.steps {
				i := 0
				editUntilReload(t, s.what, changes, func() {
					i++
					s.edit(t, e, i)
				})
			}
		})
	}
}

// The watched set follows the config: a directory no longer referred to
// stops being watched, the config directory and its policy subdirectories
// always are, and a missing directory is stood in for by its nearest
// existing parent.
func TestWatchDirsFollowReferences(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tenants"), 0o755); err != nil {
		t.Fatal(err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	log := slog.New(slog.DiscardHandler)
	check := func(want ...string) {
		t.Helper()
		got := w.WatchList()
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("watching %q, want %q", got, want)
		}
	}

	watchDirs(w, watchedDirs(dir, []string{filepath.Join(outside, "token"), "ca/ca.pem"}), log)
	check(dir, filepath.Join(dir, "tenants"), outside)

	watchDirs(w, watchedDirs(dir, []string{filepath.Join(outside, "gone", "deeper", "token")}), log)
	check(dir, filepath.Join(dir, "tenants"), outside)

	watchDirs(w, watchedDirs(dir, nil), log)
	check(dir, filepath.Join(dir, "tenants"))
}

// Noise is no edit: the gateway's own audit log in the config directory,
// and unrelated files next to a referenced one, never trigger a reload; the
// referenced file still does.
func TestWatchIgnoresNoise(t *testing.T) {
	dir, shared := t.TempDir(), t.TempDir()
	write(t, filepath.Join(dir, "gateway.yaml"), "# empty\n")
	secret, neighbour, audit := filepath.Join(shared, "token"), filepath.Join(shared, "busy.log"), filepath.Join(dir, "audit.log")
	write(t, secret, "one")
	changes, _ := watchCounting(t, dir, WatchOptions{
		Debounce: 20 * time.Millisecond, Resync: time.Hour,
		Files:  func() []string { return []string{secret} },
		Ignore: []string{audit},
	})
	editUntilReload(t, "a referenced file's write", changes, func() { write(t, secret, "two") })

	before := changes.Load()
	for i := range 20 {
		write(t, audit, fmt.Sprintf("line %d\n", i))
		write(t, neighbour, fmt.Sprintf("line %d\n", i))
		time.Sleep(5 * time.Millisecond) // spread over several debounce windows
	}
	time.Sleep(200 * time.Millisecond) // ten debounce windows for a wrong reload to show
	if n := changes.Load() - before; n != 0 {
		t.Errorf("%d reloads from the audit log and a neighbouring file", n)
	}
	editUntilReload(t, "a referenced file's second write", changes, func() { write(t, secret, "three") })
}

func TestEventFilter(t *testing.T) {
	f := newEventFilter("/etc/egw", []string{"ca/ca.pem", "/run/secrets/token"}, []string{"/etc/egw/audit.log"})
	for path, want := range map[string]bool{
		"/etc/egw/gateway.yaml":         true,
		"/etc/egw/anything":             true, // the config's own directory: never filtered by name
		"/etc/egw/tenants/a.yaml":       true,
		"/etc/egw/audit.log":            false,
		"/etc/egw/ca/ca.pem":            true,
		"/etc/egw/ca/notes.txt":         false,
		"/etc/egw/ca":                   true, // the directory on the way, recreated
		"/run/secrets/token":            true,
		"/run/secrets/other":            false,
		"/run/secrets/..data":           true, // a ConfigMap-style swap
		"/run/secrets/..2026_11_23_tmp": true,
		"/run":                          true,
		"/tmp/x":                        false,
	} {
		if got := f.counts(path); got != want {
			t.Errorf("counts(%q) = %v, want %v", path, got, want)
		}
	}
}
