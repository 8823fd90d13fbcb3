package proxy

import (
	"bufio"
	"bytes"
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
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// hangGuard bounds every wait in these tests: far beyond what the
// behaviour under test needs, far below the 120 s an unfixed gateway took.
const hangGuard = 15 * time.Second

// streamPolicy lets tenant acme (token benchToken) reach host:port, with
// extra keys for gateway.yaml.
func streamPolicy(t *testing.T, gatewayExtra, host, port string) *policy.Snapshot {
	t.Helper()
	sum := sha256.Sum256([]byte(benchToken))
	fsys := fstest.MapFS{
		"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\n" + gatewayExtra)},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) +
			"\" }\nrules:\n  - { name: upstream, hosts: [\"" + host + "\"], ports: [" + port + "] }\n")},
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// servedGateway is a gateway serving snap on a loopback listener.
type servedGateway struct {
	*Gateway
	addr  string
	audit *flakyWriter // never fails: a buffer safe to read while written
}

func serveGateway(t *testing.T, snap *policy.Snapshot) *servedGateway {
	t.Helper()
	sg := &servedGateway{audit: &flakyWriter{}}
	sg.Gateway = testGateway(t, snap, sg.audit)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sg.addr = ln.Addr().String()
	go sg.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sg.Shutdown(ctx)
	})
	return sg
}

