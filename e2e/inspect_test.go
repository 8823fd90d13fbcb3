package e2e

import (
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// injectedSecret is what the gateway injects; the sandbox must never see it.
const injectedSecret = "s3cr3t-injected-4f1e9a7c0b2d"

var inspector = credentials{tenant: "inspector", token: "inspector-token-61c0f3b7a2"}

// inspectFixture is a gateway with an inspection CA made by `egressgw ca
// init`, trusting the test CA for upstreams, and an inspecting connector
// that injects a secret and restricts methods and paths.
type inspectFixture struct {
	g       *gateway
	origin  *upstream // TLS, echoes what it was sent
	caFile  string    // the gateway's inspection CA, for clients to trust
	caPool  *x509.CertPool
	badCert *httptest.Server // TLS with a certificate the gateway does not trust
	victim  *upstream        // TLS on a denied address, behind an inspected connector
	dir     string           // the config directory
}

// echoSecrets answers with the Authorization header it received, in a
// header and in the body, gzip-compressed under /v1/gzip and in a trailer
// too under /v1/trailer: an upstream that echoes credentials, the case
// scrubbing exists for.
var echoSecrets = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	auth := r.Header.Get("Authorization")
	w.Header().Set("X-Echo-Authorization", auth)
	body := fmt.Sprintf("you sent %q to %s %s", auth, r.Method, r.URL.Path)
	switch r.URL.Path {
	case "/v1/switch": // a 101 nobody asked for, with the credential behind it
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Echo-Authorization: %s\r\n\r\nauth=%s\n", auth, auth)
		rw.Flush()
		return
	case "/v1/early": // the credential in an informational response
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("X-Echo-Authorization")
		io.WriteString(w, "after early hints")
		return
	case "/v1/double-encoding": // gzip, declared over two header lines
		w.Header()["Content-Encoding"] = []string{"identity", "gzip"}
		zw := gzip.NewWriter(w)
		io.WriteString(zw, body)
		zw.Close()
		return
	}
	if r.URL.Path == "/v1/trailer" {
		w.Header().Set("Trailer", "X-Echo-Trailer")
		io.WriteString(w, body)
		w.Header().Set("X-Echo-Trailer", auth)
		return
	}
	if r.URL.Path == "/v1/gzip" {
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, body)
		zw.Close()
		return
	}
	io.WriteString(w, body)
})

func startInspectFixture(t *testing.T) *inspectFixture {
	t.Helper()
	fx := &inspectFixture{
		origin: startTLSUpstream(t, "127.0.0.1", echoSecrets),
		victim: startTLSUpstream(t, victimAddress, echoSecrets),
	}
	fx.badCert = httptest.NewTLSServer(echoSecrets) // Go's own test certificate
	t.Cleanup(fx.badCert.Close)
	badPort := portOf(t, fx.badCert.Listener.Addr().String())

	dir := t.TempDir()
	fx.dir = dir
	res := egressgw(t, "ca", "init", "--out", filepath.Join(dir, "ca"))
	if res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	fx.caFile = filepath.Join(dir, "ca", "ca.pem")
	pem, err := os.ReadFile(fx.caFile)
	if err != nil {
		t.Fatal(err)
	}
	fx.caPool = x509.NewCertPool()
	fx.caPool.AppendCertsFromPEM(pem)

	files := configFiles{
		"gateway.yaml": inspectingGatewayYAML(yamlf(`
			secrets:
			  api_token: { env: E2E_API_TOKEN }
		`)),
		"connectors/api.yaml": yamlf(`
			name: api
			hosts: [%q]
			ports: [%d]
			methods: [GET, POST]
			paths: ["/v1/"]
			inspect: true
			inject:
			  headers: { Authorization: "Bearer ${secret:api_token}" }
		`, hostAPI, fx.origin.port),
		"connectors/stamped.yaml": yamlf(`
			name: stamped
			hosts: [%q]
			ports: [%d]
			inspect: true
			hooks: { request: hooks/stamp.tengo }
		`, hostOther, fx.origin.port),
		"hooks/stamp.tengo": "request.headers[\"X-Stamp\"] = [\"stamped\"]\n",
		"connectors/untrusted.yaml": yamlf(`
			name: untrusted
			hosts: ["127.0.0.1"]
			ports: [%d]
			inspect: true
		`, badPort),
		"connectors/rebound.yaml": yamlf(`
			name: rebound
			hosts: [%q]
			ports: [%d]
			inspect: true
		`, hostRebind, fx.victim.port),
		"tenants/inspector.yaml": tenantYAML(inspector, "connectors: [api, stamped, untrusted, rebound]\n"),
	}
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, path, content)
	}
	fx.g = newGateway(t)
	fx.g.env = append(fx.g.env, "E2E_API_TOKEN="+injectedSecret)
	fx.g.start(t, "--config", dir, "--log-format", "json")
	return fx
}

