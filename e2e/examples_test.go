package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The example connectors in configs/examples: each directory is a complete
// config directory with fixtures/cases.yaml describing what its hooks do to
// its fixtures (format: configs/examples/README.md). These tests load each
// one as an operator would and run every case as a connector author would,
// with `egressgw hook test` under the default hook limits.

// exampleNames are the examples that must exist; any other directory under
// configs/examples is tested the same way.
var exampleNames = []string{"crm", "github", "model", "webhook"}

// exampleTenant is the tenant every example defines; its token is public.
var exampleTenant = credentials{tenant: "example", token: "example-token-replace-me"}

type exampleCases struct {
	Cases []exampleCase `yaml:"cases"`
}

type exampleCase struct {
	Name     string        `yaml:"name"`
	About    string        `yaml:"about"`
	Script   string        `yaml:"script"`
	Request  string        `yaml:"request"`
	Response string        `yaml:"response"`
	Expect   exampleExpect `yaml:"expect"`
}

type exampleExpect struct {
	Denied         string              `yaml:"denied"`
	Method         string              `yaml:"method"`
	URL            string              `yaml:"url"`
	Status         int                 `yaml:"status"`
	Headers        map[string][]string `yaml:"headers"`
	HeadersAbsent  []string            `yaml:"headers_absent"`
	HeadersMatch   map[string]string   `yaml:"headers_match"`
	UnixTimeHeader string              `yaml:"unix_time_header"`
	FNV1a64Header  string              `yaml:"fnv1a64_header"`
	BodyJSON       any                 `yaml:"body_json"`
	BodyUnchanged  bool                `yaml:"body_unchanged"`
	AbsentKeys     []string            `yaml:"absent_keys"`
}

// hookTestOutput is what `egressgw hook test` prints for a run that was
// not denied: the request or the response as the hook left it.
type hookTestOutput struct {
	Request *struct {
		Method  string              `json:"method"`
		URL     string              `json:"url"`
		Headers map[string][]string `json:"headers"`
		Body    string              `json:"body"`
	} `json:"request"`
	Response *struct {
		Status  int                 `json:"status"`
		Headers map[string][]string `json:"headers"`
		Body    string              `json:"body"`
	} `json:"response"`
	DroppedEdits []string `json:"dropped_edits"`
}

func examplesRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "configs", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// exampleDirs lists the example directories, failing if one of
// exampleNames is missing.
func exampleDirs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(examplesRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	for _, want := range exampleNames {
		if !slices.Contains(names, want) {
			t.Errorf("configs/examples/%s is missing", want)
		}
	}
	return names
}

// exampleGateway is the part of an example's gateway.yaml the tests need
// to prepare: the secrets to set and the CA to create.
type exampleGateway struct {
	TLS struct {
		CACert string `yaml:"ca_cert"`
		CAKey  string `yaml:"ca_key"`
	} `yaml:"tls"`
	Secrets map[string]struct {
		Env  string `yaml:"env"`
		File string `yaml:"file"`
	} `yaml:"secrets"`
}

// prepareExample copies example name into a temporary directory, creates
// the inspection CA its gateway.yaml names with `egressgw ca init`, and
// returns the directory and the environment that sets every secret it
// reads from the environment (to placeholder values).
func prepareExample(t *testing.T, name string) (dir string, env []string, secrets map[string]string) {
	t.Helper()
	src := filepath.Join(examplesRoot(t), name)
	filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(path, "-key.pem") || strings.HasSuffix(path, ".key")) {
			t.Errorf("%s: an example must not ship a private key; `egressgw ca init` makes one where it is used", path)
		}
		return nil
	})
	dir = filepath.Join(t.TempDir(), name)
	if err := os.CopyFS(dir, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "gateway.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var gw exampleGateway
	if err := yaml.Unmarshal(raw, &gw); err != nil {
		t.Fatalf("%s/gateway.yaml: %v", name, err)
	}
	if gw.TLS.CACert != "" {
		caDir := filepath.Dir(gw.TLS.CACert)
		if filepath.Base(gw.TLS.CACert) != "ca.pem" || gw.TLS.CAKey != filepath.Join(caDir, "ca-key.pem") || filepath.IsAbs(caDir) {
			t.Fatalf("%s/gateway.yaml: tls names %s and %s; want DIR/ca.pem and DIR/ca-key.pem relative to the config directory, as `egressgw ca init --out DIR` writes them",
				name, gw.TLS.CACert, gw.TLS.CAKey)
		}
		if res := egressgw(t, "ca", "init", "--out", filepath.Join(dir, caDir)); res.exitCode != 0 {
			t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.output())
		}
	}
	env = childEnv()
	secrets = map[string]string{}
	for secret, src := range gw.Secrets {
		if src.Env == "" {
			t.Fatalf("%s/gateway.yaml: secret %s is not read from the environment; the test cannot provide it", name, secret)
		}
		value := "placeholder-" + secret + "-7f3c91d2"
		env = append(env, src.Env+"="+value)
		secrets[secret] = value
	}
	return dir, env, secrets
}

