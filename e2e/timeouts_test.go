package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// TestSilentUpstreamTimesOutAfterResponseHeaderTimeout: an upstream that
// takes the request and never answers gets the client its 504 after
// network.response_header_timeout, not after the much longer idle_timeout.
func TestSilentUpstreamTimesOutAfterResponseHeaderTimeout(t *testing.T) {
	t.Parallel()
	neverAnswers := startTCPServer(t, "127.0.0.1", silent)
	g := startGateway(t, configFiles{
		"gateway.yaml": yamlf(`
			network:
			  allow_cidrs: ["127.0.0.1/32"]
			  dns_servers: [%q]
			  response_header_timeout: 1s
			limits:
			  idle_timeout: 60s
		`, testDNS.Addr()),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("silent", []string{hostAPI}, neverAnswers.port)),
	})
	// Well under idle_timeout, which ended the wait before.
	const bound = 15 * time.Second
	start := time.Now()
	e := assertGatewayError(t, g.get(t, acme.header(), "http://"+neverAnswers.authority(hostAPI)+"/"), http.StatusGatewayTimeout, "upstream_timeout")
	if elapsed := time.Since(start); elapsed > scaled(bound) {
		t.Errorf("504 after %v; response_header_timeout is 1s", elapsed)
	}
	if neverAnswers.reached() == 0 {
		t.Errorf("the silent upstream was never connected to, so this was not a timeout")
	}
	assertNoInternalDetail(t, e)
	g.waitAudit(t, auditWith("tenant", acme.tenant, "code", "upstream_timeout", "status", 504))
}

// TestSilentTunnelClosesAtIdleTimeout: a tunnel to an upstream that never
// answers closes idle_timeout after its last byte, however soon after the
// tunnel opened the client sent that byte (it used to take twice as long).
func TestSilentTunnelClosesAtIdleTimeout(t *testing.T) {
	t.Parallel()
	neverAnswers := startTCPServer(t, "127.0.0.1", silent)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			limits:
			  idle_timeout: 2s
		`)),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("silent", []string{hostAPI}, neverAnswers.port)),
	})
	tunnel := g.tunnel(t, acme, neverAnswers.authority(hostAPI))
	// What a TLS client does at once: its ClientHello, then it waits.
	time.Sleep(100 * time.Millisecond)
	if _, err := tunnel.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	lastByte := time.Now()
	tunnel.SetReadDeadline(time.Now().Add(scaled(20 * time.Second)))
	_, err := tunnel.Read(make([]byte, 1))
	closedAfter := time.Since(lastByte)
	var netErr net.Error
	if err == nil || (errors.As(err, &netErr) && netErr.Timeout()) {
		t.Fatalf("silent tunnel: read returned %v; want it closed", err)
	}
	// Closed after idle_timeout (2s) plus the renewal slack, far from 4s.
	if closedAfter > 3300*time.Millisecond {
		t.Errorf("silent tunnel closed %v after its last byte; idle_timeout is 2s", closedAfter)
	}
}

// dnsReplier answers every query with rcode, or never when silent.
func startDNSReplier(t *testing.T, rcode dnsmessage.RCode, silent bool) string {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if silent {
				continue
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true, RCode: rcode})
			if b.StartQuestions() != nil || b.Question(q) != nil {
				continue
			}
			reply, err := b.Finish()
			if err != nil {
				continue
			}
			_, _ = conn.WriteTo(reply, from)
		}
	}()
	return conn.LocalAddr().String()
}

// TestDNSFailuresSayWhichKind: a name that does not exist, a resolver that
// fails and a resolver that does not answer within dns_timeout all get 502
// dns_failure, each with a message that says which, so nobody checks the
// spelling of a name the resolver never looked up.
func TestDNSFailuresSayWhichKind(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	cases := []struct {
		name, resolver, host string
		say, not             string
	}{
		// The other kinds are in the proxy package's tests.
		{"resolver fails", startDNSReplier(t, dnsmessage.RCodeServerFailure, false), hostAPI, "resolver failed", "spelling"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := startGateway(t, configFiles{
				"gateway.yaml": yamlf(`
					network:
					  allow_cidrs: ["127.0.0.1/32"]
					  dns_servers: [%q]
					  dns_timeout: 500ms
				`, tc.resolver),
				"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI, hostNXDomain}, origin.port)),
			})
			target := net.JoinHostPort(tc.host, fmt.Sprint(origin.port))
			for _, e := range []gatewayError{
				g.expectRefused(t, http.MethodGet, acme.header(), "http://"+target+"/", http.StatusBadGateway, "dns_failure", origin),
				g.expectRefusedCONNECT(t, acme.header(), target, http.StatusBadGateway, "dns_failure", origin),
			} {
				if !strings.Contains(e.Message, tc.say) || strings.Contains(e.Message, tc.not) {
					t.Errorf("message %q: want it to say %q, not %q", e.Message, tc.say, tc.not)
				}
				assertNoInternalDetail(t, e)
			}
			// The operator is told when the resolver is at fault, with
			// its error; a misspelt name is no news for the operator.
			warned := strings.Contains(g.stderr.String(), `"msg":"the DNS resolver`)
			if resolverFault := tc.not == "spelling"; warned != resolverFault {
				t.Errorf("resolver warning logged: %v, want %v; stderr:\n%s", warned, resolverFault, g.stderr.String())
			}
		})
	}
}

