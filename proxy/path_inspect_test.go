package proxy

import (
	"bufio"
	"compress/gzip"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// pathInjected is what the gateway injects; the sandbox must never see it.
const pathInjected = "s3cr3t-injected-4f1e9a7c0b2d"

var pathInspector = pathTenant{"inspector", "inspector-token-61c0f3b7a2"}

// echoSecrets answers with the Authorization header it received, in a
// header and in the body, gzip-compressed under /v1/gzip and in a trailer
// under /v1/trailer: an upstream that echoes credentials, the case
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
	case "/v1/double-encoding": // gzip, declared over two header lines
		w.Header()["Content-Encoding"] = []string{"identity", "gzip"}
		zw := gzip.NewWriter(w)
		io.WriteString(zw, body)
		zw.Close()
		return
	case "/v1/trailer":
		w.Header().Set("Trailer", "X-Echo-Trailer")
		io.WriteString(w, body)
		w.Header().Set("X-Echo-Trailer", auth)
		return
	case "/v1/gzip":
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, body)
		zw.Close()
		return
	}
	io.WriteString(w, body)
})

// pathInspectFixture is a gateway inspecting tunnels for tenant inspector,
// whose connector api injects a secret and restricts methods and paths.
type pathInspectFixture struct {
	g       *pathGateway
	origin  *pathUpstream    // TLS, echoes what it was sent
	badCert *httptest.Server // TLS with a certificate the gateway does not trust
	victim  *pathUpstream    // TLS on a denied address, behind an inspected connector
}

func startPathInspectFixture(t *testing.T) *pathInspectFixture {
	t.Helper()
	fx := &pathInspectFixture{
		origin: startPathUpstream(t, "127.0.0.1", true, echoSecrets),
		victim: startPathUpstream(t, zoneVictim, true, echoSecrets),
	}
	fx.badCert = httptest.NewTLSServer(echoSecrets) // Go's own test certificate
	t.Cleanup(fx.badCert.Close)
	_, badPort, _ := net.SplitHostPort(fx.badCert.Listener.Addr().String())
	fx.g = startPathGateway(t, pathInspecting+"secrets:\n  api_token: { file: secrets/api_token }\n", pathInspectingFiles(t, map[string]string{
		"secrets/api_token": pathInjected,
		"connectors/api.yaml": fmt.Sprintf(`name: api
hosts: [%q]
ports: [%d]
methods: [GET, POST]
paths: ["/v1/"]
inspect: true
inject:
  headers: { Authorization: "Bearer ${secret:api_token}" }
`, zoneAPI, fx.origin.port),
		"connectors/untrusted.yaml": fmt.Sprintf("name: untrusted\nhosts: [\"127.0.0.1\"]\nports: [%s]\ninspect: true\n", badPort),
		"connectors/rebound.yaml":   fmt.Sprintf("name: rebound\nhosts: [%q]\nports: [%d]\ninspect: true\n", zoneRebind, fx.victim.port),
		"tenants/inspector.yaml":    pathInspector.yaml("connectors: [api, untrusted, rebound]\n"),
	}))
	return fx
}

