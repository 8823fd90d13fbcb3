package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/egressgw/egressgw/policy"
)

func TestParseBasic(t *testing.T) {
	cases := []struct {
		name, header, user, password string
		ok                           bool
	}{
		{"valid", "Basic YWNtZTpzM2NyZXQ=", "acme", "s3cret", true},
		{"scheme case-insensitive", "basic YWNtZTpzM2NyZXQ=", "acme", "s3cret", true},
		{"colon in password", "Basic YWNtZTphOmI=", "acme", "a:b", true},
		{"empty password", "Basic YWNtZTo=", "acme", "", true},
		{"no colon", "Basic YWNtZQ==", "", "", false},
		{"bad base64", "Basic !!!", "", "", false},
		{"bearer", "Bearer YWNtZTpzM2NyZXQ=", "", "", false},
		{"no credentials", "Basic", "", "", false},
		{"empty", "", "", "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u, p, ok := parseBasic(c.header, nil)
			user, password := string(u), string(p)
			if ok != c.ok || (ok && (user != c.user || password != c.password)) {
				t.Errorf("parseBasic(%q) = %q, %q, %v", c.header, user, password, ok)
			}
		})
	}
}

// FuzzParseBasic: never panics, and whatever it accepts re-encodes to
// the same credentials.
func FuzzParseBasic(f *testing.F) {
	for _, seed := range []string{"Basic YWNtZTpzM2NyZXQ=", "basic   YTpi", "Basic", "Bearer x", "Basic =", "Basic YTo6Og=="} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		u, p, ok := parseBasic(header, nil)
		if !ok {
			return
		}
		user, password := string(u), string(p)
		if strings.Contains(user, ":") {
			t.Fatalf("user %q holds a colon: the split is ambiguous", user)
		}
		var small [4]byte // outgrown by most credentials: decoding must still be right
		u2, p2, ok2 := parseBasic("Basic "+basicEncode(user, password), small[:0])
		if !ok2 || string(u2) != user || string(p2) != password {
			t.Fatalf("round trip of %q/%q gave %q/%q/%v", user, password, u2, p2, ok2)
		}
	})
}

func basicEncode(user, password string) string {
	req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	req.SetBasicAuth(user, password)
	return strings.TrimPrefix(req.Header.Get("Authorization"), "Basic ")
}

func TestRemoveHopByHop(t *testing.T) {
	h := http.Header{
		"Connection":          {"keep-alive, X-Private"},
		"X-Private":           {"internal"},
		"Keep-Alive":          {"timeout=5"},
		"Proxy-Authorization": {"Basic x"},
		"Proxy-Connection":    {"keep-alive"},
		"Te":                  {"gzip"},
		"Trailer":             {"X-T"},
		"Upgrade":             {"h2c"},
		"X-End-To-End":        {"kept"},
	}
	removeHopByHop(h, isUpgrade(h))
	if len(h) != 1 || h.Get("X-End-To-End") != "kept" {
		t.Errorf("left %v, want only X-End-To-End", h)
	}

	ws := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Keep-Alive": {"1"}}
	removeHopByHop(ws, isUpgrade(ws))
	if ws.Get("Upgrade") != "websocket" || ws.Get("Connection") != "Upgrade" || ws.Get("Keep-Alive") != "" {
		t.Errorf("WebSocket handshake headers: %v", ws)
	}

	// TE goes on as "trailers" alone: gRPC needs it end to end, HTTP/2
	// allows no other value, and the rest is the connection's.
	for _, te := range [][]string{{"trailers"}, {"Trailers"}, {"gzip, trailers"}, {"deflate", "trailers;q=0.5"}} {
		h := http.Header{"Te": te}
		removeHopByHop(h, false)
		if got := h["Te"]; len(got) != 1 || got[0] != "trailers" {
			t.Errorf("TE %q became %q, want [trailers]", te, got)
		}
	}
}

