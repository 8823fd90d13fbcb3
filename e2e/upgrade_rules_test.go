package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// lenientUpstream answers any Upgrade with 101 and then goes on reading
// HTTP/1.1 requests as if nothing had switched, the way a careless server
// behind an h2c or WebSocket endpoint does: a request sent after the 101
// is served with none of the gateway's method and path rules applied. It
// records every request line it reads.
type lenientUpstream struct {
	*tcpServer
	mu   sync.Mutex
	seen []string // "METHOD /path"
}

func startLenientUpstream(t *testing.T, useTLS bool) *lenientUpstream {
	u := &lenientUpstream{}
	u.tcpServer = startTCPServer(t, "127.0.0.1", func(c net.Conn) {
		if useTLS {
			c = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{testPKI.leaf}})
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
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
// websocket); proxyAuth "" leaves Proxy-Authorization out (inside a tunnel).
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

// The connectors and rules of both tests: one restricted connector
// without and one with upgrade: true, and a rule with no restriction.
func upgradeConnectors(port int, inspect bool) configFiles {
	return configFiles{
		"connectors/narrow.yaml": yamlf(`
			name: narrow
			hosts: [%q]
			ports: [%d]
			methods: [GET]
			paths: ["/upgrade"]
			inspect: %v
		`, hostAPI, port, inspect),
		"connectors/narrow-up.yaml": yamlf(`
			name: narrow-up
			hosts: [%q]
			ports: [%d]
			methods: [GET]
			paths: ["/upgrade"]
			inspect: %v
			upgrade: true
		`, hostOther, port, inspect),
		"connectors/open.yaml": yamlf(`
			name: open
			hosts: [%q]
			ports: [%d]
			inspect: %v
		`, hostSub, port, inspect),
	}
}

var upgradeCases = []upgradeCase{
	{"restricted connector", hostAPI, false},
	{"restricted connector with upgrade: true", hostOther, true},
	{"connector with no restriction", hostSub, true},
}

// checkUpgrade reads the answer to an upgrade through c. A refusal must be
// the gateway's 403 saying what to set, with nothing reaching the
// upstream; an allowed one switches, after which the bytes flow (and the
// lenient upstream serves DELETE /admin, which is what upgrade: true
// accepts).
func checkUpgrade(t *testing.T, c upgradeCase, conn net.Conn, br *bufio.Reader, origin *lenientUpstream, before reachSnapshot, protocol string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	if !c.allowed {
		e := assertGatewayError(t, resp, http.StatusForbidden, "destination_not_allowed")
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

// TestUpgradeNeedsUpgradeTrueWhereRulesRestrict: a plain-HTTP Upgrade
// (h2c, WebSocket) through a connector that restricts methods and paths is
// refused before it leaves unless the connector says upgrade: true; one
// with no restriction lets it through as before.
func TestUpgradeNeedsUpgradeTrueWhereRulesRestrict(t *testing.T) {
	t.Parallel()
	origin := startLenientUpstream(t, false)
	files := upgradeConnectors(origin.port, false)
	files["gateway.yaml"] = gatewayYAML(yamlf(`
		redaction:
		  profiles:
		    pii: { detectors: [email], action: mask }
	`))
	// Redaction cannot reach past the 101 either: an upgrade through a
	// redacting connector is refused unless it says upgrade: true.
	files["connectors/redacting.yaml"] = yamlf(`
		name: redacting
		hosts: [%q]
		ports: [%d]
		redact: { request: [pii] }
		upgrade: true
	`, hostSubSub, origin.port)
	files["tenants/acme.yaml"] = tenantYAML(acme, "connectors: [narrow, narrow-up, open, redacting]\n")
	g := startGateway(t, files)
	cases := append(upgradeCases[:len(upgradeCases):len(upgradeCases)], upgradeCase{"redacting connector with upgrade: true", hostSubSub, true})
	// h2c, and the same inside inspected tunnels, are in
	// the proxy package's tests.
	for _, protocol := range []string{"websocket"} {
		for _, c := range cases {
			t.Run(protocol+"/"+c.name, func(t *testing.T) {
				before := snapshotReach(origin)
				conn := g.dial(t)
				fmt.Fprint(conn, upgradeRequest("http://"+origin.authority(c.host)+"/upgrade", origin.authority(c.host), protocol, acme.header()))
				checkUpgrade(t, c, conn, bufio.NewReader(conn), origin, before, protocol)
			})
		}
	}
}
