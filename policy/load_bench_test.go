package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// writeLargeConfig writes a config directory of tenants tenant files with
// rules own rules each, all using one or two of five connectors, as an
// operator with many sandboxes has; it returns the first tenant's file.
func writeLargeConfig(tb testing.TB, dir string, tenants, rules int) string {
	tb.Helper()
	write := func(name, body string) {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	const connectors = 5
	write(GatewayFileName, "network:\n  allow_cidrs: [\"10.0.0.0/8\"]\n")
	for c := range connectors {
		write(fmt.Sprintf("connectors/svc%d.yaml", c), fmt.Sprintf(
			"name: svc%d\nhosts: [\"api%d.example.com\", \"*.svc%d.example.net\"]\nports: [443]\nquota: { requests_per_second: 10, burst: 20 }\n", c, c, c))
	}
	for i := range tenants {
		sum := sha256.Sum256(fmt.Appendf(nil, "token-%d", i))
		var b strings.Builder
		fmt.Fprintf(&b, "id: tenant-%06d\nauth:\n  token_sha256: %q\nquota: { requests_per_second: 50, burst: 100 }\n", i, hex.EncodeToString(sum[:]))
		fmt.Fprintf(&b, "connectors: [svc%d, svc%d]\nrules:\n", i%connectors, (i+1)%connectors)
		for r := range rules {
			fmt.Fprintf(&b, "  - name: r%d\n    hosts: [\"h%d.t%d.example.org\", \"*.w%d.example.com\"]\n    ports: [443, 8443]\n", r, r, i, r)
		}
		write(fmt.Sprintf("tenants/tenant-%06d.yaml", i), b.String())
	}
	return filepath.Join(dir, "tenants", "tenant-000000.yaml")
}

func benchmarkLoad(b *testing.B, tenants, rules int) {
	dir := b.TempDir()
	writeLargeConfig(b, dir, tenants, rules)
	fsys := DirFS(dir)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(fsys, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoad10kTenants loads 10,000 tenants with two rules and two
// connectors each: a first load, or a reload where everything changed.
func BenchmarkLoad10kTenants(b *testing.B) { benchmarkLoad(b, 10000, 2) }

// BenchmarkLoad100kRules loads 1,000 tenants with 100 rules each.
func BenchmarkLoad100kRules(b *testing.B) { benchmarkLoad(b, 1000, 100) }

// BenchmarkReload10kTenantsOneEdited reloads 10,000 tenants of which one
// changed: every file is read and hashed, one is compiled.
func BenchmarkReload10kTenantsOneEdited(b *testing.B) {
	dir := b.TempDir()
	edited := writeLargeConfig(b, dir, 10000, 2)
	fsys := DirFS(dir)
	live, err := Load(fsys, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	original, err := os.ReadFile(edited)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		if err := os.WriteFile(edited, fmt.Appendf(original, "# edit %d\n", i), 0o644); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		next, err := Reload(fsys, time.Now(), live)
		if err != nil {
			b.Fatal(err)
		}
		live = next
	}
}

// BenchmarkLoad2kSourceTenants loads 2,000 tenants identified by their
// address (source_cidrs), as sandbox runtimes without tokens have.
func BenchmarkLoad2kSourceTenants(b *testing.B) {
	fsys := fstest.MapFS{}
	for i := range 2000 {
		fsys[fmt.Sprintf("tenants/t%d.yaml", i)] = &fstest.MapFile{Data: fmt.Appendf(nil,
			"id: t%d\nauth: { source_cidrs: [\"10.%d.%d.0/24\"] }\nrules:\n  - hosts: [\"pypi.org\"]\n", i, i/256, i%256)}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(fsys, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}