func TestClassify(t *testing.T) {
	denied := &dialError{code: policy.CodeDestinationIPDenied, err: errors.New("dial 127.0.0.2:80 denied")}
	dns := &dialError{code: policy.CodeDNSFailure, err: &net.DNSError{Err: "no such host", Name: "x.internal", IsNotFound: true}}
	refused := &dialError{code: policy.CodeUpstreamUnreachable, err: errors.New("dial tcp 10.1.2.3:443: connect: connection refused")}
	cases := []struct {
		name string
		err  error
		code policy.Code
	}{
		{"address denied", fmt.Errorf("wrapped: %w", denied), policy.CodeDestinationIPDenied},
		{"dns", dns, policy.CodeDNSFailure},
		{"refused", refused, policy.CodeUpstreamUnreachable},
		{"dial timeout", &dialError{code: policy.CodeUpstreamTimeout, err: context.DeadlineExceeded}, policy.CodeUpstreamTimeout},
		{"header timeout", timeoutErr{}, policy.CodeUpstreamTimeout},
		{"certificate", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, policy.CodeUpstreamUnreachable},
		{"anything else", errors.New("read tcp 10.0.0.1:1234: reset"), policy.CodeUpstreamUnreachable},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := classify(c.err, "acme", "api.example.com:443")
			code, msg := o.code, o.reason
			if code != c.code {
				t.Errorf("code %s, want %s", code, c.code)
			}
			for _, leak := range []string{"127.0.0.2", "10.1.2.3", "10.0.0.1", "dial tcp", "connection refused"} {
				if strings.Contains(msg, leak) {
					t.Errorf("message %q leaks %q", msg, leak)
				}
			}
			if !strings.Contains(msg, "api.example.com:443") {
				t.Errorf("message %q does not name the destination", msg)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "net/http: timeout awaiting response headers" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestRequestIDsAreUniqueAndSorted(t *testing.T) {
	base := time.UnixMilli(1_700_000_000_000)
	seen := map[string]bool{}
	prev := ""
	for i := range 1000 {
		id := newRequestID(base.Add(time.Duration(i) * time.Millisecond))
		if len(id) != 26 || strings.Trim(id, crockford) != "" {
			t.Fatalf("malformed id %q", id)
		}
		if seen[id] || id <= prev {
			t.Fatalf("id %q repeats or sorts before %q", id, prev)
		}
		seen[id], prev = true, id
	}
}

func TestLimitListenerClosesConnectionsPastTheLimit(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := newLimitListener(inner, 2, discardLogger(), nil)
	defer ln.Close()
	accepted := make(chan net.Conn, 3)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	var first, second net.Conn
	for i := range 3 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
		// The first two carry a tenant's work (authenticated, not idle):
		// neither can make room for the third.
		switch i {
		case 0:
			first = <-accepted
			first.(*countedConn).markAuthenticated()
		case 1:
			second = <-accepted
			second.(*countedConn).markAuthenticated()
		}
	}
	// The third connection is closed by the listener: its read ends.
	_ = clients[2].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := clients[2].Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("third connection was not closed: %v", err)
	}
	// Closing one frees a slot, once however often it is closed.
	first.Close()
	first.Close()
	c4, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c4.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a freed slot was not reused")
	}
	second.Close()
	if n := ln.openConns(); n != 0 {
		t.Errorf("open = %d after closing everything", n)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// At max_connections, the connection idle the longest between keep-alive
// requests is closed to make room; busy ones never are.
func TestLimitListenerMakesRoomFromIdleConnections(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := newLimitListener(inner, 2, discardLogger(), nil)
	hold := make(chan struct{})
	srv := &http.Server{
		ConnContext: connContext,
		ConnState:   connState,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			markHandling(r)
			if r.URL.Path == "/hold" {
				<-hold
			}
			io.WriteString(w, "ok")
		}),
	}
	go srv.Serve(ln)
	t.Cleanup(func() { close(hold); srv.Close() })

	addr := inner.Addr().String()
	get := func(c *rawConn, path string) error {
		_, _, err := c.exchange("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n")
		return err
	}

	idle := dialRaw(t, addr)
	if err := get(idle, "/"); err != nil {
		t.Fatal(err)
	}
	// The server marks a connection idle after the client may already have
	// read its response: wait for it, not for the read.
	idleConns := func() int {
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
	busy := dialRaw(t, addr)
	fmt.Fprintf(busy, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
	waitUntil(t, func() bool { return ln.openConns() == 2 && idleConns() == 1 })

	if err := get(dialRaw(t, addr), "/"); err != nil {
		t.Fatalf("a new connection at the limit: %v; want the idle one closed for it", err)
	}
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the idle connection was not closed: %v", err)
	}
	// Now the third is idle and the held one busy: a fourth takes the
	// third's place, never the busy one's.
	waitUntil(t, func() bool { return idleConns() == 1 })
	if err := get(dialRaw(t, addr), "/"); err != nil {
		t.Fatalf("a fourth connection: %v", err)
	}
	if n := ln.evicted.Load(); n != 2 {
		t.Errorf("%d idle connections closed, want 2", n)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A name that does not exist, a resolver that failed and one that did not
// answer in time are three different things to fix: the message says which.
func TestClassifyDNSFailures(t *testing.T) {
	cases := []struct {
		name     string
		err      error
		say, not string
	}{
		{"no such host", &net.DNSError{Err: "no such host", Name: "x.test", IsNotFound: true}, "check the spelling", "resolver"},
		{"servfail", &net.DNSError{Err: "server misbehaving", Name: "x.test", Server: "10.0.0.2:53", IsTemporary: true}, "resolver failed", "spelling"},
		{"resolver unreachable", &net.DNSError{Err: "read udp 10.0.0.1:5353->10.0.0.2:53: connection refused", Name: "x.test", Server: "10.0.0.2:53"}, "resolver failed", "spelling"},
		{"resolver timeout", &net.DNSError{Err: "i/o timeout", Name: "x.test", Server: "10.0.0.2:53", IsTimeout: true}, "did not answer in time", "spelling"},
		{"lookup cut by dns_timeout", fmt.Errorf("lookup: %w", context.DeadlineExceeded), "did not answer in time", "spelling"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := &dialError{code: policy.CodeDNSFailure, dns: dnsFaultOf(c.err), err: c.err}
			o := classify(err, "acme", "api.example.com:443")
			code, msg := o.code, o.reason
			if code != policy.CodeDNSFailure || statusFor(code) != http.StatusBadGateway {
				t.Errorf("code %s (status %d), want dns_failure (502)", code, statusFor(code))
			}
			if !strings.Contains(msg, c.say) || strings.Contains(msg, c.not) || !strings.Contains(msg, "api.example.com:443") {
				t.Errorf("message %q: want it to say %q, not %q, and name the destination", msg, c.say, c.not)
			}
			for _, leak := range []string{"10.0.0.2", "10.0.0.1", "read udp", "i/o timeout"} {
				if strings.Contains(msg, leak) {
					t.Errorf("message %q leaks %q", msg, leak)
				}
			}
		})
	}
}

// ulidReference is the plain 128-bit encoding of a ULID: the number
// ms<<80 | random<<16 | extra as 26 base32 digits, five bits at a time
// from the end.
func ulidReference(ms, random uint64, extra uint16) string {
	hi := (ms&(1<<48-1))<<16 | random>>48
	lo := random<<16 | uint64(extra)
	var out [26]byte
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

// FuzzEncodeULID holds the request id's encoding to the reference, whose
// digits, read as one number, are the time then the random bits.
func FuzzEncodeULID(f *testing.F) {
	f.Add(uint64(1_700_000_000_000), uint64(0x0123456789abcdef), uint16(0xbeef))
	f.Add(uint64(1<<48-1), ^uint64(0), ^uint16(0))
	f.Add(uint64(0), uint64(0), uint16(0))
	f.Fuzz(func(t *testing.T, ms, random uint64, extra uint16) {
		got := encodeULID(ms, random, extra)
		if want := ulidReference(ms, random, extra); string(got[:]) != want {
			t.Fatalf("encodeULID(%d, %#x, %#x) = %s, want %s", ms, random, extra, got[:], want)
		}
	})
}
