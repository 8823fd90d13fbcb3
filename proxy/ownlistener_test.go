package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// A request to the gateway's own listeners is refused as the gateway
// itself, which no setting opens: the message must not send the tenant
// to network.allow_cidrs (which lists 127.0.0.1 here already, and still
// does not open them), and nothing may reach either listener.
func TestOwnListenerRefusalSaysItIsTheGateway(t *testing.T) {
	proxyLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxy := &countingListener{Listener: proxyLn}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := &countingListener{Listener: adminLn}
	go func() { // the admin listener: counts, answers nothing
		for {
			c, err := admin.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { admin.Close() })
	proxyAddr := proxyLn.Addr().(*net.TCPAddr).AddrPort()
	adminAddr := adminLn.Addr().(*net.TCPAddr).AddrPort()

	sum := sha256.Sum256([]byte(benchToken))
	snap, err := policy.Load(fstest.MapFS{
		"gateway.yaml": {Data: []byte("network: { allow_cidrs: [\"127.0.0.1/32\"] }\n")},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) +
			"\" }\nrules:\n  - { name: loopback, hosts: [\"127.0.0.1\"], ports: [" +
			itoa(proxyAddr.Port()) + ", " + itoa(adminAddr.Port()) + "] }\n")},
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{
		Logger:    slog.New(slog.DiscardHandler),
		Audit:     io.Discard,
		Registry:  prometheus.NewRegistry(),
		Quota:     quota.NewMemory(quota.MemoryOptions{}),
		Bandwidth: quota.NewBandwidth(quota.BandwidthOptions{}),
		Settings:  snap.Gateway,
		Listeners: []netip.AddrPort{proxyAddr, adminAddr},
	})
	if err != nil {
		t.Fatal(err)
	}
	g.Apply(snap)
	go g.Serve(proxy)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	})

	for _, tc := range []struct {
		name, method string
		target       netip.AddrPort
		listener     *countingListener
	}{
		{"GET to the admin listener", http.MethodGet, adminAddr, admin},
		{"CONNECT to the admin listener", http.MethodConnect, adminAddr, admin},
		{"GET to the proxy listener itself", http.MethodGet, proxyAddr, proxy},
		{"CONNECT to the proxy listener itself", http.MethodConnect, proxyAddr, proxy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.listener.accepted.Load()
			if tc.listener == proxy {
				before++ // the client's own connection to the gateway
			}
			conn, err := net.Dial("tcp", proxyAddr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(hangGuard))
			target := tc.target.String()
			if tc.method == http.MethodGet {
				target = "http://" + target + "/v1/config"
			}
			head := tc.method + " " + target + " HTTP/1.1\r\nHost: " + tc.target.String() +
				"\r\nProxy-Authorization: Basic " + basicEncode("acme", benchToken) + "\r\n\r\n"
			if _, err := conn.Write([]byte(head)); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: tc.method})
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct{ Error, Message string }
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("status %d, body not the gateway's JSON: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != http.StatusForbidden || body.Error != string(policy.CodeDestinationIPDenied) ||
				resp.Header.Get("X-Egressgw-Error") != string(policy.CodeDestinationIPDenied) {
				t.Errorf("status %d, error %q; want 403 destination_ip_denied", resp.StatusCode, body.Error)
			}
			if !strings.Contains(body.Message, "the gateway itself") || strings.Contains(body.Message, "allow_cidrs") {
				t.Errorf("message %q; want it to say the destination is the gateway itself, without pointing to network.allow_cidrs", body.Message)
			}
			if got := tc.listener.accepted.Load(); got != before {
				t.Errorf("the listener accepted %d connection(s) for a refused request", got-before)
			}
		})
	}
}
