package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// pathAuditFields are the fields docs/reference.md, "Audit line",
// promises on every audit line.
var pathAuditFields = []string{
	"time", "request_id", "tenant", "client", "method", "scheme", "host", "port", "path",
	"decision", "code", "rule", "status", "bytes_up", "bytes_down", "duration_ms", "hooks", "redactions",
}

// ruleIs reports whether a decision's rule names want: a tenant rule by
// its name, a connector by its name with or without "@version".
func ruleIs(got any, want string) bool {
	name, ok := got.(string)
	return ok && (name == want || strings.HasPrefix(name, want+"@"))
}

func auditNumber(rec map[string]any, key string) float64 {
	n, _ := rec[key].(float64)
	return n
}

// Moved from e2e/core_test.go.
func TestPathAuditLog(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	tlsOrigin := startPathUpstream(t, "127.0.0.1", true, nil)
	g := startPathGateway(t, "", map[string]string{
		"connectors/weather.yaml": fmt.Sprintf("name: weather\nversion: 1\nhosts: [%q]\nports: [%d, %d]\n", zoneAPI, origin.port, tlsOrigin.port),
		"tenants/acme.yaml": pathAcme.yaml(fmt.Sprintf("connectors: [weather]\nrules:\n  - { name: no-paste, action: deny, hosts: [%q], ports: [%d] }\n",
			zonePaste, origin.port)),
	})
	acme := pathAcme.auth()
	assertFields := func(t *testing.T, rec map[string]any) {
		t.Helper()
		for _, field := range pathAuditFields {
			if _, ok := rec[field]; !ok {
				t.Errorf("audit line lacks %q: %v", field, rec)
			}
		}
	}

	t.Run("allowed request", func(t *testing.T) {
		resp := g.request(t, http.MethodGet, acme, origin.url(zoneAPI, "/forecast"))
		if body := pathBody(t, resp); resp.StatusCode != http.StatusOK || body != pathGreeting("/forecast") {
			t.Fatalf("status %d, body %q; want 200 and the upstream's greeting", resp.StatusCode, body)
		}
		rec := g.audit.wait(t, "path", "/forecast")
		assertFields(t, rec)
		// The id an allowed response carries finds its audit line.
		if id := resp.Header.Get("X-Request-Id"); id == "" || rec["request_id"] != id {
			t.Errorf("X-Request-Id %q, audit request_id %v; want the same id", id, rec["request_id"])
		}
		if !auditMatches(rec, "tenant", pathAcme.id, "method", "GET", "scheme", "http", "host", zoneAPI, "port", origin.port,
			"decision", "allow", "code", "ok", "status", 200) || !ruleIs(rec["rule"], "weather") {
			t.Errorf("audit line %v; want tenant acme, GET http %s:%d, allow ok by rule weather, status 200", rec, zoneAPI, origin.port)
		}
		if auditNumber(rec, "bytes_down") <= 0 {
			t.Errorf("audit bytes_down %v, want > 0 for a response with a body", rec["bytes_down"])
		}
	})
	t.Run("request in no policy", func(t *testing.T) {
		e := g.expectRefused(t, http.MethodGet, acme, origin.url(zoneOther, "/unlisted"), http.StatusForbidden, "destination_not_allowed", origin)
		rec := g.audit.wait(t, "request_id", e.RequestID)
		assertFields(t, rec)
		if !auditMatches(rec, "tenant", pathAcme.id, "host", zoneOther, "decision", "deny", "code", "destination_not_allowed", "status", 403) {
			t.Errorf("audit line %v; want tenant acme, host %s, deny destination_not_allowed, status 403", rec, zoneOther)
		}
	})
	t.Run("request denied by a rule", func(t *testing.T) {
		e := g.expectRefused(t, http.MethodGet, acme, origin.url(zonePaste, "/"), http.StatusForbidden, "destination_not_allowed", origin)
		rec := g.audit.wait(t, "request_id", e.RequestID)
		if !auditMatches(rec, "decision", "deny") || !ruleIs(rec["rule"], "no-paste") {
			t.Errorf("audit line %v; want deny by rule no-paste", rec)
		}
	})
	t.Run("tunnel", func(t *testing.T) {
		tunnel := g.tunnel(t, pathAcme, tlsOrigin.authority(zoneAPI))
		if status, _ := httpsOverTunnel(t, tunnel, tlsOrigin, zoneAPI, "/tunnelled"); status != http.StatusOK {
			t.Fatalf("HTTPS through the tunnel: status %d, want 200", status)
		}
		tunnel.Close()
		rec := g.audit.wait(t, "method", "CONNECT", "host", zoneAPI, "port", tlsOrigin.port)
		assertFields(t, rec)
		if !auditMatches(rec, "tenant", pathAcme.id, "decision", "allow", "code", "ok") || !ruleIs(rec["rule"], "weather") {
			t.Errorf("audit line %v; want tenant acme, allow ok by rule weather", rec)
		}
		if auditNumber(rec, "bytes_up") <= 0 || auditNumber(rec, "bytes_down") <= 0 {
			t.Errorf("tunnel audit bytes_up %v, bytes_down %v; want both > 0 after a TLS exchange", rec["bytes_up"], rec["bytes_down"])
		}
	})
}