// client is a Go client that uses the gateway and trusts its CA.
func (fx *inspectFixture) client(t *testing.T) *http.Client {
	proxyURL, err := url.Parse(fx.g.proxyURL(inspector))
	if err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{
		Proxy:           http.ProxyURL(proxyURL),
		TLSClientConfig: &tls.Config{RootCAs: fx.caPool},
	}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

func TestInspectedTunnel(t *testing.T) {
	t.Parallel()
	fx := startInspectFixture(t)
	g := fx.g

	t.Run("ca init writes the key for the gateway only", func(t *testing.T) {
		info, err := os.Stat(filepath.Join(filepath.Dir(fx.caFile), "ca-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if mode := info.Mode().Perm(); mode != 0o600 {
			t.Errorf("ca-key.pem mode %o, want 600", mode)
		}
	})

	t.Run("Go client: injected secret reaches the upstream, never the client", func(t *testing.T) {
		status, body := fetch(t, fx.client(t), fx.origin.url(hostAPI, "/v1/echo"))
		if status != http.StatusOK {
			t.Fatalf("status %d, body %q", status, body)
		}
		seen := fx.origin.requestsTo("/v1/echo")
		if len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+injectedSecret {
			t.Fatalf("upstream did not get the injected credential: %+v", seen)
		}
		if strings.Contains(body, injectedSecret) || !strings.Contains(body, "[REDACTED:secret]") {
			t.Errorf("body returned to the sandbox: %q", body)
		}
	})

	t.Run("curl: headers and gzip bodies are scrubbed too", func(t *testing.T) {
		res := run(t, nil, "", "curl", "-sS", "-i", "--compressed",
			"-x", "http://"+g.proxyAddr, "--proxy-user", inspector.tenant+":"+inspector.token,
			"--cacert", fx.caFile, fx.origin.url(hostAPI, "/v1/gzip"))
		if res.exitCode != 0 {
			t.Fatalf("curl: exit %d: %s", res.exitCode, res.stderr)
		}
		// curl speaks HTTP/2 inside the tunnel, where header names are
		// lower case.
		if strings.Contains(res.stdout, injectedSecret) || !strings.Contains(strings.ToLower(res.stdout), "x-echo-authorization: bearer [redacted:secret]") ||
			!strings.Contains(res.stdout, `you sent "Bearer [REDACTED:secret]"`) {
			t.Errorf("curl saw:\n%s", res.stdout)
		}
	})

	t.Run("informational responses never reach the sandbox", func(t *testing.T) {
		res := run(t, nil, "", "curl", "-sS", "-i",
			"-x", "http://"+g.proxyAddr, "--proxy-user", inspector.tenant+":"+inspector.token,
			"--cacert", fx.caFile, fx.origin.url(hostAPI, "/v1/early"))
		if res.exitCode != 0 {
			t.Fatalf("curl: exit %d: %s", res.exitCode, res.stderr)
		}
		if strings.Contains(res.stdout, injectedSecret) || strings.Contains(res.stdout, " 103 ") || !strings.Contains(res.stdout, "after early hints") {
			t.Errorf("curl saw:\n%s", res.stdout)
		}
	})

	t.Run("a client cannot name a hook's header hop-by-hop", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, fx.origin.url(hostOther, "/v1/named-away"), nil)
		req.Header.Set("Connection", "X-Stamp")
		resp, err := fx.client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if seen := fx.origin.requestsTo("/v1/named-away"); len(seen) != 1 || seen[0].Header.Get("X-Stamp") != "stamped" {
			t.Errorf("upstream saw %+v, want the hook's X-Stamp", seen)
		}
	})

	// The network policy, trailers, encodings, methods and paths, other
	// hosts, malformed requests, untrusted certificates and bodies that
	// stream inside the tunnel are in the proxy package's tests.

	// A body a hook read whole goes out in one piece and is counted in
	// the audit line.
	for _, tc := range []struct {
		name, host, path, stamp string
	}{
		{"a body a hook held goes out whole and is counted", hostOther, "/v1/held", "stamped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := strings.Repeat("body of "+tc.path+" ", 300)
			resp, err := fx.client(t).Post(fx.origin.url(tc.host, tc.path), "text/plain", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			seen := fx.origin.requestsTo(tc.path)
			if resp.StatusCode != http.StatusOK || len(seen) != 1 || seen[0].Header.Get("X-Stamp") != tc.stamp {
				t.Fatalf("status %d, upstream saw %+v", resp.StatusCode, seen)
			}
			rec := g.waitAudit(t, auditWith("tenant", inspector.tenant, "path", tc.path))
			if got := auditNumber(rec, "bytes_up"); got != float64(len(body)) {
				t.Errorf("audit bytes_up %v, want the %d body bytes sent", got, len(body))
			}
		})
	}

	t.Run("every inner request is audited, the secret nowhere in the logs", func(t *testing.T) {
		rec := g.waitAudit(t, auditWith("tenant", inspector.tenant, "path", "/v1/echo", "scheme", "https"))
		if rec["decision"] != "allow" || !ruleIs(rec["rule"], "api") {
			t.Errorf("audit line %v", rec)
		}
		for name, text := range map[string]string{"stdout": g.stdout.String(), "stderr": g.stderr.String()} {
			if strings.Contains(text, injectedSecret) {
				t.Errorf("the injected secret appears in the gateway's %s", name)
			}
		}
	})
}

