package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressgw/egressgw/allowlist"
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

// FuzzPatternCovers checks the host reasoning of check's warnings against
// the matcher itself: a pattern said to cover another matches every host
// the other matches (else a rule would be called shadowed wrongly), and
// two patterns that both match a host are said to overlap (else a deny
// would be called unreachable wrongly).
func FuzzPatternCovers(f *testing.F) {
	for _, seed := range [][3]string{
		{"*.example.com", "*.eu.example.com", "a.eu.example.com"},
		{"*.example.com", "example.com", "example.com"},
		{"*.example.com", "api.example.com", "api.example.com"},
		{"10.0.0.0/8", "10.1.2.3", "10.1.2.3"},
		{"10.0.0.0/8", "::ffff:10.1.2.3", "10.1.2.3"},
		{"8.8.0.0/16", "8.8.8.0/24", "8.8.8.8"},
		{"*.b.example.com", "*.ab.example.com", "x.ab.example.com"},
		{"2001:db8::/32", "2001:db8::1", "2001:db8::1"},
		{"API.Example.COM.", "api.example.com", "api.example.com"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, a, b, host string) {
		pa, errA := allowlist.ParsePattern(a)
		pb, errB := allowlist.ParsePattern(b)
		h, errH := allowlist.NormalizeHost(host)
		if errA != nil || errB != nil || errH != nil {
			return
		}
		if patternCovers(pa, pb) && pb.Match(h) && !pa.Match(h) {
			t.Fatalf("%q is said to cover %q, but %q matches only the latter", pa, pb, h)
		}
		if pa.Match(h) && pb.Match(h) && !hostsOverlap([]allowlist.Pattern{pa}, []allowlist.Pattern{pb}) {
			t.Fatalf("%q and %q both match %q, but are said not to overlap", pa, pb, h)
		}
	})
}