// Moved from e2e/core_test.go (the audit and operational logs; the exit
// code on SIGTERM stays there).
func TestPathSecretsStayOutOfLogs(t *testing.T) {
	t.Parallel()
	const querySecret = "SECRET123"
	const mistypedToken = "mistyped-token-5a7e3c"
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	tlsOrigin := startPathUpstream(t, "127.0.0.1", true, nil)
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI}, origin.port, tlsOrigin.port)),
	})
	mistyped := pathTenant{pathAcme.id, mistypedToken}

	g.expectAllowedGET(t, pathAcme, origin.url(zoneAPI, "/search?token="+querySecret))
	g.expectRefused(t, http.MethodGet, pathAcme.auth(), origin.url(zoneOther, "/search?token="+querySecret), http.StatusForbidden, "destination_not_allowed")
	g.expectRefused(t, http.MethodGet, mistyped.auth(), origin.url(zoneAPI, "/"), http.StatusProxyAuthRequired, "proxy_auth_required")
	g.tunnel(t, pathAcme, tlsOrigin.authority(zoneAPI)).Close()
	g.audit.wait(t, "method", "GET", "host", zoneAPI, "decision", "allow")
	g.audit.wait(t, "method", "CONNECT", "host", zoneAPI, "decision", "allow")

	secrets := map[string]string{
		"query value":                  querySecret,
		"proxy token":                  pathAcme.token,
		"Proxy-Authorization":          strings.TrimPrefix(pathAcme.auth(), "Basic "),
		"mistyped token":               mistypedToken,
		"mistyped Proxy-Authorization": strings.TrimPrefix(mistyped.auth(), "Basic "),
	}
	for stream, output := range map[string]string{"audit log": g.audit.String(), "operational log": g.log.String()} {
		for what, secret := range secrets {
			if strings.Contains(output, secret) {
				t.Errorf("%s contains the %s %q", stream, what, secret)
			}
		}
	}
}

