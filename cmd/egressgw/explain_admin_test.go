package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/proxy"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/state"
)

const explainViewerToken = "explain-viewer-token-0123456789"

// explainGrantWait bounds the wait for the gateway to apply a grant: it
// does so within 2 s (docs/reference.md, "Access requests and grants");
// the margin is for a loaded machine.
const explainGrantWait = 15 * time.Second

// explainGateway is a real gateway's admin API serving the config in dir,
// with a file state store holding one grant for tenant acme.
type explainGateway struct {
	dir   string
	url   string
	grant state.Grant
}

func startExplainGateway(t *testing.T) explainGateway {
	t.Helper()
	sum := sha256.Sum256([]byte(explainViewerToken))
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"gateway.yaml": "admin:\n  tokens:\n    - { name: watcher, role: viewer, token_sha256: \"" + hex.EncodeToString(sum[:]) + "\" }\n",
		"tenants/acme.yaml": "id: acme\nauth: { token_sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }\n" +
			"rules:\n  - { name: docs, hosts: [\"docs.example\"] }\n  - { name: no-paste, action: deny, hosts: [\"paste.example\"] }\n",
	})
	source, err := openConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := source.load()
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.NewFile(state.FileOptions{Dir: filepath.Join(t.TempDir(), "state")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	grant, err := store.AddGrant(context.Background(), state.GrantSpec{
		Tenant: "acme", Host: "pypi.example", Ports: []int{443}, ExpiresAt: time.Now().Add(time.Hour).Truncate(time.Second), By: "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := proxy.New(proxy.Options{
		Logger:    slog.New(slog.DiscardHandler),
		Audit:     &bytes.Buffer{},
		Registry:  prometheus.NewRegistry(),
		Quota:     quota.NewMemory(quota.MemoryOptions{}),
		Bandwidth: quota.NewBandwidth(quota.BandwidthOptions{}),
		Settings:  snap.Gateway,
		State:     store,
	})
	if err != nil {
		t.Fatal(err)
	}
	gw.Apply(snap)
	admin := httptest.NewServer(gw.AdminHandler(&proxy.ConfigStatus{Source: dir}))
	t.Cleanup(func() {
		admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gw.Shutdown(ctx)
	})
	return explainGateway{dir: dir, url: admin.URL, grant: grant}
}

// explainCLI runs `egressgw explain` with args and the admin token in the
// environment ("" for none).
func explainCLI(t *testing.T, token string, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv(adminTokenEnv, token)
	var stdout, stderr bytes.Buffer
	code := run(append([]string{"explain"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// waitForGrant runs explain against the gateway until it shows its grant,
// which the gateway reads from the store within its refresh window.
func (g explainGateway) waitForGrant(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(explainGrantWait)
	for {
		code, stdout, stderr := explainCLI(t, explainViewerToken, "--admin-url", g.url, "--tenant", "acme", "https://pypi.example/simple/")
		if code == exitOK && strings.Contains(stdout, "grant:"+g.grant.ID) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("explain --admin-url never showed grant %s: exit %d\n%s%s", g.grant.ID, code, stdout, stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// With --admin-url, explain prints what the running gateway decides,
// grants included: the grant is a rule named grant:ID with its expiry, and
// the rule that allows.
func TestExplainAdminURLShowsGrants(t *testing.T) {
	g := startExplainGateway(t)
	g.waitForGrant(t)
	rule := "grant:" + g.grant.ID
	expires := g.grant.ExpiresAt.UTC().Format(time.RFC3339)

	code, stdout, stderr := explainCLI(t, explainViewerToken, "--admin-url", g.url, "--tenant", "acme", "https://pypi.example/simple/")
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{
		`  MATCH    allow grant "` + rule + `" (expires ` + expires + `): host and port match`,
		`decision: ALLOW (ok) by "` + rule + `"`,
	} {
		if !strings.Contains(stdout, want+"\n") {
			t.Errorf("output has no line %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "not shown") {
		t.Errorf("explain --admin-url says grants are not shown:\n%s", stdout)
	}

	// A deny rule still wins over the grant, and explain says so.
	code, stdout, stderr = explainCLI(t, explainViewerToken, "--admin-url", g.url, "--tenant", "acme", "--method", "POST", "http://paste.example/")
	if code != exitOK || !strings.Contains(stdout, `decision: DENY (destination_not_allowed) by "no-paste"`) || !strings.Contains(stdout, `no match allow grant "`+rule+`"`) {
		t.Errorf("paste.example: exit %d\n%s%s", code, stdout, stderr)
	}
}

// explain --admin-url --json prints the gateway's trace in the local
// --json's structure: decoded into the same type, the two agree but for
// the grants the gateway lists.
func TestExplainAdminURLJSONMatchesLocal(t *testing.T) {
	g := startExplainGateway(t)
	g.waitForGrant(t)
	decode := func(args ...string) policy.Trace {
		t.Helper()
		code, stdout, stderr := explainCLI(t, explainViewerToken, append(args, "--json", "--tenant", "acme", "https://docs.example/guide")...)
		if code != exitOK {
			t.Fatalf("explain %v: exit %d\n%s%s", args, code, stdout, stderr)
		}
		dec := json.NewDecoder(strings.NewReader(stdout))
		dec.DisallowUnknownFields()
		var tr policy.Trace
		if err := dec.Decode(&tr); err != nil {
			t.Fatalf("explain %v --json: %v\n%s", args, err, stdout)
		}
		return tr
	}
	remote := decode("--admin-url", g.url)
	local := decode("--config", g.dir)

	var grants []policy.RuleTrace
	withoutGrants := func(rules []policy.RuleTrace) []policy.RuleTrace {
		return slices.DeleteFunc(slices.Clone(rules), func(r policy.RuleTrace) bool {
			if r.Kind == policy.KindGrant {
				grants = append(grants, r)
				return true
			}
			return false
		})
	}
	remote.Rules = withoutGrants(remote.Rules)
	for i := range remote.Steps {
		remote.Steps[i].Rules = withoutGrants(remote.Steps[i].Rules)
	}
	if len(grants) == 0 || grants[0].Name != "grant:"+g.grant.ID || !grants[0].ExpiresAt.Equal(g.grant.ExpiresAt) || grants[0].Matched {
		t.Errorf("the gateway's trace lists grants %+v; want %s, not matching, expiring %s", grants, g.grant.ID, g.grant.ExpiresAt)
	}
	if remote.Decision != "allow" || remote.Rule != "docs" {
		t.Errorf("remote decision %s by %q, want allow by docs", remote.Decision, remote.Rule)
	}
	if !reflect.DeepEqual(remote, local) {
		t.Errorf("the gateway's trace, grants left out, differs from the local one:\nremote %+v\nlocal  %+v", remote, local)
	}
}

// Every way explain --admin-url cannot answer exits 1 with a message that
// says why; nothing is printed as a trace.
func TestExplainAdminURLErrors(t *testing.T) {
	g := startExplainGateway(t)
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	notAGateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok"}`))
	}))
	t.Cleanup(notAGateway.Close)

	cases := []struct {
		name, token string
		args        []string
		want        []string // in stderr
	}{
		{"no token", "", []string{"--admin-url", g.url, "--tenant", "acme", "https://pypi.example/"},
			[]string{"401 admin_auth_required", adminTokenEnv}},
		{"wrong token", "not-the-token", []string{"--admin-url", g.url, "--tenant", "acme", "https://pypi.example/"},
			[]string{"401 admin_auth_required", "not valid"}},
		{"unknown tenant", explainViewerToken, []string{"--admin-url", g.url, "--tenant", "nobody", "https://pypi.example/"},
			[]string{"unknown tenant nobody", "404"}},
		{"malformed URL", explainViewerToken, []string{"--admin-url", g.url, "--tenant", "acme", "ftp://pypi.example/"},
			[]string{"400"}},
		{"gateway unreachable", explainViewerToken, []string{"--admin-url", closedURL, "--tenant", "acme", "https://pypi.example/"},
			[]string{"cannot reach the gateway's admin API at " + closedURL}},
		{"not an explain trace", explainViewerToken, []string{"--admin-url", notAGateway.URL, "--tenant", "acme", "https://pypi.example/"},
			[]string{"not a decision trace"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, asJSON := range []bool{false, true} {
				args := c.args
				if asJSON {
					args = append([]string{"--json"}, args...)
				}
				code, stdout, stderr := explainCLI(t, c.token, args...)
				if code != exitFail || stdout != "" {
					t.Errorf("json %v: exit %d, stdout %q; want 1 and nothing on stdout", asJSON, code, stdout)
				}
				for _, w := range c.want {
					if !strings.Contains(stderr, w) {
						t.Errorf("json %v: stderr %q has no %q", asJSON, stderr, w)
					}
				}
				if strings.Contains(stderr, explainViewerToken) {
					t.Errorf("json %v: stderr shows the admin token: %q", asJSON, stderr)
				}
			}
		})
	}
}

// Usage errors exit 2: explain reads either a config directory or a
// running gateway, and needs a tenant and one URL.
func TestExplainUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--tenant", "acme", "https://pypi.example/"},                                                       // neither source
		{"--config", dir, "--admin-url", "http://127.0.0.1:9128", "--tenant", "acme", "https://x.example/"}, // both
		{"--admin-url", "ftp://127.0.0.1:9128", "--tenant", "acme", "https://x.example/"},
		{"--admin-url", "http://127.0.0.1:9128", "https://x.example/"}, // no tenant
		{"--admin-url", "http://127.0.0.1:9128", "--tenant", "acme"},   // no URL
	} {
		code, stdout, stderr := explainCLI(t, "", args...)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, "usage: egressgw explain") {
			t.Errorf("explain %v: exit %d, stdout %q, stderr %q; want 2 and the usage", args, code, stdout, stderr)
		}
	}
}

// Without --admin-url, explain reads the config directory alone and says,
// in one line, that grants are not shown and how to see them; --json
// keeps its output a trace and says it on stderr.
func TestExplainLocalSaysGrantsAreNotShown(t *testing.T) {
	g := startExplainGateway(t)
	const note = "grants:   not shown: this reads the config directory alone; --admin-url URL asks the running gateway, which decides with its grants\n"

	code, stdout, stderr := explainCLI(t, "", "--config", g.dir, "--tenant", "acme", "https://pypi.example/simple/")
	if code != exitOK || !strings.HasSuffix(stdout, note) || strings.Count(stdout, "grants:") != 1 || stderr != "" {
		t.Errorf("exit %d; want the output to end with %q\nstdout:\n%s\nstderr:\n%s", code, note, stdout, stderr)
	}
	code, stdout, stderr = explainCLI(t, "", "--json", "--config", g.dir, "--tenant", "acme", "https://pypi.example/simple/")
	var tr policy.Trace
	if code != exitOK || json.Unmarshal([]byte(stdout), &tr) != nil || tr.Decision != "deny" || stderr != note {
		t.Errorf("--json: exit %d, stderr %q; want a trace deciding deny and the note on stderr\n%s", code, stderr, stdout)
	}
}
