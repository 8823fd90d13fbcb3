package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
)

const boundsToken = "acme-token"

// boundsGateway serves tenant acme (boundsToken), allowed to reach
// upstream, with limits (YAML lines under "limits:") on its listener. It
// returns the gateway, its listener's address and the limit listener.
func boundsGateway(t *testing.T, upstream *httptest.Server, limits string) (*Gateway, string, *limitListener) {
	t.Helper()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(upstream.URL, "http://"))
	sum := sha256.Sum256([]byte(boundsToken))
	fsys := fstest.MapFS{
		"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\nlimits:\n" + limits)},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) +
			"\" }\nrules:\n  - { name: upstream, hosts: [\"" + host + "\"], ports: [" + port + "] }\n")},
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	g := testGateway(t, snap, io.Discard)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	})
	var served *limitListener
	waitUntil(t, func() bool {
		g.servedMu.Lock()
		defer g.servedMu.Unlock()
		if len(g.served) == 1 {
			served = g.served[0]
		}
		return served != nil
	})
	return g, ln.Addr().String(), served
}

// countingUpstream counts the requests that reached it with their whole
// body.
func countingUpstream(t *testing.T, hold <-chan struct{}) (*httptest.Server, *atomic.Int64) {
	var complete atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		complete.Add(1)
		if r.URL.Path == "/hold" {
			<-hold
		}
		if r.URL.Path == "/big" {
			chunk := make([]byte, 64<<10)
			for {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(s.Close)
	return s, &complete
}

func authHeader() string {
	return "Proxy-Authorization: Basic " + basicEncode("acme", boundsToken) + "\r\n"
}

// readRefusal reads a gateway reply and checks its status and code.
func readRefusal(t *testing.T, c *rawConn, status int, code string) *http.Response {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.reader, nil)
	if err != nil {
		t.Fatalf("reading the gateway's reply: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e errorBody
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != status || resp.Header.Get("X-Egressgw-Error") != code || string(e.Error) != code {
		t.Fatalf("reply: status %d, X-Egressgw-Error %q, body %s; want %d %s", resp.StatusCode, resp.Header.Get("X-Egressgw-Error"), body, status, code)
	}
	return resp
}

// expectClosed waits for the gateway to close c (after any bytes it sent).
func expectClosed(t *testing.T, c *rawConn, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c.reader)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection is still open after %v", within)
	}
}

// A request head announcing a body that never comes holds its connection
// only for request_body_timeout: the client gets 400 with Connection:
// close, the connection and its slot are freed, the upstream never gets a
// whole request.
func TestStalledRequestBodyFreesItsConnection(t *testing.T) {
	upstream, complete := countingUpstream(t, nil)
	_, addr, ln := boundsGateway(t, upstream, "  request_body_timeout: 300ms\n")
	c := dialRaw(t, addr)
	fmt.Fprintf(c, "POST %s/ HTTP/1.1\r\nHost: x\r\n%sContent-Length: 100\r\n\r\nonly part", upstream.URL, authHeader())
	resp := readRefusal(t, c, http.StatusBadRequest, "bad_request")
	if !resp.Close {
		t.Errorf("the reply to a stalled body does not say Connection: close")
	}
	expectClosed(t, c, 10*time.Second)
	waitUntil(t, func() bool { return ln.openConns() == 0 })
	if n := complete.Load(); n != 0 {
		t.Errorf("the upstream got %d whole requests; want none", n)
	}
}

// A refusal written before the body was read says Connection: close and
// closes at once, without waiting for (and reading past) the body.
func TestRefusalBeforeBodyClosesWithoutWaiting(t *testing.T) {
	upstream, complete := countingUpstream(t, nil)
	_, addr, ln := boundsGateway(t, upstream, "  request_body_timeout: 1h\n")
	for _, tc := range []struct {
		name, auth, target string
		status             int
		code               string
	}{
		{"no credentials", "", upstream.URL + "/", http.StatusProxyAuthRequired, "proxy_auth_required"},
		{"destination not allowed", authHeader(), "http://elsewhere.invalid/", http.StatusForbidden, "destination_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: 100000\r\n\r\n", tc.target, tc.auth)
			resp := readRefusal(t, c, tc.status, tc.code)
			if !resp.Close {
				t.Errorf("refusal before the body was read: no Connection: close")
			}
			// request_body_timeout is an hour: only not waiting closes it.
			expectClosed(t, c, 5*time.Second)
		})
	}
	waitUntil(t, func() bool { return ln.openConns() == 0 })
	if n := complete.Load(); n != 0 {
		t.Errorf("the upstream got %d requests; want none", n)
	}
}

