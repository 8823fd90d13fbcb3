package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

var redactee = credentials{tenant: "redactee", token: "redactee-token-3f8e1b0c92"}

// planted are the sensitive values the sandbox sends; none may reach the
// upstream or any log.
var planted = []string{"alice@example.com", "4111 1111 1111 1111", "hunter2-password", "123-45-6789", "536-22-8714"}

func TestRedaction(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", jsonEcho)
	g := newGateway(t)
	g.env = append(g.env, "E2E_REDACTION_KEY=e2e-redaction-hmac-key-0123456789")
	g.serve(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			redaction:
			  hmac_key: { env: E2E_REDACTION_KEY }
			  max_body_bytes: 64KiB
			  profiles:
			    pii:
			      detectors: [email, credit_card, us_ssn]
			      json_fields: ["password", "*.ssn"]
			      action: mask
			    pseudonymise:
			      detectors: [email]
			      action: hash
			    internal:
			      json_fields: ["internal_id"]
			      action: drop
		`)),
		"connectors/crm.yaml": yamlf(`
			name: crm
			hosts: [%q]
			ports: [%d]
			redact: { request: [pii], response: [internal] }
		`, hostAPI, origin.port),
		"connectors/analytics.yaml": yamlf(`
			name: analytics
			hosts: [%q]
			ports: [%d]
			redact: { request: [pseudonymise] }
		`, hostOther, origin.port),
		"tenants/redactee.yaml": tenantYAML(redactee, "connectors: [crm, analytics]\n"),
	})
	client := g.client(t, redactee)

	t.Run("request body and query redacted before they leave", func(t *testing.T) {
		body := `{"email":"alice@example.com","card":"4111 1111 1111 1111","password":"hunter2-password","user":{"ssn":"123-45-6789"},"note":"call 536-22-8714 please","count":3}`
		resp, err := client.Post(origin.url(hostAPI, "/v1/contacts?contact=alice@example.com"), "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var echoed map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&echoed); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, %v", resp.StatusCode, err)
		}
		resp.Body.Close()
		seen := origin.requestsTo("/v1/contacts")
		if len(seen) != 1 {
			t.Fatalf("upstream saw %d requests", len(seen))
		}
		sent := echoed["body"].(string) + " " + seen[0].Query
		for _, value := range planted {
			if strings.Contains(sent, value) {
				t.Errorf("%q left the gateway: %s", value, sent)
			}
		}
		for _, mark := range []string{"[REDACTED:email]", "[REDACTED:credit_card]", "[REDACTED:password]", "[REDACTED:*.ssn]", "[REDACTED:us_ssn]"} {
			if !strings.Contains(sent, mark) {
				t.Errorf("upstream body lacks %s: %s", mark, sent)
			}
		}
		if !json.Valid([]byte(echoed["body"].(string))) || !strings.Contains(echoed["body"].(string), `"count":3`) {
			t.Errorf("the redacted body is not the same JSON otherwise: %s", echoed["body"])
		}
		if _, leaked := echoed["internal_id"]; leaked {
			t.Errorf("the response field internal_id reached the client: %v", echoed)
		}
	})

	// The stable hash and the oversized body are in
	// the proxy package's tests.
	t.Run("metrics, audit and logs", func(t *testing.T) {
		samples, err := g.metrics()
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := sumMetric(samples, "egressgw_redactions_total", map[string]string{"profile": "pii", "detector": "email"}); n < 2 {
			t.Errorf("redactions_total{pii,email} = %v, want >= 2 (body and query)", n)
		}
		rec := g.waitAudit(t, auditWith("tenant", redactee.tenant, "path", "/v1/contacts"))
		if r, _ := rec["redactions"].([]any); len(r) == 0 {
			t.Errorf("audit line lists no redactions: %v", rec)
		}
		for _, value := range planted {
			for name, text := range map[string]string{"stdout": g.stdout.String(), "stderr": g.stderr.String()} {
				if strings.Contains(text, value) {
					t.Errorf("%q appears in the gateway's %s", value, name)
				}
			}
		}
	})
}
