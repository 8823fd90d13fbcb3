package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

const testTokenHash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" // sha256("test")

// TestLoadRejectsBadConfigs loads every testdata/bad/* directory and
// compares the errors with its want.txt, line for line.
func TestLoadRejectsBadConfigs(t *testing.T) {
	dirs, err := filepath.Glob("testdata/bad/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no bad configs found: %v", err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			want, err := os.ReadFile(filepath.Join(dir, "want.txt"))
			if err != nil {
				t.Fatal(err)
			}
			snap, err := Load(os.DirFS(dir), time.Now())
			if snap != nil || err == nil {
				t.Fatalf("config loaded; want errors:\n%s", want)
			}
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("error is %T, want *LoadError: %v", err, err)
			}
			if got := err.Error() + "\n"; got != string(want) {
				t.Errorf("errors differ\n got:\n%s\nwant:\n%s", got, want)
			}
			for _, ce := range le.Errors {
				if ce.Line == 0 {
					t.Errorf("error without a line: %v", ce)
				}
			}
		})
	}
}

func mustLoad(t testing.TB, files map[string]string) *Snapshot {
	t.Helper()
	fsys := fstest.MapFS{}
	for name, body := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(body)}
	}
	snap, err := Load(fsys, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return snap
}

func TestDefaultsFromEmptyConfig(t *testing.T) {
	snap := mustLoad(t, map[string]string{"gateway.yaml": "# nothing set\n"})
	g := snap.Gateway
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", g.Listen, ":3128"},
		{"admin_listen", g.AdminListen, "127.0.0.1:9128"},
		{"max_header_bytes", g.MaxHeaderBytes, 64 << 10},
		{"idle_timeout", g.IdleTimeout, 120 * time.Second},
		{"max_connections", g.MaxConnections, 10000},
		{"shutdown_grace", g.ShutdownGrace, 20 * time.Second},
		{"dial_timeout", g.DialTimeout, 5 * time.Second},
		{"dns_timeout", g.DNSTimeout, 2 * time.Second},
		{"audit", g.AuditOutput, "stdout"},
		{"max_tenant_labels", g.MaxTenantLabels, 500},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if len(snap.TenantIDs()) != 0 || snap.Connectors() != 0 {
		t.Errorf("empty config has tenants or connectors")
	}
}

func TestThreeLineTenantIsAValidPolicy(t *testing.T) {
	snap := mustLoad(t, map[string]string{
		"tenants/acme.yaml": "id: acme\nauth: { token_sha256: \"" + testTokenHash + "\" }\nrules: [{ hosts: [\"docs.python.org\"] }]\n",
	})
	tenant, ok := snap.Tenant("acme")
	if !ok {
		t.Fatal("tenant acme missing")
	}
	if d := tenant.Decide(Request{Host: "docs.python.org", Port: 443, Tunnel: true}); !d.Allow || d.Rule != "rules[0]" {
		t.Errorf("decision = %+v, want allow by rules[0]", d)
	}
}

func TestSizes(t *testing.T) {
	cases := []struct {
		in   string
		want Size
		ok   bool
	}{
		{"4096", 4096, true},
		{"64KiB", 64 << 10, true},
		{"1MiB", 1 << 20, true},
		{"2GiB", 2 << 30, true},
		{"10MB", 10_000_000, true},
		{"12B", 12, true},
		{"1.5MiB", 0, false},
		{"-1", 0, false},
		{"lots", 0, false},
		{"99999999999GiB", 0, false},
	}
	for _, c := range cases {
		got, err := ParseSize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestHashChangesWithContent(t *testing.T) {
	a := mustLoad(t, map[string]string{"gateway.yaml": "listen: \":3128\"\n"})
	b := mustLoad(t, map[string]string{"gateway.yaml": "listen: \":3129\"\n"})
	c := mustLoad(t, map[string]string{"gateway.yaml": "listen: \":3128\"\n"})
	if a.Hash == b.Hash || a.Hash != c.Hash || len(a.Hash) != 64 {
		t.Errorf("hashes: %s %s %s", a.Hash, b.Hash, c.Hash)
	}
}

func TestHiddenAndForeignFilesAreIgnored(t *testing.T) {
	snap := mustLoad(t, map[string]string{
		"tenants/.acme.yaml.swp": "garbage: [",
		"tenants/..data/x.yaml":  "garbage: [",
		"tenants/README.md":      "# not policy",
		"tenants/acme.yml":       "id: acme\nauth: { token_sha256: \"" + testTokenHash + "\" }\n",
		"connectors/.tmp.yaml~":  "garbage: [",
		"connectors/notes.txt":   "garbage",
	})
	if got := strings.Join(snap.TenantIDs(), ","); got != "acme" {
		t.Errorf("tenants = %q, want acme", got)
	}
	if len(snap.Warnings) != 1 || !strings.Contains(snap.Warnings[0].Msg, "every request will be denied") {
		t.Errorf("warnings = %v, want the no-rules warning", snap.Warnings)
	}
}