// A refusal of a bodiless request keeps its keep-alive connection.
func TestRefusalWithoutBodyKeepsTheConnection(t *testing.T) {
	upstream, _ := countingUpstream(t, nil)
	_, addr, _ := boundsGateway(t, upstream, "  request_body_timeout: 1h\n")
	c := dialRaw(t, addr)
	fmt.Fprintf(c, "GET %s/ HTTP/1.1\r\nHost: x\r\n\r\n", upstream.URL)
	if resp := readRefusal(t, c, http.StatusProxyAuthRequired, "proxy_auth_required"); resp.Close {
		t.Errorf("a refusal of a bodiless request closed the connection")
	}
	status, _, err := c.exchange("GET " + upstream.URL + "/ HTTP/1.1\r\nHost: x\r\n" + authHeader() + "\r\n")
	if err != nil || status != http.StatusOK {
		t.Fatalf("next request on the connection: %d, %v", status, err)
	}
}

// A client that stops reading its response frees its connection after
// response_write_timeout.
func TestUnreadResponseFreesItsConnection(t *testing.T) {
	upstream, _ := countingUpstream(t, nil)
	_, addr, ln := boundsGateway(t, upstream, "  response_write_timeout: 300ms\n  idle_timeout: 1h\n")
	c := dialRaw(t, addr)
	if tcp, ok := c.Conn.(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(4 << 10)
	}
	fmt.Fprintf(c, "GET %s/big HTTP/1.1\r\nHost: x\r\n%s\r\n", upstream.URL, authHeader())
	// Never read: the gateway's writes fill the socket buffers and block.
	waitUntil(t, func() bool { return ln.openConns() == 0 })
}

// At max_unauthenticated the oldest connection that has not authenticated
// is closed for a new one; authenticated ones are not counted.
func TestMaxUnauthenticatedClosesTheOldest(t *testing.T) {
	upstream, _ := countingUpstream(t, nil)
	_, addr, ln := boundsGateway(t, upstream, "  max_unauthenticated: 2\n")
	authed := dialRaw(t, addr)
	get := "GET " + upstream.URL + "/ HTTP/1.1\r\nHost: x\r\n" + authHeader() + "\r\n"
	if status, _, err := authed.exchange(get); err != nil || status != http.StatusOK {
		t.Fatalf("authenticated request: %d, %v", status, err)
	}
	oldest := dialRaw(t, addr)
	waitUntil(t, func() bool { return ln.openConns() == 2 })
	second := dialRaw(t, addr)
	waitUntil(t, func() bool { return ln.openConns() == 3 })
	if n := ln.unauthenticated.Load(); n != 2 {
		t.Fatalf("%d unauthenticated connections counted, want 2", n)
	}
	newest := dialRaw(t, addr)
	expectClosed(t, oldest, 5*time.Second)
	for name, c := range map[string]*rawConn{"authenticated": authed, "second": second, "newest": newest} {
		if status, _, err := c.exchange(get); err != nil || status != http.StatusOK {
			t.Errorf("%s connection: %d, %v; want it served", name, status, err)
		}
	}
	if n := ln.unauthEvicted.Load(); n != 1 {
		t.Errorf("%d connections closed for max_unauthenticated, want 1", n)
	}
}