func readExampleCases(t *testing.T, dir string) []exampleCase {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "fixtures", "cases.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	var cases exampleCases
	if err := dec.Decode(&cases); err != nil {
		t.Fatalf("fixtures/cases.yaml: %v", err)
	}
	if len(cases.Cases) == 0 {
		t.Fatal("fixtures/cases.yaml has no cases")
	}
	return cases.Cases
}

// TestExamples loads every example config with `egressgw check` and runs
// every fixture case of it with `egressgw hook test`.
func TestExamples(t *testing.T) {
	t.Parallel()
	for _, name := range exampleDirs(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir, env, _ := prepareExample(t, name)

			t.Run("check", func(t *testing.T) {
				res := run(t, env, "", gatewayBinary, "check", "--config", dir)
				if res.exitCode != 0 || !regexp.MustCompile(`(?m)^ok: \d+ tenants?, \d+ connectors?$`).MatchString(res.stdout) {
					t.Fatalf("check: exit %d, want 0 and an ok: line; output:\n%s", res.exitCode, res.output())
				}
				if strings.Contains(strings.ToLower(res.output()), "warn") {
					t.Errorf("check warns about the example:\n%s", res.output())
				}
			})

			cases := readExampleCases(t, dir)
			t.Run("every fixture and hook is used", func(t *testing.T) {
				used := map[string]bool{"fixtures/cases.yaml": true}
				for _, c := range cases {
					used[c.Script], used[c.Request], used[c.Response] = true, true, true
				}
				for _, pattern := range []string{"fixtures/*.json", "hooks/*.tengo"} {
					files, _ := filepath.Glob(filepath.Join(dir, pattern))
					for _, f := range files {
						rel, _ := filepath.Rel(dir, f)
						if !used[filepath.ToSlash(rel)] {
							t.Errorf("%s/%s is used by no case in fixtures/cases.yaml", name, filepath.ToSlash(rel))
						}
					}
				}
			})

			for _, c := range cases {
				t.Run(c.Name, func(t *testing.T) {
					t.Parallel()
					if c.About == "" || c.Script == "" || c.Request == "" {
						t.Fatalf("case %q needs about, script and request", c.Name)
					}
					runExampleCase(t, dir, name, c)
				})
			}
		})
	}
}

