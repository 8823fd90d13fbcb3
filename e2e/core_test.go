package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Tenants used across tests. Tokens are plain ASCII so every client accepts
// them in a proxy URL.
var (
	acme    = credentials{tenant: "acme", token: "acme-token-7c1f09d24b"}
	wild    = credentials{tenant: "wild", token: "wild-token-2e8a51c3f0"}
	pinned  = credentials{tenant: "pinned", token: "pinned-token-94d0b7a6e1"}
	lenient = credentials{tenant: "lenient", token: "lenient-token-03b6c8e2d7"}
)

// allowRule is a tenant file body with one rule allowing hosts on ports.
func allowRule(name string, hosts []string, ports ...int) string {
	return yamlf(`
		rules:
		  - name: %s
		    hosts: %s
		    ports: %s
	`, name, yamlList(hosts), yamlList(ports))
}

// yamlList renders a flow sequence such as ["a", "b"] or [80, 443].
func yamlList[T any](items []T) string {
	parts := make([]string, len(items))
	for i, item := range items {
		if s, ok := any(item).(string); ok {
			parts[i] = fmt.Sprintf("%q", s)
		} else {
			parts[i] = fmt.Sprint(item)
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func TestProxyAuthentication(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	tlsOrigin := startTLSUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, origin.port, tlsOrigin.port)),
	})
	plainURL := origin.url(hostAPI, "/auth")
	authority := tlsOrigin.authority(hostAPI)

	// Each kind of bad credentials is refused in the proxy package's tests.
	t.Run("no credentials/GET", func(t *testing.T) {
		g.expectRefused(t, http.MethodGet, "", plainURL, http.StatusProxyAuthRequired, "proxy_auth_required", origin)
	})
	t.Run("no credentials/CONNECT", func(t *testing.T) {
		g.expectRefusedCONNECT(t, "", authority, http.StatusProxyAuthRequired, "proxy_auth_required", tlsOrigin)
	})

	t.Run("valid credentials/GET", func(t *testing.T) {
		g.expectAllowedGET(t, acme, plainURL)
		seen := origin.requestsTo("/auth")
		if len(seen) != 1 {
			t.Fatalf("upstream saw %d requests for /auth, want 1", len(seen))
		}
		if v := seen[0].Header.Get("Proxy-Authorization"); v != "" {
			t.Errorf("upstream received Proxy-Authorization %q: the tenant's credentials left the gateway", v)
		}
	})
	t.Run("valid credentials/CONNECT", func(t *testing.T) {
		tunnel := g.tunnel(t, acme, authority)
		if status, body := httpsOverTunnel(t, tunnel, hostAPI, "/auth-tls"); status != http.StatusOK || body != greeting("/auth-tls") {
			t.Errorf("HTTPS inside the tunnel: status %d, body %q; want 200 and the greeting", status, body)
		}
	})
}

func TestSourceAddressIdentifiesTenant(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"tenants/ci.yaml": yamlf(`
			id: ci
			auth:
			  source_cidrs: ["127.0.0.1/32"]
		`) + allowRule("api", []string{hostAPI}, origin.port),
	})
	anonymous := credentials{}

	g.expectAllowedGET(t, anonymous, origin.url(hostAPI, "/by-address"))
	g.waitAudit(t, auditWith("tenant", "ci", "path", "/by-address", "decision", "allow"))
	// The tunnel case is in the proxy package's tests.
}