// Moved from e2e/core_test.go (health, metrics, explain and config; the
// profiling handler is the program's and stays there).
func TestPathAdminEndpoints(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	echoServer := startPathTCPServer(t, "127.0.0.1", echoConn)
	g := startPathGateway(t, "", map[string]string{
		"connectors/weather.yaml": fmt.Sprintf("name: weather\nversion: 1\nhosts: [%q]\nports: [%d, %d]\n", zoneAPI, origin.port, echoServer.port),
		"tenants/acme.yaml":       pathAcme.yaml("connectors: [weather]\n"),
	})

	t.Run("health", func(t *testing.T) {
		g.admin(t, "/healthz")
		g.admin(t, "/readyz")
	})

	t.Run("metrics", func(t *testing.T) {
		g.expectAllowedGET(t, pathAcme, origin.url(zoneAPI, "/counted"))
		g.expectRefused(t, http.MethodGet, pathAcme.auth(), origin.url(zoneOther, "/"), http.StatusForbidden, "destination_not_allowed")
		tunnel := g.tunnel(t, pathAcme, echoServer.authority(zoneAPI))
		pingThroughTunnel(t, tunnel)

		activeTunnels := map[string]string{"tenant": pathAcme.id}
		eventually(t, func() error {
			for _, want := range []struct {
				name   string
				labels map[string]string
			}{
				{"egressgw_requests_total", map[string]string{"tenant": pathAcme.id, "decision": "allow", "code": "ok"}},
				{"egressgw_requests_total", map[string]string{"tenant": pathAcme.id, "decision": "deny", "code": "destination_not_allowed"}},
				{"egressgw_request_duration_seconds", nil},
				{"egressgw_bytes_total", map[string]string{"tenant": pathAcme.id}},
			} {
				if v, _ := g.metric(t, want.name, want.labels); v < 1 {
					return fmt.Errorf("%s%v is %v, want ≥ 1", want.name, want.labels, v)
				}
			}
			if v, _ := g.metric(t, "egressgw_active_tunnels", activeTunnels); v != 1 {
				return fmt.Errorf("egressgw_active_tunnels%v is %v with one tunnel open, want 1", activeTunnels, v)
			}
			return nil
		})

		tunnel.Close()
		eventually(t, func() error {
			if v, found := g.metric(t, "egressgw_active_tunnels", activeTunnels); !found || v != 0 {
				return fmt.Errorf("egressgw_active_tunnels%v is %v (present: %v) after the tunnel closed, want 0", activeTunnels, v, found)
			}
			return nil
		})
	})

	t.Run("explain", func(t *testing.T) {
		for _, tc := range []struct {
			url                  string
			decision, code, rule string
		}{
			{origin.url(zoneAPI, "/today"), "allow", "ok", "weather"},
			{origin.url(zoneOther, "/"), "deny", "destination_not_allowed", ""},
		} {
			query := url.Values{"tenant": {pathAcme.id}, "method": {"GET"}, "url": {tc.url}}
			var got struct{ Decision, Code, Rule string }
			body := g.admin(t, "/v1/explain?"+query.Encode())
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("/v1/explain for %s: %v; body %q", tc.url, err, body)
			}
			if got.Decision != tc.decision || got.Code != tc.code || (tc.rule != "" && !ruleIs(got.Rule, tc.rule)) {
				t.Errorf("/v1/explain for %s: decision %q, code %q, rule %q; want %q, %q, %q", tc.url, got.Decision, got.Code, got.Rule, tc.decision, tc.code, tc.rule)
			}
		}
	})

	t.Run("config", func(t *testing.T) {
		body := g.admin(t, "/v1/config")
		var got struct {
			Generation *float64 `json:"generation"`
			Hash       string   `json:"hash"`
			LoadedAt   string   `json:"loaded_at"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("/v1/config: %v; body %q", err, body)
		}
		if got.Generation == nil || *got.Generation < 1 || got.Hash == "" || got.LoadedAt == "" {
			t.Errorf("/v1/config %s; want generation ≥ 1, a hash and loaded_at", body)
		}
	})
}

// Moved from e2e/core_test.go.
func TestPathHeaderSizeLimit(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	g := startPathGateway(t, "limits:\n  max_header_bytes: 4KiB\n", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI}, origin.port)),
	})
	withHeader := func(size int) []byte {
		return []byte("GET " + origin.url(zoneAPI, "/padded") + " HTTP/1.1\r\nHost: " + origin.authority(zoneAPI) +
			"\r\nProxy-Authorization: " + pathAcme.auth() + "\r\nX-Padding: " + strings.Repeat("a", size) + "\r\nConnection: close\r\n\r\n")
	}

	if resp, _ := g.exchange(t, http.MethodGet, withHeader(1<<10)); resp.StatusCode != http.StatusOK {
		t.Fatalf("request with a 1 KiB header: status %d, want 200 (the limit must not hit ordinary requests)", resp.StatusCode)
	}

	before := pathSnapshotReach(origin)
	resp, _ := g.exchange(t, http.MethodGet, withHeader(8<<10))
	e := assertPathRefusal(t, resp, http.StatusBadRequest, "bad_request")
	if !strings.Contains(e.Message, "max_header_bytes") {
		t.Errorf("message %q does not say which limit", e.Message)
	}
	before.assertUnchanged(t)
}

// Moved from e2e/core_test.go: requests net/http cannot parse get the
// gateway's JSON bad_request and an audit line, and reach nothing.
func TestPathMalformedRequests(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI}, origin.port)),
	})
	target := origin.url(zoneAPI, "/malformed")
	for _, c := range []struct{ name, head, inMessage string }{
		{"missing Host", "GET " + target + " HTTP/1.1\r\n", "Host"},
		{"conflicting Content-Length", "POST " + target + " HTTP/1.1\r\nHost: " + origin.authority(zoneAPI) + "\r\nContent-Length: 1\r\nContent-Length: 2\r\n", "malformed"},
		{"unknown Transfer-Encoding", "POST " + target + " HTTP/1.1\r\nHost: " + origin.authority(zoneAPI) + "\r\nTransfer-Encoding: xchunked\r\n", "Transfer-Encoding"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := pathSnapshotReach(origin)
			resp, _ := g.exchange(t, http.MethodGet, []byte(c.head+"Proxy-Authorization: "+pathAcme.auth()+"\r\n\r\n"))
			e := assertPathRefusal(t, resp, http.StatusBadRequest, "bad_request")
			if !strings.Contains(e.Message, c.inMessage) {
				t.Errorf("message %q does not mention %q", e.Message, c.inMessage)
			}
			rec := g.audit.wait(t, "request_id", e.RequestID)
			if rec["code"] != "bad_request" || rec["decision"] != "deny" {
				t.Errorf("audit line %v, want a bad_request denial", rec)
			}
			before.assertUnchanged(t)
		})
	}
}

// Moved from e2e/core_test.go: requests that are not proxy requests
// (origin form, OPTIONS *) get the gateway's JSON refusal and reach
// nothing.
func TestPathNotAProxyRequest(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI}, origin.port)),
	})
	for _, c := range []struct{ name, method, requestLine string }{
		{"origin form", http.MethodGet, "GET /padded HTTP/1.1"},
		{"OPTIONS asterisk", http.MethodOptions, "OPTIONS * HTTP/1.1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := pathSnapshotReach(origin)
			raw := fmt.Sprintf("%s\r\nHost: %s\r\nProxy-Authorization: %s\r\nConnection: close\r\n\r\n", c.requestLine, origin.authority(zoneAPI), pathAcme.auth())
			resp, _ := g.exchange(t, c.method, []byte(raw))
			assertPathRefusal(t, resp, http.StatusBadRequest, "bad_request")
			before.assertUnchanged(t)
		})
	}
}

// Moved from e2e/core_test.go: past metrics.max_tenant_labels distinct
// tenants, the rest are counted under tenant="_other".
func TestPathTenantLabelCap(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	bystander := pathTenant{"bystander", "bystander-token-8e4f0b1d36"}
	rule := pathRule("api", []string{zoneAPI}, origin.port)
	g := startPathGateway(t, "metrics:\n  max_tenant_labels: 1\n", map[string]string{
		"tenants/acme.yaml":      pathAcme.yaml(rule),
		"tenants/bystander.yaml": bystander.yaml(rule),
	})
	g.expectAllowedGET(t, pathAcme, origin.url(zoneAPI, "/first"))
	g.expectAllowedGET(t, bystander, origin.url(zoneAPI, "/second"))
	g.expectAllowedGET(t, bystander, origin.url(zoneAPI, "/third"))
	eventually(t, func() error {
		tenants := map[string]float64{}
		for _, tenant := range []string{pathAcme.id, bystander.id, "_other"} {
			if v, found := g.metric(t, "egressgw_requests_total", map[string]string{"tenant": tenant, "decision": "allow", "code": "ok"}); found {
				tenants[tenant] = v
			}
		}
		if want := map[string]float64{pathAcme.id: 1, "_other": 2}; fmt.Sprint(tenants) != fmt.Sprint(want) {
			return fmt.Errorf("allowed requests by tenant label: %v, want %v", tenants, want)
		}
		return nil
	})
}

// Moved from e2e/plain_test.go: the gateway forwards plain responses
// itself: streams flow as they arrive, trailers pass, a HEAD keeps its
// length, and an upstream that fails mid-body never looks like a complete
// response to the client.
func TestPathPlainResponses(t *testing.T) {
	t.Parallel()
	secondPiece := make(chan struct{})
	origin := startPathUpstream(t, "127.0.0.1", false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: first\n\n")
			w.(http.Flusher).Flush()
			// The second piece waits for the client to have read the
			// first: a gateway that buffered the stream would hang here.
			select {
			case <-secondPiece:
			case <-r.Context().Done():
				return
			}
			_, _ = io.WriteString(w, "data: second\n\n")
		case "/trailer":
			w.Header().Set("Trailer", "X-Checksum")
			_, _ = io.WriteString(w, "body with a trailer")
			w.Header().Set("X-Checksum", "c0ffee")
		case "/sized":
			w.Header().Set("Content-Length", "1234")
			if r.Method != http.MethodHead {
				_, _ = w.Write(make([]byte, 1234))
			}
		case "/cut":
			// Promise a chunked body, send part of it, then drop the
			// connection.
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		}
	}))
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("origin", []string{zoneAPI}, origin.port)),
	})
	client := g.client(t, pathAcme, nil)
	base := "http://" + origin.authority(zoneAPI)

	t.Run("a stream flows as it arrives", func(t *testing.T) {
		resp, err := client.Get(base + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		lines := bufio.NewReader(resp.Body)
		first, err := lines.ReadString('\n')
		if err != nil || first != "data: first\n" {
			t.Fatalf("first event %q, %v", first, err)
		}
		close(secondPiece)
		rest, err := io.ReadAll(lines)
		if err != nil || !strings.Contains(string(rest), "data: second") {
			t.Fatalf("rest of the stream %q, %v", rest, err)
		}
	})
	t.Run("trailers reach the client", func(t *testing.T) {
		resp, err := client.Get(base + "/trailer")
		if err != nil {
			t.Fatal(err)
		}
		body := pathBody(t, resp)
		if body != "body with a trailer" || resp.Trailer.Get("X-Checksum") != "c0ffee" {
			t.Errorf("body %q, trailer %q; want the body and X-Checksum: c0ffee", body, resp.Trailer.Get("X-Checksum"))
		}
	})
	t.Run("HEAD keeps the length", func(t *testing.T) {
		resp, err := client.Head(base + "/sized")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ContentLength != 1234 {
			t.Errorf("HEAD: status %d, length %d; want 200 and 1234", resp.StatusCode, resp.ContentLength)
		}
	})
	t.Run("a body cut by the upstream is an error, not an end", func(t *testing.T) {
		resp, err := client.Get(base + "/cut")
		if err != nil {
			t.Fatalf("the upstream's headers did not arrive: %v", err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Errorf("read %q and a clean end; want an error after the upstream dropped the connection", body)
		}
		rec := g.audit.wait(t, "path", "/cut")
		if auditNumber(rec, "status") != http.StatusOK {
			t.Errorf("audit status %v, want the upstream's 200", rec["status"])
		}
	})
}

// Moved from e2e/core_test.go. The connector's secret comes from a file
// here rather than the environment: the sources are the loader's, the
// relaxations under test the request path's.
func TestPathReportMode(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	victim := startPathUpstream(t, zoneVictim, false, nil)
	crm := startPathUpstream(t, "127.0.0.1", false, jsonEcho)
	const crmKey = "report-mode-crm-key-5d1c"
	g := startPathGateway(t, `secrets:
  crm_key: { file: secrets/crm_key }
redaction:
  profiles:
    pii: { detectors: [email], action: mask }
`, map[string]string{
		"secrets/crm_key": crmKey,
		// Reads only, with credentials, redaction and a connector quota of
		// three requests.
		"connectors/crm.yaml": fmt.Sprintf(`name: crm
hosts: [%q]
ports: [%d]
methods: [GET]
inject:
  headers: { Authorization: "Bearer ${secret:crm_key}" }
  allow_plaintext: true
redact: { request: [pii] }
quota: { requests_per_second: 0.001, burst: 3 }
`, zoneReadOnly, crm.port),
		"tenants/lenient.yaml": pathLenient.yaml("mode: report\nconnectors: [crm]\n" + pathRule("api", []string{zoneAPI}, origin.port)),
	})

	t.Run("policy denial is reported and let through", func(t *testing.T) {
		g.expectAllowedGET(t, pathLenient, origin.url(zoneOther, "/reported"))
		rec := g.audit.wait(t, "tenant", pathLenient.id, "host", zoneOther, "path", "/reported")
		if rec["decision"] != "report" || rec["code"] != "destination_not_allowed" {
			t.Errorf("audit decision %v code %v, want report with the code enforce would answer; line %v", rec["decision"], rec["code"], rec)
		}
	})
	t.Run("auth is never relaxed", func(t *testing.T) {
		g.expectRefused(t, http.MethodGet, pathTenant{pathLenient.id, "wrong"}.auth(), origin.url(zoneAPI, "/"), http.StatusProxyAuthRequired, "proxy_auth_required", origin)
	})
	t.Run("network safety is never relaxed", func(t *testing.T) {
		g.expectRefused(t, http.MethodGet, pathLenient.auth(), victim.url(zoneRebind, "/"), http.StatusForbidden, "destination_ip_denied", victim)
	})

	client := g.client(t, pathLenient, nil)
	t.Run("allowed read gets the connector's credentials", func(t *testing.T) {
		resp, err := client.Get(crm.url(zoneReadOnly, "/allowed-read"))
		if err != nil {
			t.Fatal(err)
		}
		if body := pathBody(t, resp); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if seen := crm.requestsTo("/allowed-read"); len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+crmKey {
			t.Fatalf("upstream saw %+v, want one request with the injected credential", seen)
		}
	})
	postReported := func(t *testing.T, path string) *http.Response {
		resp, err := client.Post(crm.url(zoneReadOnly, path), "text/plain", strings.NewReader("write to alice@example.com"))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	t.Run("method denial keeps redaction and never gets credentials", func(t *testing.T) {
		resp := postReported(t, "/reported-write")
		body := pathBody(t, resp)
		if resp.StatusCode != http.StatusOK || strings.Contains(body, "alice@example.com") || !strings.Contains(body, "[REDACTED:email]") {
			t.Fatalf("status %d, upstream echoed %s; want the body redacted", resp.StatusCode, body)
		}
		seen := crm.requestsTo("/reported-write")
		if len(seen) != 1 || seen[0].Header.Get("Authorization") != "" {
			t.Fatalf("upstream saw %+v, want one request without credentials", seen)
		}
		rec := g.audit.wait(t, "tenant", pathLenient.id, "path", "/reported-write")
		if rec["decision"] != "report" || rec["code"] != "destination_not_allowed" {
			t.Errorf("audit decision %v code %v, want report destination_not_allowed; line %v", rec["decision"], rec["code"], rec)
		}
	})
	t.Run("connector quota is never relaxed", func(t *testing.T) {
		// The burst of three: the read and the write above, and this one.
		if resp := postReported(t, "/reported-third"); pathBody(t, resp) == "" || resp.StatusCode != http.StatusOK {
			t.Fatalf("third request: status %d", resp.StatusCode)
		}
		g.expectRefused(t, http.MethodPost, pathLenient.auth(), crm.url(zoneReadOnly, "/over-quota"), http.StatusTooManyRequests, "rate_limited", crm)
	})
	t.Run("tunnel the gateway cannot read stays refused", func(t *testing.T) {
		e := g.expectRefusedCONNECT(t, pathLenient.auth(), crm.authority(zoneReadOnly), http.StatusForbidden, "destination_not_allowed", crm)
		if !strings.Contains(e.Message, "inspect: true") {
			t.Errorf("message %q does not say what to change", e.Message)
		}
	})
}

// Moved from e2e/redaction_test.go (the hmac key comes from a file here
// rather than the environment).
func TestPathRedaction(t *testing.T) {
	t.Parallel()
	planted := []string{"alice@example.com", "4111 1111 1111 1111", "hunter2-password", "123-45-6789", "536-22-8714"}
	redactee := pathTenant{"redactee", "redactee-token-3f8e1b0c92"}
	origin := startPathUpstream(t, "127.0.0.1", false, jsonEcho)
	g := startPathGateway(t, `redaction:
  hmac_key: { file: secrets/redaction_key }
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
`, map[string]string{
		"secrets/redaction_key":     "path-redaction-hmac-key-0123456789",
		"connectors/crm.yaml":       fmt.Sprintf("name: crm\nhosts: [%q]\nports: [%d]\nredact: { request: [pii], response: [internal] }\n", zoneAPI, origin.port),
		"connectors/analytics.yaml": fmt.Sprintf("name: analytics\nhosts: [%q]\nports: [%d]\nredact: { request: [pseudonymise] }\n", zoneOther, origin.port),
		"tenants/redactee.yaml":     redactee.yaml("connectors: [crm, analytics]\n"),
	})
	client := g.client(t, redactee, nil)

	t.Run("request body and query redacted before they leave", func(t *testing.T) {
		body := `{"email":"alice@example.com","card":"4111 1111 1111 1111","password":"hunter2-password","user":{"ssn":"123-45-6789"},"note":"call 536-22-8714 please","count":3}`
		resp, err := client.Post(origin.url(zoneAPI, "/v1/contacts?contact=alice@example.com"), "application/json", strings.NewReader(body))
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

	t.Run("hash is stable across requests", func(t *testing.T) {
		hmac := regexp.MustCompile(`hmac:[0-9a-f]{16}`)
		var hashes []string
		for range 2 {
			resp, err := client.Post(origin.url(zoneOther, "/v1/events"), "text/plain", strings.NewReader("signup by alice@example.com"))
			if err != nil {
				t.Fatal(err)
			}
			var echoed map[string]any
			json.NewDecoder(resp.Body).Decode(&echoed)
			resp.Body.Close()
			h := hmac.FindString(echoed["body"].(string))
			if h == "" || strings.Contains(echoed["body"].(string), "alice@example.com") {
				t.Fatalf("not pseudonymised: %v", echoed["body"])
			}
			hashes = append(hashes, h)
		}
		if hashes[0] != hashes[1] {
			t.Errorf("hash differs between requests: %v", hashes)
		}
	})

	t.Run("oversized body refused, never sent unredacted", func(t *testing.T) {
		before := len(origin.requestsTo("/v1/big"))
		req, _ := http.NewRequest(http.MethodPost, origin.url(zoneAPI, "/v1/big"), strings.NewReader(`{"email":"alice@example.com","pad":"`+strings.Repeat("x", 70<<10)+`"}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		assertPathRefusal(t, resp, http.StatusRequestEntityTooLarge, "body_too_large")
		if len(origin.requestsTo("/v1/big")) != before {
			t.Error("the oversized body reached the upstream")
		}
	})

	t.Run("metrics, audit and logs", func(t *testing.T) {
		if n, _ := g.metric(t, "egressgw_redactions_total", map[string]string{"profile": "pii", "detector": "email"}); n < 2 {
			t.Errorf("redactions_total{pii,email} = %v, want >= 2 (body and query)", n)
		}
		rec := g.audit.wait(t, "tenant", redactee.id, "path", "/v1/contacts")
		if r, _ := rec["redactions"].([]any); len(r) == 0 {
			t.Errorf("audit line lists no redactions: %v", rec)
		}
		for _, value := range planted {
			for name, text := range map[string]string{"audit log": g.audit.String(), "operational log": g.log.String()} {
				if strings.Contains(text, value) {
					t.Errorf("%q appears in the gateway's %s", value, name)
				}
			}
		}
	})
}

