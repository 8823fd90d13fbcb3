package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Moved from e2e/core_test.go.
func TestPathIdleTunnelClosed(t *testing.T) {
	t.Parallel()
	echoServer := startPathTCPServer(t, "127.0.0.1", echoConn)
	g := startPathGateway(t, "limits:\n  idle_timeout: 1s\n", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("echo", []string{zoneAPI}, echoServer.port)),
	})
	tunnel := g.tunnel(t, pathAcme, echoServer.authority(zoneAPI))
	pingThroughTunnel(t, tunnel)

	const bound = 10 * time.Second
	_ = tunnel.SetReadDeadline(time.Now().Add(bound))
	_, err := tunnel.Read(make([]byte, 1))
	var netErr net.Error
	switch {
	case err == nil:
		t.Fatal("read from an idle tunnel returned data; the echo server sends nothing unasked")
	case errors.As(err, &netErr) && netErr.Timeout():
		t.Fatalf("idle tunnel still open after %v; idle_timeout is 1s", bound)
	}
}

// Moved from e2e/core_test.go.
func TestPathMaxConnections(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	echoServer := startPathTCPServer(t, "127.0.0.1", echoConn)
	g := startPathGateway(t, "limits:\n  max_connections: 2\n", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI}, origin.port, echoServer.port)),
	})
	var held []net.Conn
	for range 2 {
		tunnel := g.tunnel(t, pathAcme, echoServer.authority(zoneAPI))
		pingThroughTunnel(t, tunnel) // the gateway has surely accepted and counted it
		held = append(held, tunnel)
	}

	if served := tryThirdConnection(t, g, origin.url(zoneAPI, "/third")); served {
		t.Errorf("a third connection was served while max_connections: 2 were held")
	}

	held[0].Close()
	client := g.client(t, pathAcme, nil)
	eventually(t, func() error {
		resp, err := client.Get(origin.url(zoneAPI, "/after-release"))
		if err != nil {
			return fmt.Errorf("request after releasing a connection: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("request after releasing a connection: status %d", resp.StatusCode)
		}
		return nil
	})
}

