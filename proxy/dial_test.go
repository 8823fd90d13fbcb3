package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/policy"
)

// TestDialAddrRefusesDeniedAddress proves the last line of the dialer: a
// connection to a denied address is refused by the socket's own check,
// even when the caller skipped (or got wrong) the check before dialling.
// Only loopback listeners are used, so nothing could leave the machine
// even if the check were missing.
func TestDialAddrRefusesDeniedAddress(t *testing.T) {
	for _, c := range []struct {
		name    string
		listen  string
		allow   []netip.Prefix
		refused bool
	}{
		{"IPv4 loopback, denied", "127.0.0.1:0", nil, true},
		{"IPv6 loopback, denied", "[::1]:0", nil, true},
		{"IPv4 loopback, opened by allow_cidrs", "127.0.0.1:0", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", c.listen)
			if err != nil {
				t.Skipf("cannot listen on %s: %v", c.listen, err)
			}
			defer ln.Close()
			d := newDialer(policy.Gateway{DialTimeout: 5 * time.Second, DNSTimeout: 5 * time.Second, IdleTimeout: time.Minute},
				allowlist.NewAddressPolicy(allowlist.AddressConfig{Allow: c.allow}), nil)
			target := ln.Addr().(*net.TCPAddr).AddrPort()
			conn, err := d.dialAddr(context.Background(), "tcp", target)
			if !c.refused {
				if err != nil {
					t.Fatalf("dialAddr(%s) = %v; want connected", target, err)
				}
				conn.Close()
				return
			}
			if err == nil {
				conn.Close()
				t.Fatalf("dialAddr(%s) connected; want refused by the address check", target)
			}
			var addrErr *allowlist.AddressError
			if !errors.As(err, &addrErr) {
				t.Fatalf("dialAddr(%s) = %v; want an *allowlist.AddressError", target, err)
			}
			// The check runs before connect(2): the listener never sees a
			// connection, not even one the kernel completes alone.
			_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
			if accepted, err := ln.Accept(); err == nil {
				accepted.Close()
				t.Error("the listener accepted a connection from a refused dial")
			}
		})
	}
}

// TestShutdownStopsHostAddressRefresh: every gateway refreshes its host's
// addresses in a goroutine, which Shutdown ends; tests and reloads that
// build many gateways must not pile them up.
func TestShutdownStopsHostAddressRefresh(t *testing.T) {
	refreshers := func() int {
		buf := make([]byte, 1<<20)
		for {
			n := runtime.Stack(buf, true)
			if n < len(buf) {
				return strings.Count(string(buf[:n]), "allowlist.(*HostAddrs).Run")
			}
			buf = make([]byte, 2*len(buf))
		}
	}
	before := refreshers()
	g := testGateway(t, memoPolicy(t, "127.0.0.1", "80", map[string]string{"acme": "acme-token-1"}), &flakyWriter{})
	if got := refreshers(); got != before+1 {
		t.Fatalf("%d refresh goroutines after New, want %d", got, before+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for refreshers() != before {
		if time.Now().After(deadline) {
			t.Fatalf("%d refresh goroutines after Shutdown, want %d", refreshers(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An upstream connection the gateway keeps for reuse is idle after
// idle_timeout from its last byte either way: a request sent on it after
// a pause waits for its answer as long as on a new connection, not only
// for what was left of an idle timeout counted from when the connection
// was parked.
func TestPathReusedUpstreamConnectionIsIdleFromItsLastByte(t *testing.T) {
	t.Parallel()
	const idle = 6 * time.Second
	origin := startPathUpstream(t, "127.0.0.1", false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(idle * 7 / 8) // the upstream's pace: less than idle_timeout
		}
		io.WriteString(w, "answered "+r.URL.Path)
	}))
	g := startPathGateway(t, "limits:\n  idle_timeout: 6s\n", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI}, origin.port)),
	})
	client := g.client(t, pathAcme, nil)
	post := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Post(origin.url(zoneAPI, path), "text/plain", strings.NewReader("body"))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		return resp.StatusCode, pathBody(t, resp)
	}
	if status, body := post("/first"); status != http.StatusOK {
		t.Fatalf("first request: %d %q", status, body)
	}
	// The client's pause: the connection waits in the gateway's pool,
	// well within the pool's own limit (half of idle_timeout).
	time.Sleep(idle / 4)
	if status, body := post("/slow"); status != http.StatusOK || body != "answered /slow" {
		t.Errorf("request on the reused connection, answered %v after it was sent: %d %q", idle*7/8, status, body)
	}
	if n := origin.conns.Load(); n != 1 {
		t.Fatalf("the upstream saw %d connections; the second request must reuse the first's", n)
	}
}
