package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var hooker = credentials{tenant: "hooker", token: "hooker-token-0a9d3e71c5"}

// jsonEcho answers with what it received, as JSON, plus an internal field
// a response hook is meant to remove.
var jsonEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"method": r.Method, "path": r.URL.Path, "stamp": r.Header.Get("X-Stamp"),
		"body": string(body), "internal_id": "db-7731",
	})
})

const requestHook = `
request.headers["X-Stamp"] = ["tenant " + tenant.id + " via " + connector.name]
if request.json != undefined { request.json.added_by_hook = true }
if request.path == "/v1/forbidden" { deny = "this connector never sends to /v1/forbidden" }
if request.path == "/v1/spin" { for { } }
if request.path == "/v1/bomb" {
	s := "0123456789abcdef"
	for i := 0; i < 40; i++ { s = s + s }
}
`

const responseHook = `
if response.json != undefined { response.json = {keep: response.json, internal_id: undefined} }
if response.json != undefined { response.json = response.json.keep }
if is_map(response.json) { delete(response.json, "internal_id") }
response.headers["X-Filtered"] = ["yes"]
text := import("text")
seen := request.method + " " + request.url + " q=" + request.query
if request.headers["X-Stamp"] != undefined { seen += " stamp=" + request.headers["X-Stamp"][0] }
if request.headers["Proxy-Authorization"] != undefined { seen += " proxy-credentials-visible" }
if request.body != undefined && text.contains(string(request.body), "widget") { seen += " body=widget" }
response.headers["X-Seen-Request"] = [seen]
`

func TestHooksThroughTheGateway(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", jsonEcho)
	dir := writeConfig(t, configFiles{
		"gateway.yaml":         gatewayYAML("hooks:\n  defaults: { timeout: 200ms, max_memory: 32MiB }\n"),
		"hooks/request.tengo":  requestHook,
		"hooks/response.tengo": responseHook,
		"connectors/crm.yaml": yamlf(`
			name: crm
			hosts: [%q]
			ports: [%d]
			hooks: { request: hooks/request.tengo, response: hooks/response.tengo }
		`, hostAPI, origin.port),
		"tenants/hooker.yaml": tenantYAML(hooker, "connectors: [crm]\n"),
		"tenants/acme.yaml":   tenantYAML(acme, allowRule("plain", []string{hostOther}, origin.port)),
	})
	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")
	client := g.client(t, hooker)

	post := func(path, body string) (*http.Response, map[string]any) {
		t.Helper()
		resp, err := client.Post(origin.url(hostAPI, path), "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if resp.StatusCode == http.StatusOK {
			defer resp.Body.Close()
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
		}
		return resp, got
	}

	t.Run("request and response edits", func(t *testing.T) {
		resp, got := post("/v1/items", `{"name":"widget"}`)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if got["stamp"] != "tenant hooker via crm" {
			t.Errorf("the upstream did not get the hook's header: %v", got)
		}
		var sent map[string]any
		if err := json.Unmarshal([]byte(got["body"].(string)), &sent); err != nil || sent["added_by_hook"] != true || sent["name"] != "widget" {
			t.Errorf("the upstream did not get the hook's JSON edit: %v", got["body"])
		}
		if _, leaked := got["internal_id"]; leaked || resp.Header.Get("X-Filtered") != "yes" {
			t.Errorf("the response hook's edits did not reach the client: %v %v", got, resp.Header)
		}
	})

	t.Run("response hook sees the request that left", func(t *testing.T) {
		resp, _ := post("/v1/items?src=e2e", `{"name":"widget"}`)
		want := "POST " + origin.url(hostAPI, "/v1/items?src=e2e") + " q=src=e2e stamp=tenant hooker via crm body=widget"
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Seen-Request") != want {
			t.Errorf("status %d, response hook saw %q, want %q", resp.StatusCode, resp.Header.Get("X-Seen-Request"), want)
		}
	})

	t.Run("deny", func(t *testing.T) {
		before := len(origin.requestsTo("/v1/forbidden"))
		resp, _ := post("/v1/forbidden", `{}`)
		e := assertGatewayError(t, resp, http.StatusForbidden, "hook_denied")
		if e.Message != "this connector never sends to /v1/forbidden" {
			t.Errorf("message %q is not the script's reason", e.Message)
		}
		if len(origin.requestsTo("/v1/forbidden")) != before {
			t.Error("a denied request reached the upstream")
		}
	})

	for _, bomb := range []string{"/v1/spin", "/v1/bomb"} {
		t.Run("fails closed: "+bomb, func(t *testing.T) {
			start := time.Now()
			resp, _ := post(bomb, `{}`)
			assertGatewayError(t, resp, http.StatusBadGateway, "hook_failed")
			if len(origin.requestsTo(bomb)) != 0 {
				t.Error("the request reached the upstream")
			}
			t.Logf("%s failed closed after %v", bomb, time.Since(start))
			// The gateway and other tenants carry on.
			if status := g.statusOf(t, acme, origin.url(hostOther, "/after-"+strings.TrimPrefix(bomb, "/v1/"))); status != http.StatusOK {
				t.Errorf("another tenant after the bomb: status %d", status)
			}
			if resp, _ := post("/v1/items", `{}`); resp.StatusCode != http.StatusOK {
				t.Errorf("a normal hooked request after the bomb: status %d", resp.StatusCode)
			}
		})
	}

	t.Run("metrics and audit", func(t *testing.T) {
		samples, err := g.metrics()
		if err != nil {
			t.Fatal(err)
		}
		for result, min := range map[string]float64{"ok": 2, "denied": 1} {
			if n, _ := sumMetric(samples, "egressgw_hook_runs_total", map[string]string{"connector": "crm", "result": result}); n < min {
				t.Errorf("hook_runs_total{result=%s} = %v, want >= %v", result, n, min)
			}
		}
		rec := g.waitAudit(t, auditWith("tenant", hooker.tenant, "path", "/v1/items"))
		if hooks, _ := rec["hooks"].([]any); len(hooks) != 2 {
			t.Errorf("audit hooks = %v, want both scripts", rec["hooks"])
		}
	})
}