func TestDestinationPolicy(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	tlsOrigin := startTLSUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"connectors/api.yaml": yamlf(`
			name: api
			version: 1
			hosts: [%q]
			ports: [%d, %d]
		`, hostAPI, origin.port, tlsOrigin.port),
		"tenants/acme.yaml": tenantYAML(acme, "connectors: [api]\n"),
	})
	const notAllowed = "destination_not_allowed"

	// Methods, paths, deny rules, wildcards and connector versions are
	// decided in the proxy package's tests.
	t.Run("allowed host", func(t *testing.T) {
		g.expectAllowedGET(t, acme, origin.url(hostAPI, "/allowed"))
		tunnel := g.tunnel(t, acme, tlsOrigin.authority(hostAPI))
		if status, _ := httpsOverTunnel(t, tunnel, hostAPI, "/allowed-tls"); status != http.StatusOK {
			t.Errorf("HTTPS through the tunnel: status %d, want 200", status)
		}
	})
	t.Run("host in no policy", func(t *testing.T) {
		g.expectRefused(t, http.MethodGet, acme.header(), origin.url(hostOther, "/"), http.StatusForbidden, notAllowed, origin)
		g.expectRefusedCONNECT(t, acme.header(), tlsOrigin.authority(hostOther), http.StatusForbidden, notAllowed, tlsOrigin)
	})
}

