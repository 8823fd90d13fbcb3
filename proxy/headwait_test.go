package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// headWaitTimeout is response_header_timeout in these tests; every pause
// an upstream or a client takes in them is longer, and idle_timeout far
// longer, so only the head wait can end an exchange.
const (
	headWaitTimeout = time.Second
	headWaitPause   = 1600 * time.Millisecond
)

// startHeadWaitGateway serves tenant acme allowed to every port of
// zoneAPI's address with response_header_timeout of headWaitTimeout.
func startHeadWaitGateway(t *testing.T, ports ...int) *pathGateway {
	t.Helper()
	g := newPathGateway(t)
	g.network = fmt.Sprintf("  response_header_timeout: %s\n", headWaitTimeout)
	g.serve(t, "limits:\n  idle_timeout: 60s\n", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("upstream", []string{zoneAPI}, ports...)),
	})
	return g
}

// The head wait counts from the request's last byte and ends with the
// upstream's first: an upload slower than the bound, a response body that
// pauses for longer, and a pooled connection that sat idle for longer
// before its next request all go through. Only a silent upstream after a
// whole request times out (TestPathSilentUpstreamTimesOutAfterResponseHeaderTimeout).
func TestPathResponseHeaderTimeoutBoundsOnlyTheWaitForTheHead(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		switch r.URL.Path {
		case "/pausing-body":
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "first half, ")
			w.(http.Flusher).Flush()
			time.Sleep(headWaitPause)
			io.WriteString(w, "second half")
		default:
			fmt.Fprintf(w, "got %d bytes", len(body))
		}
	}))
	g := startHeadWaitGateway(t, origin.port)
	client := g.client(t, pathAcme, nil)

	t.Run("an upload slower than the bound", func(t *testing.T) {
		t.Parallel()
		body, w := io.Pipe()
		go func() {
			for range 3 {
				io.WriteString(w, strings.Repeat("x", 1000))
				time.Sleep(headWaitPause / 3 * 2)
			}
			w.Close()
		}()
		req, _ := http.NewRequest(http.MethodPost, origin.url(zoneAPI, "/upload"), body)
		assertHeadWaitAnswer(t, client, req, "got 3000 bytes")
	})
	t.Run("a response body that pauses for longer than the bound", func(t *testing.T) {
		t.Parallel()
		req, _ := http.NewRequest(http.MethodGet, origin.url(zoneAPI, "/pausing-body"), nil)
		assertHeadWaitAnswer(t, client, req, "first half, second half")
	})
}

// A pooled upstream connection that idled past the bound answers the next
// request sent on it: nothing was awaited while it idled.
func TestPathResponseHeaderTimeoutSparesPooledConnections(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	g := startHeadWaitGateway(t, origin.port)
	client := g.client(t, pathAcme, nil)
	for i := range 2 {
		if i > 0 {
			time.Sleep(headWaitPause)
		}
		req, _ := http.NewRequest(http.MethodGet, origin.url(zoneAPI, "/again"), nil)
		assertHeadWaitAnswer(t, client, req, pathGreeting("/again"))
	}
	if n := origin.conns.Load(); n != 1 {
		t.Errorf("the upstream saw %d connections, want the one reused", n)
	}
}

func assertHeadWaitAnswer(t *testing.T, client *http.Client, req *http.Request, want string) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || string(got) != want {
		t.Fatalf("%s %s: status %d, body %q, error %v; want 200 %q (X-Egressgw-Error %q)",
			req.Method, req.URL.Path, resp.StatusCode, got, err, want, resp.Header.Get("X-Egressgw-Error"))
	}
}

// Tunnels and upgraded connections carry protocols in which a peer may
// stay silent for long after the other wrote: the head wait never applies
// to them, only idle_timeout does.
func TestPathResponseHeaderTimeoutLeavesTunnelsAndUpgradesAlone(t *testing.T) {
	t.Parallel()
	// Answers each line only after a pause longer than the bound.
	slowEcho := func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			time.Sleep(headWaitPause)
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	}
	tunnelTarget := startPathTCPServer(t, "127.0.0.1", slowEcho)
	upgrader := startPathUpstream(t, "127.0.0.1", false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		acceptUpgrade(w, slowEcho)
	}))
	g := startHeadWaitGateway(t, tunnelTarget.port, upgrader.port)

	t.Run("tunnel", func(t *testing.T) {
		t.Parallel()
		conn := g.tunnel(t, pathAcme, tunnelTarget.authority(zoneAPI))
		assertSlowEcho(t, conn, bufio.NewReader(conn))
	})
	t.Run("upgrade", func(t *testing.T) {
		t.Parallel()
		conn := g.dial(t)
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
			upgrader.url(zoneAPI, "/socket"), upgrader.authority(zoneAPI), pathAcme.auth())
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v, %v; want 101", resp, err)
		}
		assertSlowEcho(t, conn, br)
	})
}