// TestHookCompileErrorRejectsConfig: a script that does not compile makes
// the config invalid, with the script's own file and line.
func TestHookCompileErrorRejectsConfig(t *testing.T) {
	t.Parallel()
	dir := writeConfig(t, configFiles{
		"hooks/bad.tengo":     "x := 1\nos := import(\"os\")\n",
		"connectors/crm.yaml": "name: crm\nhosts: [\"crm.example\"]\ninspect: false\nhooks: { request: hooks/bad.tengo }\n",
	})
	res := egressgw(t, "check", "--config", dir)
	if res.exitCode != 1 || !strings.Contains(res.output(), "hooks/bad.tengo:2:") {
		t.Errorf("check: exit %d, output:\n%s", res.exitCode, res.output())
	}
}

// TestHookTestCommand runs `egressgw hook test` the way a connector author
// does, on a fixture.
func TestHookTestCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	script := filepath.Join(dir, "h.tengo")
	fixture := filepath.Join(dir, "req.json")
	writeFile(t, script, requestHook)
	writeFile(t, fixture, `{"method":"POST","url":"https://crm.example/v1/items","headers":{"Content-Type":["application/json"]},"json":{"name":"n"}}`)
	res := egressgw(t, "hook", "test", "--script", script, "--request", fixture, "--tenant", "acme", "--connector", "crm")
	if res.exitCode != 0 || !strings.Contains(res.stdout, `"X-Stamp"`) || !strings.Contains(res.stdout, `added_by_hook`) {
		t.Errorf("hook test: exit %d\n%s", res.exitCode, res.output())
	}
	writeFile(t, fixture, `{"method":"POST","url":"https://crm.example/v1/forbidden"}`)
	res = egressgw(t, "hook", "test", "--script", script, "--request", fixture)
	if !strings.Contains(res.stdout, "hook_denied: this connector never sends to /v1/forbidden") {
		t.Errorf("hook test deny: exit %d\n%s", res.exitCode, res.output())
	}
}

// TestHookCannotCarryCredentialsOutsideItsConnector: a hook that edits the
// method or path outside its connector's rules is refused, even where
// another of the tenant's rules would allow the edited request: it would
// otherwise leave with the connector's credentials.
func TestHookCannotCarryCredentialsOutsideItsConnector(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := newGateway(t)
	g.env = append(g.env, "E2E_SCOPED_KEY=scoped-key-0b7d")
	g.serve(t, configFiles{
		"gateway.yaml":         gatewayYAML("secrets:\n  scoped_key: { env: E2E_SCOPED_KEY }\n"),
		"hooks/escalate.tengo": "if request.path == \"/v1/escalate\" { request.method = \"DELETE\" }\n",
		"connectors/scoped.yaml": yamlf(`
			name: scoped
			hosts: [%q]
			ports: [%d]
			methods: [GET, POST]
			inject:
			  headers: { X-Secret: "${secret:scoped_key}" }
			  allow_plaintext: true
			hooks: { request: hooks/escalate.tengo }
		`, hostAPI, origin.port),
		"tenants/hooker.yaml": tenantYAML(hooker, "connectors: [scoped]\n"+allowRule("broad", []string{hostAPI}, origin.port)),
	})
	e := g.expectRefused(t, http.MethodPost, hooker.header(), origin.url(hostAPI, "/v1/escalate"), http.StatusForbidden, "destination_not_allowed", origin)
	if !strings.Contains(e.Message, "escalate.tengo") {
		t.Errorf("message %q does not name the hook", e.Message)
	}
	g.expectAllowedGET(t, hooker, origin.url(hostAPI, "/v1/plain-read"))
}