// At max_connections, a connection that has not authenticated goes first,
// then one whose request body stalled; one with an authenticated request
// in progress never does, so the newcomer is refused then.
func TestMaxConnectionsClosesUnauthenticatedThenStalledFirst(t *testing.T) {
	hold := make(chan struct{})
	upstream, _ := countingUpstream(t, hold)
	t.Cleanup(func() { close(hold) })
	_, addr, ln := boundsGateway(t, upstream, "  max_connections: 3\n  request_body_timeout: 1h\n")

	busy := dialRaw(t, addr)
	fmt.Fprintf(busy, "GET %s/hold HTTP/1.1\r\nHost: x\r\n%s\r\n", upstream.URL, authHeader())
	stalled := dialRaw(t, addr)
	fmt.Fprintf(stalled, "POST %s/ HTTP/1.1\r\nHost: x\r\n%sContent-Length: 100\r\n\r\n", upstream.URL, authHeader())
	waitUntil(t, func() bool { return ln.openConns() == 2 })
	unauthenticated := dialRaw(t, addr)
	waitUntil(t, func() bool { return ln.openConns() == 3 })

	get := "GET " + upstream.URL + "/ HTTP/1.1\r\nHost: x\r\n" + authHeader() + "\r\n"
	fourth := dialRaw(t, addr)
	expectClosed(t, unauthenticated, 5*time.Second)
	if status, _, err := fourth.exchange(get); err != nil || status != http.StatusOK {
		t.Fatalf("fourth connection: %d, %v; want the unauthenticated one closed for it", status, err)
	}
	// The fourth is now idle, which goes before the stalled one.
	waitUntil(t, func() bool { return idleConns(ln) == 1 })
	fifth := dialRaw(t, addr)
	expectClosed(t, fourth, 5*time.Second)
	if status, _, err := fifth.exchange(get); err != nil || status != http.StatusOK {
		t.Fatalf("fifth connection: %d, %v", status, err)
	}
	// Make the fifth busy: only the stalled body can make room now.
	fmt.Fprintf(fifth, "GET %s/hold HTTP/1.1\r\nHost: x\r\n%s\r\n", upstream.URL, authHeader())
	waitUntil(t, func() bool {
		now := time.Now().UnixNano()
		ln.mu.Lock()
		defer ln.mu.Unlock()
		for cc := range ln.conns {
			if cc.since(spareStalled, now) != 0 {
				return true
			}
		}
		return false
	})
	sixth := dialRaw(t, addr)
	expectClosed(t, stalled, 5*time.Second)
	if status, _, err := sixth.exchange(get); err != nil || status != http.StatusOK {
		t.Fatalf("sixth connection: %d, %v; want the stalled one closed for it", status, err)
	}
	// Left: two requests in progress and an idle connection; the idle one
	// goes, and then only the newcomer can.
	waitUntil(t, func() bool { return idleConns(ln) == 1 })
	seventh := dialRaw(t, addr)
	expectClosed(t, sixth, 5*time.Second)
	fmt.Fprintf(seventh, "GET %s/hold HTTP/1.1\r\nHost: x\r\n%s\r\n", upstream.URL, authHeader())
	waitUntil(t, func() bool {
		ln.mu.Lock()
		defer ln.mu.Unlock()
		busyNow := 0
		for cc := range ln.conns {
			if cc.handling.Load() && cc.idleSince.Load() == 0 {
				busyNow++
			}
		}
		return busyNow == 3
	})
	refused := dialRaw(t, addr)
	expectClosed(t, refused, 5*time.Second)
	for name, c := range map[string]*rawConn{"busy": busy, "fifth": fifth, "seventh": seventh} {
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.reader.Peek(1); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s connection with a request in progress was closed: %v", name, err)
		}
	}
}

// idleConns counts ln's connections waiting for their next request.
func idleConns(ln *limitListener) int {
	ln.mu.Lock()
	defer ln.mu.Unlock()
	n := 0
	for cc := range ln.conns {
		if cc.idleSince.Load() != 0 {
			n++
		}
	}
	return n
}