// assertTrailerScrubbed fetches a /v1/trailer URL of echoSecrets and checks
// that the echoed credential comes back scrubbed in the trailer.
func assertTrailerScrubbed(t *testing.T, client *http.Client, target string) {
	t.Helper()
	resp, err := client.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp) // trailers arrive after the body
	trailer := resp.Trailer.Get("X-Echo-Trailer")
	if resp.StatusCode != http.StatusOK || strings.Contains(body, injectedSecret) || trailer != "Bearer [REDACTED:secret]" {
		t.Errorf("status %d, body %q, trailer %q; want the trailer scrubbed", resp.StatusCode, body, trailer)
	}
}

// startInjectingGateway serves inspector a connector "api" on origin that
// injects injectedSecret, not inspecting; extraInject adds to its inject
// section ("allow_plaintext: true").
func startInjectingGateway(t *testing.T, origin *upstream, extraInject string) *gateway {
	t.Helper()
	g := newGateway(t)
	g.env = append(g.env, "E2E_API_TOKEN="+injectedSecret)
	g.serve(t, configFiles{
		"gateway.yaml": gatewayYAML("secrets:\n  api_token: { env: E2E_API_TOKEN }\n"),
		"connectors/api.yaml": yamlf(`
			name: api
			hosts: [%q]
			ports: [%d]
			inject:
			  headers: { Authorization: "Bearer ${secret:api_token}" }
			  %s
		`, hostAPI, origin.port, extraInject),
		"tenants/inspector.yaml": tenantYAML(inspector, "connectors: [api]\n"),
	})
	return g
}

// TestPlaintextInjectionScrubsResponses: a connector that opts into plain
// HTTP gets its credential injected and scrubbed from every part of the
// response, trailers included.
func TestPlaintextInjectionScrubsResponses(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", echoSecrets)
	g := startInjectingGateway(t, origin, "allow_plaintext: true")
	assertTrailerScrubbed(t, g.client(t, inspector), origin.url(hostAPI, "/v1/trailer"))
	seen := origin.requestsTo("/v1/trailer")
	if len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+injectedSecret {
		t.Fatalf("upstream did not get the injected credential: %+v", seen)
	}

	// An upstream that switches protocols unasked would hand the sandbox
	// raw bytes no scrubbing sees.
	resp := g.get(t, inspector.header(), origin.url(hostAPI, "/v1/switch"))
	body := readBody(t, resp)
	if strings.Contains(body, injectedSecret) || strings.Contains(fmt.Sprint(resp.Header), injectedSecret) {
		t.Errorf("the credential reached the client: %v %q", resp.Header, body)
	}
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Egressgw-Error") != "upstream_unreachable" {
		t.Errorf("unsolicited 101: status %d, error %q; want 502 upstream_unreachable", resp.StatusCode, resp.Header.Get("X-Egressgw-Error"))
	}
}