func TestReportMode(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	crm := startHTTPUpstream(t, "127.0.0.1", jsonEcho)
	const crmKey = "report-mode-crm-key-5d1c"
	g := newGateway(t)
	g.env = append(g.env, "E2E_CRM_KEY="+crmKey)
	g.serve(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			secrets:
			  crm_key: { env: E2E_CRM_KEY }
		`)),
		// Reads only, with a credential from the gateway's environment.
		"connectors/crm.yaml": yamlf(`
			name: crm
			hosts: [%q]
			ports: [%d]
			methods: [GET]
			inject:
			  headers: { Authorization: "Bearer ${secret:crm_key}" }
			  allow_plaintext: true
		`, hostReadOnly, crm.port),
		"tenants/lenient.yaml": tenantYAML(lenient, "mode: report\nconnectors: [crm]\n"+allowRule("api", []string{hostAPI}, origin.port)),
	})

	t.Run("policy denial is reported and let through", func(t *testing.T) {
		g.expectAllowedGET(t, lenient, origin.url(hostOther, "/reported"))
		rec := g.waitAudit(t, auditWith("tenant", lenient.tenant, "host", hostOther, "path", "/reported"))
		if rec["decision"] != "report" || rec["code"] != "destination_not_allowed" {
			t.Errorf("audit decision %v code %v, want report with the code enforce would answer; line %v", rec["decision"], rec["code"], rec)
		}
	})
	// What report mode never relaxes (auth, network safety, redaction,
	// credentials, quotas, unreadable tunnels) is in
	// the proxy package's tests.

	client := g.client(t, lenient)
	t.Run("allowed read gets the connector's credentials", func(t *testing.T) {
		if status, body := fetch(t, client, crm.url(hostReadOnly, "/allowed-read")); status != http.StatusOK {
			t.Fatalf("status %d: %s", status, body)
		}
		if seen := crm.requestsTo("/allowed-read"); len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+crmKey {
			t.Fatalf("upstream saw %+v, want one request with the injected credential", seen)
		}
	})
}

func TestNetworkSafety(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	victim := startHTTPUpstream(t, victimAddress, nil)
	g := newGateway(t)
	adminPort, proxyPort := portOf(t, g.adminAddr), portOf(t, g.proxyAddr)
	g.serve(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, yamlf(`
			rules:
			  - name: names-of-denied-addresses
			    hosts: [%q]
			    ports: [%d]
			  - name: loopback
			    hosts: ["127.0.0.1"]
			    ports: [%d, %d, %d]
		`, hostRebind, victim.port, origin.port, adminPort, proxyPort)),
	})

	t.Run("allow_cidrs exception is reachable", func(t *testing.T) {
		g.expectAllowedGET(t, acme, origin.url("127.0.0.1", "/loopback"))
	})

	const ipDenied = "destination_ip_denied"
	refusals := []struct {
		name      string
		authority string // host:port, requested both as http://authority/ and CONNECT authority
		status    int
		code      string
		untouched []reachable
	}{
		// The listeners the program opens are its own to deny; literals
		// and other names are refused in the proxy package's tests.
		{"name resolving to a denied address", victim.authority(hostRebind), http.StatusForbidden, ipDenied, []reachable{victim}},
		{"gateway's own admin listener", g.adminAddr, http.StatusForbidden, ipDenied, nil},
		{"gateway's own proxy listener", g.proxyAddr, http.StatusForbidden, ipDenied, nil},
	}
	for _, tc := range refusals {
		t.Run(tc.name+"/GET", func(t *testing.T) {
			g.expectRefused(t, http.MethodGet, acme.header(), "http://"+tc.authority+"/", tc.status, tc.code, tc.untouched...)
		})
		t.Run(tc.name+"/CONNECT", func(t *testing.T) {
			g.expectRefusedCONNECT(t, acme.header(), tc.authority, tc.status, tc.code, tc.untouched...)
		})
	}
}

func TestUpstreamFailures(t *testing.T) {
	t.Parallel()
	closedPort := portOf(t, freeAddr(t))
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("flaky", []string{hostNXDomain, hostAPI}, 80, 443, closedPort)),
	})
	closedAuthority := net.JoinHostPort(hostAPI, fmt.Sprint(closedPort))

	// Each failure on both kinds of request, and an upstream that never
	// answers, are in the proxy package's tests.
	t.Run("unknown name/GET", func(t *testing.T) {
		e := g.expectRefused(t, http.MethodGet, acme.header(), "http://"+hostNXDomain+"/", http.StatusBadGateway, "dns_failure")
		assertNoInternalDetail(t, e)
	})
	t.Run("nothing listening/CONNECT", func(t *testing.T) {
		e := g.expectRefusedCONNECT(t, acme.header(), closedAuthority, http.StatusBadGateway, "upstream_unreachable")
		assertNoInternalDetail(t, e)
	})
}

// auditFields are the fields docs/reference.md, "Audit line", promises on every audit line.
var auditFields = []string{
	"time", "request_id", "tenant", "client", "method", "scheme", "host", "port", "path",
	"decision", "code", "rule", "status", "bytes_up", "bytes_down", "duration_ms", "hooks", "redactions",
}

func TestAuditLog(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	tlsOrigin := startTLSUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"connectors/weather.yaml": yamlf(`
			name: weather
			version: 1
			hosts: [%q]
			ports: [%d, %d]
		`, hostAPI, origin.port, tlsOrigin.port),
		"tenants/acme.yaml": tenantYAML(acme, "connectors: [weather]\n"),
	})

	assertFields := func(t *testing.T, rec map[string]any) {
		t.Helper()
		for _, field := range auditFields {
			if _, ok := rec[field]; !ok {
				t.Errorf("audit line lacks %q: %v", field, rec)
			}
		}
	}

	t.Run("allowed request", func(t *testing.T) {
		resp := g.get(t, acme.header(), origin.url(hostAPI, "/forecast"))
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != greeting("/forecast") {
			t.Fatalf("status %d, body %q; want 200 and the upstream's greeting", resp.StatusCode, body)
		}
		rec := g.waitAudit(t, auditWith("path", "/forecast"))
		assertFields(t, rec)
		// The id an allowed response carries finds its audit line.
		if id := resp.Header.Get("X-Request-Id"); id == "" || rec["request_id"] != id {
			t.Errorf("X-Request-Id %q, audit request_id %v; want the same id", id, rec["request_id"])
		}
		want := auditWith("tenant", acme.tenant, "method", "GET", "scheme", "http", "host", hostAPI, "port", origin.port,
			"decision", "allow", "code", "ok", "status", 200)
		if !want(rec) || !ruleIs(rec["rule"], "weather") {
			t.Errorf("audit line %v; want tenant acme, GET http %s:%d, allow ok by rule weather, status 200", rec, hostAPI, origin.port)
		}
		if auditNumber(rec, "bytes_down") <= 0 {
			t.Errorf("audit bytes_down %v, want > 0 for a response with a body", rec["bytes_down"])
		}
	})
	// Denials' audit lines are checked in the proxy package's tests.
	t.Run("tunnel", func(t *testing.T) {
		tunnel := g.tunnel(t, acme, tlsOrigin.authority(hostAPI))
		if status, _ := httpsOverTunnel(t, tunnel, hostAPI, "/tunnelled"); status != http.StatusOK {
			t.Fatalf("HTTPS through the tunnel: status %d, want 200", status)
		}
		tunnel.Close()
		rec := g.waitAudit(t, auditWith("method", "CONNECT", "host", hostAPI, "port", tlsOrigin.port))
		assertFields(t, rec)
		if !auditWith("tenant", acme.tenant, "decision", "allow", "code", "ok")(rec) || !ruleIs(rec["rule"], "weather") {
			t.Errorf("audit line %v; want tenant acme, allow ok by rule weather", rec)
		}
		if auditNumber(rec, "bytes_up") <= 0 || auditNumber(rec, "bytes_down") <= 0 {
			t.Errorf("tunnel audit bytes_up %v, bytes_down %v; want both > 0 after a TLS exchange", rec["bytes_up"], rec["bytes_down"])
		}
	})
}

func TestSecretsStayOutOfLogs(t *testing.T) {
	t.Parallel()
	const querySecret = "SECRET123"
	const mistypedToken = "mistyped-token-5a7e3c"
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	tlsOrigin := startTLSUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, origin.port, tlsOrigin.port)),
	})

	g.expectAllowedGET(t, acme, origin.url(hostAPI, "/search?token="+querySecret))
	g.expectRefused(t, http.MethodGet, acme.header(), origin.url(hostOther, "/search?token="+querySecret), http.StatusForbidden, "destination_not_allowed")
	g.expectRefused(t, http.MethodGet, basicAuth(acme.tenant, mistypedToken), origin.url(hostAPI, "/"), http.StatusProxyAuthRequired, "proxy_auth_required")
	g.tunnel(t, acme, tlsOrigin.authority(hostAPI)).Close()
	g.waitAudit(t, auditWith("method", "GET", "host", hostAPI, "decision", "allow"))
	if code := g.stop(t); code != 0 {
		t.Errorf("egressgw exit code %d after SIGTERM, want 0", code)
	}

	secrets := map[string]string{
		"query value":                  querySecret,
		"proxy token":                  acme.token,
		"Proxy-Authorization":          strings.TrimPrefix(acme.header(), "Basic "),
		"mistyped token":               mistypedToken,
		"mistyped Proxy-Authorization": strings.TrimPrefix(basicAuth(acme.tenant, mistypedToken), "Basic "),
	}
	for stream, output := range map[string]string{"stdout": g.stdout.String(), "stderr": g.stderr.String()} {
		for what, secret := range secrets {
			if strings.Contains(output, secret) {
				t.Errorf("%s contains the %s %q", stream, what, secret)
			}
		}
	}
}

func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	echoServer := startTCPServer(t, "127.0.0.1", echo)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"connectors/weather.yaml": yamlf(`
			name: weather
			version: 1
			hosts: [%q]
			ports: [%d, %d]
		`, hostAPI, origin.port, echoServer.port),
		"tenants/acme.yaml": tenantYAML(acme, "connectors: [weather]\n"),
	})

	t.Run("health", func(t *testing.T) {
		g.admin(t, "/healthz")
		g.admin(t, "/readyz")
	})

	t.Run("metrics", func(t *testing.T) {
		g.expectAllowedGET(t, acme, origin.url(hostAPI, "/counted"))
		g.expectRefused(t, http.MethodGet, acme.header(), origin.url(hostOther, "/"), http.StatusForbidden, "destination_not_allowed")
		tunnel := g.tunnel(t, acme, echoServer.authority(hostAPI))
		pingThroughTunnel(t, tunnel)

		activeTunnels := map[string]string{"tenant": acme.tenant}
		eventually(t, 5*time.Second, func() error {
			samples, err := g.metrics()
			if err != nil {
				return err
			}
			for _, want := range []struct {
				name   string
				labels map[string]string
			}{
				{"egressgw_requests_total", map[string]string{"tenant": acme.tenant, "decision": "allow", "code": "ok"}},
				{"egressgw_requests_total", map[string]string{"tenant": acme.tenant, "decision": "deny", "code": "destination_not_allowed"}},
				{"egressgw_request_duration_seconds_count", nil},
				{"egressgw_bytes_total", map[string]string{"tenant": acme.tenant}},
			} {
				if v, _ := sumMetric(samples, want.name, want.labels); v < 1 {
					return fmt.Errorf("%s%v is %v, want ≥ 1", want.name, want.labels, v)
				}
			}
			if v, _ := sumMetric(samples, "egressgw_active_tunnels", activeTunnels); v != 1 {
				return fmt.Errorf("egressgw_active_tunnels%v is %v with one tunnel open, want 1", activeTunnels, v)
			}
			return nil
		})

		tunnel.Close()
		eventually(t, 5*time.Second, func() error {
			samples, err := g.metrics()
			if err != nil {
				return err
			}
			if v, found := sumMetric(samples, "egressgw_active_tunnels", activeTunnels); !found || v != 0 {
				return fmt.Errorf("egressgw_active_tunnels%v is %v (present: %v) after the tunnel closed, want 0", activeTunnels, v, found)
			}
			return nil
		})
	})

	// /v1/explain and /v1/config are checked in the proxy package's tests.

	// docs/operators.md lists /debug/pprof/ on the admin listener; the load
	// harness's --gateway-pprof admin fetches from it.
	t.Run("profiling", func(t *testing.T) {
		if index := g.admin(t, "/debug/pprof/"); !strings.Contains(index, "goroutine") || !strings.Contains(index, "heap") {
			t.Errorf("/debug/pprof/ does not list the profiles: %q", tail(index, 300))
		}
		if cmdline := g.admin(t, "/debug/pprof/cmdline"); !strings.Contains(cmdline, "serve") {
			t.Errorf("/debug/pprof/cmdline = %q, want the gateway's command line", cmdline)
		}
		if heap := g.admin(t, "/debug/pprof/heap?debug=1"); !strings.Contains(heap, "heap profile") {
			t.Errorf("/debug/pprof/heap?debug=1 is no heap profile: %q", tail(heap, 300))
		}
	})
}

func TestHeaderSizeLimit(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			limits:
			  max_header_bytes: 4KiB
		`)),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, origin.port)),
	})
	withHeader := func(size int) *http.Request {
		req, err := http.NewRequest(http.MethodGet, origin.url(hostAPI, "/padded"), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Proxy-Authorization", acme.header())
		req.Header.Set("X-Padding", strings.Repeat("a", size))
		return req
	}

	if resp := g.send(t, withHeader(1<<10)); resp.StatusCode != http.StatusOK {
		t.Fatalf("request with a 1 KiB header: status %d, want 200 (the limit must not hit ordinary requests)", resp.StatusCode)
	}

	before := snapshotReach(origin)
	e := assertGatewayError(t, g.send(t, withHeader(8<<10)), http.StatusBadRequest, "bad_request")
	if !strings.Contains(e.Message, "max_header_bytes") {
		t.Errorf("message %q does not say which limit", e.Message)
	}
	before.assertUnchanged(t)
}