// tryThirdConnection sends a request as acme on a new connection and
// reports whether it was served. Being refused at connect, closed, or
// answered with an error are all fine; hanging unanswered is not, because
// a client cannot tell that from a dead gateway.
func tryThirdConnection(t *testing.T, g *pathGateway, target string) (served bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Proxy-Authorization", pathAcme.auth())
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := req.WriteProxy(conn); err != nil {
		return false // closed by the gateway before we finished writing
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	var netErr net.Error
	switch {
	case errors.As(err, &netErr) && netErr.Timeout():
		t.Fatalf("a connection over max_connections was neither refused nor closed within 5s")
	case err != nil:
		return false // closed: refused
	}
	resp.Body.Close()
	t.Logf("connection over the limit answered with status %d", resp.StatusCode)
	return resp.StatusCode == http.StatusOK
}

// Moved from e2e/report_network_test.go: report mode lets a host the
// tenant has no rule for through, CONNECT included, but the address the
// name resolves to is still checked. The tenant below has no rule for
// zoneRebind or zoneMetadata, so only the address check can refuse them:
// were it skipped for report-mode tunnels, the victim would be reached.
func TestPathReportModeKeepsNetworkSafetyForTunnels(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	victim := startPathTCPServer(t, zoneVictim, echoConn)
	g := startPathGateway(t, "", map[string]string{
		"tenants/lenient.yaml": pathLenient.yaml("mode: report\n" + pathRule("api", []string{zoneAPI}, origin.port)),
	})

	t.Run("report mode relaxes CONNECT to a host without a rule", func(t *testing.T) {
		// The same kind of target on an address the gateway may dial goes
		// through: the refusals below are the address check's alone.
		tunnel := g.tunnel(t, pathLenient, startPathTCPServer(t, "127.0.0.1", echoConn).authority(zoneOther))
		pingThroughTunnel(t, tunnel)
		tunnel.Close() // a tunnel's audit line is written when it ends
		g.audit.wait(t, "tenant", pathLenient.id, "host", zoneOther, "decision", "report")
	})
	for _, authority := range []string{
		victim.authority(zoneRebind), // resolves to 127.0.0.2
		victim.authority(zoneVictim),
		victim.authority("::ffff:" + zoneVictim),
		net.JoinHostPort(zoneMetadata, "80"), // resolves to 169.254.169.254; refused before any dial
	} {
		t.Run("CONNECT "+authority, func(t *testing.T) {
			g.expectRefusedCONNECT(t, pathLenient.auth(), authority, http.StatusForbidden, "destination_ip_denied", victim)
		})
		t.Run("GET "+authority, func(t *testing.T) {
			g.expectRefused(t, http.MethodGet, pathLenient.auth(), "http://"+authority+"/", http.StatusForbidden, "destination_ip_denied", victim)
		})
	}
}

// pipelinedConn sends a CONNECT head in the same write as the client's
// first bytes, as a client that does not wait for the 200 does, and reads
// the gateway's answer before handing the tunnel's bytes on.
type pipelinedConn struct {
	net.Conn
	head []byte // sent with the first Write, then nil

	once    sync.Once
	reader  *bufio.Reader
	readErr error
}

func newPipelinedConn(t *testing.T, g *pathGateway, c pathTenant, authority string) *pipelinedConn {
	t.Helper()
	conn := g.dial(t)
	head := fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", authority, authority, c.auth())
	return &pipelinedConn{Conn: conn, head: []byte(head)}
}

func (c *pipelinedConn) Write(p []byte) (int, error) {
	if c.head == nil {
		return c.Conn.Write(p)
	}
	n, err := c.Conn.Write(append(c.head, p...)) // one write: one segment
	n -= len(c.head)
	c.head = nil
	return max(n, 0), err
}

func (c *pipelinedConn) Read(p []byte) (int, error) {
	c.once.Do(func() {
		c.reader = bufio.NewReader(c.Conn)
		resp, err := http.ReadResponse(c.reader, &http.Request{Method: http.MethodConnect})
		switch {
		case err != nil:
			c.readErr = fmt.Errorf("reading the CONNECT's answer: %w", err)
		case resp.StatusCode != http.StatusOK:
			c.readErr = fmt.Errorf("CONNECT answered %d", resp.StatusCode)
		}
	})
	if c.readErr != nil {
		return 0, c.readErr
	}
	return c.reader.Read(p)
}

// byteCounter is a raw TCP upstream that counts what it receives and
// answers nothing: the witness that a closed tunnel sent it no byte.
type byteCounter struct {
	*pathTCPServer
	received atomic.Int64
}

func startByteCounter(t *testing.T) *byteCounter {
	b := &byteCounter{}
	b.pathTCPServer = startPathTCPServer(t, "127.0.0.1", func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			b.received.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	return b
}

// Moved from e2e/tunnel_bytes_test.go: what a client writes in the same
// segment as its CONNECT reaches the upstream, to a host name (through
// the first-bytes check) and to an IP literal alike.
func TestPathBytesBehindConnectAreDelivered(t *testing.T) {
	t.Parallel()
	echoServer := startPathTCPServer(t, "127.0.0.1", echoConn)
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("echo", []string{zoneAPI, "127.0.0.1"}, echoServer.port)),
	})
	for _, host := range []string{zoneAPI, "127.0.0.1"} {
		t.Run(host, func(t *testing.T) {
			conn := newPipelinedConn(t, g, pathAcme, echoServer.authority(host))
			const payload = "sent with the CONNECT head"
			if _, err := io.WriteString(conn, payload); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(payload))
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != payload {
				t.Fatalf("echo of the bytes behind the CONNECT: %q, %v", got, err)
			}
			pingThroughTunnel(t, conn) // and the tunnel goes on as usual
			conn.Close()
			// Counted once each way: neither the peek at the first bytes
			// nor their replay counts them again.
			rec := g.audit.wait(t, "tenant", pathAcme.id, "method", http.MethodConnect, "host", host)
			if want := float64(len(payload) + len("ping")); auditNumber(rec, "bytes_up") != want || auditNumber(rec, "bytes_down") != want {
				t.Errorf("audit bytes_up %v, bytes_down %v; want %v each", rec["bytes_up"], rec["bytes_down"], want)
			}
		})
	}
}

// Moved from e2e/tunnel_bytes_test.go: a ClientHello sent with the
// CONNECT head completes its handshake, with the upstream through an
// opaque tunnel (the first-bytes check reads it from what came with the
// head) and with the gateway through an inspected one.
func TestPathTLSBehindConnect(t *testing.T) {
	t.Parallel()
	t.Run("inspected", func(t *testing.T) {
		fx := startPathInspectFixture(t)
		conn := newPipelinedConn(t, fx.g, pathInspector, fx.origin.authority(zoneAPI))
		status, body := getOverTLS(t, conn, zoneAPI, fx.origin.authority(zoneAPI), "/v1/early-bytes")
		if status != http.StatusOK || !strings.Contains(body, "GET /v1/early-bytes") {
			t.Fatalf("inspected GET after a pipelined ClientHello: %d %q", status, body)
		}
	})
	t.Run("opaque", func(t *testing.T) {
		origin := startPathUpstream(t, "127.0.0.1", true, nil)
		g := startPathGateway(t, "", map[string]string{
			"tenants/acme.yaml": pathAcme.yaml(pathRule("tls", []string{zoneAPI}, origin.port)),
		})
		conn := newPipelinedConn(t, g, pathAcme, origin.authority(zoneAPI))
		status, body := getOverTLS(t, conn, zoneAPI, origin.authority(zoneAPI), "/opaque")
		if status != http.StatusOK || body != pathGreeting("/opaque") {
			t.Fatalf("GET through an opaque tunnel after a pipelined ClientHello: %d %q", status, body)
		}
	})
}