// runExampleCase runs one case with `egressgw hook test` and checks what
// its expect block says.
func runExampleCase(t *testing.T, dir, connector string, c exampleCase) {
	args := []string{"hook", "test", "--script", filepath.Join(dir, c.Script), "--request", filepath.Join(dir, c.Request),
		"--tenant", exampleTenant.tenant, "--connector", connector}
	if c.Response != "" {
		args = append(args, "--response", filepath.Join(dir, c.Response))
	}
	res := egressgw(t, args...)
	t.Logf("egressgw %s\n%s", strings.Join(args, " "), res.output())
	if res.exitCode != 0 {
		t.Fatalf("hook test: exit %d, want 0", res.exitCode)
	}
	want := c.Expect
	if want.Denied != "" {
		if res.stdout != "hook_denied: "+want.Denied+"\n" {
			t.Errorf("hook test printed %q, want the denial %q", res.stdout, "hook_denied: "+want.Denied)
		}
		return
	}
	var out hookTestOutput
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
		t.Fatalf("hook test output is not the edited message (%v)", err)
	}
	if len(out.DroppedEdits) > 0 {
		t.Errorf("the gateway dropped edits of the script: %v", out.DroppedEdits)
	}

	var headers map[string][]string
	var body string
	fixture := c.Request
	if c.Response != "" {
		if out.Response == nil {
			t.Fatal("no response in the output of a response hook")
		}
		headers, body, fixture = out.Response.Headers, out.Response.Body, c.Response
		if want.Status != 0 && out.Response.Status != want.Status {
			t.Errorf("status %d, want %d", out.Response.Status, want.Status)
		}
	} else {
		if out.Request == nil {
			t.Fatal("no request in the output of a request hook")
		}
		headers, body = out.Request.Headers, out.Request.Body
		if want.Method != "" && out.Request.Method != want.Method {
			t.Errorf("method %q, want %q", out.Request.Method, want.Method)
		}
		if want.URL != "" && out.Request.URL != want.URL {
			t.Errorf("url %q, want %q", out.Request.URL, want.URL)
		}
	}

	for name, values := range want.Headers {
		if got := headers[name]; !slices.Equal(got, values) {
			t.Errorf("header %s = %q, want %q", name, got, values)
		}
	}
	for _, name := range want.HeadersAbsent {
		if got, ok := headers[name]; ok {
			t.Errorf("header %s = %q, want it absent", name, got)
		}
	}
	for name, pattern := range want.HeadersMatch {
		if got := headers[name]; len(got) != 1 || !regexp.MustCompile(pattern).MatchString(got[0]) {
			t.Errorf("header %s = %q, want one value matching %s", name, got, pattern)
		}
	}
	if name := want.UnixTimeHeader; name != "" {
		values := headers[name]
		sec, err := strconv.ParseInt(strings.Join(values, ","), 10, 64)
		if err != nil {
			t.Errorf("header %s = %q, want Unix seconds", name, values)
		} else if age := time.Since(time.Unix(sec, 0)); age < -5*time.Minute || age > 5*time.Minute {
			t.Errorf("header %s = %d is %v away from now", name, sec, age)
		}
	}
	if name := want.FNV1a64Header; name != "" {
		h := fnv.New64a()
		h.Write([]byte(body))
		if got, want := strings.Join(headers[name], ","), fmt.Sprintf("fnv1a64=%016x", h.Sum64()); got != want {
			t.Errorf("header %s = %q, but FNV-1a 64 of the body as sent is %q", name, got, want)
		}
	}
	if want.BodyUnchanged {
		if input := fixtureBody(t, filepath.Join(dir, fixture)); body != input {
			t.Errorf("body changed:\n got %q\nwant %q (the fixture's, byte for byte)", body, input)
		}
	}
	if want.BodyJSON != nil {
		var got any
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("body %q is not JSON: %v", body, err)
		}
		if wantJSON := normalizeJSON(t, want.BodyJSON); !reflect.DeepEqual(got, wantJSON) {
			wantText, _ := json.Marshal(wantJSON)
			t.Errorf("body\n got %s\nwant %s", body, wantText)
		}
	}
	if len(want.AbsentKeys) > 0 {
		var got any
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("body %q is not JSON: %v", body, err)
		}
		for _, key := range want.AbsentKeys {
			if where := findKeyPath(got, strings.Split(key, "."), "$"); where != "" {
				t.Errorf("%s is still in the body, at %s", key, where)
			}
		}
	}
}

