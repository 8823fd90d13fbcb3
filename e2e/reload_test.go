package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// reloadWindow is how soon docs/admins.md, "Saving: reload" says a saved change takes effect.
const reloadWindow = 2 * time.Second

var (
	editor    = credentials{tenant: "editor", token: "editor-token-5d21c7aa90"}
	bystander = credentials{tenant: "bystander", token: "bystander-token-8e4f0b1d36"}
)

// startReloadable writes files into a config directory and serves it,
// returning the directory so that the test can edit it like an admin.
func startReloadable(t *testing.T, files configFiles, args ...string) (*gateway, string) {
	t.Helper()
	dir := writeConfig(t, files)
	g := newGateway(t)
	g.start(t, append([]string{"--config", dir, "--log-format", "json"}, args...)...)
	return g, dir
}

// statusOf sends a GET through the gateway as c and returns the status.
func (g *gateway) statusOf(t *testing.T, c credentials, target string) int {
	t.Helper()
	resp := g.get(t, c.header(), target)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// expectStatusWithin polls until a GET as c answers want.
func (g *gateway) expectStatusWithin(t *testing.T, c credentials, target string, want int) {
	t.Helper()
	eventually(t, reloadWindow, func() error {
		if got := g.statusOf(t, c, target); got != want {
			return fmt.Errorf("GET %s as %s: status %d, want %d", target, c.tenant, got, want)
		}
		return nil
	})
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReloadByEveryKindOfEdit changes a tenant's permission the ways admins
// and tools really save files, and checks each within the reload window
// with a real request.
func TestReloadByEveryKindOfEdit(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	allowAPI := allowRule("api", []string{hostAPI}, origin.port)
	allowOther := allowRule("api", []string{hostOther}, origin.port)
	tenantFile := func(dir string) string { return filepath.Join(dir, "tenants", "editor.yaml") }
	apiURL, otherURL := origin.url(hostAPI, "/"), origin.url(hostOther, "/")

	edits := []struct {
		name string
		edit func(t *testing.T, dir string)
	}{
		{"in-place write", func(t *testing.T, dir string) {
			f, err := os.OpenFile(tenantFile(dir), os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString(tenantYAML(editor, allowOther)); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}},
		{"sed -i", func(t *testing.T, dir string) {
			run(t, nil, "", "sed", "-i", "s/"+hostAPI+"/"+hostOther+"/", tenantFile(dir))
		}},
		{"editor save by rename", func(t *testing.T, dir string) {
			path := tenantFile(dir)
			if err := os.Rename(path, path+"~"); err != nil {
				t.Fatal(err)
			}
			writeFile(t, path+".tmp", tenantYAML(editor, allowOther))
			if err := os.Rename(path+".tmp", path); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(path + "~"); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, e := range edits {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			g, dir := startReloadable(t, configFiles{
				"gateway.yaml":        gatewayYAML(""),
				"tenants/editor.yaml": tenantYAML(editor, allowAPI),
			})
			g.expectAllowedGET(t, editor, apiURL)
			e.edit(t, dir)
			g.expectStatusWithin(t, editor, otherURL, http.StatusOK)
			if got := g.statusOf(t, editor, apiURL); got != http.StatusForbidden {
				t.Errorf("old permission still works after the edit: status %d", got)
			}
		})
	}

	t.Run("new and deleted tenant files", func(t *testing.T) {
		t.Parallel()
		g, dir := startReloadable(t, configFiles{
			"gateway.yaml":        gatewayYAML(""),
			"tenants/editor.yaml": tenantYAML(editor, allowAPI),
		})
		if got := g.statusOf(t, bystander, apiURL); got != http.StatusProxyAuthRequired {
			t.Fatalf("unknown tenant: status %d, want 407", got)
		}
		writeFile(t, filepath.Join(dir, "tenants", "bystander.yaml"), tenantYAML(bystander, allowAPI))
		g.expectStatusWithin(t, bystander, apiURL, http.StatusOK)
		if err := os.Remove(filepath.Join(dir, "tenants", "bystander.yaml")); err != nil {
			t.Fatal(err)
		}
		g.expectStatusWithin(t, bystander, apiURL, http.StatusProxyAuthRequired)
		g.expectAllowedGET(t, editor, apiURL)
	})

	t.Run("new connector file", func(t *testing.T) {
		t.Parallel()
		g, dir := startReloadable(t, configFiles{
			"gateway.yaml":        gatewayYAML(""),
			"tenants/editor.yaml": tenantYAML(editor, allowAPI),
		})
		// A tenant may only name a connector that exists: write the
		// connector first (into a directory that did not exist at start),
		// then the tenant that uses it.
		if err := os.Mkdir(filepath.Join(dir, "connectors"), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, "connectors", "other.yaml"),
			yamlf(`
				name: other
				hosts: [%q]
				ports: [%d]
			`, hostOther, origin.port))
		writeFile(t, tenantFile(dir), tenantYAML(editor, "connectors: [other]\n"+allowAPI))
		g.expectStatusWithin(t, editor, otherURL, http.StatusOK)
	})
}

// TestReloadConfigMapSwap edits a config laid out like a Kubernetes
// ConfigMap volume: the visible names are symlinks into ..data, which is
// itself a symlink swapped atomically to a new timestamped directory. No
// event ever names the files themselves.
func TestReloadConfigMapSwap(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	dir := t.TempDir()
	writeVersion := func(name, rule string) {
		version := filepath.Join(dir, name)
		for _, sub := range []string{"tenants", "connectors"} {
			if err := os.MkdirAll(filepath.Join(version, sub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		writeFile(t, filepath.Join(version, "gateway.yaml"), gatewayYAML(""))
		writeFile(t, filepath.Join(version, "tenants", "editor.yaml"), tenantYAML(editor, rule))
	}
	// The kubelet's atomic writer: new version directory, a temporary
	// symlink to it, renamed over ..data, old version removed.
	swapTo := func(name string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..2026_11_22_v1", allowRule("api", []string{hostAPI}, origin.port))
	swapTo("..2026_11_22_v1")
	for _, name := range []string{"gateway.yaml", "tenants", "connectors"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")
	g.expectAllowedGET(t, editor, origin.url(hostAPI, "/"))

	writeVersion("..2026_11_22_v2", allowRule("api", []string{hostOther}, origin.port))
	swapTo("..2026_11_22_v2")
	if err := os.RemoveAll(filepath.Join(dir, "..2026_11_22_v1")); err != nil {
		t.Fatal(err)
	}
	g.expectStatusWithin(t, editor, origin.url(hostOther, "/"), http.StatusOK)
	g.expectStatusWithin(t, editor, origin.url(hostAPI, "/"), http.StatusForbidden)

	// The watch must follow the new directories: a second swap works too.
	writeVersion("..2026_11_22_v3", allowRule("api", []string{hostAPI}, origin.port))
	swapTo("..2026_11_22_v3")
	g.expectStatusWithin(t, editor, origin.url(hostAPI, "/"), http.StatusOK)
}

// TestReloadOnSIGHUP runs without file watching, so only the signal can
// have applied the change.
func TestReloadOnSIGHUP(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"tenants/editor.yaml": tenantYAML(editor, allowRule("api", []string{hostAPI}, origin.port)),
	}, "--watch=false")
	writeFile(t, filepath.Join(dir, "tenants", "editor.yaml"), tenantYAML(editor, allowRule("api", []string{hostOther}, origin.port)))
	if got := g.statusOf(t, editor, origin.url(hostOther, "/")); got != http.StatusForbidden {
		t.Fatalf("change applied before SIGHUP with watching off: status %d", got)
	}
	g.signal(t, syscall.SIGHUP)
	g.expectStatusWithin(t, editor, origin.url(hostOther, "/"), http.StatusOK)
	g.waitAudit(t, auditWith("tenant", editor.tenant, "host", hostOther, "decision", "allow"))
	if !strings.Contains(g.stderr.String(), `"trigger":"SIGHUP"`) {
		t.Errorf("no reload logged for SIGHUP; stderr:\n%s", tail(g.stderr.String(), 2000))
	}
}

// TestBrokenEditKeepsLastGoodPolicy saves invalid files and checks that the
// gateway keeps serving the previous policy, stays ready, and says what is
// wrong where an admin looks.
func TestBrokenEditKeepsLastGoodPolicy(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"tenants/editor.yaml": tenantYAML(editor, allowRule("api", []string{hostAPI}, origin.port)),
	})
	path := filepath.Join(dir, "tenants", "editor.yaml")
	broken := tenantYAML(editor, allowRule("api", []string{hostOther}, origin.port)) + "qouta: {}\n"
	writeFile(t, path, broken)
	badLine := strings.Count(broken, "\n")

	eventually(t, reloadWindow, func() error {
		config := g.admin(t, "/v1/config")
		if want := fmt.Sprintf("tenants/editor.yaml:%d: unknown key", badLine); !strings.Contains(config, want) {
			return fmt.Errorf("/v1/config does not report %q: %s", want, config)
		}
		return nil
	})
	if samples, err := g.metrics(); err != nil {
		t.Fatal(err)
	} else if n, _ := sumMetric(samples, "egressgw_config_reloads_total", map[string]string{"result": "error"}); n < 1 {
		t.Errorf("egressgw_config_reloads_total{result=error} = %v, want >= 1", n)
	}
	if status, _, err := directGet("http://" + g.adminAddr + "/readyz"); err != nil || status != http.StatusOK {
		t.Errorf("/readyz after a bad save: %d %v, want 200", status, err)
	}
	g.expectAllowedGET(t, editor, origin.url(hostAPI, "/still-old-policy"))
	if got := g.statusOf(t, editor, origin.url(hostOther, "/")); got != http.StatusForbidden {
		t.Errorf("half of a broken edit was applied: status %d", got)
	}

	// Fixing the file applies it and clears the error.
	writeFile(t, path, tenantYAML(editor, allowRule("api", []string{hostOther}, origin.port)))
	g.expectStatusWithin(t, editor, origin.url(hostOther, "/"), http.StatusOK)
	if config := g.admin(t, "/v1/config"); strings.Contains(config, "last_error\"") {
		t.Errorf("last error still reported after a good save: %s", config)
	}
}

// TestReloadClosesRevokedTunnels holds tunnels of two tenants open, takes
// the permission away from one, and checks that only its tunnel is closed,
// with an audit line saying why.
func TestReloadClosesRevokedTunnels(t *testing.T) {
	t.Parallel()
	echoServer := startTCPServer(t, "127.0.0.1", echo)
	rule := allowRule("echo", []string{hostAPI}, echoServer.port)
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":           gatewayYAML(""),
		"tenants/editor.yaml":    tenantYAML(editor, rule),
		"tenants/bystander.yaml": tenantYAML(bystander, rule),
	})
	revoked := g.tunnel(t, editor, echoServer.authority(hostAPI))
	kept := g.tunnel(t, bystander, echoServer.authority(hostAPI))
	pingThroughTunnel(t, revoked)
	pingThroughTunnel(t, kept)

	writeFile(t, filepath.Join(dir, "tenants", "editor.yaml"), tenantYAML(editor, allowRule("echo", []string{hostOther}, echoServer.port)))
	expectClosedWithin(t, "tenant's tunnel", revoked)
	pingThroughTunnel(t, kept)
	rec := g.waitAudit(t, auditWith("tenant", editor.tenant, "method", "CONNECT", "decision", "deny"))
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "reload") || rec["code"] != "revoked" || auditNumber(rec, "status") != http.StatusOK {
		t.Errorf("audit line of the revoked tunnel does not say why: %v", rec)
	}
}

// TestReloadSoak rewrites the config 50 times with changes that keep every
// permission, while clients send requests without pause: none may fail.
func TestReloadSoak(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	tenant := func(generation int) string {
		return tenantYAML(editor, yamlf(`
			rules:
			  - name: api
			    hosts: [%q]
			    ports: [%d]
			  - name: unrelated-%d
			    hosts: ["unrelated-%d.example"]
		`, hostAPI, origin.port, generation, generation))
	}
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"tenants/editor.yaml": tenant(0),
	})

	load := startSteadyLoad(t, g.client(t, editor), origin.url(hostAPI, "/soak"), 4)
	path := filepath.Join(dir, "tenants", "editor.yaml")
	const rewrites = 25
	for i := 1; i <= rewrites; i++ {
		writeFile(t, path+".tmp", tenant(i))
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
		// Paces the edits like a busy admin, each past the watcher's
		// quiet window so that most of them reload; not a synchronisation.
		time.Sleep(200 * time.Millisecond)
	}
	// Let the last edit land, then stop the clients.
	eventually(t, reloadWindow, func() error {
		if config := g.admin(t, "/v1/config"); !configGenerationAtLeast(config, 2) {
			return errors.New("no reload seen yet")
		}
		return nil
	})
	ok, failed, firstFailure := load.stop()
	samples, err := g.metrics()
	if err != nil {
		t.Fatal(err)
	}
	reloads, _ := sumMetric(samples, "egressgw_config_reloads_total", map[string]string{"result": "success"})
	t.Logf("soak: %d requests ok, %d failed, %d rewrites, %.0f successful loads", ok, failed, rewrites, reloads)
	if failed != 0 {
		t.Errorf("%d of %d requests failed during reloads; first: %s", failed, ok+failed, firstFailure)
	}
	if ok == 0 || reloads < rewrites/10 {
		t.Errorf("soak did not exercise anything: %d requests, %.0f loads", ok, reloads)
	}
}