// TestHookRuntimeStartFailureIsStartupError: a gateway that cannot start
// its hook workers says so and exits 1 at start-up, rather than serving
// and failing every hooked request later; the next start, on a system
// that can host workers, serves hooked requests.
func TestHookRuntimeStartFailureIsStartupError(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", jsonEcho)
	dir := writeConfig(t, configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"hooks/request.tengo": requestHook,
		"connectors/crm.yaml": yamlf(`
			name: crm
			hosts: [%q]
			ports: [%d]
			hooks: { request: hooks/request.tengo }
		`, hostAPI, origin.port),
		"tenants/hooker.yaml": tenantYAML(hooker, "connectors: [crm]\n"),
	})

	// A process whose environment marks it as a hook worker, though it is
	// none, cannot start workers of its own: the runtime refuses to start.
	env := append(childEnv(), "EGRESSGW_HOOKS_WORKER=not-a-worker")
	res := run(t, env, "", gatewayBinary, "serve", "--config", dir, "--log-format", "json",
		"--listen", freeAddr(t), "--admin-listen", freeAddr(t))
	if res.exitCode != 1 || !strings.Contains(res.stderr, "cannot start the hook runtime") ||
		!strings.Contains(res.stderr, "hook worker") {
		t.Fatalf("serve with workers impossible: exit %d, want 1 with the reason; stderr:\n%s", res.exitCode, res.stderr)
	}
	if strings.Contains(res.stderr, "egressgw serving") {
		t.Errorf("the gateway served before failing:\n%s", res.stderr)
	}

	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")
	resp, err := g.client(t, hooker).Post(origin.url(hostAPI, "/v1/items"), "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusOK || got["stamp"] != "tenant hooker via crm" {
		t.Errorf("hooked request after a good start: status %d, upstream saw %v (%v)", resp.StatusCode, got, err)
	}
}

// In report mode, a request the hook edited into one the connector does not
// allow is decided again and let through as what enforce would deny: the
// audit line reports it after the hook, under the rule that let the
// request in, and the connector's credentials are not sent with it.
func TestReportModeHookEditIsReportedWithoutCredentials(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := newGateway(t)
	g.env = append(g.env, "E2E_SCOPED_KEY=scoped-key-71e2")
	g.serve(t, configFiles{
		"gateway.yaml":         gatewayYAML("secrets:\n  scoped_key: { env: E2E_SCOPED_KEY }\n"),
		"hooks/escalate.tengo": "if request.path == \"/v1/escalate\" { request.method = \"DELETE\" }\n",
		"connectors/scoped.yaml": yamlf(`
			name: scoped
			hosts: [%q]
			ports: [%d]
			methods: [GET, POST]
			inject:
			  headers: { X-Secret: "${secret:scoped_key}" }
			  allow_plaintext: true
			hooks: { request: hooks/escalate.tengo }
		`, hostAPI, origin.port),
		"tenants/hooker.yaml": tenantYAML(hooker, "mode: report\nconnectors: [scoped]\n"),
	})
	client := g.client(t, hooker)
	resp, err := client.Post(origin.url(hostAPI, "/v1/escalate"), "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200 (report mode lets it through): %s", resp.StatusCode, body)
	}
	seen := origin.requestsTo("/v1/escalate")
	if len(seen) != 1 || seen[0].Method != http.MethodDelete {
		t.Fatalf("upstream saw %+v, want the hook's one DELETE", seen)
	}
	if v := seen[0].Header.Get("X-Secret"); v != "" {
		t.Errorf("the reported request carried the connector's credential %q", v)
	}
	rec := g.waitAudit(t, auditWith("tenant", hooker.tenant, "path", "/v1/escalate"))
	reason, _ := rec["reason"].(string)
	if rec["decision"] != "report" || rec["code"] != "destination_not_allowed" || !strings.HasPrefix(reason, "after hook hooks/escalate.tengo: ") {
		t.Errorf("audit decision %v code %v reason %q, want report, destination_not_allowed, after the hook; line %v",
			rec["decision"], rec["code"], reason, rec)
	}
	if rule, _ := rec["rule"].(string); rule == "" {
		t.Errorf("audit line names no rule; line %v", rec)
	}

	// An allowed request still gets the credential.
	if status, body := fetch(t, client, origin.url(hostAPI, "/v1/read")); status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	if seen := origin.requestsTo("/v1/read"); len(seen) != 1 || seen[0].Header.Get("X-Secret") != "scoped-key-71e2" {
		t.Errorf("upstream saw %+v, want one request with the injected credential", seen)
	}
}