// fixtureBody is the body `hook test` sends for a fixture: json when
// present (its bytes as written), else body.
func fixtureBody(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Body string          `json:"body"`
		JSON json.RawMessage `json:"json"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(f.JSON) > 0 {
		return string(f.JSON)
	}
	return f.Body
}

// normalizeJSON turns a value decoded from YAML into what encoding/json
// decodes the same document to.
func normalizeJSON(t *testing.T, v any) any {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("expected body_json cannot be JSON: %v", err)
	}
	var out any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// findKeyPath returns where in v an object holds path (["owner", "email"]:
// an object with key owner whose value is an object with key email), or ""
// when none does, at any depth.
func findKeyPath(v any, path []string, at string) string {
	switch v := v.(type) {
	case map[string]any:
		if hasKeyPath(v, path) {
			return at
		}
		for k, child := range v {
			if where := findKeyPath(child, path, at+"."+k); where != "" {
				return where
			}
		}
	case []any:
		for i, child := range v {
			if where := findKeyPath(child, path, fmt.Sprintf("%s[%d]", at, i)); where != "" {
				return where
			}
		}
	}
	return ""
}

func hasKeyPath(m map[string]any, path []string) bool {
	child, ok := m[path[0]]
	if !ok {
		return false
	}
	if len(path) == 1 {
		return true
	}
	next, ok := child.(map[string]any)
	return ok && hasKeyPath(next, path[1:])
}

// TestExamplesWebhookPayloadLimit: the webhook hook checksums payloads up
// to its 16 KiB limit within the default hook limits, and refuses larger
// ones with a reason.
func TestExamplesWebhookPayloadLimit(t *testing.T) {
	t.Parallel()
	const limit = 16384
	script := filepath.Join(examplesRoot(t), "webhook", "hooks", "webhook_request.tengo")
	fixture := func(size int) string {
		body := `{"data":"` + strings.Repeat("x", size-len(`{"data":""}`)) + `"}`
		raw, err := json.Marshal(map[string]any{
			"method":  "POST",
			"url":     "https://hooks.partner.example.com/webhooks/orders",
			"headers": map[string][]string{"Content-Type": {"application/json"}},
			"body":    body,
		})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "req.json")
		writeFile(t, path, string(raw))
		return path
	}

	res := egressgw(t, "hook", "test", "--script", script, "--request", fixture(limit+1), "--connector", "webhook")
	if want := fmt.Sprintf("hook_denied: webhook connector: payload of %d bytes is larger than %d bytes; send a smaller event or a link to the data\n", limit+1, limit); res.stdout != want {
		t.Errorf("payload over the limit: exit %d, printed %q, want %q", res.exitCode, res.output(), want)
	}

	// Under the race detector the worker runs several times slower than in
	// production, so a full-size checksum there says nothing about the
	// default 50ms timeout.
	if raceEnabled {
		t.Log("skipping the full-size payload under the race detector")
		return
	}
	res = egressgw(t, "hook", "test", "--script", script, "--request", fixture(limit), "--connector", "webhook")
	var out hookTestOutput
	if res.exitCode != 0 || json.Unmarshal([]byte(res.stdout), &out) != nil || out.Request == nil {
		t.Fatalf("payload at the limit: exit %d, want the stamped request; output:\n%s", res.exitCode, res.output())
	}
	h := fnv.New64a()
	h.Write([]byte(out.Request.Body))
	if got, want := out.Request.Headers["X-Webhook-Checksum"], fmt.Sprintf("fnv1a64=%016x", h.Sum64()); len(out.Request.Body) != limit || !slices.Equal(got, []string{want}) {
		t.Errorf("payload at the limit: %d bytes, checksum %q, want %d bytes and %q", len(out.Request.Body), got, limit, want)
	}
}

// TestExamplesCRMThroughGateway serves the crm example's own config and
// hooks with the real gateway, pointed at a local HTTPS upstream that
// answers with the example's response fixtures: the sandbox gets records
// without the internal fields, a DELETE never reaches the CRM, and the API
// key is injected.
func TestExamplesCRMThroughGateway(t *testing.T) {
	t.Parallel()
	dir, env, secrets := prepareExample(t, "crm")
	fixtures := map[string]string{
		"/v2/contacts/4711": "contact.response.json",
		"/v2/contacts":      "contacts-page.response.json",
	}
	origin := startTLSUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := fixtures[r.URL.Path]
		if !ok || r.Method != http.MethodGet {
			http.Error(w, "no such fixture", http.StatusNotFound)
			return
		}
		raw, err := os.ReadFile(filepath.Join(dir, "fixtures", name))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var f struct {
			Status  int                 `json:"status"`
			Headers map[string][]string `json:"headers"`
			JSON    json.RawMessage     `json:"json"`
		}
		if err := json.Unmarshal(raw, &f); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		for k, vs := range f.Headers {
			w.Header()[k] = vs
		}
		w.WriteHeader(f.Status)
		w.Write(f.JSON)
	}))

	// Point the example at the local upstream; everything else (tenant,
	// inject, hooks) is the example's own.
	rewriteExampleFile(t, dir, "connectors/crm.yaml", `hosts: ["api.crm.example.com"]`, fmt.Sprintf("hosts: [%q]", hostAPI))
	rewriteExampleFile(t, dir, "connectors/crm.yaml", "ports: [443]", fmt.Sprintf("ports: [%d]", origin.port))
	g, pool := startExampleGateway(t, dir, env)
	proxyURL, err := url.Parse(g.proxyURL(exampleTenant))
	if err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport, Timeout: scaled(requestTimeout)}

	do := func(method, path string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, origin.url(hostAPI, path), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s through the gateway: %v", method, path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		return resp, string(body)
	}

	t.Run("record without internal fields, API key injected", func(t *testing.T) {
		resp, body := do(http.MethodGet, "/v2/contacts/4711")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %q", resp.StatusCode, body)
		}
		want := `{"company":"Analytical Engines Ltd","email":"ada@analytical.example","id":4711,"name":"Ada Lovelace","owner":{"id":12,"name":"Grace Hopper"},"stage":"customer"}`
		if body != want {
			t.Errorf("body\n got %s\nwant %s", body, want)
		}
		seen := origin.requestsTo("/v2/contacts/4711")
		if len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+secrets["crm_api_key"] {
			t.Errorf("the CRM did not get the injected API key once: %v", seen)
		}
	})

	t.Run("list page cleaned", func(t *testing.T) {
		resp, body := do(http.MethodGet, "/v2/contacts")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %q", resp.StatusCode, body)
		}
		var got any
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		for _, key := range []string{"internal_notes", "_score", "_took_ms", "owner.email"} {
			if where := findKeyPath(got, strings.Split(key, "."), "$"); where != "" {
				t.Errorf("%s reached the sandbox, at %s: %s", key, where, body)
			}
		}
		if !strings.Contains(body, `"name":"Katherine Johnson"`) || !strings.Contains(body, `"paging"`) {
			t.Errorf("the records themselves are missing: %s", body)
		}
	})

	t.Run("DELETE refused before the CRM", func(t *testing.T) {
		resp, _ := do(http.MethodDelete, "/v2/contacts/4711")
		e := assertGatewayError(t, resp, http.StatusForbidden, "hook_denied")
		if want := `crm connector: DELETE /v2/contacts/4711 is refused: records are archived, not deleted: send PATCH with {"archived": true}`; e.Message != want {
			t.Errorf("message %q, want %q", e.Message, want)
		}
		if n := len(origin.requests(func(r seenRequest) bool { return r.Method == http.MethodDelete })); n != 0 {
			t.Errorf("the CRM got %d DELETE request(s)", n)
		}
	})
}

// rewriteExampleFile replaces old with new, once, in file of the example
// copied to dir; a file that no longer holds old fails the test, so the
// example and its test cannot drift apart unnoticed.
func rewriteExampleFile(t *testing.T, dir, file, old, new string) {
	t.Helper()
	path := filepath.Join(dir, file)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(old)) {
		t.Fatalf("%s no longer holds %q; update this test", file, old)
	}
	writeFile(t, path, strings.Replace(string(raw), old, new, 1))
}

// startExampleGateway starts the real binary on the example copied to
// dir, made to trust the test's upstreams and to listen where the tests
// say, and returns it with a pool holding the example's interception CA.
func startExampleGateway(t *testing.T, dir string, env []string) (*gateway, *x509.CertPool) {
	t.Helper()
	rewriteExampleFile(t, dir, "gateway.yaml", "\ntls:\n", fmt.Sprintf("\nconfig: { allow_paths: [%q] }\ntls:\n  upstream_roots: [%q]\n", filepath.Dir(testPKI.caFile), testPKI.caFile))
	raw, err := os.ReadFile(filepath.Join(dir, "gateway.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "gateway.yaml"), string(raw)+gatewayYAML(""))
	g := newGateway(t)
	g.env = env
	g.start(t, "--config", dir, "--log-format", "json")
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return g, pool
}