// TestInjectingConnectorRefusesPlainHTTP: a connector that injects is
// refused over plain HTTP, where the secret would travel in clear text.
func TestInjectingConnectorRefusesPlainHTTP(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startInjectingGateway(t, origin, "")
	e := g.expectRefused(t, http.MethodGet, inspector.header(), origin.url(hostAPI, "/"), http.StatusForbidden, "destination_not_allowed", origin)
	if !strings.Contains(e.Message, "plain HTTP") {
		t.Errorf("message %q does not say why", e.Message)
	}
	e = g.expectRefusedCONNECT(t, inspector.header(), origin.authority(hostAPI), http.StatusForbidden, "destination_not_allowed", origin)
	if !strings.Contains(e.Message, "inspect") {
		t.Errorf("message %q does not say the connector needs inspect", e.Message)
	}
}

// TestInspectedBytesCountedOnce: the bytes of an inspected tunnel are
// counted once in egressgw_bytes_total, as those that crossed the tunnel,
// not again for each request inside it.
func TestInspectedBytesCountedOnce(t *testing.T) {
	t.Parallel()
	fx := startInspectFixture(t)
	client := fx.client(t)
	if status, body := fetch(t, client, fx.origin.url(hostAPI, "/v1/counted")); status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	client.CloseIdleConnections() // ends the tunnel, which writes its line
	inner := fx.g.waitAudit(t, auditWith("tenant", inspector.tenant, "path", "/v1/counted"))
	tunnel := fx.g.waitAudit(t, auditWith("tenant", inspector.tenant, "method", "CONNECT"))
	if auditNumber(inner, "bytes_down") == 0 || auditNumber(tunnel, "bytes_down") == 0 {
		t.Fatalf("audit lines count no bytes: inner %v, tunnel %v", inner, tunnel)
	}
	for direction, field := range map[string]string{"egress": "bytes_up", "ingress": "bytes_down"} {
		want := auditNumber(tunnel, field)
		eventually(t, 5*time.Second, func() error {
			samples, err := fx.g.metrics()
			if err != nil {
				return err
			}
			got, _ := sumMetric(samples, "egressgw_bytes_total", map[string]string{"tenant": inspector.tenant, "direction": direction})
			if got != want {
				return fmt.Errorf("bytes_total{direction=%s} = %v, want the tunnel's %s %v", direction, got, field, want)
			}
			return nil
		})
	}
}

// TestCARotationAppliesOnReload: a new inspection CA saved over the old
// one is used for the next tunnels within the reload window, no restart.
func TestCARotationAppliesOnReload(t *testing.T) {
	t.Parallel()
	fx := startInspectFixture(t)
	clientTrusting := func(caPEM []byte) *http.Client {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		proxyURL, _ := url.Parse(fx.g.proxyURL(inspector))
		return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	}
	readFile := func(path string) []byte {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	target := fx.origin.url(hostAPI, "/v1/rotated")
	oldCA := readFile(fx.caFile)
	resp, err := clientTrusting(oldCA).Get(target)
	if err != nil {
		t.Fatalf("with the first CA: %v", err)
	}
	resp.Body.Close()

	next := filepath.Join(t.TempDir(), "ca")
	if res := egressgw(t, "ca", "init", "--out", next); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	for _, name := range []string{"ca-key.pem", "ca.pem"} { // saved by rename, as tools do
		staged := filepath.Join(fx.dir, "ca", name+".new")
		if err := os.WriteFile(staged, readFile(filepath.Join(next, name)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(staged, filepath.Join(fx.dir, "ca", name)); err != nil {
			t.Fatal(err)
		}
	}
	rotated := clientTrusting(readFile(filepath.Join(next, "ca.pem")))
	eventually(t, scaled(reloadWindow+time.Second), func() error {
		resp, err := rotated.Get(target)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	if resp, err := clientTrusting(oldCA).Get(target); err == nil {
		resp.Body.Close()
		t.Error("a client trusting only the old CA still got through after the rotation")
	}
}
