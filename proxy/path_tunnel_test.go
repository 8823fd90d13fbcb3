package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// Moved from e2e/core_test.go.
func TestPathIdleTunnelClosed(t *testing.T) {
	t.Parallel()
	echoServer := startPathTCPServer(t, "127.0.0.1", echoConn)
	g := startPathGateway(t, "limits:\n  idle_timeout: 1s\n", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("echo", []string{zoneAPI}, echoServer.port)),
	})
	tunnel := g.tunnel(t, pathAcme, echoServer.authority(zoneAPI))
	pingThroughTunnel(t, tunnel)

	const bound = 10 * time.Second
	_ = tunnel.SetReadDeadline(time.Now().Add(bound))
	_, err := tunnel.Read(make([]byte, 1))
	var netErr net.Error
	switch {
	case err == nil:
		t.Fatal("read from an idle tunnel returned data; the echo server sends nothing unasked")
	case errors.As(err, &netErr) && netErr.Timeout():
		t.Fatalf("idle tunnel still open after %v; idle_timeout is 1s", bound)
	}
}

// Moved from e2e/core_test.go.
func TestPathMaxConnections(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	echoServer := startPathTCPServer(t, "127.0.0.1", echoConn)
	g := startPathGateway(t, "limits:\n  max_connections: 2\n", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI}, origin.port, echoServer.port)),
	})
	var held []net.Conn
	for range 2 {
		tunnel := g.tunnel(t, pathAcme, echoServer.authority(zoneAPI))
		pingThroughTunnel(t, tunnel) // the gateway has surely accepted and counted it
		held = append(held, tunnel)
	}

	if served := tryThirdConnection(t, g, origin.url(zoneAPI, "/third")); served {
		t.Errorf("a third connection was served while max_connections: 2 were held")
	}

	held[0].Close()
	client := g.client(t, pathAcme, nil)
	eventually(t, func() error {
		resp, err := client.Get(origin.url(zoneAPI, "/after-release"))
		if err != nil {
			return fmt.Errorf("request after releasing a connection: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("request after releasing a connection: status %d", resp.StatusCode)
		}
		return nil
	})
}

// tryThirdConnection sends a request as acme on a new connection and
// reports whether it was served. Being refused at connect, closed, or
// answered with an error are all fine; hanging unanswered is not, because
// a client cannot tell that from a dead gateway.
func tryThirdConnection(t *testing.T, g *pathGateway, target string) (served bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Proxy-Authorization", pathAcme.auth())
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := req.WriteProxy(conn); err != nil {
		return false // closed by the gateway before we finished writing
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	var netErr net.Error
	switch {
	case errors.As(err, &netErr) && netErr.Timeout():
		t.Fatalf("a connection over max_connections was neither refused nor closed within 5s")
	case err != nil:
		return false // closed: refused
	}
	resp.Body.Close()
	t.Logf("connection over the limit answered with status %d", resp.StatusCode)
	return resp.StatusCode == http.StatusOK
}

// Moved from e2e/report_network_test.go: report mode lets a host the
// tenant has no rule for through, CONNECT included, but the address the
// name resolves to is still checked. The tenant below has no rule for
// zoneRebind or zoneMetadata, so only the address check can refuse them:
// were it skipped for report-mode tunnels, the victim would be reached.
func TestPathReportModeKeepsNetworkSafetyForTunnels(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	victim := startPathTCPServer(t, zoneVictim, echoConn)
	g := startPathGateway(t, "", map[string]string{
		"tenants/lenient.yaml": pathLenient.yaml("mode: report\n" + pathRule("api", []string{zoneAPI}, origin.port)),
	})

	t.Run("report mode relaxes CONNECT to a host without a rule", func(t *testing.T) {
		// The same kind of target on an address the gateway may dial goes
		// through: the refusals below are the address check's alone.
		tunnel := g.tunnel(t, pathLenient, startPathTCPServer(t, "127.0.0.1", echoConn).authority(zoneOther))
		pingThroughTunnel(t, tunnel)
		tunnel.Close() // a tunnel's audit line is written when it ends
		g.audit.wait(t, "tenant", pathLenient.id, "host", zoneOther, "decision", "report")
	})
	for _, authority := range []string{
		victim.authority(zoneRebind), // resolves to 127.0.0.2
		victim.authority(zoneVictim),
		victim.authority("::ffff:" + zoneVictim),
		net.JoinHostPort(zoneMetadata, "80"), // resolves to 169.254.169.254; refused before any dial
	} {
		t.Run("CONNECT "+authority, func(t *testing.T) {
			g.expectRefusedCONNECT(t, pathLenient.auth(), authority, http.StatusForbidden, "destination_ip_denied", victim)
		})
		t.Run("GET "+authority, func(t *testing.T) {
			g.expectRefused(t, http.MethodGet, pathLenient.auth(), "http://"+authority+"/", http.StatusForbidden, "destination_ip_denied", victim)
		})
	}
}