// Moved from e2e/inspect_test.go (the cases of Go clients; curl, the CA
// made by ca init and hooks stay there).
func TestPathInspectedTunnel(t *testing.T) {
	t.Parallel()
	fx := startPathInspectFixture(t)
	g := fx.g
	client := g.client(t, pathInspector, zoneRoots(t))

	t.Run("Go client: injected secret reaches the upstream, never the client", func(t *testing.T) {
		resp, err := client.Get(fx.origin.url(zoneAPI, "/v1/echo"))
		if err != nil {
			t.Fatal(err)
		}
		body := pathBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %q", resp.StatusCode, body)
		}
		seen := fx.origin.requestsTo("/v1/echo")
		if len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+pathInjected {
			t.Fatalf("upstream did not get the injected credential: %+v", seen)
		}
		if strings.Contains(body, pathInjected) || !strings.Contains(body, "[REDACTED:secret]") {
			t.Errorf("body returned to the sandbox: %q", body)
		}
	})

	t.Run("requests inside are dialled under the network policy", func(t *testing.T) {
		// The CONNECT dials nothing; each request inside is checked on
		// the address it is dialled to, as a plain request is.
		before := pathSnapshotReach(fx.victim)
		resp, err := client.Get(fx.victim.url(zoneRebind, "/v1/rebound"))
		if err != nil {
			t.Fatal(err)
		}
		assertPathRefusal(t, resp, http.StatusForbidden, "destination_ip_denied")
		before.assertUnchanged(t)
	})

	t.Run("trailers are scrubbed too", func(t *testing.T) {
		assertTrailerScrubbed(t, client, fx.origin.url(zoneAPI, "/v1/trailer"))
	})

	t.Run("an encoding over several header lines is not taken for the first", func(t *testing.T) {
		resp, err := client.Get(fx.origin.url(zoneAPI, "/v1/double-encoding"))
		if err != nil {
			t.Fatal(err)
		}
		if body := pathBody(t, resp); strings.Contains(body, pathInjected) || resp.StatusCode != http.StatusBadGateway {
			t.Errorf("status %d, body %q; want 502, the body refused rather than passed unscrubbed", resp.StatusCode, body)
		}
	})

	t.Run("methods and paths apply inside the tunnel", func(t *testing.T) {
		for _, c := range []struct{ method, path string }{{http.MethodDelete, "/v1/items"}, {http.MethodGet, "/v2/items"}} {
			before := len(fx.origin.requestsTo(c.path))
			req, _ := http.NewRequest(c.method, fx.origin.url(zoneAPI, c.path), nil)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			e := assertPathRefusal(t, resp, http.StatusForbidden, "destination_not_allowed")
			if after := len(fx.origin.requestsTo(c.path)); after != before {
				t.Errorf("%s %s reached the upstream", c.method, c.path)
			}
			// explain, asked about the same URL, says what the gateway did.
			query := url.Values{"tenant": {pathInspector.id}, "method": {c.method}, "url": {fx.origin.url(zoneAPI, c.path)}}
			var trace struct{ Decision, Code, Reason string }
			if body := g.admin(t, "/v1/explain?"+query.Encode()); json.Unmarshal([]byte(body), &trace) != nil ||
				trace.Decision != "deny" || trace.Code != "destination_not_allowed" || trace.Reason != e.Message {
				t.Errorf("/v1/explain for %s %s: %s\nwant deny, destination_not_allowed, %q", c.method, c.path, body, e.Message)
			}
		}
	})

	t.Run("an inner request for another host is refused", func(t *testing.T) {
		for _, c := range []struct{ name, requestLine, host string }{
			{"Host header", "GET /v1/elsewhere HTTP/1.1", zoneOther},
			{"absolute URL", "GET https://" + fx.origin.authority(zoneOther) + "/v1/elsewhere HTTP/1.1", zoneOther},
		} {
			t.Run(c.name, func(t *testing.T) {
				tunnel := g.tunnel(t, pathInspector, fx.origin.authority(zoneAPI))
				tlsConn := tls.Client(tunnel, &tls.Config{ServerName: zoneAPI, RootCAs: zoneRoots(t)})
				fmt.Fprintf(tlsConn, "%s\r\nHost: %s\r\n\r\n", c.requestLine, fx.origin.authority(c.host))
				resp, err := http.ReadResponse(bufio.NewReader(tlsConn), nil)
				if err != nil {
					t.Fatal(err)
				}
				assertPathRefusal(t, resp, http.StatusBadRequest, "bad_request")
				if seen := fx.origin.requestsTo("/v1/elsewhere"); len(seen) != 0 {
					t.Errorf("the other host was reached: %+v", seen)
				}
			})
		}
	})

	t.Run("an inner request net/http cannot parse gets the gateway's reply", func(t *testing.T) {
		tunnel := g.tunnel(t, pathInspector, fx.origin.authority(zoneAPI))
		tlsConn := tls.Client(tunnel, &tls.Config{ServerName: zoneAPI, RootCAs: zoneRoots(t)})
		fmt.Fprintf(tlsConn, "POST /v1/malformed HTTP/1.1\r\nHost: %s\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", fx.origin.authority(zoneAPI))
		resp, err := http.ReadResponse(bufio.NewReader(tlsConn), nil)
		if err != nil {
			t.Fatal(err)
		}
		assertPathRefusal(t, resp, http.StatusBadRequest, "bad_request")
		if seen := fx.origin.requestsTo("/v1/malformed"); len(seen) != 0 {
			t.Errorf("the upstream was reached: %+v", seen)
		}
	})

	t.Run("an upstream certificate the gateway does not trust", func(t *testing.T) {
		resp, err := client.Get(fx.badCert.URL + "/v1/x")
		if err != nil {
			t.Fatal(err)
		}
		e := assertPathRefusal(t, resp, http.StatusBadGateway, "upstream_unreachable")
		if !strings.Contains(e.Message, "certificate") {
			t.Errorf("message %q does not say the certificate failed", e.Message)
		}
	})

	t.Run("a body passed through as it streams is counted", func(t *testing.T) {
		const path = "/v1/streamed"
		body := strings.Repeat("body of "+path+" ", 300)
		resp, err := client.Post(fx.origin.url(zoneAPI, path), "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if seen := fx.origin.requestsTo(path); resp.StatusCode != http.StatusOK || len(seen) != 1 || seen[0].Header.Get("X-Stamp") != "" {
			t.Fatalf("status %d, upstream saw %+v", resp.StatusCode, seen)
		}
		rec := g.audit.wait(t, "tenant", pathInspector.id, "path", path)
		if got := auditNumber(rec, "bytes_up"); got != float64(len(body)) {
			t.Errorf("audit bytes_up %v, want the %d body bytes sent", got, len(body))
		}
	})

	t.Run("every inner request is audited, the secret nowhere in the logs", func(t *testing.T) {
		rec := g.audit.wait(t, "tenant", pathInspector.id, "path", "/v1/echo", "scheme", "https")
		if rec["decision"] != "allow" || !ruleIs(rec["rule"], "api") {
			t.Errorf("audit line %v", rec)
		}
		g.audit.wait(t, "tenant", pathInspector.id, "path", "/v2/items", "decision", "deny")
		for name, text := range map[string]string{"audit log": g.audit.String(), "operational log": g.log.String()} {
			if strings.Contains(text, pathInjected) {
				t.Errorf("the injected secret appears in the gateway's %s", name)
			}
		}
	})
}

