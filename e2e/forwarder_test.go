package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startInspecting starts a gateway that can inspect tunnels, on a config
// directory of its own (with the inspection CA in ca/), and returns it
// with the directory and the pool clients trust the gateway's leaves by.
func startInspecting(t *testing.T, files configFiles) (*gateway, string, *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	if res := egressgw(t, "ca", "init", "--out", filepath.Join(dir, "ca")); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(caPEM)
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, path, content)
	}
	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")
	return g, dir, caPool
}

// TestReloadClosesRevokedInspectedUpgrades: an upgraded connection inside
// an inspected tunnel is relayed, held and revoked as a plain request's
// is: a reload that takes upgrade: true away closes it, though the tunnel
// it came through is still allowed, and its audit line has the 101 and
// the bytes that crossed it.
func TestReloadClosesRevokedInspectedUpgrades(t *testing.T) {
	t.Parallel()
	origin := startTLSUpstream(t, "127.0.0.1", upgradeEcho)
	connector := func(upgrade bool) string {
		return yamlf(`
			name: ws
			hosts: [%q]
			ports: [%d]
			methods: [GET]
			paths: ["/ws"]
			inspect: true
			upgrade: %v
		`, hostAPI, origin.port, upgrade)
	}
	g, dir, caPool := startInspecting(t, configFiles{
		"gateway.yaml":       inspectingGatewayYAML(""),
		"connectors/ws.yaml": connector(true),
		"tenants/acme.yaml":  tenantYAML(acme, "connectors: [ws]\n"),
	})
	tunnel := g.tunnel(t, acme, origin.authority(hostAPI))
	t.Cleanup(func() { tunnel.Close() })
	conn := tls.Client(tunnel, &tls.Config{ServerName: hostAPI, RootCAs: caPool})
	fmt.Fprint(conn, upgradeRequest("/ws", origin.authority(hostAPI), "websocket", ""))
	reader := bufio.NewReader(conn)
	_ = conn.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
	resp, err := http.ReadResponse(reader, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade inside the tunnel: %v, %v; want 101", resp, err)
	}
	_ = conn.SetDeadline(time.Time{})
	echoLine(t, conn, reader, "before the reload")

	writeFile(t, filepath.Join(dir, "connectors", "ws.yaml"), connector(false))
	expectClosedWithin(t, "upgraded connection inside the tunnel", reader)
	rec := g.waitAudit(t, auditWith("tenant", acme.tenant, "path", "/ws", "code", "revoked"))
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "reload") || auditNumber(rec, "status") != http.StatusSwitchingProtocols ||
		auditNumber(rec, "bytes_up") == 0 || auditNumber(rec, "bytes_down") == 0 {
		t.Errorf("audit line of the revoked upgrade does not say why: %v", rec)
	}
}

// TestInspectedResponseStreamsAsItArrives: inside an inspected tunnel, as
// for a plain request, what the upstream has sent of a body reaches the
// client before the rest exists.
func TestInspectedResponseStreamsAsItArrives(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	const first, rest = "the first part\n", "and the rest\n"
	origin := startTLSUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(first)+len(rest)))
		io.WriteString(w, first)
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, rest)
	}))
	g, _, caPool := startInspecting(t, configFiles{
		"gateway.yaml": inspectingGatewayYAML(""),
		"connectors/api.yaml": yamlf(`
			name: api
			hosts: [%q]
			ports: [%d]
			inspect: true
		`, hostAPI, origin.port),
		"tenants/acme.yaml": tenantYAML(acme, "connectors: [api]\n"),
	})
	tunnel := g.tunnel(t, acme, origin.authority(hostAPI))
	t.Cleanup(func() { tunnel.Close() })
	conn := tls.Client(tunnel, &tls.Config{ServerName: hostAPI, RootCAs: caPool})
	fmt.Fprintf(conn, "GET /slow HTTP/1.1\r\nHost: %s\r\n\r\n", origin.authority(hostAPI))
	reader := bufio.NewReader(conn)
	_ = conn.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
	resp, err := http.ReadResponse(reader, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET inside the tunnel: %v, %v; want 200", resp, err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != first {
		t.Fatalf("the first part of the body did not arrive before the rest was sent: %q, %v", line, err)
	}
}

