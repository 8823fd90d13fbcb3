package proxy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An audit file renamed or removed under the gateway (logrotate without
// copytruncate) is reopened at its path within the check interval, or at
// once on Reopen; a rename loses no line.
func TestAuditFileFollowsItsPath(t *testing.T) {
	tests := []struct {
		name   string
		rotate func(t *testing.T, path string)
		reopen bool // Reopen (SIGHUP) right after the rotation
		lossy  bool // lines written before the check went to a removed file
	}{
		{"rename", func(t *testing.T, path string) { mustRename(t, path, path+".1") }, false, false},
		{"rename then create", func(t *testing.T, path string) {
			mustRename(t, path, path+".1")
			if err := os.WriteFile(path, nil, 0o640); err != nil {
				t.Fatal(err)
			}
		}, false, false},
		{"rename and SIGHUP", func(t *testing.T, path string) { mustRename(t, path, path+".1") }, true, false},
		{"remove", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			f, err := OpenAuditFile(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.checkEvery = 50 * time.Millisecond
			line := 0
			writeLine := func() {
				line++
				if _, err := fmt.Fprintf(f, "line %d\n", line); err != nil {
					t.Fatal(err)
				}
			}
			for range 5 {
				writeLine()
			}
			tt.rotate(t, path)
			if tt.reopen {
				if err := f.Reopen(); err != nil {
					t.Fatal(err)
				}
			}
			// Writes go on; the file at the path gets them within the
			// check interval.
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(readOrEmpty(t, path), fmt.Sprintf("line %d\n", line)) {
				if time.Now().After(deadline) {
					t.Fatalf("%s still holds no new line", path)
				}
				writeLine()
				time.Sleep(10 * time.Millisecond)
			}
			if tt.reopen && !strings.HasPrefix(readOrEmpty(t, path), "line 6\n") {
				t.Errorf("after Reopen the first new line went elsewhere: %q", readOrEmpty(t, path))
			}
			for range 5 {
				writeLine()
			}
			all := readOrEmpty(t, path+".1") + readOrEmpty(t, path)
			if tt.lossy {
				all = readOrEmpty(t, path)
			}
			got := strings.Split(strings.TrimSuffix(all, "\n"), "\n")
			first := 1
			if tt.lossy {
				fmt.Sscanf(got[0], "line %d", &first)
			}
			for i, l := range got {
				if want := fmt.Sprintf("line %d", first+i); l != want {
					t.Fatalf("line %d of the files is %q, want %q: lost or repeated", i, l, want)
				}
			}
			if first+len(got)-1 != line {
				t.Errorf("files end at line %d, want %d", first+len(got)-1, line)
			}
		})
	}
}

// A path that cannot be opened again is an error the writer reports (and
// retries), not lines written into a file nobody can read.
func TestAuditFileFailsWhenPathIsGone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "logs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "audit.log")
	f, err := OpenAuditFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.checkEvery = 0
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("x\n")); err == nil {
		t.Fatal("write into a removed directory succeeded")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("y\n")); err != nil {
		t.Fatalf("write once the directory is back: %v", err)
	}
	if got := readOrEmpty(t, path); got != "y\n" {
		t.Errorf("file holds %q", got)
	}
}

func mustRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func readOrEmpty(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(data)
}