// TestShutdownServesRequestsOnIdleConnections: at SIGTERM, a request a
// client writes just then on its idle keep-alive connection is still
// served (with Connection: close) rather than meeting a closed connection;
// a tunnel still open when shutdown_grace runs out is closed and audited
// as revoked by the shutdown, and the log says the grace ran out.
func TestShutdownServesRequestsOnIdleConnections(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	echoServer := startTCPServer(t, "127.0.0.1", echo)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			limits:
			  shutdown_grace: 3s
		`)),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, origin.port, echoServer.port)),
	})
	tunnel := g.tunnel(t, acme, echoServer.authority(hostAPI))
	pingThroughTunnel(t, tunnel)

	const clients = 30
	request := "GET " + origin.url(hostAPI, "/again") + " HTTP/1.1\r\nHost: " + origin.authority(hostAPI) + "\r\nProxy-Authorization: " + acme.header() + "\r\n\r\n"
	conns := make([]net.Conn, clients)
	readers := make([]*bufio.Reader, clients)
	for i := range conns {
		conns[i] = g.dial(t)
		readers[i] = bufio.NewReader(conns[i])
		if _, err := io.WriteString(conns[i], request); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(readers[i], nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("first request on connection %d: %v, %v", i, resp, err)
		}
		readBody(t, resp)
	}

	g.signal(t, syscall.SIGTERM)
	eventually(t, 5*time.Second, func() error {
		if !strings.Contains(g.stderr.String(), "shutting down") {
			return errors.New("the gateway has not begun shutting down")
		}
		return nil
	})
	shutdownBegan := shutdownLogTime(t, g.stderr.String())
	// Every client writes its next request on its idle connection now,
	// then reads the response.
	var failed []string
	written := make([]bool, clients)
	writtenAt := make([]time.Time, clients)
	for i, conn := range conns {
		if _, err := io.WriteString(conn, request); err != nil {
			failed = append(failed, fmt.Sprintf("%d: write: %v", i, err))
			continue
		}
		written[i], writtenAt[i] = true, time.Now()
	}
	inWindow := 0
	for i := range conns {
		if !written[i] {
			continue
		}
		// The gateway serves what arrives within a second of the start
		// of its shutdown (docs/operators.md); a loaded machine may run
		// this loop later than that, and what it writes then may meet a
		// closed connection.
		late := writtenAt[i].Sub(shutdownBegan) > time.Second
		if !late {
			inWindow++
		}
		resp, err := http.ReadResponse(readers[i], nil)
		if err != nil {
			if late {
				t.Logf("%d: written %v after the shutdown began, past its window: %v", i, writtenAt[i].Sub(shutdownBegan), err)
				continue
			}
			failed = append(failed, fmt.Sprintf("%d: %v", i, err))
			continue
		}
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != greeting("/again") {
			failed = append(failed, fmt.Sprintf("%d: status %d", i, resp.StatusCode))
		} else if !resp.Close {
			failed = append(failed, fmt.Sprintf("%d: no Connection: close during shutdown", i))
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d requests written during shutdown got no proper response: %v", len(failed), clients, failed)
	}
	if inWindow == 0 {
		t.Logf("no request was written within the shutdown window on this loaded machine: only the later checks ran")
	}

	if code := g.waitExit(t, 30*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
	expectClosedWithin(t, "tunnel", tunnel)
	var cut map[string]any
	for _, rec := range g.auditRecords() {
		if rec["method"] == "CONNECT" {
			cut = rec
		}
	}
	if cut == nil || cut["code"] != "revoked" || !strings.Contains(fmt.Sprint(cut["reason"]), "shutdown") {
		t.Errorf("audit line of the tunnel cut by shutdown: %v; want code revoked and a reason naming the shutdown", cut)
	}
	if !strings.Contains(g.stderr.String(), "shutdown grace ran out") {
		t.Errorf("the log does not say the shutdown grace ran out")
	}
}

// TestUnreadTunnelClosesAfterResponseWriteTimeout: a client that stops
// reading what its tunnel carries to it frees the tunnel after
// response_write_timeout, not after the much longer idle_timeout.
func TestUnreadTunnelClosesAfterResponseWriteTimeout(t *testing.T) {
	t.Parallel()
	flood := startTCPServer(t, "127.0.0.1", func(c net.Conn) {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			limits:
			  idle_timeout: 1h
			  response_write_timeout: 500ms
		`)),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("flood", []string{hostAPI}, flood.port)),
	})
	// A client that keeps reading keeps its tunnel, however long it runs.
	reading := g.tunnel(t, acme, flood.authority(hostAPI))
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		if _, err := io.ReadFull(reading, make([]byte, 64<<10)); err != nil {
			t.Fatalf("a tunnel whose client keeps reading was cut: %v", err)
		}
	}
	reading.Close()
	g.waitAudit(t, auditWith("tenant", acme.tenant, "method", "CONNECT"))

	tunnel := g.tunnel(t, acme, flood.authority(hostAPI))
	if tcp, ok := tunnel.(*bufferedConn).Conn.(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(4 << 10)
	}
	// Never read: the gateway's writes fill the socket buffers and block.
	eventually(t, 5*time.Second, func() error {
		if n := len(g.auditRecords()); n < 2 {
			return fmt.Errorf("%d tunnels audited as ended, want 2", n)
		}
		return nil
	})
}