// TestForwardedRequestsGetNoUserAgentOfTheGateways: a request sent
// without a User-Agent reaches the upstream without one, plain or inside
// an inspected tunnel: the gateway adds none of its own.
func TestForwardedRequestsGetNoUserAgentOfTheGateways(t *testing.T) {
	t.Parallel()
	plainOrigin := startHTTPUpstream(t, "127.0.0.1", nil)
	tlsOrigin := startTLSUpstream(t, "127.0.0.1", nil)
	g, _, caPool := startInspecting(t, configFiles{
		"gateway.yaml": inspectingGatewayYAML(""),
		"connectors/api.yaml": yamlf(`
			name: api
			hosts: [%q]
			ports: [%d]
			inspect: true
		`, hostAPI, tlsOrigin.port),
		"tenants/acme.yaml": tenantYAML(acme, "connectors: [api]\n"+allowRule("plain", []string{hostAPI}, plainOrigin.port)),
	})

	conn := g.dial(t)
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n",
		plainOrigin.url(hostAPI, "/plain"), plainOrigin.authority(hostAPI), acme.header())
	readOK(t, conn, "plain")

	tunnel := g.tunnel(t, acme, tlsOrigin.authority(hostAPI))
	t.Cleanup(func() { tunnel.Close() })
	inner := tls.Client(tunnel, &tls.Config{ServerName: hostAPI, RootCAs: caPool})
	fmt.Fprintf(inner, "GET /inner HTTP/1.1\r\nHost: %s\r\n\r\n", tlsOrigin.authority(hostAPI))
	readOK(t, inner, "inner")

	for what, seen := range map[string][]seenRequest{"plain": plainOrigin.requestsTo("/plain"), "inner": tlsOrigin.requestsTo("/inner")} {
		if len(seen) != 1 {
			t.Fatalf("%s: the upstream saw %d requests, want 1", what, len(seen))
		}
		if ua, ok := seen[0].Header["User-Agent"]; ok {
			t.Errorf("%s: the upstream got User-Agent %q; the client sent none", what, ua)
		}
	}
}

// readOK reads one response from conn and fails unless it is a 200.
func readOK(t *testing.T, conn interface {
	io.Reader
	SetDeadline(time.Time) error
}, what string) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
	defer conn.SetDeadline(time.Time{})
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %v, %v; want 200", what, resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
}

// TestClientConnectionCloseKeepsUpstreamConnection: a client's
// Connection: close is about its own connection to the gateway; the
// gateway's connection to the upstream stays open for the next request.
func TestClientConnectionCloseKeepsUpstreamConnection(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("plain", []string{hostAPI}, origin.port)),
	})
	const requests = 3
	for range requests {
		conn := g.dial(t)
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nConnection: close\r\n\r\n",
			origin.url(hostAPI, "/"), origin.authority(hostAPI), acme.header())
		readOK(t, conn, "GET with Connection: close")
		conn.Close()
	}
	// One connection, or two should a request come before the pool got
	// the first one back; one each means none was reused.
	if n := origin.conns.Load(); n >= requests {
		t.Errorf("the upstream saw %d connections for %d requests; want its connection reused", n, requests)
	}
}

// TestUndecodableResponseSaysWhy: a plain request's response that the
// connector must inspect (here, redact) but whose encoding the gateway
// cannot decode is refused with a message that names the encoding, as
// inside an inspected tunnel, and nothing of it reaches the client.
func TestUndecodableResponseSaysWhy(t *testing.T) {
	t.Parallel()
	const secret = "alice@example.com"
	origin := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "br")
		io.WriteString(w, secret)
	}))
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			redaction:
			  profiles:
			    pii: { detectors: [email], action: mask }
		`)),
		"connectors/api.yaml": yamlf(`
			name: api
			hosts: [%q]
			ports: [%d]
			redact: { response: [pii] }
		`, hostAPI, origin.port),
		"tenants/acme.yaml": tenantYAML(acme, "connectors: [api]\n"),
	})
	resp := g.get(t, acme.header(), origin.url(hostAPI, "/compressed"))
	e := assertGatewayError(t, resp, http.StatusBadGateway, "upstream_unreachable")
	if !strings.Contains(e.Message, "br encoding") {
		t.Errorf("message %q does not name the encoding", e.Message)
	}
	if strings.Contains(e.Message, secret) {
		t.Errorf("message %q carries the response", e.Message)
	}
}