// TestMalformedRequests: requests net/http cannot parse get the gateway's
// JSON bad_request and an audit line, and reach nothing.
func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, origin.port)),
	})
	target := origin.url(hostAPI, "/malformed")
	for _, c := range []struct{ name, head, inMessage string }{
		// The other malformations are in the proxy package's tests.
		{"missing Host", "GET " + target + " HTTP/1.1\r\n", "Host"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := snapshotReach(origin)
			resp, _ := g.exchange(t, http.MethodGet, []byte(c.head+"Proxy-Authorization: "+acme.header()+"\r\n\r\n"))
			e := assertGatewayError(t, resp, http.StatusBadRequest, "bad_request")
			if !strings.Contains(e.Message, c.inMessage) {
				t.Errorf("message %q does not mention %q", e.Message, c.inMessage)
			}
			rec := g.waitAudit(t, auditWith("request_id", e.RequestID))
			if rec["code"] != "bad_request" || rec["decision"] != "deny" {
				t.Errorf("audit line %v, want a bad_request denial", rec)
			}
			before.assertUnchanged(t)
		})
	}
}

func TestMaxConnections(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	echoServer := startTCPServer(t, "127.0.0.1", echo)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			limits:
			  max_connections: 2
		`)),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, origin.port, echoServer.port)),
	})
	var held []net.Conn
	for range 2 {
		tunnel := g.tunnel(t, acme, echoServer.authority(hostAPI))
		pingThroughTunnel(t, tunnel) // the gateway has surely accepted and counted it
		held = append(held, tunnel)
	}

	if served := tryThirdConnection(t, g, acme, origin.url(hostAPI, "/third")); served {
		t.Errorf("a third connection was served while max_connections: 2 were held")
	}

	held[0].Close()
	client := g.client(t, acme)
	eventually(t, 5*time.Second, func() error {
		resp, err := client.Get(origin.url(hostAPI, "/after-release"))
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

// tryThirdConnection sends a request on a new connection and reports
// whether it was served. Being refused at connect, closed, or answered with
// an error are all fine; hanging unanswered is not, because a client cannot
// tell that from a dead gateway.
func tryThirdConnection(t *testing.T, g *gateway, c credentials, target string) (served bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", g.proxyAddr, 5*time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Proxy-Authorization", c.header())
	conn.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
	if err := req.WriteProxy(conn); err != nil {
		return false // closed by the gateway before we finished writing
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	var netErr net.Error
	switch {
	case errors.As(err, &netErr) && netErr.Timeout():
		t.Fatalf("a connection over max_connections was neither refused nor closed within %v", scaled(5*time.Second))
	case err != nil:
		return false // closed: refused
	}
	resp.Body.Close()
	t.Logf("connection over the limit answered with status %d", resp.StatusCode)
	return resp.StatusCode == http.StatusOK
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	reached := make(chan struct{}, 1)
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce)
	slow := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case reached <- struct{}{}:
		default:
		}
		select {
		case <-release:
			io.WriteString(w, "finished during shutdown")
		case <-r.Context().Done():
		}
	}))
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("slow", []string{hostAPI}, slow.port)),
	})

	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	client := g.client(t, acme)
	go func() {
		resp, err := client.Get(slow.url(hostAPI, "/slow"))
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		done <- result{status: resp.StatusCode, body: string(body), err: err}
	}()
	select {
	case <-reached:
	case r := <-done:
		t.Fatalf("request ended before reaching the upstream: %+v", r)
	case <-time.After(scaled(10 * time.Second)):
		t.Fatal("request never reached the upstream")
	}

	g.signal(t, syscall.SIGTERM)
	eventually(t, 10*time.Second, func() error {
		conn, err := net.DialTimeout("tcp", g.proxyAddr, time.Second)
		if err != nil {
			return nil
		}
		conn.Close()
		return errors.New("the gateway still accepts new connections after SIGTERM")
	})

	releaseOnce()
	select {
	case r := <-done:
		if r.err != nil || r.status != http.StatusOK || r.body != "finished during shutdown" {
			t.Errorf("in-flight request: status %d, body %q, error %v; want 200 and the upstream's body", r.status, r.body, r.err)
		}
	case <-time.After(scaled(20 * time.Second)):
		t.Fatal("in-flight request did not complete during shutdown")
	}
	if code := g.waitExit(t, 30*time.Second); code != 0 {
		t.Errorf("egressgw exit code %d after SIGTERM, want 0", code)
	}
}

// TestGatewayIgnoresProxyEnvironment guards against the gateway chaining
// through HTTP_PROXY/HTTPS_PROXY of its own environment, which is often set
// in the images it runs in: its egress must go straight to the destination.
func TestGatewayIgnoresProxyEnvironment(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	tlsOrigin := startTLSUpstream(t, "127.0.0.1", nil)
	trap := startTCPServer(t, "127.0.0.1", silent)
	g := newGateway(t)
	trapURL := "http://" + trap.authority("127.0.0.1")
	for _, name := range []string{"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"} {
		g.env = append(g.env, name+"="+trapURL)
	}
	g.serve(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, origin.port, tlsOrigin.port)),
	})

	g.expectAllowedGET(t, acme, origin.url(hostAPI, "/direct"))
	if status, _ := fetch(t, g.client(t, acme), tlsOrigin.url(hostAPI, "/direct-tls")); status != http.StatusOK {
		t.Errorf("HTTPS through the gateway: status %d, want 200", status)
	}
	if n := trap.reached(); n != 0 {
		t.Errorf("the proxy named in the gateway's environment received %d connection(s)", n)
	}
}

// TestNotAProxyRequest: requests that are not proxy requests (origin form,
// OPTIONS *) get the gateway's JSON refusal and reach nothing.
func TestNotAProxyRequest(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, origin.port)),
	})
	for _, c := range []struct{ name, method, requestLine string }{
		{"origin form", http.MethodGet, "GET /padded HTTP/1.1"}, // OPTIONS * is in the proxy package's tests
	} {
		t.Run(c.name, func(t *testing.T) {
			before := snapshotReach(origin)
			raw := fmt.Sprintf("%s\r\nHost: %s\r\nProxy-Authorization: %s\r\nConnection: close\r\n\r\n", c.requestLine, origin.authority(hostAPI), acme.header())
			resp, _ := g.exchange(t, c.method, []byte(raw))
			assertGatewayError(t, resp, http.StatusBadRequest, "bad_request")
			before.assertUnchanged(t)
		})
	}
}

// TestTenantLabelCap: past metrics.max_tenant_labels distinct tenants, the
// rest are counted under tenant="_other", so tenant churn cannot grow the
// metrics without bound.
func TestTenantLabelCap(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	rule := allowRule("api", []string{hostAPI}, origin.port)
	g := startGateway(t, configFiles{
		"gateway.yaml":           gatewayYAML("metrics:\n  max_tenant_labels: 1\n"),
		"tenants/acme.yaml":      tenantYAML(acme, rule),
		"tenants/bystander.yaml": tenantYAML(bystander, rule),
	})
	g.expectAllowedGET(t, acme, origin.url(hostAPI, "/first"))
	g.expectAllowedGET(t, bystander, origin.url(hostAPI, "/second"))
	g.expectAllowedGET(t, bystander, origin.url(hostAPI, "/third"))
	eventually(t, 5*time.Second, func() error {
		samples, err := g.metrics()
		if err != nil {
			return err
		}
		allowed := map[string]string{"decision": "allow", "code": "ok"}
		tenants := map[string]float64{}
		for _, s := range samples {
			if s.name == "egressgw_requests_total" && s.labels["decision"] == allowed["decision"] && s.labels["code"] == allowed["code"] {
				tenants[s.labels["tenant"]] += s.value
			}
		}
		if want := map[string]float64{acme.tenant: 1, "_other": 2}; fmt.Sprint(tenants) != fmt.Sprint(want) {
			return fmt.Errorf("allowed requests by tenant label: %v, want %v", tenants, want)
		}
		return nil
	})
}
