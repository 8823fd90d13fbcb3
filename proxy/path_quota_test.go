package proxy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
)

// openRequests is what /v1/tenants/ID/usage reports open for tenant:
// requests and tunnels holding a concurrency slot.
func (g *pathGateway) openRequests(t *testing.T, tenant string) int {
	t.Helper()
	body := g.admin(t, "/v1/tenants/"+tenant+"/usage")
	var u struct {
		Open int `json:"open"`
	}
	if err := json.Unmarshal([]byte(body), &u); err != nil {
		t.Fatalf("/v1/tenants/%s/usage: %v; body %q", tenant, err, body)
	}
	return u.Open
}

// assertQuotaRejections checks egressgw_quota_rejections_total for tenant
// and kind.
func (g *pathGateway) assertQuotaRejections(t *testing.T, tenant, kind string, want int) {
	t.Helper()
	labels := map[string]string{"tenant": tenant, "kind": kind}
	if got, _ := g.metric(t, "egressgw_quota_rejections_total", labels); got != float64(want) {
		t.Errorf("egressgw_quota_rejections_total%v is %v, want %d", labels, got, want)
	}
}

// Moved from e2e/quota_test.go.
func TestPathQuotaConcurrency(t *testing.T) {
	t.Parallel()
	crowded := pathTenant{"crowded", "crowded-token-0d9a6e4c73"}
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	echoServer := startPathTCPServer(t, "127.0.0.1", echoConn)
	refusedPort := closedPort(t)
	const maxConcurrent = 2
	g := startPathGateway(t, "", map[string]string{
		"tenants/crowded.yaml": crowded.yaml(fmt.Sprintf("quota: { max_concurrent: %d }\n", maxConcurrent) +
			pathRule("api", []string{zoneAPI}, origin.port, echoServer.port, refusedPort)),
	})
	echoAuthority := echoServer.authority(zoneAPI)
	openSlots := func(t *testing.T, want int) func() error {
		return func() error {
			if open := g.openRequests(t, crowded.id); open != want {
				return fmt.Errorf("usage shows %d requests and tunnels open, want %d", open, want)
			}
			return nil
		}
	}
	holdTunnels := func(t *testing.T, n int) []net.Conn {
		t.Helper()
		var held []net.Conn
		for range n {
			tunnel := g.tunnel(t, crowded, echoAuthority)
			pingThroughTunnel(t, tunnel)
			held = append(held, tunnel)
		}
		return held
	}

	t.Run("held tunnels use the slots", func(t *testing.T) {
		held := holdTunnels(t, maxConcurrent)
		if err := openSlots(t, maxConcurrent)(); err != nil {
			t.Error(err)
		}
		g.expectRefusedCONNECT(t, crowded.auth(), echoAuthority, http.StatusTooManyRequests, "concurrency_limited", echoServer)
		g.expectRefused(t, http.MethodGet, crowded.auth(), origin.url(zoneAPI, "/crowded"), http.StatusTooManyRequests, "concurrency_limited", origin)

		// The slot comes free once the gateway sees the tunnel close.
		held[0].Close()
		eventually(t, openSlots(t, maxConcurrent-1))
		pingThroughTunnel(t, g.tunnel(t, crowded, echoAuthority))
		pingThroughTunnel(t, held[1])
		g.assertQuotaRejections(t, crowded.id, "concurrency", 2)
	})

	t.Run("failed requests give their slot back", func(t *testing.T) {
		eventually(t, openSlots(t, 0)) // the previous subtest's tunnels closed
		closed := net.JoinHostPort(zoneAPI, strconv.Itoa(refusedPort))
		// Sequential failures hold at most one slot at a time, however
		// late the gateway releases it; a leak would show as a 429.
		for i := range 3 * maxConcurrent {
			g.expectRefused(t, http.MethodGet, crowded.auth(), "http://"+closed+"/", http.StatusBadGateway, "upstream_unreachable")
			if t.Failed() {
				t.Fatalf("request %d to a port with nothing listening was not a 502; a failed request must give its slot back", i+1)
			}
		}
		for i := range 3 * maxConcurrent {
			g.expectRefusedCONNECT(t, crowded.auth(), closed, http.StatusBadGateway, "upstream_unreachable")
			if t.Failed() {
				t.Fatalf("CONNECT %d to a port with nothing listening was not a 502; a failed tunnel must give its slot back", i+1)
			}
		}
		eventually(t, openSlots(t, 0))
		holdTunnels(t, maxConcurrent)
	})
}
