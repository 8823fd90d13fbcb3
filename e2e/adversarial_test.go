package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The standing adversarial suite. Each class of attack on the gateway has
// cases here or in a file named for it, all written as raw bytes where a
// client library would normalise them, all checked against upstreams that
// must not be reached:
//
//   - address forms, numeric host spellings, NAT64/6to4/Teredo, a network
//     namespace with the special addresses live: adversarial_addresses_test.go,
//     TestNetworkSafety, report_network_test.go;
//   - path spellings, secret echoes in other encodings, query values in
//     messages: adversarial_content_test.go;
//   - upgrades around method and path rules: upgrade_rules_test.go;
//   - the ClientHello's server name, bytes behind a CONNECT: tunnel_bytes_test.go;
//   - stalled, unauthenticated and slow-reading clients, the connection
//     budget: timeouts_test.go, TestMaxConnections;
//   - config files as a read primitive: confine_test.go;
//   - request smuggling, Host against URL, userinfo tricks, bytes after a
//     refused CONNECT, redirects, header bombs, tunnel floods: this file.
//
// A change to the gateway that lets any of them through fails here.

// TestAdversarialRequests sends request heads meant to smuggle, confuse or
// redirect the gateway. The tenant may reach one upstream, and only GET or
// POST under /ok/ there; a canary on another name must never see a
// connection, and the allowed upstream must never see another path.
func TestAdversarialRequests(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/ok/redirect" {
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
			return
		}
		io.WriteString(w, greeting(r.URL.Path))
	}))
	canary := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, yamlf(`
			rules:
			  - name: api
			    hosts: [%q]
			    ports: [%d]
			    methods: [GET, POST]
			    paths: ["/ok/"]
		`, hostAPI, origin.port)),
	})
	api, other := origin.authority(hostAPI), canary.authority(hostOther)
	auth := "Proxy-Authorization: " + acme.header() + "\r\n"

	cases := []struct {
		name   string
		raw    string
		status int    // of the first response
		code   string // its X-Egressgw-Error; "" for the upstream's own answer
	}{
		{"Content-Length and Transfer-Encoding together",
			"POST http://" + api + "/ok/a HTTP/1.1\r\nHost: " + api + "\r\n" + auth +
				"Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://" + api + "/admin HTTP/1.1\r\nHost: " + api + "\r\n\r\n",
			http.StatusBadRequest, "bad_request"},
		{"Transfer-Encoding before Content-Length, in another case",
			"POST http://" + api + "/ok/a HTTP/1.1\r\nHost: " + api + "\r\n" + auth +
				"transfer-encoding: chunked\r\ncontent-LENGTH: 3\r\n\r\n0\r\n\r\n",
			http.StatusBadRequest, "bad_request"},
		{"a body that holds both header names is no smuggling sign",
			"POST http://" + api + "/ok/body HTTP/1.1\r\nHost: " + api + "\r\n" + auth +
				"Content-Length: 52\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
			http.StatusOK, ""},
		{"two different Content-Lengths",
			"POST http://" + api + "/ok/a HTTP/1.1\r\nHost: " + api + "\r\n" + auth +
				"Content-Length: 5\r\nContent-Length: 44\r\n\r\nhelloGET http://" + api + "/admin HTTP/1.1\r\n\r\n",
			http.StatusBadRequest, "bad_request"},
		{"Transfer-Encoding the gateway does not speak",
			"POST http://" + api + "/ok/a HTTP/1.1\r\nHost: " + api + "\r\n" + auth +
				"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
			http.StatusBadRequest, "bad_request"},
		{"Host header naming another server than the URL",
			"GET http://" + api + "/ok/host HTTP/1.1\r\nHost: " + other + "\r\n" + auth + "\r\n",
			http.StatusOK, ""},
		{"userinfo that looks like the allowed host",
			"GET http://" + api + "@" + other + "/ok/a HTTP/1.1\r\nHost: " + other + "\r\n" + auth + "\r\n",
			http.StatusForbidden, "destination_not_allowed"},
		{"back slash before an at sign",
			"GET http://" + other + "\\@" + api + "/ok/a HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "\r\n",
			http.StatusBadRequest, "bad_request"},
		{"path outside the rule",
			"GET http://" + api + "/admin HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "\r\n",
			http.StatusForbidden, "destination_not_allowed"},
		{"method outside the rule",
			"DELETE http://" + api + "/ok/a HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "\r\n",
			http.StatusForbidden, "destination_not_allowed"},
		{"bytes behind a refused CONNECT",
			"CONNECT " + other + " HTTP/1.1\r\nHost: " + other + "\r\n" + auth + "\r\nGET / HTTP/1.1\r\nHost: " + other + "\r\n\r\n",
			http.StatusForbidden, "destination_not_allowed"},
		{"bytes behind an unauthenticated CONNECT",
			"CONNECT " + api + " HTTP/1.1\r\nHost: " + api + "\r\n\r\nGET /admin HTTP/1.1\r\nHost: " + api + "\r\n\r\n",
			http.StatusProxyAuthRequired, "proxy_auth_required"},
		{"CONNECT to a tenant rule that restricts paths",
			"CONNECT " + api + " HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "\r\nGET /admin HTTP/1.1\r\nHost: " + api + "\r\n\r\n",
			http.StatusForbidden, "destination_not_allowed"},
		{"an unauthenticated request pipelined behind an authenticated one",
			"GET http://" + api + "/ok/first HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "\r\n" +
				"GET http://" + api + "/admin HTTP/1.1\r\nHost: " + api + "\r\n\r\n",
			http.StatusOK, ""},
		{"credentials named hop-by-hop",
			"GET http://" + api + "/ok/hop HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "Connection: Proxy-Authorization\r\n\r\n",
			http.StatusOK, ""},
		{"a header larger than max_header_bytes",
			"GET http://" + api + "/ok/a HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "X-Bomb: " + strings.Repeat("b", 128<<10) + "\r\n\r\n",
			http.StatusBadRequest, "bad_request"},
		{"a redirect to the metadata address is passed on, not followed",
			"GET http://" + api + "/ok/redirect HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "\r\n",
			http.StatusFound, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			canaryBefore := canary.reached()
			conn := g.dial(t)
			go conn.Write([]byte(c.raw))
			reader := bufio.NewReader(conn)
			resp, err := http.ReadResponse(reader, nil)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status || resp.Header.Get("X-Egressgw-Error") != c.code {
				t.Errorf("status %d, code %q, want %d %q; body %q", resp.StatusCode, resp.Header.Get("X-Egressgw-Error"), c.status, c.code, body)
			}
			// Whatever followed the first request on the connection is
			// answered by the gateway or not at all.
			conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if next, err := http.ReadResponse(reader, nil); err == nil {
				if next.StatusCode < 400 || next.Header.Get("X-Egressgw-Error") == "" {
					t.Errorf("a second response %d without the gateway's error code: something behind the first request got through", next.StatusCode)
				}
				next.Body.Close()
			}
			if n := canary.reached() - canaryBefore; n != 0 {
				t.Errorf("the canary was reached %d times", n)
			}
			for _, r := range origin.requests(func(r seenRequest) bool { return !strings.HasPrefix(r.Path, "/ok/") }) {
				t.Errorf("the upstream got %s %s, outside the rule", r.Method, r.Path)
			}
			for _, r := range origin.requests(func(r seenRequest) bool { return r.Header.Get("Proxy-Authorization") != "" }) {
				t.Errorf("the upstream got the sandbox's credentials on %s", r.Path)
			}
		})
	}
}

