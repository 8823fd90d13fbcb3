package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// listenPort80OrSkip listens on port 80 of a loopback address of its own
// (127.a.b.c), where an http:// URL without a port goes.
func listenPort80OrSkip(t *testing.T) net.Listener {
	t.Helper()
	for range 8 {
		ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(256), 1+rand.IntN(250))
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "80"))
		if err == nil {
			return ln
		}
		if errors.Is(err, syscall.EACCES) {
			t.Skipf("cannot listen on port 80 (http:// URLs without a port go there): %v", err)
		}
	}
	t.Skip("no free loopback address with port 80")
	return nil
}

// nodeOrSkip returns node, with undici installed for it.
func nodeOrSkip(t *testing.T) string {
	t.Helper()
	node := lookPathOrSkip(t, "node")
	if _, err := os.Stat(filepath.Join("testdata", "node", "node_modules", "undici")); err != nil {
		t.Skip("undici is not installed; run `npm install` in e2e/testdata/node to exercise Node's proxy agents")
	}
	return node
}

// TestNodePlainHTTPThroughTunnel: Node's undici (EnvHttpProxyAgent, as a
// sandbox's HTTP_PROXY sets it up) sends an http:// URL through a CONNECT
// tunnel to port 80. The gateway serves what the tunnel carries as plain
// HTTP: a path the tenant's rule allows is served, one it does not is the
// gateway's 403 that Node reads as the response, with the JSON error, and
// never reaches the upstream. Each request has an audit line of scheme
// http. With proxyTunnel: false the same requests go as absolute URIs
// and meet the same rules.
func TestNodePlainHTTPThroughTunnel(t *testing.T) {
	t.Parallel()
	node := nodeOrSkip(t)
	up := startUpstreamOn(t, listenPort80OrSkip(t), false, nil)
	g := startGateway(t, configFiles{
		"gateway.yaml": yamlf(`
			network:
			  allow_cidrs: ["%s/32"]
			  dns_servers: [%q]
		`, up.ip, testDNS.Addr()),
		"tenants/acme.yaml": tenantYAML(acme, yamlf(`
			rules:
			  - name: api
			    hosts: [%q]
			    ports: [80]
			    methods: [GET]
			    paths: ["/allowed/"]
		`, up.ip)),
	})
	env := clientEnv("HTTP_PROXY="+g.proxyURL(acme), "http_proxy="+g.proxyURL(acme))
	script := filepath.Join("testdata", "node", "fetch-env.mjs")

	for _, mode := range []struct {
		name, scheme string
		args         []string
	}{
		{"tunnelled", "http", nil},
		{"proxyTunnel false", "http", []string{"--no-tunnel"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			allowed := "/allowed/" + strings.ReplaceAll(mode.name, " ", "-")
			res := run(t, env, "", node, append(append([]string{script}, mode.args...), "http://"+up.ip+allowed)...)
			if res.exitCode != 0 || !strings.HasPrefix(res.stdout, "200\n") {
				t.Fatalf("node exit %d, want 0 and status 200; output:\n%s", res.exitCode, res.output())
			}
			assertServed(t, up, allowed, res.stdout)

			refused := "/secret/" + strings.ReplaceAll(mode.name, " ", "-")
			res = run(t, env, "", node, append(append([]string{script}, mode.args...), "http://"+up.ip+refused)...)
			status, body, _ := strings.Cut(res.stdout, "\n")
			var e gatewayError
			if res.exitCode != 0 || status != "403" || json.Unmarshal([]byte(strings.TrimSpace(body)), &e) != nil ||
				e.Error != "destination_not_allowed" || !strings.Contains(e.Message, refused) {
				t.Fatalf("node exit %d; want 0, status 403 and the gateway's JSON error naming the path; output:\n%s", res.exitCode, res.output())
			}
			if seen := up.requestsTo(refused); len(seen) != 0 {
				t.Errorf("the upstream served %s, which the gateway refused", refused)
			}
			for path, code := range map[string]string{allowed: "ok", refused: "destination_not_allowed"} {
				g.waitAudit(t, auditWith("scheme", mode.scheme, "path", path, "code", code, "host", up.ip))
			}
		})
	}
	// The tunnels have audit lines of their own.
	g.waitAudit(t, auditWith("method", "CONNECT", "host", up.ip, "code", "ok"))
}