// assertTrailerScrubbed fetches a /v1/trailer URL of echoSecrets and
// checks that the echoed credential comes back scrubbed in the trailer.
func assertTrailerScrubbed(t *testing.T, client *http.Client, target string) {
	t.Helper()
	resp, err := client.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	body := pathBody(t, resp) // trailers arrive after the body
	trailer := resp.Trailer.Get("X-Echo-Trailer")
	if resp.StatusCode != http.StatusOK || strings.Contains(body, pathInjected) || trailer != "Bearer [REDACTED:secret]" {
		t.Errorf("status %d, body %q, trailer %q; want the trailer scrubbed", resp.StatusCode, body, trailer)
	}
}

// startInjectingPathGateway serves inspector a connector "api" on origin
// that injects pathInjected, not inspecting; extraInject adds to its
// inject section ("allow_plaintext: true").
func startInjectingPathGateway(t *testing.T, origin *pathUpstream, extraInject string) *pathGateway {
	t.Helper()
	return startPathGateway(t, "secrets:\n  api_token: { file: secrets/api_token }\n", map[string]string{
		"secrets/api_token": pathInjected,
		"connectors/api.yaml": fmt.Sprintf("name: api\nhosts: [%q]\nports: [%d]\ninject:\n  headers: { Authorization: \"Bearer ${secret:api_token}\" }\n  %s\n",
			zoneAPI, origin.port, extraInject),
		"tenants/inspector.yaml": pathInspector.yaml("connectors: [api]\n"),
	})
}