// TestTunnelFloodStopsAtTheTenantDefault opens tunnels without pause for a
// tenant whose file sets no quota: the gateway's tenant_defaults (256 open
// requests and tunnels) must stop it, so one tenant cannot hold the whole
// connection budget.
func TestTunnelFloodStopsAtTheTenantDefault(t *testing.T) {
	t.Parallel()
	echoServer := startTCPServer(t, "127.0.0.1", echo)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("echo", []string{hostAPI}, echoServer.port)),
	})
	const defaultMaxConcurrent = 256
	authority := echoServer.authority(hostAPI)
	for i := range defaultMaxConcurrent {
		conn := g.tunnel(t, acme, authority)
		if i == 0 {
			pingThroughTunnel(t, conn)
		}
	}
	resp, _ := g.connect(t, acme.header(), authority)
	assertGatewayError(t, resp, http.StatusTooManyRequests, "concurrency_limited")
	if n := echoServer.reached(); n != defaultMaxConcurrent {
		t.Errorf("the upstream saw %d tunnels, want %d", n, defaultMaxConcurrent)
	}
}

// TestSlowHeadIsCut sends a request head a byte at a time and never ends
// it: the connection is closed once the head has taken longer than the
// gateway allows, whether or not the client ever authenticates.
func TestSlowHeadIsCut(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML("limits: { idle_timeout: 2s }\n"),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, origin.port)),
	})
	conn := g.dial(t)
	head := "GET " + origin.url(hostAPI, "/slow") + " HTTP/1.1\r\nHost: " + origin.authority(hostAPI) + "\r\nX-Slow: "
	closed := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, conn)
		closed <- err
	}()
	start := time.Now()
	for i := 0; ; i++ {
		select {
		case <-closed:
			if elapsed := time.Since(start); elapsed > scaled(10*time.Second) {
				t.Errorf("the slow head held its connection for %v", elapsed)
			}
			if origin.reached() != 0 {
				t.Errorf("the upstream was reached")
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
		b := "a"
		if i < len(head) {
			b = head[i : i+1]
		}
		if _, err := fmt.Fprint(conn, b); err != nil {
			return // closed while writing: cut, as it should be
		}
		if time.Since(start) > scaled(20*time.Second) {
			t.Fatal("the gateway never cut a head sent a byte every 100 ms")
		}
	}
}