// steadyLoad is clients sending one request after another to a URL, each
// counted as answered 200 or not, until stop.
type steadyLoad struct {
	ok, failed atomic.Int64
	first      atomic.Value // the first failure, described
	done       chan struct{}
	clients    sync.WaitGroup
}

// startSteadyLoad starts n clients sending GET url through client without
// pause.
func startSteadyLoad(t *testing.T, client *http.Client, url string, n int) *steadyLoad {
	l := &steadyLoad{done: make(chan struct{})}
	for range n {
		l.clients.Go(func() {
			for {
				select {
				case <-l.done:
					return
				default:
				}
				status, err := soakRequest(client, url)
				if err == nil && status == http.StatusOK {
					l.ok.Add(1)
					continue
				}
				l.failed.Add(1)
				l.first.CompareAndSwap(nil, fmt.Sprintf("status %d, error %v", status, err))
			}
		})
	}
	return l
}

// stop ends the load and says how it went.
func (l *steadyLoad) stop() (ok, failed int64, first string) {
	close(l.done)
	l.clients.Wait()
	first, _ = l.first.Load().(string)
	return l.ok.Load(), l.failed.Load(), first
}

func soakRequest(client *http.Client, url string) (int, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

func configGenerationAtLeast(config string, n int) bool {
	var generation int
	i := strings.Index(config, `"generation":`)
	if i < 0 {
		return false
	}
	fmt.Sscanf(strings.TrimSpace(config[i+len(`"generation":`):]), "%d", &generation)
	return generation >= n
}

// Editing a file the YAML refers to — here a hook script — is a change to
// the policy like editing the YAML: the new script is live within the
// reload bound, wherever the script is kept.
func TestReloadOnHookScriptEdit(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", jsonEcho)
	stamp := func(v string) string { return `request.headers["X-Stamp"] = ["` + v + `"]` + "\n" }
	places := []struct{ name, script string }{
		{"in hooks/", "hooks/stamp.tengo"},
		{"in another subdirectory", "scripts/stamp.tengo"},
		{"outside the config directory", filepath.Join(t.TempDir(), "stamp.tengo")},
	}
	for _, place := range places {
		t.Run(place.name, func(t *testing.T) {
			t.Parallel()
			gateway := gatewayYAML("")
			if filepath.IsAbs(place.script) {
				gateway += fmt.Sprintf("config: { allow_paths: [%q] }\n", filepath.Dir(place.script))
			}
			files := configFiles{
				"gateway.yaml": gateway,
				"connectors/crm.yaml": yamlf(`
					name: crm
					hosts: [%q]
					ports: [%d]
					hooks: { request: %q }
				`, hostAPI, origin.port, place.script),
				"tenants/hooker.yaml": tenantYAML(hooker, "connectors: [crm]\n"),
			}
			if !filepath.IsAbs(place.script) {
				files[place.script] = stamp("first")
			}
			dir := writeConfig(t, files)
			script := place.script
			if !filepath.IsAbs(script) {
				script = filepath.Join(dir, script)
			} else {
				writeFile(t, script, stamp("first"))
			}
			g := newGateway(t)
			g.start(t, "--config", dir, "--log-format", "json")
			client := g.client(t, hooker)
			stamped := func() string {
				resp, err := client.Get(origin.url(hostAPI, "/v1/items"))
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var got map[string]any
				if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
					t.Fatal(err)
				}
				s, _ := got["stamp"].(string)
				return s
			}
			if got := stamped(); got != "first" {
				t.Fatalf("stamp %q before the edit, want first", got)
			}
			writeFile(t, script, stamp("second"))
			eventually(t, reloadWindow, func() error {
				if got := stamped(); got != "second" {
					return fmt.Errorf("stamp %q, want the edited script's second", got)
				}
				return nil
			})
		})
	}
}