// Moved from e2e/inspect_test.go: a connector that opts into plain HTTP
// gets its credential injected and scrubbed from every part of the
// response, trailers included.
func TestPathPlaintextInjectionScrubsResponses(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, echoSecrets)
	g := startInjectingPathGateway(t, origin, "allow_plaintext: true")
	assertTrailerScrubbed(t, g.client(t, pathInspector, nil), origin.url(zoneAPI, "/v1/trailer"))
	seen := origin.requestsTo("/v1/trailer")
	if len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+pathInjected {
		t.Fatalf("upstream did not get the injected credential: %+v", seen)
	}

	// An upstream that switches protocols unasked would hand the sandbox
	// raw bytes no scrubbing sees.
	resp := g.request(t, http.MethodGet, pathInspector.auth(), origin.url(zoneAPI, "/v1/switch"))
	body := pathBody(t, resp)
	if strings.Contains(body, pathInjected) || strings.Contains(fmt.Sprint(resp.Header), pathInjected) {
		t.Errorf("the credential reached the client: %v %q", resp.Header, body)
	}
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Egressgw-Error") != "upstream_unreachable" {
		t.Errorf("unsolicited 101: status %d, error %q; want 502 upstream_unreachable", resp.StatusCode, resp.Header.Get("X-Egressgw-Error"))
	}
}

// Moved from e2e/inspect_test.go: a connector that injects is refused
// over plain HTTP, where the secret would travel in clear text.
func TestPathInjectingConnectorRefusesPlainHTTP(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	g := startInjectingPathGateway(t, origin, "")
	e := g.expectRefused(t, http.MethodGet, pathInspector.auth(), origin.url(zoneAPI, "/"), http.StatusForbidden, "destination_not_allowed", origin)
	if !strings.Contains(e.Message, "plain HTTP") {
		t.Errorf("message %q does not say why", e.Message)
	}
	e = g.expectRefusedCONNECT(t, pathInspector.auth(), origin.authority(zoneAPI), http.StatusForbidden, "destination_not_allowed", origin)
	if !strings.Contains(e.Message, "inspect") {
		t.Errorf("message %q does not say the connector needs inspect", e.Message)
	}
}

