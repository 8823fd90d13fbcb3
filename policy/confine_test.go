package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// writeTree writes files (relative path -> content) under root.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, p, body)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

const acmeTenant = "id: acme\nauth: { token_sha256: \"" + testTokenHash + "\" }\nrules: [{ hosts: [\"docs.python.org\"] }]\n"

// A Kubernetes ConfigMap volume: every name is a relative link through
// "..data" to a timestamped directory, all inside the config directory.
// It loads from DirFS and from os.DirFS alike, and so does the same
// layout with absolute links into the directory.
func TestConfigMapLayoutLoads(t *testing.T) {
	for _, absolute := range []bool{false, true} {
		t.Run(map[bool]string{false: "relative links", true: "absolute links"}[absolute], func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, filepath.Join(dir, "..2026_12_06_10_00_00.1"), map[string]string{
				"gateway.yaml":      "secrets:\n  k: { file: token }\n",
				"token":             "token-value-0123",
				"tenants/acme.yaml": acmeTenant,
			})
			target := func(rel string) string {
				if absolute {
					return filepath.Join(dir, rel)
				}
				return rel
			}
			symlink(t, "..2026_12_06_10_00_00.1", filepath.Join(dir, "..data"))
			symlink(t, target("..data/gateway.yaml"), filepath.Join(dir, "gateway.yaml"))
			symlink(t, target("..data/token"), filepath.Join(dir, "token"))
			symlink(t, target("..data/tenants"), filepath.Join(dir, "tenants"))
			fsyses := map[string]fs.FS{"DirFS": DirFS(dir)}
			if !absolute {
				// os.DirFS has no directory to check absolute links against.
				fsyses["os.DirFS"] = os.DirFS(dir)
			}
			for name, fsys := range fsyses {
				snap, err := Load(fsys, time.Now())
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if _, ok := snap.Tenant("acme"); !ok || len(snap.Referenced()) != 1 {
					t.Errorf("%s: tenant acme missing or the token not read (referenced %v)", name, snap.Referenced())
				}
			}
		})
	}
}

// A link that leaves the config directory is refused whichever file system
// serves it; so is an absolute link where there is no directory on disk
// to check it against.
func TestLinksOutOfTheConfigDirectoryAreRefused(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "config")
	writeTree(t, root, map[string]string{
		"outside/acme.yaml":   acmeTenant,
		"config/gateway.yaml": "",
	})
	symlink(t, "../../outside/acme.yaml", filepath.Join(dir, "tenants", "rel.yaml"))
	symlink(t, filepath.Join(root, "outside", "acme.yaml"), filepath.Join(dir, "connectors", "abs.yaml"))
	symlink(t, "../outside", filepath.Join(dir, "tenants-dir"))
	for name, fsys := range map[string]fs.FS{"DirFS": DirFS(dir), "os.DirFS": os.DirFS(dir)} {
		_, err := Load(fsys, time.Now())
		var le *LoadError
		if !errors.As(err, &le) || len(le.Errors) != 2 {
			t.Fatalf("%s: %v; want both links refused", name, err)
		}
		for _, ce := range le.Errors {
			if !ce.wholeFile || !strings.Contains(ce.Msg, "outside") && !strings.Contains(ce.Msg, "leaves the config directory") {
				t.Errorf("%s: %v; want it refused as outside the config directory", name, ce)
			}
		}
	}
}

// A file over config.max_file_bytes is refused without being read: loading
// a 101 MB tenant file allocates a small fraction of it.
func TestOversizedFileIsNotRead(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"gateway.yaml": "", "tenants/acme.yaml": acmeTenant})
	big := filepath.Join(dir, "tenants", "big.yaml")
	write(t, big, "id: big\n")
	if err := os.Truncate(big, 101<<20); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := Load(DirFS(dir), time.Now())
	runtime.ReadMemStats(&after)
	want := "tenants/big.yaml: is 105906176 bytes, over config.max_file_bytes (4194304 bytes)"
	if err == nil || err.Error() != want {
		t.Errorf("load: %v; want %s", err, want)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Errorf("loading allocated %d bytes: the oversized file was read", grew)
	}
}

// gateway.yaml holds max_file_bytes, which bounds it too.
func TestMaxFileBytesBoundsGatewayYAML(t *testing.T) {
	cases := []struct {
		name, gateway, want string
	}{
		{"under its own bound", "config: { max_file_bytes: 1KiB }\n", ""},
		{"over its own bound", "config: { max_file_bytes: 40B }\n# padding padding padding\n", "gateway.yaml: is 58 bytes, over config.max_file_bytes (40 bytes)"},
		{"bound out of range", "config: { max_file_bytes: 1GiB }\n", "gateway.yaml:1: config.max_file_bytes: want 1B to 64MiB"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, map[string]string{"gateway.yaml": c.gateway})
			_, err := Load(DirFS(dir), time.Now())
			if got := fmt.Sprint(err); (c.want == "" && err != nil) || (c.want != "" && got != c.want) {
				t.Errorf("load: %v; want %q", err, c.want)
			}
		})
	}
}