// TestRevertedBrokenEditClearsError saves a broken tenant file and then its
// original bytes again: the files match the live policy once more, so
// /v1/config must stop reporting the error, without a new generation.
func TestRevertedBrokenEditClearsError(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	original := tenantYAML(editor, allowRule("api", []string{hostAPI}, origin.port))
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"tenants/editor.yaml": original,
	})
	type configView struct {
		Generation uint64 `json:"generation"`
		LastError  string `json:"last_error"`
	}
	config := func() configView {
		var v configView
		if err := json.Unmarshal([]byte(g.admin(t, "/v1/config")), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	before := config()
	path := filepath.Join(dir, "tenants", "editor.yaml")
	writeFile(t, path, original+"qouta: {}\n")
	eventually(t, reloadWindow, func() error {
		if v := config(); !strings.Contains(v.LastError, "tenants/editor.yaml") {
			return fmt.Errorf("/v1/config does not report the broken file: %+v", v)
		}
		return nil
	})

	writeFile(t, path, original)
	eventually(t, reloadWindow, func() error {
		if v := config(); v.LastError != "" {
			return fmt.Errorf("/v1/config still reports an error after the revert: %q", v.LastError)
		}
		return nil
	})
	if after := config(); after.Generation != before.Generation {
		t.Errorf("reverting to the live files made generation %d, want %d kept", after.Generation, before.Generation)
	}
	// The time of an error goes with it: a last_error_at left behind
	// would say something failed when nothing is wrong.
	if raw := g.admin(t, "/v1/config"); strings.Contains(raw, "last_error_at") {
		t.Errorf("/v1/config keeps last_error_at after the error cleared: %s", raw)
	}
	g.expectAllowedGET(t, editor, origin.url(hostAPI, "/"))

	// A SIGHUP with nothing changed says so, so the operator knows it
	// was read.
	g.signal(t, syscall.SIGHUP)
	eventually(t, reloadWindow, func() error {
		for _, line := range strings.Split(g.stderr.String(), "\n") {
			if strings.Contains(line, `"msg":"config unchanged"`) && strings.Contains(line, `"trigger":"SIGHUP"`) {
				return nil
			}
		}
		return fmt.Errorf("no \"config unchanged\" logged for SIGHUP; stderr:\n%s", tail(g.stderr.String(), 2000))
	})
	if after := config(); after.Generation != before.Generation {
		t.Errorf("SIGHUP with nothing changed made generation %d, want %d kept", after.Generation, before.Generation)
	}
}

// TestReloadWarnsOfRestartOnlySettings: a listener address changed in
// gateway.yaml is not applied by a reload, but said so in the log, and the
// gateway keeps serving where it listens.
func TestReloadWarnsOfRestartOnlySettings(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"tenants/editor.yaml": tenantYAML(editor, allowRule("api", []string{hostAPI}, origin.port)),
	})
	writeFile(t, filepath.Join(dir, "gateway.yaml"), gatewayYAML(yamlf(`
		listen: %q
	`, freeAddr(t))))
	eventually(t, scaled(reloadWindow+time.Second), func() error {
		for _, line := range strings.Split(g.stderr.String(), "\n") {
			if strings.Contains(line, "takes effect after a restart") && strings.Contains(line, `"setting":"listen"`) {
				return nil
			}
		}
		return fmt.Errorf("no restart warning for listen in the log:\n%s", g.stderr.String())
	})
	g.expectAllowedGET(t, editor, origin.url(hostAPI, "/still-here"))
}
