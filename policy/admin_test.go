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

const otherTokenHash = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752" // sha256("test2")

// loadGateway loads gateway.yaml with one tenant, acme.
func loadGateway(gatewayYAML string) (*Snapshot, error) {
	fsys := fstest.MapFS{
		"gateway.yaml":      {Data: []byte(gatewayYAML)},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + testTokenHash + "\" }\nrules: [{ hosts: [\"docs.python.org\"] }]\n")},
	}
	return Load(fsys, time.Unix(1700000000, 0))
}

func TestAdminStateAccessDefaults(t *testing.T) {
	snap, err := loadGateway("# nothing set\n")
	if err != nil {
		t.Fatal(err)
	}
	g := snap.Gateway
	if g.AdminConfigured() || len(g.AdminTokens) != 0 {
		t.Errorf("admin tokens configured by default: %+v", g.AdminTokens)
	}
	if g.State != (StateSettings{Backend: "file", Dir: "./egressgw-state"}) {
		t.Errorf("state = %+v, want the file backend in ./egressgw-state", g.State)
	}
	if g.Access != (AccessSettings{MaxPending: 10000, MaxGrantDuration: 720 * time.Hour}) {
		t.Errorf("access = %+v, want max_pending 10000, max_grant_duration 720h", g.Access)
	}
}

func TestAdminStateAccessKeys(t *testing.T) {
	snap, err := loadGateway(`
admin:
  tokens:
    - { name: ops, token_sha256: "` + testTokenHash + `", role: admin }
    - name: alice
      token_sha256: "` + otherTokenHash + `"
      role: approver
      tenants: [acme]
state: { backend: redis }
access: { max_pending: 50, max_grant_duration: 2h }
`)
	if err != nil {
		t.Fatal(err)
	}
	g := snap.Gateway
	if g.State.Backend != "redis" || g.Access.MaxPending != 50 || g.Access.MaxGrantDuration != 2*time.Hour {
		t.Errorf("state %+v, access %+v", g.State, g.Access)
	}
	ops, ok := g.AuthenticateAdmin("test")
	if !ok || ops.Name != "ops" || ops.Role != RoleAdmin || !ops.MayDecide("anyone") {
		t.Errorf("token test: %+v, %v; want ops, admin, deciding for every tenant", ops, ok)
	}
	alice, ok := g.AuthenticateAdmin("test2")
	if !ok || alice.Name != "alice" || !alice.MayDecide("acme") || alice.MayDecide("other") {
		t.Errorf("token test2: %+v, %v; want alice, approver for acme alone", alice, ok)
	}
	if tok, ok := g.AuthenticateAdmin("wrong"); ok {
		t.Errorf("a wrong token authenticated as %+v", tok)
	}
}

// A relative state.dir is relative to the config directory, as every path
// in the config is; an absolute one is taken as it is.
func TestStateDirRelativeToConfigDir(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"gateway.yaml": "state: { dir: data/state }\n"})
	snap, err := Load(DirFS(dir), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "data/state"); snap.Gateway.State.Dir != want {
		t.Errorf("state.dir = %q, want %q", snap.Gateway.State.Dir, want)
	}
	writeFiles(t, dir, map[string]string{"gateway.yaml": "state: { dir: /var/lib/egressgw }\n"})
	if snap, err = Load(DirFS(dir), time.Now()); err != nil || snap.Gateway.State.Dir != "/var/lib/egressgw" {
		t.Errorf("absolute state.dir = %q (%v), want /var/lib/egressgw", snap.Gateway.State.Dir, err)
	}
}

