package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var spelled = credentials{tenant: "spelled", token: "spelled-token-0c4e19a6b3"}

// contentFixture is a gateway with an inspection CA and a tenant whose
// paths rules guard a plain and an inspected upstream.
type contentFixture struct {
	g      *gateway
	caPool *x509.CertPool
}

// startContentGateway writes files plus an inspection CA made by `egressgw
// ca init` (tls: in gateway.yaml must name ca/ca.pem and ca/ca-key.pem) and
// starts the gateway with env.
func startContentGateway(t *testing.T, files configFiles, env ...string) *contentFixture {
	t.Helper()
	dir := writeConfig(t, files)
	if res := egressgw(t, "ca", "init", "--out", filepath.Join(dir, "ca")); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	pem, err := os.ReadFile(filepath.Join(dir, "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	fx := &contentFixture{g: newGateway(t), caPool: x509.NewCertPool()}
	fx.caPool.AppendCertsFromPEM(pem)
	fx.g.env = append(fx.g.env, env...)
	fx.g.start(t, "--config", dir, "--log-format", "json")
	return fx
}

// rawInTunnel opens an inspected tunnel to authority as c, sends raw (a
// request head whose target is written byte for byte) inside it and
// returns the gateway's or upstream's response, body buffered.
func (fx *contentFixture) rawInTunnel(t *testing.T, c credentials, authority, raw string) *http.Response {
	t.Helper()
	tunnel := fx.g.tunnel(t, c, authority)
	host, _, _ := strings.Cut(authority, ":")
	conn := tls.Client(tunnel, &tls.Config{ServerName: host, RootCAs: fx.caPool, NextProtos: []string{"http/1.1"}})
	if _, err := conn.Write([]byte(raw)); err != nil {
		t.Fatalf("writing inside the tunnel: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("reading the response inside the tunnel: %v", err)
	}
	body := readBody(t, resp)
	resp.Body = readCloser(body)
	return resp
}

func readCloser(s string) *stringBody { return &stringBody{strings.NewReader(s)} }

type stringBody struct{ *strings.Reader }

func (*stringBody) Close() error { return nil }

// assertRefusedSpelling checks a refusal of a path spelling: 400
// bad_request or 403 destination_not_allowed, made by the gateway (JSON
// with X-Egressgw-Error).
func assertRefusedSpelling(t *testing.T, resp *http.Response, spelling string) {
	t.Helper()
	switch code := resp.Header.Get("X-Egressgw-Error"); {
	case resp.StatusCode == http.StatusBadRequest && code == "bad_request":
		assertGatewayError(t, resp, http.StatusBadRequest, "bad_request")
	case resp.StatusCode == http.StatusForbidden && code == "destination_not_allowed":
		assertGatewayError(t, resp, http.StatusForbidden, "destination_not_allowed")
	default:
		t.Errorf("%q: status %d, X-Egressgw-Error %q; want the gateway's 400 bad_request or 403 destination_not_allowed (body %q)",
			spelling, resp.StatusCode, code, readBody(t, resp))
	}
}

// TestPathSpellingsCannotPassADeny sends spellings of a denied path that
// upstreams read as that path (overlong UTF-8, fullwidth letters, double
// or IIS encoding, control characters, encoded or back slashes, trailing
// dots and spaces, parameters, case), as plain HTTP and inside an
// inspected tunnel: each is refused by the gateway and the canary
// upstream behind the deny sees none of them.
func TestPathSpellingsCannotPassADeny(t *testing.T) {
	t.Parallel()
	plain := startHTTPUpstream(t, "127.0.0.1", nil)
	secure := startTLSUpstream(t, "127.0.0.1", nil)
	fx := startContentGateway(t, configFiles{
		"gateway.yaml": inspectingGatewayYAML(""),
		"connectors/plain.yaml": yamlf(`
			name: plain
			hosts: [%q]
			ports: [%d]
		`, hostAPI, plain.port),
		"connectors/secure.yaml": yamlf(`
			name: secure
			hosts: [%q]
			ports: [%d]
			inspect: true
			paths: ["/"]
		`, hostAPI, secure.port),
		"tenants/spelled.yaml": tenantYAML(spelled, yamlf(`
			connectors: [plain, secure]
			rules:
			  - name: no-admin
			    action: deny
			    hosts: [%q]
			    paths: ["/admin"]
		`, hostAPI)),
	})
	g := fx.g
	// One of each family; every spelling, and the clean paths that still
	// pass, are in the proxy package's tests.
	spellings := []string{
		"/%C0%AE%C0%AE/admin", // overlong UTF-8 for ".."
		"/%EF%BD%81dmin",      // fullwidth a, encoded
		"/%252e%252e/admin",   // double encoding
		"/admin;x=1/users",    // parameters
		"/ADMIN/users",        // case
		"/x%2F..%2Fadmin",     // encoded slash
	}
	t.Run("plain", func(t *testing.T) {
		for _, path := range spellings {
			before := snapshotReach(plain)
			raw := fmt.Sprintf("GET http://%s:%d%s HTTP/1.1\r\nHost: %s:%d\r\nProxy-Authorization: %s\r\nConnection: close\r\n\r\n",
				hostAPI, plain.port, path, hostAPI, plain.port, spelled.header())
			resp, _ := g.exchange(t, http.MethodGet, []byte(raw))
			assertRefusedSpelling(t, resp, path)
			before.assertUnchanged(t)
		}
	})
	t.Run("inspected tunnel", func(t *testing.T) {
		for _, path := range spellings {
			before := snapshotReach(secure)
			raw := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", path, hostAPI, secure.port)
			assertRefusedSpelling(t, fx.rawInTunnel(t, spelled, secure.authority(hostAPI), raw), path)
			// The tunnel itself reached the upstream only if the gateway
			// dialled it for the inner request, which it must not.
			before.assertUnchanged(t)
		}
	})
}

var queried = credentials{tenant: "queried", token: "queried-token-93d2a7e1f0"}

// queryMarker stands for a token in a query string: it must never reach
// the audit log, a client's error message or the gateway's log.
const queryMarker = "qv-marker-4b8e2d"

// queryHook moves requests around on their query, the way a hook that
// signs or rewrites URLs does, and fails in each way that could quote it.
const queryHook = `
text := import("text")
if request.path == "/v1/bad-query" { request.query = "token=` + queryMarker + ` x" }
if request.path == "/v1/query-in-path" { request.path = "/v1/x?token=` + queryMarker + `" }
if request.path == "/v1/moved" { request.path = "/admin/x"; request.query = "token=` + queryMarker + `" }
if request.path == "/v1/signed" { request.query = "sig=` + queryMarker + `" }
`

// TestQueryValuesStayOutOfMessages drives every path where a URL with a
// query could reach a message (a hook's edits, refusals after a hook, an
// upstream failure, explain, the audit line of an allowed request) with a
// query holding a marker, and asserts the marker is absent from the
// client's error, the audit log and the gateway's log.
func TestQueryValuesStayOutOfMessages(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	closedPort := portOf(t, freeAddr(t)) // nothing listens there
	g := newGateway(t)
	g.serve(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"hooks/query.tengo": queryHook,
		"connectors/crm.yaml": yamlf(`
			name: crm
			hosts: [%q]
			ports: [%d]
			paths: ["/v1/"]
			hooks: { request: hooks/query.tengo }
		`, hostAPI, origin.port),
		"connectors/gone.yaml": yamlf(`
			name: gone
			hosts: [%q]
			ports: [%d]
		`, hostOther, closedPort),
		"tenants/queried.yaml": tenantYAML(queried, "connectors: [crm, gone]\n"),
	})
	noMarker := func(t *testing.T, what, text string) {
		t.Helper()
		if strings.Contains(text, queryMarker) {
			t.Errorf("%s holds the query value:\n%s", what, text)
		}
	}
	for _, tc := range []struct {
		name, url string
		status    int
		code      string
	}{
		{"a hook sets an invalid query", origin.url(hostAPI, "/v1/bad-query"), http.StatusBadGateway, "hook_failed"},
		{"a hook puts a query in the path", origin.url(hostAPI, "/v1/query-in-path"), http.StatusBadGateway, "hook_failed"},
		{"a hook moves the request outside its connector", origin.url(hostAPI, "/v1/moved?token="+queryMarker), http.StatusForbidden, "destination_not_allowed"},
		{"a path not allowed, with a query", origin.url(hostAPI, "/v2/x?token="+queryMarker), http.StatusForbidden, "destination_not_allowed"},
		{"an ambiguous path, with a query", origin.url(hostAPI, "/v1/%C0%AE?token="+queryMarker), http.StatusBadRequest, "bad_request"},
		{"the upstream is unreachable", fmt.Sprintf("http://%s:%d/v1/x?token=%s", hostOther, closedPort, queryMarker), http.StatusBadGateway, "upstream_unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshotReach(origin)
			resp := g.get(t, queried.header(), tc.url)
			body := readBody(t, resp)
			resp.Body = readCloser(body)
			assertGatewayError(t, resp, tc.status, tc.code)
			noMarker(t, "the client's error body", body)
			before.assertUnchanged(t)
		})
	}
	t.Run("an allowed request's audit line", func(t *testing.T) {
		g.expectAllowedGET(t, queried, origin.url(hostAPI, "/v1/signed?token="+queryMarker))
		g.waitAudit(t, auditWith("tenant", queried.tenant, "path", "/v1/signed"))
	})
	t.Run("explain", func(t *testing.T) {
		for _, u := range []string{
			"http://" + hostAPI + "/%zz?token=" + queryMarker,
			"ftp://" + hostAPI + "/x?token=" + queryMarker,
		} {
			status, body, err := directGet("http://" + g.adminAddr + "/v1/explain?tenant=" + queried.tenant + "&url=" + url.QueryEscape(u))
			if err != nil || status != http.StatusBadRequest {
				t.Fatalf("explain %q: status %d, %v; want 400 (body %q)", u, status, err, body)
			}
			noMarker(t, "explain's error", body)
		}
	})
	// Every line written for the requests above: the audit log and the
	// gateway's own log.
	eventually(t, 5*time.Second, func() error {
		if n := len(g.auditRecords()); n < 7 {
			return fmt.Errorf("%d audit lines, want at least 7", n)
		}
		return nil
	})
	noMarker(t, "the audit log", g.stdout.String())
	noMarker(t, "the gateway's log", g.stderr.String())
}

var echoed = credentials{tenant: "echoed", token: "echoed-token-7a41c9e2d0"}

// echoEncoding is a spelling an upstream may echo a credential in, with
// the decoding that reads it back.
type echoEncoding struct {
	encode func(string) string
	decode func(string) string // "" when it cannot be decoded
}

func percentEvery(s, format string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, format, s[i])
	}
	return b.String()
}