// Moved from e2e/inspect_test.go: the bytes of an inspected tunnel are
// counted once in egressgw_bytes_total, as those that crossed the tunnel,
// not again for each request inside it.
func TestPathInspectedBytesCountedOnce(t *testing.T) {
	t.Parallel()
	fx := startPathInspectFixture(t)
	client := fx.g.client(t, pathInspector, zoneRoots(t))
	resp, err := client.Get(fx.origin.url(zoneAPI, "/v1/counted"))
	if err != nil {
		t.Fatal(err)
	}
	if body := pathBody(t, resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	client.CloseIdleConnections() // ends the tunnel, which writes its line
	inner := fx.g.audit.wait(t, "tenant", pathInspector.id, "path", "/v1/counted")
	tunnel := fx.g.audit.wait(t, "tenant", pathInspector.id, "method", "CONNECT")
	if auditNumber(inner, "bytes_down") == 0 || auditNumber(tunnel, "bytes_down") == 0 {
		t.Fatalf("audit lines count no bytes: inner %v, tunnel %v", inner, tunnel)
	}
	for direction, field := range map[string]string{"egress": "bytes_up", "ingress": "bytes_down"} {
		want := auditNumber(tunnel, field)
		eventually(t, func() error {
			got, _ := fx.g.metric(t, "egressgw_bytes_total", map[string]string{"tenant": pathInspector.id, "direction": direction})
			if got != want {
				return fmt.Errorf("bytes_total{direction=%s} = %v, want the tunnel's %s %v", direction, got, field, want)
			}
			return nil
		})
	}
}

// ---- Upgrade through restricted rules ----

// lenientUpstream answers any Upgrade with 101 and then goes on reading
// HTTP/1.1 requests as if nothing had switched, the way a careless server
// behind an h2c or WebSocket endpoint does: a request sent after the 101
// is served with none of the gateway's method and path rules applied. It
// records every request line it reads.
type lenientUpstream struct {
	*pathTCPServer
	mu   sync.Mutex
	seen []string // "METHOD /path"
}

func startLenientUpstream(t *testing.T, useTLS bool) *lenientUpstream {
	u := &lenientUpstream{}
	var cert tls.Certificate
	if useTLS {
		cert = zoneCertificate(t)
	}
	u.pathTCPServer = startPathTCPServer(t, "127.0.0.1", func(c net.Conn) {
		if useTLS {
			// It offers h2 as most servers do: an upgrade must reach it
			// over HTTP/1.1 all the same, where the switch exists.
			c = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
		}
		_ = c.SetDeadline(time.Now().Add(pathGuard))
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			u.mu.Lock()
			u.seen = append(u.seen, req.Method+" "+req.URL.Path)
			u.mu.Unlock()
			if up := req.Header.Get("Upgrade"); up != "" {
				fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", up)
				continue
			}
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	return u
}

func (u *lenientUpstream) saw(line string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, s := range u.seen {
		if s == line {
			return true
		}
	}
	return false
}

// upgradeRequest is a raw Upgrade request for target to protocol (h2c or
// websocket); proxyAuth "" leaves Proxy-Authorization out (inside a
// tunnel).
func upgradeRequest(target, host, protocol, proxyAuth string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\n", target, host)
	if proxyAuth != "" {
		fmt.Fprintf(&b, "Proxy-Authorization: %s\r\n", proxyAuth)
	}
	if protocol == "h2c" {
		b.WriteString("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
	} else {
		b.WriteString("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	}
	return b.String()
}

// upgradeCase is one rule and what an upgrade through it must meet.
type upgradeCase struct {
	name    string
	host    string
	allowed bool
}

// upgradeConnectors are the connectors of both tests: one restricted
// connector without and one with upgrade: true, and one with no
// restriction.
func upgradeConnectors(port int, inspect bool) map[string]string {
	return map[string]string{
		"connectors/narrow.yaml":    fmt.Sprintf("name: narrow\nhosts: [%q]\nports: [%d]\nmethods: [GET]\npaths: [\"/upgrade\"]\ninspect: %v\n", zoneAPI, port, inspect),
		"connectors/narrow-up.yaml": fmt.Sprintf("name: narrow-up\nhosts: [%q]\nports: [%d]\nmethods: [GET]\npaths: [\"/upgrade\"]\ninspect: %v\nupgrade: true\n", zoneOther, port, inspect),
		"connectors/open.yaml":      fmt.Sprintf("name: open\nhosts: [%q]\nports: [%d]\ninspect: %v\n", zoneSub, port, inspect),
	}
}

var upgradeCases = []upgradeCase{
	{"restricted connector", zoneAPI, false},
	{"restricted connector with upgrade: true", zoneOther, true},
	{"connector with no restriction", zoneSub, true},
}

// checkUpgrade reads the answer to an upgrade through c. A refusal must
// be the gateway's 403 saying what to set, with nothing reaching the
// upstream; an allowed one switches, after which the bytes flow (and the
// lenient upstream serves DELETE /admin, which is what upgrade: true
// accepts).
func checkUpgrade(t *testing.T, c upgradeCase, conn net.Conn, br *bufio.Reader, origin *lenientUpstream, before pathReach, protocol string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	if !c.allowed {
		e := assertPathRefusal(t, resp, http.StatusForbidden, "destination_not_allowed")
		if !strings.Contains(e.Message, "upgrade: true") {
			t.Errorf("message %q does not say what to set", e.Message)
		}
		before.assertUnchanged(t)
		return
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || !strings.EqualFold(resp.Header.Get("Upgrade"), protocol) {
		t.Fatalf("got %d %v, want 101 to %s", resp.StatusCode, resp.Header, protocol)
	}
	fmt.Fprint(conn, "DELETE /admin HTTP/1.1\r\nHost: x\r\n\r\n")
	after, err := http.ReadResponse(br, nil)
	if err != nil || after.StatusCode != http.StatusOK {
		t.Fatalf("after the switch: %v, %v", after, err)
	}
	if !origin.saw("DELETE /admin") {
		t.Error("the bytes after the switch did not reach the upstream")
	}
}

// Moved from e2e/upgrade_rules_test.go: a plain-HTTP Upgrade (h2c,
// WebSocket) through a connector that restricts methods and paths is
// refused before it leaves unless the connector says upgrade: true; one
// with no restriction lets it through.
func TestPathUpgradeNeedsUpgradeTrueWhereRulesRestrict(t *testing.T) {
	t.Parallel()
	origin := startLenientUpstream(t, false)
	files := upgradeConnectors(origin.port, false)
	// Redaction cannot reach past the 101 either: refused unless
	// upgrade: true.
	files["connectors/redacting.yaml"] = fmt.Sprintf("name: redacting\nhosts: [%q]\nports: [%d]\nredact: { request: [pii] }\nupgrade: true\n", zoneSubSub, origin.port)
	files["tenants/acme.yaml"] = pathAcme.yaml("connectors: [narrow, narrow-up, open, redacting]\n")
	g := startPathGateway(t, "redaction:\n  profiles:\n    pii: { detectors: [email], action: mask }\n", files)
	cases := append(upgradeCases[:len(upgradeCases):len(upgradeCases)], upgradeCase{"redacting connector with upgrade: true", zoneSubSub, true})
	for _, protocol := range []string{"h2c", "websocket"} {
		for _, c := range cases {
			t.Run(protocol+"/"+c.name, func(t *testing.T) {
				before := pathSnapshotReach(origin)
				conn := g.dial(t)
				fmt.Fprint(conn, upgradeRequest("http://"+origin.authority(c.host)+"/upgrade", origin.authority(c.host), protocol, pathAcme.auth()))
				checkUpgrade(t, c, conn, bufio.NewReader(conn), origin, before, protocol)
			})
		}
	}
}

// Moved from e2e/upgrade_rules_test.go: the same inside inspected
// tunnels, where each request is decided on its own.
func TestPathInspectedUpgradeNeedsUpgradeTrue(t *testing.T) {
	t.Parallel()
	origin := startLenientUpstream(t, true)
	files := upgradeConnectors(origin.port, true)
	files["tenants/acme.yaml"] = pathAcme.yaml("connectors: [narrow, narrow-up, open]\n")
	g := startPathGateway(t, pathInspecting, pathInspectingFiles(t, files))
	for _, protocol := range []string{"h2c", "websocket"} {
		for _, c := range upgradeCases {
			t.Run(protocol+"/"+c.name, func(t *testing.T) {
				before := pathSnapshotReach(origin)
				tunnel := g.tunnel(t, pathAcme, origin.authority(c.host))
				conn := tls.Client(tunnel, &tls.Config{ServerName: c.host, RootCAs: zoneRoots(t)})
				fmt.Fprint(conn, upgradeRequest("/upgrade", origin.authority(c.host), protocol, ""))
				checkUpgrade(t, c, conn, bufio.NewReader(conn), origin, before, protocol)
			})
		}
	}
}

// upgradeEcho accepts an upgrade (the WebSocket shape, without framing:
// the bytes after the 101 only need to flow) and echoes whatever arrives.
var upgradeEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "want an upgrade", http.StatusBadRequest)
		return
	}
	acceptUpgrade(w, func(c net.Conn) { io.Copy(c, c) })
})

// acceptUpgrade answers 101 and hands the connection, what the client
// sent behind its request included, to serve.
func acceptUpgrade(w http.ResponseWriter, serve func(net.Conn)) {
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprint(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	rw.Flush()
	_ = conn.SetDeadline(time.Now().Add(pathGuard))
	serve(&pathBufferedConn{Conn: conn, reader: rw.Reader})
}

// Moved from e2e/websocket_test.go: a plain-HTTP request that upgrades is
// decided like any other, then its bytes flow both ways and are counted.
func TestPathUpgradePassesThrough(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, upgradeEcho)
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("ws", []string{zoneAPI}, origin.port)),
	})
	conn := g.dial(t)
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
		origin.url(zoneAPI, "/socket"), origin.authority(zoneAPI), pathAcme.auth())
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v; want 101", resp, err)
	}
	for _, msg := range []string{"hello", "through the gateway"} {
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	conn.Close()
	rec := g.audit.wait(t, "tenant", pathAcme.id, "path", "/socket")
	if rec["status"] != float64(101) || auditNumber(rec, "bytes_up") < 5 || auditNumber(rec, "bytes_down") < 5 {
		t.Errorf("audit line of the upgraded connection: %v", rec)
	}

	// A refused upgrade is refused like any request.
	g.expectRefused(t, http.MethodGet, pathAcme.auth(), origin.url(zoneOther, "/socket"), http.StatusForbidden, "destination_not_allowed", origin)
}