// No error or warning holds a secret's value, or a value from a file that
// did not decode, whatever the files hold and wherever they are named
// (docs/admins.md).
func TestErrorsQuoteNoSecretAndNoUndecodedValue(t *testing.T) {
	const (
		fileSecret = "zq9xwfilesecretvalue"   // also a valid key name
		envSecret  = "Zq9Xw-env-secret-VALUE" //
		hashLine   = "$2y$10$Zq9XwFAKEHASHfakehashFAKEhashFAKE"
	)
	t.Setenv("EGRESSGW_TEST_CONFINE_SECRET", envSecret)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"gateway.yaml": `secrets:
  file_secret: { file: secrets/file }
  env_secret: { env: EGRESSGW_TEST_CONFINE_SECRET }
limits: { max_connections: 100 }
`,
		"secrets/file":   fileSecret + "\n",
		"secrets/shadow": "admin_password: " + hashLine + "\nroot: " + hashLine + "\n",
		// Secret values written where they do not belong.
		"tenants/mode.yaml":   "id: mode\nauth: { token_sha256: \"" + testTokenHash + "\" }\nmode: " + envSecret + "\n",
		"tenants/key.yaml":    "id: key\nauth: { source_cidrs: [10.1.0.0/16] }\n" + fileSecret + ": 1\n",
		"tenants/type.yaml":   "id: type\nauth: { source_cidrs: [10.2.0.0/16] }\nquota: { burst: " + fileSecret + " }\n",
		"tenants/id.yaml":     "id: " + envSecret + "!\nauth: { source_cidrs: [10.3.0.0/16] }\n",
		"tenants/anchor.yaml": "id: anchor\nauth: *" + fileSecret + "\n",
		"tenants/tag.yaml":    "id: tag\nauth: !" + fileSecret + " { source_cidrs: [10.4.0.0/16] }\n",
		"tenants/rule.yaml":   "id: rule\nauth: { source_cidrs: [10.5.0.0/16] }\nrules: [{ hosts: [\"" + envSecret + ".example\"], ports: [" + hashLine + "] }]\n",
		"connectors/c.yaml": `name: c
hosts: ["c.example"]
inject: { headers: { X-Key: "${secret:file_secret}", "` + fileSecret + `": "${secret:env_secret}" } }
hooks: { request: hooks/secret.tengo, response: hooks/shadow.tengo }
`,
		"connectors/d.yaml": "name: d\nhosts: [\"" + fileSecret + "\"]\nversion: " + envSecret + "\n",
	})
	// Secrets and a password file reached through links inside the
	// directory, as YAML and as scripts.
	symlink(t, "../secrets/file", filepath.Join(dir, "tenants", "file-link.yaml"))
	symlink(t, "../secrets/shadow", filepath.Join(dir, "tenants", "shadow-link.yaml"))
	symlink(t, "../secrets/file", filepath.Join(dir, "hooks", "secret.tengo"))
	symlink(t, "../secrets/shadow", filepath.Join(dir, "hooks", "shadow.tengo"))

	_, err := Load(DirFS(dir), time.Now())
	var le *LoadError
	if !errors.As(err, &le) || len(le.Errors) < 10 {
		t.Fatalf("load: %v; want many errors", err)
	}
	var messages []string
	for _, ce := range le.Errors {
		messages = append(messages, ce.Error())
	}
	all := strings.Join(messages, "\n")
	for _, secret := range []string{fileSecret, envSecret, hashLine[7:]} {
		for i := 0; i+7 <= len(secret); i++ {
			if part := secret[i : i+7]; strings.Contains(all, part) {
				t.Errorf("the errors quote %q of a secret or an undecoded value:\n%s", part, all)
				break
			}
		}
	}
	t.Logf("errors:\n%s", all)
}

// A mistake elsewhere in gateway.yaml leaves config.allow_paths in force:
// the one error is reported, not a refusal of every allowed file on top.
func TestAllowPathsSurviveAnErrorElsewhere(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"secrets/k":           "token-value-0123\n",
		"config/gateway.yaml": "listen: [1]\nconfig: { allow_paths: [../secrets] }\nsecrets:\n  k: { file: ../secrets/k }\n",
	})
	_, err := Load(DirFS(filepath.Join(root, "config")), time.Now())
	if want := `gateway.yaml:1: wrong type for key "listen": got a list, want a string`; err == nil || err.Error() != want {
		t.Errorf("load: %v; want only %s", err, want)
	}
}

