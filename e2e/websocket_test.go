package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// acceptUpgrade answers an Upgrade handshake (the WebSocket shape, without
// framing: the tests only need the bytes after the 101 to flow) and hands
// over the connection, which lives for at most lifetime.
func acceptUpgrade(w http.ResponseWriter, lifetime time.Duration) (net.Conn, *bufio.ReadWriter, bool) {
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, false
	}
	fmt.Fprint(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	rw.Flush()
	_ = conn.SetDeadline(time.Now().Add(lifetime))
	return conn, rw, true
}

// upgradeEcho accepts an upgrade and echoes whatever arrives.
var upgradeEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "want an upgrade", http.StatusBadRequest)
		return
	}
	conn, rw, ok := acceptUpgrade(w, 10*time.Second)
	if !ok {
		return
	}
	defer conn.Close()
	io.Copy(conn, rw)
})

// upgrade opens a connection to the gateway and asks, as acme, to switch
// protocols at origin's path; it returns the connection once the 101 came.
func (g *gateway) upgrade(t *testing.T, origin *upstream, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn := g.dial(t)
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
		origin.url(hostAPI, path), origin.authority(hostAPI), acme.header())
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade at %s: %v, %v; want 101", path, resp, err)
	}
	return conn, br
}

// TestUpgradePassesThrough: a plain-HTTP request that upgrades is decided
// like any other, then its bytes flow both ways and are counted.
func TestUpgradePassesThrough(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", upgradeEcho)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("ws", []string{hostAPI}, origin.port)),
	})
	conn, br := g.upgrade(t, origin, "/socket")
	_ = conn.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
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
	rec := g.waitAudit(t, auditWith("tenant", acme.tenant, "path", "/socket"))
	if rec["status"] != float64(101) || auditNumber(rec, "bytes_up") < 5 || auditNumber(rec, "bytes_down") < 5 {
		t.Errorf("audit line of the upgraded connection: %v", rec)
	}

	// A refused upgrade is refused like any request.
	g.expectRefused(t, http.MethodGet, acme.header(), origin.url(hostOther, "/socket"), http.StatusForbidden, "destination_not_allowed", origin)
}

// TestUpgradeRefusedWhereResponsesAreScrubbed: a connector that injects
// credentials scrubs every response; frames after an upgrade could not be
// scrubbed, so the upgrade is refused before it reaches the upstream.
func TestUpgradeRefusedWhereResponsesAreScrubbed(t *testing.T) {
	t.Parallel()
	fx := startInspectFixture(t)
	tunnel := fx.g.tunnel(t, inspector, fx.origin.authority(hostAPI))
	tlsConn := tls.Client(tunnel, &tls.Config{ServerName: hostAPI, RootCAs: fx.caPool})
	fmt.Fprintf(tlsConn, "GET /v1/socket HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", fx.origin.authority(hostAPI))
	resp, err := http.ReadResponse(bufio.NewReader(tlsConn), nil)
	if err != nil {
		t.Fatal(err)
	}
	e := assertGatewayError(t, resp, http.StatusForbidden, "destination_not_allowed")
	if !strings.Contains(e.Message, "upgrade") {
		t.Errorf("message %q does not say why", e.Message)
	}
	if len(fx.origin.requestsTo("/v1/socket")) != 0 {
		t.Error("the upgrade reached the upstream")
	}
}

// An upgraded connection is idle only when neither side sends: a client
// that keeps talking to an upstream that only listens keeps it open past
// idle_timeout, as a tunnel is.
func TestUpgradeOneSidedTrafficIsNotIdle(t *testing.T) {
	t.Parallel()
	listener := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, ok := acceptUpgrade(w, 30*time.Second)
		if !ok {
			return
		}
		defer conn.Close()
		// Listen silently until the client says it is done, then answer.
		for {
			line, err := rw.ReadString('\n')
			if err != nil {
				return
			}
			if line == "done\n" {
				fmt.Fprint(rw, "bye\n")
				rw.Flush()
				return
			}
		}
	})
	origin := startHTTPUpstream(t, "127.0.0.1", listener)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			limits:
			  idle_timeout: 1s
		`)),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("ws", []string{hostAPI}, origin.port)),
	})
	conn, br := g.upgrade(t, origin, "/listen")
	// Talk for three idle timeouts while the upstream says nothing.
	_ = conn.SetDeadline(time.Now().Add(scaled(20 * time.Second)))
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if _, err := io.WriteString(conn, "still here\n"); err != nil {
			t.Fatalf("the gateway closed a connection the client kept busy: %v", err)
		}
	}
	if _, err := io.WriteString(conn, "done\n"); err != nil {
		t.Fatal(err)
	}
	if answer, err := br.ReadString('\n'); err != nil || answer != "bye\n" {
		t.Fatalf("after %v of one-sided traffic: read %q, %v; want the upstream's answer", 3*time.Second, answer, err)
	}

	// When neither side sends, the connection is idle and is closed.
	quiet, qr := g.upgrade(t, origin, "/quiet")
	_ = quiet.SetDeadline(time.Now().Add(scaled(15 * time.Second)))
	if n, err := qr.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a silent upgraded connection: read %d, %v; want the gateway to close it after idle_timeout", n, err)
	}
}