// TestStalledBodyInsideInspectedTunnel: inside an inspected tunnel too, a
// request whose body stops arriving gets 400 bad_request with Connection:
// close after request_body_timeout, and the upstream never gets it whole.
func TestStalledBodyInsideInspectedTunnel(t *testing.T) {
	t.Parallel()
	var whole atomic.Int64
	origin := startTLSUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err == nil {
			whole.Add(1)
		}
	}))
	dir := t.TempDir()
	if res := egressgw(t, "ca", "init", "--out", filepath.Join(dir, "ca")); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	pem, err := os.ReadFile(filepath.Join(dir, "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(pem)
	for name, content := range map[string]string{
		"gateway.yaml": inspectingGatewayYAML(yamlf(`
			limits:
			  request_body_timeout: 500ms
		`)),
		"connectors/api.yaml": yamlf(`
			name: api
			hosts: [%q]
			ports: [%d]
			inspect: true
		`, hostAPI, origin.port),
		"tenants/acme.yaml": tenantYAML(acme, "connectors: [api]\n"),
	} {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, path, content)
	}
	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")

	tunnel := g.tunnel(t, acme, origin.authority(hostAPI))
	tlsConn := tls.Client(tunnel, &tls.Config{ServerName: hostAPI, RootCAs: caPool})
	fmt.Fprintf(tlsConn, "POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n\r\nonly part", origin.authority(hostAPI))
	reader := bufio.NewReader(tlsConn)
	resp, err := http.ReadResponse(reader, nil)
	if err != nil {
		t.Fatalf("reading the reply to a stalled body: %v", err)
	}
	if !resp.Close {
		t.Errorf("the reply to a stalled body does not say Connection: close")
	}
	assertGatewayError(t, resp, http.StatusBadRequest, "bad_request")
	if _, err := io.Copy(io.Discard, reader); err != nil && !errors.Is(err, io.EOF) {
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			t.Errorf("the tunnel stayed open after the stalled body's reply")
		}
	}
	if n := whole.Load(); n != 0 {
		t.Errorf("the upstream got %d whole requests; want none", n)
	}
}

// TestStalledBodyReadByAHookNeverLeaves: a hook reads the request body
// whole before the request leaves; when that body stalls, what arrived is
// never sent on as if it were the whole request.
func TestStalledBodyReadByAHookNeverLeaves(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			limits:
			  request_body_timeout: 500ms
		`)),
		"connectors/stamped.yaml": yamlf(`
			name: stamped
			hosts: [%q]
			ports: [%d]
			hooks: { request: hooks/stamp.tengo }
		`, hostAPI, origin.port),
		"hooks/stamp.tengo": "request.headers[\"X-Stamp\"] = [\"stamped\"]\n",
		"tenants/acme.yaml": tenantYAML(acme, "connectors: [stamped]\n"),
	})
	before := snapshotReach(origin)
	conn := g.dial(t)
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nonly part",
		origin.url(hostAPI, "/upload"), origin.authority(hostAPI), acme.header())
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, nil)
	if err != nil {
		t.Fatalf("reading the reply to a stalled body: %v", err)
	}
	if !resp.Close {
		t.Errorf("the reply to a stalled body does not say Connection: close")
	}
	assertGatewayError(t, resp, http.StatusBadRequest, "bad_request")
	before.assertUnchanged(t)
	if got := origin.requestsTo("/upload"); len(got) != 0 {
		t.Errorf("the upstream got %d requests cut short", len(got))
	}
}

// shutdownLogTime is the time of the gateway's "shutting down" log line,
// which comes just before its shutdown window opens.
func shutdownLogTime(t *testing.T, log string) time.Time {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		var rec struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "shutting down" {
			return rec.Time
		}
	}
	t.Fatalf("no \"shutting down\" line in the gateway's log")
	return time.Time{}
}