// getOverTLS speaks TLS to serverName over conn, trusting the zone
// certificate, and sends GET path to authority.
func getOverTLS(t *testing.T, conn net.Conn, serverName, authority, path string) (int, string) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(pathGuard))
	tlsConn := tls.Client(conn, &tls.Config{ServerName: serverName, RootCAs: zoneRoots(t)})
	if err := tlsConn.Handshake(); err != nil {
		t.Fatalf("TLS handshake through the tunnel: %v", err)
	}
	fmt.Fprintf(tlsConn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, authority)
	resp, err := http.ReadResponse(bufio.NewReader(tlsConn), nil)
	if err != nil {
		t.Fatalf("response through the tunnel: %v", err)
	}
	return resp.StatusCode, pathBody(t, resp)
}

// Moved from e2e/tunnel_bytes_test.go: a TLS client in an uninspected
// tunnel must ask for the host its CONNECT named; a handshake for another
// one (domain fronting) is cut before a byte of it reaches the upstream,
// and audited as tunnel_sni_mismatch.
func TestPathOpaqueTunnelServerNameMustMatch(t *testing.T) {
	t.Parallel()
	counter := startByteCounter(t)
	origin := startPathUpstream(t, "127.0.0.1", true, nil)
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("both", []string{zoneAPI, "127.0.0.1"}, counter.port, origin.port)),
	})

	refused := []struct {
		name  string
		open  func(t *testing.T) net.Conn
		asked string
	}{
		{"another host", func(t *testing.T) net.Conn { return g.tunnel(t, pathAcme, counter.authority(zoneAPI)) }, zoneOther},
		{"another host, hello sent with the CONNECT", func(t *testing.T) net.Conn {
			return newPipelinedConn(t, g, pathAcme, counter.authority(zoneAPI))
		}, "evil.example"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			conn := c.open(t)
			_ = conn.SetDeadline(time.Now().Add(pathGuard))
			err := tls.Client(conn, &tls.Config{ServerName: c.asked, InsecureSkipVerify: true}).Handshake()
			if err == nil {
				t.Fatal("the handshake for another host completed")
			}
			var rec map[string]any
			eventually(t, func() error {
				for _, r := range g.audit.records() {
					if r["code"] == "tunnel_sni_mismatch" && strings.Contains(fmt.Sprint(r["reason"]), c.asked) {
						rec = r
						return nil
					}
				}
				return fmt.Errorf("no tunnel_sni_mismatch audit line naming %q", c.asked)
			})
			if rec["decision"] != "deny" || rec["status"] != float64(http.StatusOK) || rec["host"] != zoneAPI || rec["bytes_up"] != float64(0) {
				t.Errorf("audit line of the closed tunnel: %v", rec)
			}
		})
	}
	if n := counter.received.Load(); n != 0 {
		t.Errorf("the upstream received %d bytes of handshakes the gateway should have stopped", n)
	}
	eventually(t, func() error {
		if n, _ := g.metric(t, "egressgw_requests_total", map[string]string{"decision": "deny", "code": "tunnel_sni_mismatch"}); n < 2 {
			return fmt.Errorf("requests_total{code=tunnel_sni_mismatch} = %v, want 2", n)
		}
		return nil
	})

	allowed := []struct {
		name, authority string
		cfg             *tls.Config
	}{
		{"the CONNECT's host", origin.authority(zoneAPI), &tls.Config{ServerName: zoneAPI, RootCAs: zoneRoots(t)}},
		{"no server name", origin.authority(zoneAPI), &tls.Config{InsecureSkipVerify: true}},
		{"an IP literal CONNECT names no host to compare", origin.authority("127.0.0.1"), &tls.Config{ServerName: zoneOther, RootCAs: zoneRoots(t)}},
	}
	for _, c := range allowed {
		t.Run(c.name, func(t *testing.T) {
			conn := g.tunnel(t, pathAcme, c.authority)
			_ = conn.SetDeadline(time.Now().Add(pathGuard))
			tlsConn := tls.Client(conn, c.cfg)
			fmt.Fprintf(tlsConn, "GET /sni HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", zoneAPI)
			resp, err := http.ReadResponse(bufio.NewReader(tlsConn), nil)
			if err != nil {
				t.Fatalf("through the tunnel: %v", err)
			}
			if body := pathBody(t, resp); resp.StatusCode != http.StatusOK || body != pathGreeting("/sni") {
				t.Errorf("got %d %q", resp.StatusCode, body)
			}
		})
	}
}