// Moved from e2e/websocket_test.go: a connector that injects credentials
// scrubs every response; frames after an upgrade could not be scrubbed,
// so the upgrade is refused before it reaches the upstream.
func TestPathUpgradeRefusedWhereResponsesAreScrubbed(t *testing.T) {
	t.Parallel()
	fx := startPathInspectFixture(t)
	tunnel := fx.g.tunnel(t, pathInspector, fx.origin.authority(zoneAPI))
	tlsConn := tls.Client(tunnel, &tls.Config{ServerName: zoneAPI, RootCAs: zoneRoots(t)})
	fmt.Fprintf(tlsConn, "GET /v1/socket HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", fx.origin.authority(zoneAPI))
	resp, err := http.ReadResponse(bufio.NewReader(tlsConn), nil)
	if err != nil {
		t.Fatal(err)
	}
	e := assertPathRefusal(t, resp, http.StatusForbidden, "destination_not_allowed")
	if !strings.Contains(e.Message, "upgrade") {
		t.Errorf("message %q does not say why", e.Message)
	}
	if len(fx.origin.requestsTo("/v1/socket")) != 0 {
		t.Error("the upgrade reached the upstream")
	}
}

// Moved from e2e/websocket_test.go: what the sandbox sends after an
// upgrade would leave unredacted, so a connector with request redaction
// refuses upgrades, on plain HTTP too.
func TestPathUpgradeRefusedWhereRequestsAreRedacted(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, upgradeEcho)
	g := startPathGateway(t, "redaction:\n  profiles:\n    pii: { detectors: [email], action: mask }\n", map[string]string{
		"connectors/crm.yaml": fmt.Sprintf("name: crm\nhosts: [%q]\nports: [%d]\nredact: { request: [pii] }\n", zoneAPI, origin.port),
		"tenants/acme.yaml":   pathAcme.yaml("connectors: [crm]\n"),
	})
	before := pathSnapshotReach(origin)
	resp, _ := g.exchange(t, http.MethodGet, []byte(fmt.Sprintf(
		"GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		origin.url(zoneAPI, "/ws"), origin.authority(zoneAPI), pathAcme.auth())))
	e := assertPathRefusal(t, resp, http.StatusForbidden, "destination_not_allowed")
	if !strings.Contains(e.Message, "upgrade") {
		t.Errorf("message %q does not say why", e.Message)
	}
	before.assertUnchanged(t)
}