func jsonEvery(s string, every int) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if i%every == 0 {
			fmt.Fprintf(&b, `\u%04x`, s[i])
		} else {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func decodeWith(f func(string) ([]byte, error)) func(string) string {
	return func(s string) string {
		b, err := f(s)
		if err != nil {
			return ""
		}
		return string(b)
	}
}

func unescapeJSON(s string) string {
	var out string
	if json.Unmarshal([]byte(`"`+s+`"`), &out) != nil {
		return ""
	}
	return out
}

var echoEncodings = map[string]echoEncoding{
	"plain":      {func(s string) string { return s }, func(s string) string { return s }},
	"upper":      {strings.ToUpper, strings.ToLower},
	"lower":      {strings.ToLower, func(s string) string { return s }},
	"hex":        {func(s string) string { return hex.EncodeToString([]byte(s)) }, decodeWith(hex.DecodeString)},
	"HEX":        {func(s string) string { return strings.ToUpper(hex.EncodeToString([]byte(s))) }, decodeWith(hex.DecodeString)},
	"base64":     {func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }, decodeWith(base64.StdEncoding.DecodeString)},
	"base64-raw": {func(s string) string { return base64.RawStdEncoding.EncodeToString([]byte(s)) }, decodeWith(base64.RawStdEncoding.DecodeString)},
	"base64url":  {func(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) }, decodeWith(base64.URLEncoding.DecodeString)},
	"base64url-raw-in-blob": {
		func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(`{"auth":"` + s + `"}`)) },
		decodeWith(base64.RawURLEncoding.DecodeString),
	},
	"base64-in-blob-2": {
		func(s string) string { return base64.StdEncoding.EncodeToString([]byte("u:" + s)) },
		decodeWith(base64.StdEncoding.DecodeString),
	},
	"percent":       {url.QueryEscape, func(s string) string { u, _ := url.QueryUnescape(s); return u }},
	"percent-every": {func(s string) string { return percentEvery(s, "%%%02x") }, func(s string) string { u, _ := url.PathUnescape(s); return u }},
	"json-every":    {func(s string) string { return jsonEvery(s, 1) }, unescapeJSON},
	"json-mixed":    {func(s string) string { return jsonEvery(s, 3) }, unescapeJSON},
}

