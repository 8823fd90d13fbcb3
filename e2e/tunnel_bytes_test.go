package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
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

func newPipelinedConn(t *testing.T, g *gateway, c credentials, authority string) *pipelinedConn {
	t.Helper()
	conn := g.dial(t)
	head := fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", authority, authority, c.header())
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
	*tcpServer
	received atomic.Int64
}

func startByteCounter(t *testing.T) *byteCounter {
	b := &byteCounter{}
	b.tcpServer = startTCPServer(t, "127.0.0.1", func(c net.Conn) {
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

// TestTLSBehindConnect: a ClientHello sent with the CONNECT head completes
// its handshake with the gateway through an inspected tunnel.
func TestTLSBehindConnect(t *testing.T) {
	t.Parallel()
	fx := startInspectFixture(t)
	t.Run("inspected", func(t *testing.T) {
		conn := newPipelinedConn(t, fx.g, inspector, fx.origin.authority(hostAPI))
		status, body := getOverTLS(t, conn, hostAPI, fx.origin.authority(hostAPI), fx.caPool, "/v1/early-bytes")
		if status != http.StatusOK || !strings.Contains(body, "GET /v1/early-bytes") {
			t.Fatalf("inspected GET after a pipelined ClientHello: %d %q", status, body)
		}
	})
	// The opaque tunnel, and bytes other than a ClientHello, are in
	// the proxy package's tests.
}

// getOverTLS speaks TLS to serverName over conn and sends GET path to
// authority.
func getOverTLS(t *testing.T, conn net.Conn, serverName, authority string, roots *x509.CertPool, path string) (int, string) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(scaled(10 * time.Second)))
	tlsConn := tls.Client(conn, &tls.Config{ServerName: serverName, RootCAs: roots})
	if err := tlsConn.Handshake(); err != nil {
		t.Fatalf("TLS handshake through the tunnel: %v", err)
	}
	fmt.Fprintf(tlsConn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, authority)
	resp, err := http.ReadResponse(bufio.NewReader(tlsConn), nil)
	if err != nil {
		t.Fatalf("response through the tunnel: %v", err)
	}
	return resp.StatusCode, readBody(t, resp)
}

// TestOpaqueTunnelServerNameMustMatch: a TLS client in an uninspected
// tunnel must ask for the host its CONNECT named; a handshake for another
// one (domain fronting) is cut before a byte of it reaches the upstream,
// and audited as tunnel_sni_mismatch.
func TestOpaqueTunnelServerNameMustMatch(t *testing.T) {
	t.Parallel()
	counter := startByteCounter(t)
	origin := startTLSUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("both", []string{hostAPI, "127.0.0.1"}, counter.port, origin.port)),
	})

	refused := []struct {
		name  string
		open  func(t *testing.T) net.Conn
		asked string
	}{
		// The hello sent with the CONNECT is in the proxy package's tests.
		{"another host", func(t *testing.T) net.Conn { return g.tunnel(t, acme, counter.authority(hostAPI)) }, hostOther},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			conn := c.open(t)
			_ = conn.SetDeadline(time.Now().Add(scaled(10 * time.Second)))
			err := tls.Client(conn, &tls.Config{ServerName: c.asked, InsecureSkipVerify: true}).Handshake()
			if err == nil {
				t.Fatal("the handshake for another host completed")
			}
			rec := g.waitAudit(t, func(rec map[string]any) bool {
				return rec["code"] == "tunnel_sni_mismatch" && strings.Contains(fmt.Sprint(rec["reason"]), c.asked)
			})
			if rec["decision"] != "deny" || rec["status"] != float64(http.StatusOK) || rec["host"] != hostAPI || rec["bytes_up"] != float64(0) {
				t.Errorf("audit line of the closed tunnel: %v", rec)
			}
		})
	}
	if n := counter.received.Load(); n != 0 {
		t.Errorf("the upstream received %d bytes of handshakes the gateway should have stopped", n)
	}
	eventually(t, scaled(5*time.Second), func() error {
		samples, err := g.metrics()
		if err != nil {
			return err
		}
		if n, _ := sumMetric(samples, "egressgw_requests_total", map[string]string{"decision": "deny", "code": "tunnel_sni_mismatch"}); n < 1 {
			return fmt.Errorf("requests_total{code=tunnel_sni_mismatch} = %v, want 1", n)
		}
		return nil
	})

	allowed := []struct {
		name, authority string
		cfg             *tls.Config
	}{
		// No server name, and IP literals, are in the proxy package's tests.
		{"the CONNECT's host", origin.authority(hostAPI), &tls.Config{ServerName: hostAPI, RootCAs: testPKI.pool}},
	}
	for _, c := range allowed {
		t.Run(c.name, func(t *testing.T) {
			conn := g.tunnel(t, acme, c.authority)
			_ = conn.SetDeadline(time.Now().Add(scaled(10 * time.Second)))
			tlsConn := tls.Client(conn, c.cfg)
			fmt.Fprintf(tlsConn, "GET /sni HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", hostAPI)
			resp, err := http.ReadResponse(bufio.NewReader(tlsConn), nil)
			if err != nil {
				t.Fatalf("through the tunnel: %v", err)
			}
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != greeting("/sni") {
				t.Errorf("got %d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestTunnelServerSpeaksFirst: the first-bytes check waits for the client
// without holding back the upstream, so a protocol where the server
// speaks first (SSH, SMTP) works through a tunnel to a host name.
func TestTunnelServerSpeaksFirst(t *testing.T) {
	t.Parallel()
	const banner = "SSH-2.0-egressgw-test\r\n"
	server := startTCPServer(t, "127.0.0.1", func(c net.Conn) {
		io.WriteString(c, banner)
		echo(c)
	})
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("ssh", []string{hostAPI}, server.port)),
	})
	conn := g.tunnel(t, acme, server.authority(hostAPI))
	got := make([]byte, len(banner))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != banner {
		t.Fatalf("the server's greeting before the client sent anything: %q, %v", got, err)
	}
	pingThroughTunnel(t, conn)
}