// send writes req as a proxy request on a new connection and reads the
// response head; the body is left to the caller.
func (sg *servedGateway) send(t *testing.T, req *http.Request) (*http.Response, net.Conn) {
	t.Helper()
	conn, err := net.Dial("tcp", sg.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	req.Header.Set("Proxy-Authorization", "Basic "+basicEncode("acme", benchToken))
	if err := req.WriteProxy(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatalf("reading the response head: %v", err)
	}
	return resp, conn
}

// auditLine waits for the audit line of the request to path.
func (sg *servedGateway) auditLine(t *testing.T, path string) auditRecord {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		for _, line := range strings.Split(sg.audit.String(), "\n") {
			var rec auditRecord
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Path == path {
				return rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit line for %s in:\n%s", path, sg.audit.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requests is egressgw_requests_total for tenant acme with the given
// decision and code.
func (sg *servedGateway) requests(t *testing.T, decision string, code policy.Code) float64 {
	t.Helper()
	families, err := sg.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != "egressgw_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["tenant"] == "acme" && labels["decision"] == decision && labels["code"] == string(code) {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// expectAudited checks the audit line of path and the request counter.
func (sg *servedGateway) expectAudited(t *testing.T, path, decision string, code policy.Code, status int, bytesUp, bytesDown int64) auditRecord {
	t.Helper()
	rec := sg.auditLine(t, path)
	if rec.Decision != decision || rec.Code != string(code) || rec.Status != status ||
		(bytesUp >= 0 && rec.BytesUp != bytesUp) || (bytesDown >= 0 && rec.BytesDown != bytesDown) {
		t.Errorf("audit line %+v\nwant decision %s, code %s, status %d, bytes up %d, down %d", rec, decision, code, status, bytesUp, bytesDown)
	}
	if n := sg.requests(t, decision, code); n != 1 {
		t.Errorf("egressgw_requests_total{decision=%q,code=%q} = %v, want 1", decision, code, n)
	}
	return rec
}

// rawUpstream accepts connections, reads one request on each and hands
// the connection to respond; the test's cleanup closes what is left.
func rawUpstream(t *testing.T, respond func(net.Conn)) (host, port string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				respond(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	host, port, _ = net.SplitHostPort(ln.Addr().String())
	return host, port
}

// An upstream that breaks off a body after its head went out: the client
// gets what arrived as it arrives, then sees the body cut short, never a
// clean end; the audit line and the metrics say upstream_failed_midway
// with the status the client got and the bytes it got.
func TestPlainResponseBrokenOffMidway(t *testing.T) {
	const sent = 1000
	piece := bytes.Repeat([]byte("x"), sent)
	for _, tc := range []struct {
		name string
		head string // the response head and what precedes the piece
		tail string // what follows the piece, before the upstream stops
		// idle shortens idle_timeout; the upstream then stays silent
		// instead of closing, until the gateway gives up on it.
		idle bool
	}{
		{name: "content-length body, upstream closes", head: "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"},
		{name: "chunked body, upstream closes", head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n", tail: "\r\n"},
		{name: "chunked server-sent events, upstream closes", head: "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n", tail: "\r\n"},
		{name: "content-length body, upstream goes silent", head: "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", idle: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			host, port := rawUpstream(t, func(c net.Conn) {
				io.WriteString(c, tc.head)
				c.Write(piece)
				io.WriteString(c, tc.tail)
				if tc.idle {
					io.Copy(io.Discard, c) // silent until the gateway closes
					return
				}
				<-release
			})
			var releaseOnce sync.Once
			letGo := func() { releaseOnce.Do(func() { close(release) }) }
			t.Cleanup(letGo) // before the upstream's own cleanup waits for it
			extra := ""
			if tc.idle {
				extra = "limits: { idle_timeout: 1s }\n"
			}
			sg := serveGateway(t, streamPolicy(t, extra, host, port))
			req, _ := http.NewRequest(http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/cut", nil)
			resp, _ := sg.send(t, req)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want the upstream's 200", resp.StatusCode)
			}
			// What arrived reaches the client while the upstream still
			// holds its connection open.
			got := make([]byte, sent)
			if _, err := io.ReadFull(resp.Body, got); err != nil || !bytes.Equal(got, piece) {
				t.Fatalf("the %d bytes the upstream sent did not reach the client before it stopped: %v", sent, err)
			}
			letGo()
			rest, err := io.ReadAll(resp.Body)
			if !errors.Is(err, io.ErrUnexpectedEOF) || len(rest) != 0 {
				t.Fatalf("after the upstream broke off: %d more bytes, %v; want the body cut short (unexpected EOF)", len(rest), err)
			}
			sg.expectAudited(t, "/cut", "allow", policy.CodeUpstreamFailedMidway, http.StatusOK, 0, sent)
			if n := sg.requests(t, "allow", policy.CodeOK); n != 0 {
				t.Errorf("the broken-off response was also counted ok (%v)", n)
			}
		})
	}
}

// A client that goes away mid-request is client_closed: never an upstream
// failure in the audit line or the metrics.
func TestPlainClientGoesAway(t *testing.T) {
	const sent = 1000
	piece := bytes.Repeat([]byte("x"), sent)
	for _, tc := range []struct {
		name string
		// respond is the upstream, after it has read the request head.
		respond func(c net.Conn)
		// leave sends the request through the gateway and goes away
		// part-way through it.
		leave          func(t *testing.T, sg *servedGateway, target string)
		status         int
		bytesUp, bytes int64
	}{
		{
			name:    "upload broken off",
			respond: func(c net.Conn) { io.Copy(io.Discard, c) },
			leave: func(t *testing.T, sg *servedGateway, target string) {
				conn, err := net.Dial("tcp", sg.addr)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\nContent-Length: 100000\r\n\r\n",
					target+"/leave", strings.TrimPrefix(target, "http://"), basicEncode("acme", benchToken))
				conn.Write(piece)
				time.Sleep(50 * time.Millisecond) // let the piece go out before the close
				conn.Close()
			},
			status: 0, bytesUp: sent, bytes: 0,
		},
		{
			name:    "waiting for the response head",
			respond: func(c net.Conn) { io.Copy(io.Discard, c) },
			leave: func(t *testing.T, sg *servedGateway, target string) {
				conn, err := net.Dial("tcp", sg.addr)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n",
					target+"/leave", strings.TrimPrefix(target, "http://"), basicEncode("acme", benchToken))
				time.Sleep(100 * time.Millisecond) // let the request reach the upstream
				conn.Close()
			},
			status: 0, bytesUp: 0, bytes: 0,
		},
		{
			name: "while the response streams",
			respond: func(c net.Conn) {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
				c.Write(piece)
				io.Copy(io.Discard, c) // until the gateway lets go of it
			},
			leave: func(t *testing.T, sg *servedGateway, target string) {
				req, _ := http.NewRequest(http.MethodGet, target+"/leave", nil)
				resp, conn := sg.send(t, req)
				if _, err := io.ReadFull(resp.Body, make([]byte, sent)); err != nil {
					t.Fatalf("first piece: %v", err)
				}
				conn.Close()
			},
			status: http.StatusOK, bytesUp: 0, bytes: sent,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, port := rawUpstream(t, tc.respond)
			sg := serveGateway(t, streamPolicy(t, "", host, port))
			tc.leave(t, sg, "http://"+net.JoinHostPort(host, port))
			sg.expectAudited(t, "/leave", "allow", policy.CodeClientClosed, tc.status, tc.bytesUp, tc.bytes)
			for _, code := range []policy.Code{policy.CodeUpstreamUnreachable, policy.CodeUpstreamTimeout, policy.CodeUpstreamFailedMidway, policy.CodeOK} {
				if n := sg.requests(t, "allow", code); n != 0 {
					t.Errorf("a client that went away was counted as %s (%v)", code, n)
				}
			}
		})
	}
}

// sseUpstream streams an event every 20 ms until the client goes away.
func sseUpstream(t *testing.T) (host, port string) {
	t.Helper()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil || rc.Flush() != nil {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}))
	t.Cleanup(upstream.Close)
	host, port, _ = net.SplitHostPort(strings.TrimPrefix(upstream.URL, "http://"))
	return host, port
}

// A stream to a destination a reload no longer allows is ended, its
// client sees it cut short, and its audit line says revoked; a reload
// that still allows it leaves it alone.
func TestPlainStreamRevokedByReload(t *testing.T) {
	host, port := sseUpstream(t)
	allowed := streamPolicy(t, "", host, port)
	sg := serveGateway(t, allowed)
	target := "http://" + net.JoinHostPort(host, port)

	revoked, _ := sg.send(t, mustRequest(t, target+"/revoked"))
	events := bufio.NewReader(revoked.Body)
	if _, err := events.ReadString('\n'); err != nil {
		t.Fatalf("first event: %v", err)
	}

	// A reload that keeps the permission: the stream goes on past the grace.
	sg.Apply(streamPolicy(t, "", host, port))
	for start := time.Now(); time.Since(start) < streamGrace+500*time.Millisecond; {
		if _, err := events.ReadString('\n'); err != nil {
			t.Fatalf("a reload that still allows the stream ended it: %v", err)
		}
	}

	// One that takes it away: the stream ends, cut short.
	revokedAt := time.Now()
	sg.Apply(streamPolicy(t, "", "elsewhere.example", port))
	var err error
	for err == nil {
		_, err = events.ReadString('\n')
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("the revoked stream ended with %v, want it cut short (unexpected EOF)", err)
	}
	if elapsed := time.Since(revokedAt); elapsed > hangGuard/2 {
		t.Errorf("the revoked stream ran on for %v", elapsed)
	}
	rec := sg.expectAudited(t, "/revoked", "deny", policy.CodeRevoked, http.StatusOK, 0, -1)
	if !strings.Contains(rec.Reason, "reload") || rec.BytesDown == 0 {
		t.Errorf("audit line of the revoked stream: %+v", rec)
	}
}

func mustRequest(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// BenchmarkHoldStream is what holding a response for revocation adds to
// every request: a registration in the gateway's set and its release.
func BenchmarkHoldStream(b *testing.B) {
	g := benchGateway(b, "listen: \"127.0.0.1:3128\"\n", "rules:\n  - { name: upstream, hosts: [\"upstream.example\"] }\n")
	r := httptest.NewRequest(http.MethodGet, "http://upstream.example/", nil)
	ex := g.begin(r, nil, false)
	b.ReportAllocs()
	for b.Loop() {
		t := g.holdStream(ex, r)
		if g.releaseStream(t) != "" {
			b.Fatal("revoked")
		}
	}
}