// echoEncoded answers /enc/NAME with the Authorization header it received
// in encoding NAME, in a header and in a JSON string.
var echoEncoded = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	e, ok := echoEncodings[strings.TrimPrefix(r.URL.Path, "/enc/")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	encoded := e.encode(r.Header.Get("Authorization"))
	w.Header().Set("X-Echo", encoded)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"echo":"%s"}`, encoded)
})

// TestSecretEchoesInOtherSpellings: an upstream behind an inspected,
// injecting connector echoes the injected Authorization value in each
// common encoding, in a header and in the body; the sandbox reads none of
// them back, whatever decoding it tries.
func TestSecretEchoesInOtherSpellings(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-echoed-8d2f6b1a9c4e"
	origin := startTLSUpstream(t, "127.0.0.1", echoEncoded)
	fx := startContentGateway(t, configFiles{
		"gateway.yaml": inspectingGatewayYAML(yamlf(`
			secrets:
			  api_token: { env: E2E_ECHO_TOKEN }
		`)),
		"connectors/api.yaml": yamlf(`
			name: api
			hosts: [%q]
			ports: [%d]
			inspect: true
			inject:
			  headers: { Authorization: "Bearer ${secret:api_token}" }
		`, hostAPI, origin.port),
		"tenants/echoed.yaml": tenantYAML(echoed, "connectors: [api]\n"),
	}, "E2E_ECHO_TOKEN="+secret)
	proxyURL, err := url.Parse(fx.g.proxyURL(echoed))
	if err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{
		Proxy:           http.ProxyURL(proxyURL),
		TLSClientConfig: &tls.Config{RootCAs: fx.caPool},
	}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport}
	mid := strings.ToLower(secret[2 : len(secret)-2]) // an encoding's edges may keep a byte
	// A few encodings; every one is in the proxy package's tests.
	for _, name := range []string{"plain", "base64", "json-every"} {
		e := echoEncodings[name]
		t.Run(name, func(t *testing.T) {
			// The upstream got the secret and encoded it: the test is real.
			if got := e.decode(e.encode("Bearer " + secret)); !strings.Contains(got, secret) {
				t.Fatalf("the test's own decoding gives %q", got)
			}
			resp, err := client.Get(origin.url(hostAPI, "/enc/"+name))
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			var fields struct{ Echo string }
			if err := json.Unmarshal([]byte(body), &fields); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			for what, seen := range map[string]string{"header": resp.Header.Get("X-Echo"), "body": fields.Echo, "raw body": body} {
				if !strings.Contains(seen, "[REDACTED:secret]") {
					t.Errorf("%s %q: the echo was not scrubbed", what, seen)
				}
				for _, reading := range []string{seen, e.decode(seen), unescapeJSON(seen)} {
					if strings.Contains(strings.ToLower(reading), mid) {
						t.Errorf("%s %q reads back as %q, which holds the secret", what, seen, reading)
					}
				}
			}
		})
	}
}
