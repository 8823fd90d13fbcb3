package e2e

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// TestReportModeAuditKeepsTheWouldBeDenial: a request or tunnel that only
// report mode let through, and whose upstream then could not be reached,
// is audited with what the client got (decision report, the upstream's
// code) and, beside it, what enforce would have answered (report_code,
// report_reason). Without them the line would show an upstream failure
// and no trace of the destination the tenant has no rule for.
func TestReportModeAuditKeepsTheWouldBeDenial(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	closedPort := portOf(t, freeAddr(t)) // nothing listens there
	g := startGateway(t, configFiles{
		"gateway.yaml":         gatewayYAML(""),
		"tenants/lenient.yaml": tenantYAML(lenient, "mode: report\n"+allowRule("api", []string{hostAPI}, origin.port)),
	})
	authority := hostOther + ":" + strconv.Itoa(closedPort)
	expectBoth := func(t *testing.T, match func(map[string]any) bool) {
		t.Helper()
		rec := g.waitAudit(t, match)
		if rec["decision"] != "report" || rec["code"] != "upstream_unreachable" || auditNumber(rec, "status") != http.StatusBadGateway {
			t.Errorf("audit decision %v, code %v, status %v; want report, upstream_unreachable, 502 (what the client got); line %v",
				rec["decision"], rec["code"], rec["status"], rec)
		}
		reason, _ := rec["report_reason"].(string)
		if rec["report_code"] != "destination_not_allowed" || !strings.Contains(reason, hostOther) {
			t.Errorf("audit report_code %v, report_reason %q; want destination_not_allowed and a reason naming %s; line %v",
				rec["report_code"], reason, hostOther, rec)
		}
	}

	t.Run("plain", func(t *testing.T) {
		g.expectRefused(t, http.MethodGet, lenient.header(), "http://"+authority+"/report-plain", http.StatusBadGateway, "upstream_unreachable", origin)
		expectBoth(t, auditWith("tenant", lenient.tenant, "path", "/report-plain"))
	})
	t.Run("tunnel", func(t *testing.T) {
		g.expectRefusedCONNECT(t, lenient.header(), authority, http.StatusBadGateway, "upstream_unreachable", origin)
		expectBoth(t, auditWith("tenant", lenient.tenant, "scheme", "tunnel", "port", closedPort))
	})
	t.Run("a report-mode pass that went well says it twice", func(t *testing.T) {
		g.expectAllowedGET(t, lenient, origin.url(hostOther, "/report-ok"))
		rec := g.waitAudit(t, auditWith("tenant", lenient.tenant, "path", "/report-ok"))
		if rec["decision"] != "report" || rec["code"] != "destination_not_allowed" || rec["report_code"] != "destination_not_allowed" ||
			rec["reason"] == nil || rec["reason"] != rec["report_reason"] {
			t.Errorf("audit line %v; want decision report with code and report_code destination_not_allowed, reason = report_reason", rec)
		}
	})
	t.Run("an allowed request has no report fields", func(t *testing.T) {
		g.expectAllowedGET(t, lenient, origin.url(hostAPI, "/allowed"))
		rec := g.waitAudit(t, auditWith("tenant", lenient.tenant, "path", "/allowed"))
		if _, ok := rec["report_code"]; ok || rec["decision"] != "allow" {
			t.Errorf("audit line %v; want decision allow and no report_code", rec)
		}
	})
}
