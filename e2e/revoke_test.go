package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// expectClosedWithin fails unless conn is closed by the gateway within the
// reload window, rather than answering with data.
func expectClosedWithin(t *testing.T, what string, conn io.Reader) {
	t.Helper()
	closed := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		closed <- err
	}()
	select {
	case err := <-closed:
		if err == nil {
			t.Fatalf("read from the revoked %s returned data instead of closing", what)
		}
	case <-time.After(scaled(reloadWindow + time.Second)):
		t.Fatalf("the revoked %s is still open", what)
	}
}

// echoLine writes a line on an open connection and checks it comes back.
func echoLine(t *testing.T, conn net.Conn, reader *bufio.Reader, line string) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
	defer conn.SetDeadline(time.Time{})
	fmt.Fprintf(conn, "%s\n", line)
	got, err := reader.ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo of %q: %q, %v", line, got, err)
	}
}

// TestReloadClosesRevokedUpgrades: a plain request's upgraded (WebSocket)
// connection is revoked like a tunnel when the policy no longer allows it.
func TestReloadClosesRevokedUpgrades(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", upgradeEcho)
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("ws", []string{hostAPI}, origin.port)),
	})
	conn, reader := g.upgrade(t, origin, "/ws")
	echoLine(t, conn, reader, "before the reload")

	writeFile(t, filepath.Join(dir, "tenants", "acme.yaml"), tenantYAML(acme, allowRule("ws", []string{hostOther}, origin.port)))
	expectClosedWithin(t, "upgraded connection", reader)
	rec := g.waitAudit(t, auditWith("tenant", acme.tenant, "path", "/ws", "decision", "deny"))
	// The client had its 101: revoked is an audit code, not a refusal.
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "reload") || rec["code"] != "revoked" || auditNumber(rec, "status") != http.StatusSwitchingProtocols {
		t.Errorf("audit line of the revoked upgrade does not say why: %v", rec)
	}
}

// TestReloadClosesTunnelsToNewlyDeniedAddresses: a tunnel stays allowed by
// its tenant's rules, but the network policy no longer lets the gateway
// reach the address it dialled; the tunnel is closed.
func TestReloadClosesTunnelsToNewlyDeniedAddresses(t *testing.T) {
	t.Parallel()
	echoServer := startTCPServer(t, "127.0.0.1", echo)
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("echo", []string{hostAPI}, echoServer.port)),
	})
	tunnel := g.tunnel(t, acme, echoServer.authority(hostAPI))
	pingThroughTunnel(t, tunnel)

	// The same gateway.yaml without the loopback exception.
	writeFile(t, filepath.Join(dir, "gateway.yaml"), yamlf(`
		network:
		  dns_servers: [%q]
	`, testDNS.Addr()))
	expectClosedWithin(t, "tunnel", tunnel)
	rec := g.waitAudit(t, auditWith("tenant", acme.tenant, "method", "CONNECT", "decision", "deny"))
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "network policy") || rec["code"] != "revoked" || auditNumber(rec, "status") != http.StatusOK {
		t.Errorf("audit line of the revoked tunnel does not say why: %v", rec)
	}
	g.expectRefusedCONNECT(t, acme.header(), echoServer.authority(hostAPI), 403, "destination_ip_denied", echoServer)
}

// TestInFlightRequestFinishesUnderItsPolicy: a plain request already
// forwarded when a reload takes its permission away still completes; the
// next one is refused.
func TestInFlightRequestFinishesUnderItsPolicy(t *testing.T) {
	t.Parallel()
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	origin := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		io.WriteString(w, greeting(r.URL.Path))
	}))
	var releaseOnce sync.Once
	releaseSlow := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseSlow) // before the upstream's own cleanup waits for it
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"tenants/editor.yaml": tenantYAML(editor, allowRule("api", []string{hostAPI}, origin.port)),
	})
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	client := g.client(t, editor)
	go func() {
		resp, err := client.Get(origin.url(hostAPI, "/slow"))
		if err != nil {
			done <- result{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(body), err}
	}()
	select {
	case <-arrived:
	case <-time.After(scaled(5 * time.Second)):
		t.Fatal("the request never reached the upstream")
	}
	writeFile(t, filepath.Join(dir, "tenants", "editor.yaml"), tenantYAML(editor, allowRule("api", []string{hostOther}, origin.port)))
	g.expectStatusWithin(t, editor, origin.url(hostAPI, "/after-reload"), http.StatusForbidden)
	releaseSlow()
	select {
	case r := <-done:
		if r.err != nil || r.status != http.StatusOK || r.body != greeting("/slow") {
			t.Errorf("in-flight request: status %d, body %q, %v; want it to finish under the policy it started with", r.status, r.body, r.err)
		}
	case <-time.After(scaled(5 * time.Second)):
		t.Fatal("the in-flight request never finished")
	}
}
