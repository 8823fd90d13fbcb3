package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadWarnings loads every testdata/warn/* directory, which must load,
// and compares its warnings with want.txt, line for line.
func TestLoadWarnings(t *testing.T) {
	dirs, err := filepath.Glob("testdata/warn/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no warning configs found: %v", err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(dir, "want.txt"))
			if err != nil {
				t.Fatal(err)
			}
			snap, err := Load(os.DirFS(dir), time.Now())
			if err != nil {
				t.Fatalf("config refused; want it loaded with warnings: %v", err)
			}
			var got strings.Builder
			for _, w := range snap.Warnings {
				got.WriteString(w.Error() + "\n")
			}
			if got.String() != string(want) {
				t.Errorf("warnings differ\n got:\n%s\nwant:\n%s", got.String(), want)
			}
		})
	}
}