// Moved from e2e/timeouts_test.go: an upstream that takes the request and
// never answers gets the client its 504 after
// network.response_header_timeout, not after the much longer
// idle_timeout.
func TestPathSilentUpstreamTimesOutAfterResponseHeaderTimeout(t *testing.T) {
	t.Parallel()
	neverAnswers := startPathTCPServer(t, "127.0.0.1", silentConn)
	g := newPathGateway(t)
	g.network = "  response_header_timeout: 1s\n"
	g.serve(t, "limits:\n  idle_timeout: 60s\n", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("silent", []string{zoneAPI}, neverAnswers.port)),
	})
	// Well under idle_timeout, which ended the wait before.
	const bound = 15 * time.Second
	start := time.Now()
	e := assertPathRefusal(t, g.request(t, http.MethodGet, pathAcme.auth(), "http://"+neverAnswers.authority(zoneAPI)+"/"), http.StatusGatewayTimeout, "upstream_timeout")
	if elapsed := time.Since(start); elapsed > bound {
		t.Errorf("504 after %v; response_header_timeout is 1s", elapsed)
	}
	if neverAnswers.reached() == 0 {
		t.Errorf("the silent upstream was never connected to, so this was not a timeout")
	}
	assertNoInternalDetail(t, e)
	g.audit.wait(t, "tenant", pathAcme.id, "code", "upstream_timeout", "status", 504)
}