// Moved from e2e/tunnel_bytes_test.go: the first-bytes check waits for
// the client without holding back the upstream, so a protocol where the
// server speaks first (SSH, SMTP) works through a tunnel to a host name.
func TestPathTunnelServerSpeaksFirst(t *testing.T) {
	t.Parallel()
	const banner = "SSH-2.0-egressgw-test\r\n"
	server := startPathTCPServer(t, "127.0.0.1", func(c net.Conn) {
		io.WriteString(c, banner)
		echoConn(c)
	})
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("ssh", []string{zoneAPI}, server.port)),
	})
	conn := g.tunnel(t, pathAcme, server.authority(zoneAPI))
	got := make([]byte, len(banner))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != banner {
		t.Fatalf("the server's greeting before the client sent anything: %q, %v", got, err)
	}
	pingThroughTunnel(t, conn)
}

// A shaped tenant's first bytes (too many for the shaper's burst), sent
// behind its CONNECT or after the 200, cross at the tenant's egress rate,
// are paid to its shaper once and counted once in bytes_up; and while
// they are paced the tunnel is active, not idle, however long pacing them
// takes, even with an upstream that answers nothing.
func TestPathShapedFirstBytesArePaidOnceAndKeepTheTunnelActive(t *testing.T) {
	t.Parallel()
	const (
		rate = 1 << 10 // bytes a second: the smallest egress limit
		size = 3000    // about three seconds at rate, three idle timeouts
	)
	for _, tc := range []struct {
		name string
		open func(t *testing.T, g *pathGateway, authority string) net.Conn
	}{
		{"behind the CONNECT", func(t *testing.T, g *pathGateway, authority string) net.Conn {
			return newPipelinedConn(t, g, pathAcme, authority)
		}},
		{"after the 200", func(t *testing.T, g *pathGateway, authority string) net.Conn {
			return g.tunnel(t, pathAcme, authority)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			counter := startByteCounter(t)
			g := startPathGateway(t, "limits:\n  idle_timeout: 1s\n", map[string]string{
				"tenants/acme.yaml": pathAcme.yaml("quota: { bandwidth: { egress: 1KiB } }\n" + pathRule("sink", []string{zoneAPI}, counter.port)),
			})
			payload := bytes.Repeat([]byte{0x01, 0xfe, 0x7f, 0x00}, size/4) // neither TLS nor a request line
			conn := tc.open(t, g, counter.authority(zoneAPI))
			minuteBefore := time.Now().Unix() / 60
			start := time.Now()
			if _, err := conn.Write(payload); err != nil {
				t.Fatal(err)
			}
			eventually(t, func() error {
				n := counter.received.Load()
				if n == int64(len(payload)) {
					return nil
				}
				for _, rec := range g.audit.records() {
					if auditMatches(rec, "tenant", pathAcme.id, "method", http.MethodConnect) {
						t.Fatalf("the tunnel ended (%v) after the upstream received %d of the %d first bytes", rec, n, len(payload))
					}
				}
				return fmt.Errorf("the upstream received %d of the %d first bytes", n, len(payload))
			})
			elapsed := time.Since(start)
			sameMinute := time.Now().Unix()/60 == minuteBefore
			conn.Close()

			rec := g.audit.wait(t, "tenant", pathAcme.id, "method", http.MethodConnect)
			if auditNumber(rec, "bytes_up") != float64(len(payload)) || rec["code"] != "ok" {
				t.Errorf("audit line %v; want code ok and bytes_up the %d bytes sent", rec, len(payload))
			}
			// The shaper's burst (a tenth of a second's worth) goes at once;
			// the rest at the rate, within the tolerance the bandwidth tests
			// allow.
			if least := time.Duration(float64(len(payload)-rate/10) / rate * 0.85 * float64(time.Second)); elapsed < least {
				t.Errorf("%d bytes crossed in %v, faster than %d bytes a second allows (%v at least)", len(payload), elapsed, rate, least)
			}
			if paid := g.bandwidth.Lookup(bandwidthKey(pathAcme.id, "egress")).BytesThisMinute(); sameMinute && paid != int64(len(payload)) {
				t.Errorf("the egress shaper was paid for %d bytes, want the %d sent, once", paid, len(payload))
			}
		})
	}
}
