package e2e

import (
	"net/http"
	"testing"
)

// TestReportModeKeepsNetworkSafetyForTunnels: report mode lets a host the
// tenant has no rule for through, CONNECT included, but the address the
// name resolves to is still checked. The tenant below has no rule for
// hostRebind or hostMetadata, so only the address check can refuse them:
// were it skipped for report-mode tunnels, the victim would be reached.
func TestReportModeKeepsNetworkSafetyForTunnels(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	victim := startTCPServer(t, victimAddress, echo)
	g := startGateway(t, configFiles{
		"gateway.yaml":         gatewayYAML(""),
		"tenants/lenient.yaml": tenantYAML(lenient, "mode: report\n"+allowRule("api", []string{hostAPI}, origin.port)),
	})

	t.Run("report mode relaxes CONNECT to a host without a rule", func(t *testing.T) {
		// The same kind of target on an address the gateway may dial goes
		// through: the refusals below are the address check's alone.
		tunnel := g.tunnel(t, lenient, startTCPServer(t, "127.0.0.1", echo).authority(hostOther))
		pingThroughTunnel(t, tunnel)
		tunnel.Close() // a tunnel's audit line is written when it ends
		g.waitAudit(t, auditWith("tenant", lenient.tenant, "host", hostOther, "decision", "report"))
	})
	for _, authority := range []string{
		victim.authority(hostRebind), // resolves to 127.0.0.2; literals and metadata are in the proxy package's tests
	} {
		t.Run("CONNECT "+authority, func(t *testing.T) {
			g.expectRefusedCONNECT(t, lenient.header(), authority, http.StatusForbidden, "destination_ip_denied", victim)
		})
		t.Run("GET "+authority, func(t *testing.T) {
			g.expectRefused(t, http.MethodGet, lenient.header(), "http://"+authority+"/", http.StatusForbidden, "destination_ip_denied", victim)
		})
	}
}
