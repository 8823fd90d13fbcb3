package policy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
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
			snap, err := Load(DirFS(dir), time.Now())
			if snap != nil || err == nil {
				t.Fatalf("config loaded; want errors:\n%s", want)
			}
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("error is %T, want *LoadError: %v", err, err)
			}
			// Paths outside the config directory are shown resolved;
			// testdata stands for where this checkout lies.
			testdata, err2 := filepath.EvalSymlinks("testdata")
			if err2 != nil {
				t.Fatal(err2)
			}
			testdata, _ = filepath.Abs(testdata)
			if got := strings.ReplaceAll(err.Error(), testdata, "testdata") + "\n"; got != string(want) {
				t.Errorf("errors differ\n got:\n%s\nwant:\n%s", got, want)
			}
			for _, ce := range le.Errors {
				if ce.Line == 0 && !ce.wholeFile {
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

// TestLoadReportsEveryProblemOnItsOwnLine asserts the exact errors of
// configs where one problem used to hide others, fold several into one
// multi-line message, or drag bogus follow-on errors into other files.
func TestLoadReportsEveryProblemOnItsOwnLine(t *testing.T) {
	const script = "request.headers[\"X-Tag\"] = [\"a\"]\n"
	hooked := "name: c\nhosts: [\"c.example\"]\nhooks: { request: hooks/x.tengo }\n"
	cases := []struct {
		name  string
		files map[string]string
		want  []string // every error line, in any order
	}{
		{
			name: "two bad hook limits on a connector a tenant uses",
			files: map[string]string{
				"hooks/x.tengo":     script,
				"connectors/c.yaml": "name: c\nhosts: [\"c.example\"]\nhooks:\n  request: hooks/x.tengo\n  max_memory: 1024\n",
				"tenants/t.yaml":    "id: t\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [c@1]\n",
			},
			want: []string{
				"connectors/c.yaml:4: hooks: max_memory 1024: must be between 4MiB and 16GiB",
				"connectors/c.yaml:4: hooks: max_body_bytes 1048576: must be between 1 and a quarter of max_memory (256)",
			},
		},
		{
			name: "bad hook defaults are reported once, at gateway.yaml",
			files: map[string]string{
				"gateway.yaml":      "hooks:\n  defaults: { max_memory: 1KiB }\n",
				"hooks/x.tengo":     script,
				"connectors/c.yaml": hooked,
			},
			want: []string{
				"gateway.yaml:2: hooks.defaults: max_memory 1024: must be between 4MiB and 16GiB",
				"gateway.yaml:2: hooks.defaults: max_body_bytes 1048576: must be between 1 and a quarter of max_memory (256)",
			},
		},
		{
			name: "a decode error in gateway.yaml hides neither its other errors nor sets bogus hook limits",
			files: map[string]string{
				"gateway.yaml":      "colour: blue\nnetwork:\n  deny_cidrs: [\"10.0.0.0/33\"]\nsecrets:\n  k: { env: EGRESSGW_TEST_NEVER_SET }\n",
				"hooks/x.tengo":     script,
				"connectors/c.yaml": hooked,
				"tenants/t.yaml":    "id: t\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [c]\n",
			},
			want: []string{
				`gateway.yaml:1: unknown key "colour"`,
				`gateway.yaml:3: invalid CIDR "10.0.0.0/33": want an address or a prefix such as 10.0.0.0/8`,
				`gateway.yaml:5: secret "k": environment variable EGRESSGW_TEST_NEVER_SET is not set`,
			},
		},
		{
			name: "a syntax error in gateway.yaml blames no connector for what it may define",
			files: map[string]string{
				"gateway.yaml":      "listen: \":3128\"\nsecrets: {\n",
				"hooks/x.tengo":     script,
				"connectors/c.yaml": "name: c\nhosts: [\"c.example\"]\ninspect: true\ninject:\n  headers: { Authorization: \"Bearer ${secret:k}\" }\nhooks: { request: hooks/x.tengo }\nredact: { request: [pii] }\n",
				"tenants/t.yaml":    "id: t\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [c]\n",
			},
			want: []string{
				"gateway.yaml:2: did not find expected node content",
			},
		},
		{
			name: "a wrong type in one gateway.yaml section excuses only what depends on it",
			files: map[string]string{
				"gateway.yaml":      "secrets: [k]\n",
				"connectors/c.yaml": "name: c\nhosts: [\"c.example\"]\ninspect: true\ninject:\n  headers: { Authorization: \"Bearer ${secret:k}\" }\n",
			},
			want: []string{
				`gateway.yaml:1: wrong type for key "secrets": got a list, want a mapping`,
				"connectors/c.yaml:3: inspect: true needs tls.ca_cert and tls.ca_key in gateway.yaml; create them with: egressgw ca init --out DIR",
			},
		},
		{
			name: "a value that does not decode takes its default, not zero",
			files: map[string]string{
				"gateway.yaml":      "limits:\n  max_header_bytes: 64 kilobytes\nhooks:\n  defaults: { timeout: soon }\n",
				"hooks/x.tengo":     script,
				"connectors/c.yaml": hooked,
			},
			want: []string{
				`gateway.yaml:2: invalid size: want a whole number of bytes with an optional unit (B, KiB, MiB, GiB)`,
				`gateway.yaml:4: invalid duration: want e.g. 250ms, 2s, 1m`,
			},
		},
		{
			name: "a second document leaves the first one checked",
			files: map[string]string{
				"gateway.yaml":      "network:\n  allow_cidrs: [\"10.0.0.1/8\"]\n---\nlisten: x\n",
				"connectors/c.yaml": "name: c\nhosts: [\"c.example\"]\ninspect: true\n",
			},
			want: []string{
				"gateway.yaml:3: only one YAML document per file",
				`gateway.yaml:2: invalid CIDR "10.0.0.1/8": host bits are set; did you mean 10.0.0.0/8?`,
				"connectors/c.yaml:3: inspect: true needs tls.ca_cert and tls.ca_key in gateway.yaml; create them with: egressgw ca init --out DIR",
			},
		},
		{
			name: "a wrong type names its key, never the value",
			files: map[string]string{
				"tenants/t.yaml": "id: t\nauth: { token_sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }\n" +
					"rules:\n  - name: docs\n    hosts: [\"a.example\"]\n    ports:\n      - 443\n      - secret words here\n",
			},
			want: []string{
				`tenants/t.yaml:8: wrong type for key "ports": got a string, want a whole number`,
			},
		},
		{
			name: "a flow-style gateway.yaml does not tell its sections apart",
			files: map[string]string{
				"gateway.yaml":      "{ listen: \":3128\", secrets: [k] }\n",
				"connectors/c.yaml": "name: c\nhosts: [\"c.example\"]\ninspect: true\n",
			},
			want: []string{
				"gateway.yaml:1: wrong type: got a list, want a mapping",
			},
		},
		{
			name: "a misspelt CA key is reported once",
			files: map[string]string{
				"gateway.yaml":      "tls:\n  ca_cert: ca.pem\n  ca_kye: ca-key.pem\n",
				"connectors/c.yaml": "name: c\nhosts: [\"c.example\"]\ninspect: true\n",
			},
			want: []string{
				`gateway.yaml:3: unknown key "ca_kye"`,
				"gateway.yaml:2: tls: set both ca_cert and ca_key",
			},
		},
		{
			name: "an unrelated decode error in gateway.yaml keeps cross-file checks",
			files: map[string]string{
				"gateway.yaml":      "colour: blue\n",
				"connectors/c.yaml": "name: c\nhosts: [\"c.example\"]\ninject:\n  headers: { Authorization: \"Bearer ${secret:k}\" }\n",
			},
			want: []string{
				`gateway.yaml:1: unknown key "colour"`,
				`connectors/c.yaml:4: inject header "Authorization": secret "k" is not defined in gateway.yaml`,
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for name, body := range c.files {
				fsys[name] = &fstest.MapFile{Data: []byte(body)}
			}
			_, err := Load(fsys, time.Now())
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("Load: %v, want a *LoadError", err)
			}
			got := strings.Split(le.Error(), "\n")
			slices.Sort(got)
			want := slices.Sorted(slices.Values(c.want))
			if !slices.Equal(got, want) {
				t.Errorf("errors differ\n got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// Relative paths are relative to the config directory (docs/admins.md),
// and may leave it only into a directory listed in config.allow_paths;
// a reload sees the files there change.
func TestPathsOutsideTheConfigDirectoryNeedAllowPaths(t *testing.T) {
	caCert, caKey := testCA(t)
	root := t.TempDir()
	refs := `tls:
  ca_cert: ../ca/ca.pem
  ca_key: ../ca/ca-key.pem
  upstream_roots: ["../ca/roots.pem"]
secrets:
  k: { file: ../secrets/k }
`
	files := map[string]string{
		"config/gateway.yaml": refs,
		"config/connectors/c.yaml": `name: c
hosts: ["c.example"]
inspect: true
inject:
  headers: { Authorization: "Bearer ${secret:k}" }
hooks: { request: ../shared/tag.tengo }
`,
		"ca/ca.pem":        caCert,
		"ca/ca-key.pem":    caKey,
		"ca/roots.pem":     caCert,
		"secrets/k":        "s3cret-value\n",
		"shared/tag.tengo": "request.headers[\"X-Tag\"] = [\"a\"]\n",
	}
	for name, body := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, p, body)
	}
	dir := filepath.Join(root, "config")
	fsys := DirFS(dir)

	_, err := Load(fsys, time.Now())
	for _, want := range []string{
		"gateway.yaml:2: ca_cert: ../ca/ca.pem resolves to " + filepath.Join(root, "ca", "ca.pem") + ", outside the config directory; move it inside or list its directory in config.allow_paths",
		"gateway.yaml:4: upstream root \"../ca/roots.pem\": ../ca/roots.pem resolves to",
		"gateway.yaml:6: secret \"k\": ../secrets/k resolves to",
		"connectors/c.yaml:6: hooks.request: ../shared/tag.tengo resolves to",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("load without allow_paths: %v\nwant: %s", err, want)
		}
	}

	// One directory relative to the config directory, two absolute.
	write(t, filepath.Join(dir, "gateway.yaml"), "config:\n  allow_paths: [../ca, "+filepath.Join(root, "secrets")+", "+filepath.Join(root, "shared")+"/]\n"+refs)
	snap, err := Load(fsys, time.Now())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if snap.Gateway.CA == nil || snap.Gateway.UpstreamRoots == nil {
		t.Errorf("CA %v, upstream roots %v: want both loaded", snap.Gateway.CA, snap.Gateway.UpstreamRoots)
	}
	referenced := snap.Referenced()
	if watched := watchedDirs(dir, referenced); !slices.Contains(referenced, "../shared/tag.tengo") || !slices.Contains(watched, filepath.Join(root, "shared")) {
		t.Errorf("referenced %v, watched %v: want ../shared/tag.tengo, watched in %s", referenced, watched, filepath.Join(root, "shared"))
	}

	for _, name := range []string{"shared/tag.tengo", "secrets/k", "ca/roots.pem", "ca/ca.pem"} {
		t.Run("an edit of "+name+" is a change", func(t *testing.T) {
			p := filepath.Join(root, filepath.FromSlash(name))
			if !snap.Unchanged(fsys) {
				t.Fatal("a snapshot differs from the files it was just loaded from")
			}
			write(t, p, files[name]+"\n")
			if snap.Unchanged(fsys) {
				t.Errorf("an edit of %s went unnoticed: the reload would be skipped", name)
			}
			write(t, p, files[name])
		})
	}

	// A config with no directory on disk behind it cannot leave it.
	mapFS := fstest.MapFS{}
	for name, body := range files {
		if rel, ok := strings.CutPrefix(name, "config/"); ok {
			mapFS[rel] = &fstest.MapFile{Data: []byte(body)}
		}
	}
	_, err = Load(mapFS, time.Now())
	if err == nil || !strings.Contains(err.Error(), `gateway.yaml:2: ca_cert: ../ca/ca.pem leaves the config directory; move it inside or list its directory in config.allow_paths`) {
		t.Errorf("load from a file system with no directory: %v; want ca_cert refused with the reason", err)
	}
}

// A tenant rule is never inspected, so its methods and paths cannot apply
// to an HTTPS tunnel: check warns, and the refusal of a CONNECT says to
// move them into a connector, which can inspect.
func TestTenantRuleMethodsOverHTTPS(t *testing.T) {
	const (
		moveAdvice    = "move the restriction into a connector with inspect: true"
		inspectAdvice = "the connector needs inspect: true"
	)
	cases := []struct {
		name    string
		rules   string // the tenant file's rules
		warning string // the tenant file's expected warning; "" for none
		port    uint16 // a CONNECT to api.example on this port is refused with:
		advice  string
	}{
		{
			name:    "methods on the default ports",
			rules:   "  - name: read-only\n    hosts: [\"api.example\"]\n    methods: [GET]\n",
			warning: `tenants/t.yaml:4: rule "read-only" restricts methods or paths, which an HTTPS tunnel (CONNECT) hides and a tenant rule cannot inspect: tunnels to its hosts are refused; ` + moveAdvice,
			port:    443, advice: moveAdvice,
		},
		{
			name:    "paths on another port",
			rules:   "  - name: v1\n    hosts: [\"api.example\"]\n    ports: [80, 8443]\n    paths: [\"/v1/\"]\n",
			warning: `tenants/t.yaml:4: rule "v1" restricts methods or paths, which an HTTPS tunnel (CONNECT) hides and a tenant rule cannot inspect: tunnels to its hosts are refused; ` + moveAdvice,
			port:    8443, advice: moveAdvice,
		},
		{
			name:  "plain HTTP only",
			rules: "  - name: v1\n    hosts: [\"api.example\"]\n    ports: [80]\n    paths: [\"/v1/\"]\n",
			port:  80, advice: moveAdvice,
		},
		{
			name:  "no methods or paths",
			rules: "  - name: all\n    hosts: [\"api.example\"]\n",
		},
		{
			name:  "a connector says to inspect",
			rules: "  - name: all\n    hosts: [\"other.example\"]\n",
			port:  443, advice: inspectAdvice,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			snap := mustLoad(t, map[string]string{
				"gateway.yaml":        "tenant_defaults: { quota: { requests_per_second: 10, burst: 20 } }\n",
				"connectors/api.yaml": "name: api\nhosts: [\"api.example\"]\nmethods: [GET]\n",
				"tenants/t.yaml": "id: t\nauth: { token_sha256: \"" + testTokenHash + "\" }\n" +
					map[bool]string{true: "connectors: [api]\n", false: ""}[c.advice == inspectAdvice] + "rules:\n" + c.rules,
			})
			var warnings []string
			for _, w := range snap.Warnings {
				if w.File == "tenants/t.yaml" {
					warnings = append(warnings, w.Error())
				}
			}
			if want := []string{c.warning}; (c.warning == "" && warnings != nil) || (c.warning != "" && !slices.Equal(warnings, want)) {
				t.Errorf("warnings %q, want %q", warnings, c.warning)
			}
			if c.port == 0 {
				return
			}
			tenant, _ := snap.Tenant("t")
			d := tenant.Decide(Request{Host: "api.example", Port: c.port, Tunnel: true})
			if d.Allow || !strings.HasSuffix(d.Reason, c.advice) {
				t.Errorf("CONNECT api.example:%d: allow=%v, reason %q; want refused, ending %q", c.port, d.Allow, d.Reason, c.advice)
			}
		})
	}
}