func TestResolveInFS(t *testing.T) {
	fsys := fstest.MapFS{
		"..2026/tenants/a.yaml": {Data: []byte("id: a\n")},
		"..data":                {Mode: fs.ModeSymlink, Data: []byte("..2026")},
		"tenants":               {Mode: fs.ModeSymlink, Data: []byte("..data/tenants")},
		"up":                    {Mode: fs.ModeSymlink, Data: []byte("../outside")},
		"abs":                   {Mode: fs.ModeSymlink, Data: []byte("/etc/passwd")},
		"loop":                  {Mode: fs.ModeSymlink, Data: []byte("loop")},
	}
	cases := []struct{ name, want, err string }{
		{"tenants/a.yaml", "..2026/tenants/a.yaml", ""},
		{"tenants/../tenants/a.yaml", "..2026/tenants/a.yaml", ""},
		{"up", "", "leaves the config directory"},
		{"abs", "", "absolute path /etc/passwd"},
		{"loop", "", "too many levels of symbolic links"},
	}
	for _, c := range cases {
		got, err := resolveInFS(fsys, c.name)
		if got != c.want || (c.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("resolveInFS(%q) = %q, %v; want %q, %q", c.name, got, err, c.want, c.err)
		}
	}
}

// The CA's private key cannot be named as a hook script: the compiler's
// message would quote its text.
func TestCAKeyIsNoScript(t *testing.T) {
	cert, key := testCA(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"gateway.yaml":      "tls: { ca_cert: ca/ca.pem, ca_key: ca/ca-key.pem }\n",
		"ca/ca.pem":         cert,
		"ca/ca-key.pem":     key,
		"connectors/c.yaml": "name: c\nhosts: [\"c.example\"]\ninspect: true\nhooks: { request: ca/../ca/ca-key.pem }\n",
	})
	_, err := Load(DirFS(dir), time.Now())
	want := "connectors/c.yaml:4: hooks.request: ca/../ca/ca-key.pem is a secret's or the CA key's file (see gateway.yaml), not a script"
	if err == nil || err.Error() != want {
		t.Errorf("load: %v; want %s", err, want)
	}
}

// The decoder's messages keep their kind when they are fixed phrases and
// lose it when they could hold the file's text, a key written over several
// lines included; a message of a form this package does not know is
// replaced whole (docs/admins.md).
func TestDecoderMessagesQuoteOnlyFixedPhrases(t *testing.T) {
	const value = "$6$SALT$HASHVALUE0123"
	decoded := []struct{ name, doc, want string }{
		{"syntax", "id: a\nsecrets: {\n", "f.yaml:2: did not find expected node content"},
		{"mapping in a value", "id: a\nmode: a: " + value + "\n", "f.yaml:2: mapping values are not allowed in this context"},
		{"tab indent", "id: a\n\tmode: " + value + "\n", "f.yaml:2: found a tab character that violates indentation"},
		{"depth", "id: a\nmode: " + strings.Repeat("[", 10001), "f.yaml:2: exceeded max depth of 10000"},
		{"unknown key", "id: a\n" + value + ": 1\n", "f.yaml:2: unknown key"},
		{"unknown key on two lines", "id: a\n? " + value + "\n\n x\n", "f.yaml:2: unknown key"},
		{"unknown key with a line break in quotes", "id: a\n\"" + value + "\\nx\": 1\n", "f.yaml:2: unknown key"},
		{"unknown anchor", "id: a\nauth: *HASHVALUE0123\n", "f.yaml: not valid here (the value is not quoted: this file did not decode)"},
		{"short wrong type on two lines", "id: a\nquota: { burst: \"Ab\\nC\" }\n", `f.yaml:2: wrong type for key "burst": got a string, want a whole number`},
		{"wrong type on two lines", "id: a\nquota: { burst: \"" + value + "\\n\" }\n", `f.yaml:2: wrong type for key "burst": got a string, want a whole number`},
	}
	for _, c := range decoded {
		t.Run(c.name, func(t *testing.T) {
			_, errs := decodeStrict("f.yaml", []byte(c.doc), &tenantFile{})
			if len(errs) != 1 || errs[0].Error() != c.want {
				t.Errorf("errors %v; want %q", errs, c.want)
			}
		})
	}
	// Messages the decoder can write for other types or versions.
	worded := []struct{ msg, want string }{
		{"yaml: line 4: field id already set in type policy.tenantFile", `f.yaml:4: duplicate key "id"`},
		{"yaml: line 4: field " + value + "\nx already set in type policy.tenantFile", "f.yaml:4: duplicate key"},
		{"yaml: line 2: invalid map key: []interface {}{12345678}", "f.yaml:2: not valid here (the value is not quoted: this file did not decode)"},
		{"yaml: line 2: a message of a new decoder " + value, "f.yaml:2: not valid here (the value is not quoted: this file did not decode)"},
		{"yaml: line 2: expected mapping start event but got scalar", "f.yaml:2: expected mapping start event but got scalar"},
		{"yaml: attempted to go past the end of stream; corrupted value?", "f.yaml: attempted to go past the end of stream; corrupted value?"},
	}
	for _, c := range worded {
		if got := parseYAMLMessage("f.yaml", c.msg, yamlSyntaxLine).Error(); got != c.want {
			t.Errorf("%q worded as %q; want %q", c.msg, got, c.want)
		}
	}
}