// assertSlowEcho writes two lines on conn and reads each back from r.
func assertSlowEcho(t *testing.T, conn net.Conn, r *bufio.Reader) {
	t.Helper()
	for _, line := range []string{"one\n", "two\n"} {
		if _, err := io.WriteString(conn, line); err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != line {
			t.Fatalf("echo of %q: %q, %v", line, got, err)
		}
	}
}

// A connection whose wait ran out fails every read from then on with a
// timeout that says which bound it was, whatever deadline a read set.
func TestHeadWatchEndsReads(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	defer server.Close()
	w := newHeadWatch()
	c := meter(client)
	c.activity = new(activity)
	w.watch(c, 50*time.Millisecond)
	go io.Copy(io.Discard, server) // takes what is written, answers nothing
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	w.check(time.Now().UnixNano()) // within the wait: nothing happens
	if c.head.expired.Load() {
		t.Fatal("expired before its wait ran out")
	}
	w.check(time.Now().Add(time.Second).UnixNano())
	for range 2 {
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "response_header_timeout") {
			t.Fatalf("read after the wait ran out: %v; want the head-wait timeout", err)
		}
	}
	c.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.conns) != 0 {
		t.Errorf("a closed connection is still watched")
	}
}

// After a streamed upload, however slow, the wait for the head starts
// at its last byte: a silent upstream still times out.
func TestPathResponseHeaderTimeoutAfterAStreamedUpload(t *testing.T) {
	t.Parallel()
	neverAnswers := startPathTCPServer(t, "127.0.0.1", silentConn)
	g := startHeadWaitGateway(t, neverAnswers.port)
	body, w := io.Pipe()
	go func() {
		io.WriteString(w, "part one, ")
		time.Sleep(headWaitPause)
		io.WriteString(w, "part two")
		w.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, "http://"+neverAnswers.authority(zoneAPI)+"/upload", body)
	start := time.Now()
	resp, err := g.client(t, pathAcme, nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	assertPathRefusal(t, resp, http.StatusGatewayTimeout, "upstream_timeout")
	if elapsed := time.Since(start); elapsed < headWaitPause {
		t.Errorf("504 after %v, before the upload ended", elapsed)
	}
	g.audit.wait(t, "tenant", pathAcme.id, "code", "upstream_timeout", "status", 504)
}

// On loopback the answer can be read before the write that asked for it
// has returned: the wait that write would start must not begin, or a
// response body that then pauses is cut at the bound. CI saw that cut.
func TestHeadAwaitAnswerReadBeforeTheWriteReturned(t *testing.T) {
	var a headAwait
	before := a.reading()
	a.wrote(100, before)
	if got := a.since.Load(); got != 100 {
		t.Fatalf("a write with nothing read since: wait since %d, want 100", got)
	}
	before = a.reading()
	a.read() // the answer, read while the write is still returning
	a.wrote(200, before)
	if got := a.since.Load(); got != 0 {
		t.Fatalf("a write whose answer was read before it returned: wait since %d, want none", got)
	}
	a.uploadStarted()
	a.wrote(300, a.reading())
	if got := a.since.Load(); got != 0 {
		t.Fatalf("a write during an upload: wait since %d, want none", got)
	}
	a.uploadEnded(400)
	if got := a.since.Load(); got != 400 {
		t.Fatalf("after the upload: wait since %d, want 400", got)
	}
	a.read()
	a.uploadStarted()
	a.wrote(500, a.reading())
	a.read() // the upstream answered before the body ended
	a.uploadEnded(600)
	if got := a.since.Load(); got != 0 {
		t.Fatalf("after an upload answered before it ended: wait since %d, want none", got)
	}
}