func TestAdminStateAccessErrors(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // every error, as FILE:LINE: message
	}{
		{
			name: "unknown role",
			yaml: "admin:\n  tokens:\n    - name: ops\n      token_sha256: \"" + testTokenHash + "\"\n      role: root\n",
			want: []string{`gateway.yaml:5: admin.tokens: role: want viewer, approver or admin, got "root"`},
		},
		{
			name: "missing role",
			yaml: "admin:\n  tokens:\n    - name: ops\n      token_sha256: \"" + testTokenHash + "\"\n",
			want: []string{`gateway.yaml:3: admin.tokens: role is required: viewer, approver or admin`},
		},
		{
			name: "duplicate name",
			yaml: "admin:\n  tokens:\n    - { name: ops, token_sha256: \"" + testTokenHash + "\", role: admin }\n    - { name: ops, token_sha256: \"" + otherTokenHash + "\", role: viewer }\n",
			want: []string{`gateway.yaml:4: admin.tokens: name "ops" is already used at line 3; audit lines name the actor by it`},
		},
		{
			name: "same token twice",
			yaml: "admin:\n  tokens:\n    - { name: ops, token_sha256: \"" + testTokenHash + "\", role: admin }\n    - { name: view, token_sha256: \"" + testTokenHash + "\", role: viewer }\n",
			want: []string{`gateway.yaml:4: admin.tokens: token "view" has the same token_sha256 as another token: one token must name one actor`},
		},
		{
			name: "token not a sha256",
			yaml: "admin:\n  tokens:\n    - name: ops\n      token_sha256: plain-token\n      role: admin\n",
			want: []string{`gateway.yaml:4: admin.tokens: token_sha256: want 64 lower-case hex digits (egressgw token new prints one)`},
		},
		{
			name: "bad name",
			yaml: "admin:\n  tokens:\n    - name: \"a b\"\n      token_sha256: \"" + testTokenHash + "\"\n      role: admin\n",
			want: []string{`gateway.yaml:3: admin.tokens: name: want letters, digits, '.', '_', '@' or '-' (at most 64), got "a b"`},
		},
		{
			name: "tenants on a viewer",
			yaml: "admin:\n  tokens:\n    - name: v\n      token_sha256: \"" + testTokenHash + "\"\n      role: viewer\n      tenants: [acme]\n",
			want: []string{`gateway.yaml:6: admin.tokens: tenants applies to role approver only; a viewer is not limited to tenants`},
		},
		{
			name: "bad tenant id",
			yaml: "admin:\n  tokens:\n    - name: a\n      token_sha256: \"" + testTokenHash + "\"\n      role: approver\n      tenants: [acme, \"../x\"]\n",
			want: []string{`gateway.yaml:6: admin.tokens: tenant id "../x": want letters, digits, '.', '_' or '-' (at most 64)`},
		},
		{
			name: "unknown key in a token",
			yaml: "admin:\n  tokens:\n    - name: a\n      token: secret\n",
			want: []string{
				`gateway.yaml:4: unknown key "token"`,
				`gateway.yaml:3: admin.tokens: token_sha256: want 64 lower-case hex digits (egressgw token new prints one)`,
				`gateway.yaml:3: admin.tokens: role is required: viewer, approver or admin`,
			},
		},
		{
			name: "state backend",
			yaml: "state:\n  backend: memory\n",
			want: []string{`gateway.yaml:2: state.backend: want file or redis, got "memory"`},
		},
		{
			name: "dir with redis",
			yaml: "state:\n  backend: redis\n  dir: /var/lib/x\n",
			want: []string{`gateway.yaml:3: state.dir: only the file backend keeps a directory; the redis backend uses quota.redis`},
		},
		{
			name: "max_pending zero",
			yaml: "access:\n  max_pending: 0\n",
			want: []string{`gateway.yaml:2: access.max_pending: want 1 to 1000000`},
		},
		{
			name: "max_grant_duration too short",
			yaml: "access:\n  max_grant_duration: 10s\n",
			want: []string{`gateway.yaml:2: access.max_grant_duration: want at least 1m; permanent access is a rule in the tenant file`},
		},
		{
			name: "max_grant_duration not a duration",
			yaml: "access:\n  max_grant_duration: 30d\n",
			want: []string{`gateway.yaml:2: invalid duration: want e.g. 250ms, 2s, 1m`},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			snap, err := loadGateway(c.yaml)
			var le *LoadError
			if snap != nil || !errors.As(err, &le) {
				t.Fatalf("loaded (%v); want errors %q", err, c.want)
			}
			if got := strings.Split(le.Error(), "\n"); strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", le.Error(), strings.Join(c.want, "\n"))
			}
		})
	}
}

// An approver listing a tenant that no file defines is warned about, not
// refused: the entry allows nothing, and removing a tenant must not hold
// its reload back.
func TestAdminTokenUnknownTenantWarns(t *testing.T) {
	snap, err := loadGateway("admin:\n  tokens:\n    - name: a\n      token_sha256: \"" + testTokenHash + "\"\n      role: approver\n      tenants: [acme, gone]\n")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, w := range snap.Warnings {
		if w.Error() == `gateway.yaml:6: admin token "a" lists tenant "gone", which no tenant file defines: it may decide nothing for it` {
			found = true
		}
	}
	if !found {
		t.Errorf("no warning about tenant gone: %v", snap.Warnings)
	}
	tok, _ := snap.Gateway.AuthenticateAdmin("test")
	if !tok.MayDecide("acme") || tok.MayDecide("other") {
		t.Errorf("approver scope wrong: %+v", tok)
	}
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
