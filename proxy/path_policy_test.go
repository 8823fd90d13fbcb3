package proxy

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Moved from e2e/core_test.go.
func TestPathProxyAuthentication(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	tlsOrigin := startPathUpstream(t, "127.0.0.1", true, nil)
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI}, origin.port, tlsOrigin.port)),
	})
	plainURL := origin.url(zoneAPI, "/auth")
	authority := tlsOrigin.authority(zoneAPI)

	refusals := []struct {
		name               string
		proxyAuthorization string
	}{
		{"no credentials", ""},
		{"wrong token", pathTenant{pathAcme.id, "not-the-token"}.auth()},
		{"unknown tenant", pathTenant{"nobody", pathAcme.token}.auth()},
		{"malformed base64", "Basic %%%not-base64%%%"},
		{"no colon", "Basic " + base64.StdEncoding.EncodeToString([]byte(pathAcme.id+pathAcme.token))},
		{"not basic", "Bearer " + pathAcme.token},
	}
	for _, tc := range refusals {
		t.Run(tc.name+"/GET", func(t *testing.T) {
			g.expectRefused(t, http.MethodGet, tc.proxyAuthorization, plainURL, http.StatusProxyAuthRequired, "proxy_auth_required", origin)
		})
		t.Run(tc.name+"/CONNECT", func(t *testing.T) {
			g.expectRefusedCONNECT(t, tc.proxyAuthorization, authority, http.StatusProxyAuthRequired, "proxy_auth_required", tlsOrigin)
		})
	}

	t.Run("valid credentials/GET", func(t *testing.T) {
		g.expectAllowedGET(t, pathAcme, plainURL)
		seen := origin.requestsTo("/auth")
		if len(seen) != 1 {
			t.Fatalf("upstream saw %d requests for /auth, want 1", len(seen))
		}
		if v := seen[0].Header.Get("Proxy-Authorization"); v != "" {
			t.Errorf("upstream received Proxy-Authorization %q: the tenant's credentials left the gateway", v)
		}
	})
	t.Run("valid credentials/CONNECT", func(t *testing.T) {
		tunnel := g.tunnel(t, pathAcme, authority)
		if status, body := httpsOverTunnel(t, tunnel, tlsOrigin, zoneAPI, "/auth-tls"); status != http.StatusOK || body != pathGreeting("/auth-tls") {
			t.Errorf("HTTPS inside the tunnel: status %d, body %q; want 200 and the greeting", status, body)
		}
	})
}

// Moved from e2e/core_test.go.
func TestPathSourceAddressIdentifiesTenant(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	tlsOrigin := startPathUpstream(t, "127.0.0.1", true, nil)
	g := startPathGateway(t, "", map[string]string{
		"tenants/ci.yaml": "id: ci\nauth:\n  source_cidrs: [\"127.0.0.1/32\"]\n" + pathRule("api", []string{zoneAPI}, origin.port, tlsOrigin.port),
	})

	resp := g.request(t, http.MethodGet, "", origin.url(zoneAPI, "/by-address"))
	if body := pathBody(t, resp); resp.StatusCode != http.StatusOK || body != pathGreeting("/by-address") {
		t.Errorf("GET without credentials from an identified address: status %d, body %q; want 200 and the greeting", resp.StatusCode, body)
	}
	g.audit.wait(t, "tenant", "ci", "path", "/by-address", "decision", "allow")

	resp, tunnel := g.connect(t, "", tlsOrigin.authority(zoneAPI))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT without credentials from an identified address: status %d, want 200", resp.StatusCode)
	}
	if status, _ := httpsOverTunnel(t, tunnel, tlsOrigin, zoneAPI, "/by-address-tls"); status != http.StatusOK {
		t.Errorf("HTTPS through an unauthenticated tunnel from an identified address: status %d, want 200", status)
	}
}

// Moved from e2e/core_test.go.
func TestPathDestinationPolicy(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	tlsOrigin := startPathUpstream(t, "127.0.0.1", true, nil)
	unlisted := startPathUpstream(t, "127.0.0.1", false, nil) // its port is in no rule
	g := startPathGateway(t, "", map[string]string{
		"connectors/api.yaml": fmt.Sprintf("name: api\nversion: 1\nhosts: [%q]\nports: [%d, %d]\n", zoneAPI, origin.port, tlsOrigin.port),
		"connectors/readonly.yaml": fmt.Sprintf("name: readonly\nversion: 1\nhosts: [%q]\nports: [%d]\nmethods: [GET]\npaths: [\"/v1/\"]\n",
			zoneReadOnly, origin.port),
		"connectors/paste.yaml":       fmt.Sprintf("name: paste\nversion: 1\nhosts: [%q]\nports: [%d, %d]\n", zonePaste, origin.port, tlsOrigin.port),
		"connectors/versioned-1.yaml": fmt.Sprintf("name: versioned\nversion: 1\nhosts: [%q]\nports: [%d]\n", zoneV1, origin.port),
		"connectors/versioned-2.yaml": fmt.Sprintf("name: versioned\nversion: 2\nhosts: [%q]\nports: [%d]\n", zoneV2, origin.port),
		"tenants/acme.yaml": pathAcme.yaml(fmt.Sprintf(`connectors: [api, readonly, paste, versioned]
rules:
  - name: no-paste
    action: deny
    hosts: [%q]
  - name: no-admin
    action: deny
    hosts: [%q]
    ports: [%d]
    paths: ["/admin/"]
`, zonePaste, zoneAPI, origin.port)),
		"tenants/wild.yaml":   pathWild.yaml(pathRule("wildcard", []string{"*." + zoneApex}, origin.port)),
		"tenants/pinned.yaml": pathPinned.yaml("connectors: [versioned@1]\n"),
	})
	const notAllowed = "destination_not_allowed"
	acme := pathAcme.auth()

	// Subtests run one after another: each refusal checks that the shared
	// upstreams saw nothing while it ran.
	t.Run("allowed host", func(t *testing.T) {
		g.expectAllowedGET(t, pathAcme, origin.url(zoneAPI, "/allowed"))
		tunnel := g.tunnel(t, pathAcme, tlsOrigin.authority(zoneAPI))
		if status, _ := httpsOverTunnel(t, tunnel, tlsOrigin, zoneAPI, "/allowed-tls"); status != http.StatusOK {
			t.Errorf("HTTPS through the tunnel: status %d, want 200", status)
		}
	})
	t.Run("host in no policy", func(t *testing.T) {
		g.expectRefused(t, http.MethodGet, acme, origin.url(zoneOther, "/"), http.StatusForbidden, notAllowed, origin)
		g.expectRefusedCONNECT(t, acme, tlsOrigin.authority(zoneOther), http.StatusForbidden, notAllowed, tlsOrigin)
	})
	t.Run("port not allowed", func(t *testing.T) {
		g.expectRefused(t, http.MethodGet, acme, unlisted.url(zoneAPI, "/"), http.StatusForbidden, notAllowed, unlisted)
		g.expectRefusedCONNECT(t, acme, unlisted.authority(zoneAPI), http.StatusForbidden, notAllowed, unlisted)
	})
	t.Run("method not allowed", func(t *testing.T) {
		g.expectRefused(t, http.MethodPost, acme, origin.url(zoneReadOnly, "/v1/items"), http.StatusForbidden, notAllowed, origin)
	})
	t.Run("path not allowed", func(t *testing.T) {
		g.expectRefused(t, http.MethodGet, acme, origin.url(zoneReadOnly, "/v2/items"), http.StatusForbidden, notAllowed, origin)
	})
	t.Run("method and path allowed", func(t *testing.T) {
		g.expectAllowedGET(t, pathAcme, origin.url(zoneReadOnly, "/v1/items"))
	})
	t.Run("CONNECT to a connector with methods but no inspect", func(t *testing.T) {
		e := g.expectRefusedCONNECT(t, acme, origin.authority(zoneReadOnly), http.StatusForbidden, notAllowed, origin)
		if !strings.Contains(e.Message, "inspect") {
			t.Errorf("message %q does not say that the connector needs inspect: true", e.Message)
		}
	})
	t.Run("dot segments cannot walk out of an allowed path", func(t *testing.T) {
		for _, path := range []string{"/v1/../admin", "/v1/%2e%2e/admin", "/v1/..%2fadmin"} {
			g.expectRefused(t, http.MethodGet, acme, origin.url(zoneReadOnly, path), http.StatusBadRequest, "bad_request", origin)
		}
	})
	t.Run("a path deny holds however the path is written", func(t *testing.T) {
		g.expectAllowedGET(t, pathAcme, origin.url(zoneAPI, "/administrators"))
		for _, path := range []string{"/admin/users", "/ADMIN/users", "/Admin;jsessionid=1/users"} {
			g.expectRefused(t, http.MethodGet, acme, origin.url(zoneAPI, path), http.StatusForbidden, notAllowed, origin)
		}
		for _, path := range []string{"/%61dmin/users", "//admin/users", "/x/..;/admin/users", "/%2Fadmin/users"} {
			g.expectRefused(t, http.MethodGet, acme, origin.url(zoneAPI, path), http.StatusBadRequest, "bad_request", origin)
		}
	})
	t.Run("tenant deny rule without ports beats an allowing connector on every port", func(t *testing.T) {
		g.expectRefused(t, http.MethodGet, acme, origin.url(zonePaste, "/"), http.StatusForbidden, notAllowed, origin)
		g.expectRefusedCONNECT(t, acme, tlsOrigin.authority(zonePaste), http.StatusForbidden, notAllowed, tlsOrigin)
	})
	t.Run("wildcard matches subdomains only", func(t *testing.T) {
		g.expectAllowedGET(t, pathWild, origin.url(zoneSub, "/one-level"))
		g.expectAllowedGET(t, pathWild, origin.url(zoneSubSub, "/two-levels"))
		g.expectRefused(t, http.MethodGet, pathWild.auth(), origin.url(zoneApex, "/apex"), http.StatusForbidden, notAllowed, origin)
	})
	t.Run("pinned connector version", func(t *testing.T) {
		g.expectAllowedGET(t, pathPinned, origin.url(zoneV1, "/pinned-v1"))
		g.expectRefused(t, http.MethodGet, pathPinned.auth(), origin.url(zoneV2, "/pinned-v2"), http.StatusForbidden, notAllowed, origin)
	})
	t.Run("unpinned connector gets the highest version", func(t *testing.T) {
		g.expectAllowedGET(t, pathAcme, origin.url(zoneV2, "/latest-v2"))
		g.expectRefused(t, http.MethodGet, acme, origin.url(zoneV1, "/latest-v1"), http.StatusForbidden, notAllowed, origin)
	})
}

// Moved from e2e/core_test.go.
func TestPathNetworkSafety(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	victim := startPathUpstream(t, zoneVictim, false, nil)
	g := newPathGateway(t)
	_, adminPort, _ := net.SplitHostPort(g.adminAddr)
	_, proxyPort, _ := net.SplitHostPort(g.addr)
	g.serve(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(fmt.Sprintf(`rules:
  - name: names-of-denied-addresses
    hosts: [%q, %q]
    ports: [80, 443, %d]
  - name: denied-literals
    hosts: ["127.0.0.2", "::ffff:127.0.0.2"]
    ports: [%d]
  - name: loopback
    hosts: ["127.0.0.1"]
    ports: [%d, %s, %s]
`, zoneRebind, zoneMetadata, victim.port, victim.port, origin.port, adminPort, proxyPort)),
	})

	t.Run("allow_cidrs exception is reachable", func(t *testing.T) {
		g.expectAllowedGET(t, pathAcme, origin.url("127.0.0.1", "/loopback"))
	})

	const ipDenied, badRequest = "destination_ip_denied", "bad_request"
	refusals := []struct {
		name      string
		authority string // host:port, requested both as http://authority/ and CONNECT authority
		status    int
		code      string
		untouched []pathReachable
	}{
		{"name resolving to a denied address", victim.authority(zoneRebind), http.StatusForbidden, ipDenied, []pathReachable{victim}},
		{"name resolving to cloud metadata", net.JoinHostPort(zoneMetadata, "80"), http.StatusForbidden, ipDenied, nil},
		{"IP literal allowed by a rule", victim.authority("127.0.0.2"), http.StatusForbidden, ipDenied, []pathReachable{victim}},
		{"IPv4-mapped IPv6 literal", victim.authority("::ffff:127.0.0.2"), http.StatusForbidden, ipDenied, []pathReachable{victim}},
		{"gateway's own admin listener", g.adminAddr, http.StatusForbidden, ipDenied, nil},
		{"gateway's own proxy listener", g.addr, http.StatusForbidden, ipDenied, nil},
		{"decimal IPv4", origin.authority("2130706433"), http.StatusBadRequest, badRequest, []pathReachable{origin}},
		{"hex and short IPv4", origin.authority("0x7f.1"), http.StatusBadRequest, badRequest, []pathReachable{origin}},
		{"octal IPv4", origin.authority("017700000001"), http.StatusBadRequest, badRequest, []pathReachable{origin}},
		{"short IPv4", origin.authority("127.1"), http.StatusBadRequest, badRequest, []pathReachable{origin}},
	}
	for _, tc := range refusals {
		t.Run(tc.name+"/GET", func(t *testing.T) {
			g.expectRefused(t, http.MethodGet, pathAcme.auth(), "http://"+tc.authority+"/", tc.status, tc.code, tc.untouched...)
		})
		t.Run(tc.name+"/CONNECT", func(t *testing.T) {
			g.expectRefusedCONNECT(t, pathAcme.auth(), tc.authority, tc.status, tc.code, tc.untouched...)
		})
	}
}

// Moved from e2e/core_test.go.
func TestPathUpstreamFailures(t *testing.T) {
	t.Parallel()
	neverAnswers := startPathTCPServer(t, "127.0.0.1", silentConn)
	closed := closedPort(t)
	g := startPathGateway(t, "limits:\n  idle_timeout: 1s\n", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("flaky", []string{zoneNXDomain, zoneAPI}, 80, 443, closed, neverAnswers.port)),
	})
	closedAuthority := net.JoinHostPort(zoneAPI, fmt.Sprint(closed))
	acme := pathAcme.auth()

	cases := []struct {
		name, method, target string
		status               int
		code                 string
	}{
		{"unknown name/GET", http.MethodGet, "http://" + zoneNXDomain + "/", http.StatusBadGateway, "dns_failure"},
		{"unknown name/CONNECT", http.MethodConnect, net.JoinHostPort(zoneNXDomain, "443"), http.StatusBadGateway, "dns_failure"},
		{"nothing listening/GET", http.MethodGet, "http://" + closedAuthority + "/", http.StatusBadGateway, "upstream_unreachable"},
		{"nothing listening/CONNECT", http.MethodConnect, closedAuthority, http.StatusBadGateway, "upstream_unreachable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var e pathRefusal
			if tc.method == http.MethodConnect {
				e = g.expectRefusedCONNECT(t, acme, tc.target, tc.status, tc.code)
			} else {
				e = g.expectRefused(t, tc.method, acme, tc.target, tc.status, tc.code)
			}
			assertNoInternalDetail(t, e)
		})
	}
	t.Run("upstream never answers", func(t *testing.T) {
		const bound = 10 * time.Second
		start := time.Now()
		e := assertPathRefusal(t, g.request(t, http.MethodGet, acme, "http://"+neverAnswers.authority(zoneAPI)+"/"), http.StatusGatewayTimeout, "upstream_timeout")
		if elapsed := time.Since(start); elapsed > bound {
			t.Errorf("gateway answered after %v; with idle_timeout: 1s it should give up well within %v", elapsed, bound)
		}
		if neverAnswers.reached() == 0 {
			t.Errorf("the silent upstream was never connected to, so this was not a timeout")
		}
		assertNoInternalDetail(t, e)
	})
}

// Moved from e2e/timeouts_test.go: a name that does not exist, a
// resolver that fails and a resolver that does not answer within
// dns_timeout all get 502 dns_failure, each with a message that says
// which, so nobody checks the spelling of a name the resolver never
// looked up.
func TestPathDNSFailuresSayWhichKind(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, nil)
	// Only the silent resolver is meant to meet dns_timeout: the others
	// get one far beyond any scheduling delay, so an answer that came is
	// never taken for one that did not.
	cases := []struct {
		name, resolver, host string // resolver "": the zone's
		dnsTimeout           string
		say, not             string
	}{
		{"no such host", "", zoneNXDomain, "10s", "check the spelling", "resolver"},
		{"resolver fails", startDNSReplier(t, dnsmessage.RCodeServerFailure, false), zoneAPI, "10s", "resolver failed", "spelling"},
		{"resolver refuses", startDNSReplier(t, dnsmessage.RCodeRefused, false), zoneAPI, "10s", "resolver failed", "spelling"},
		{"resolver silent", startDNSReplier(t, 0, true), zoneAPI, "500ms", "did not answer in time", "spelling"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := newPathGateway(t)
			if tc.resolver != "" {
				g.dns = tc.resolver
			}
			g.network = "  dns_timeout: " + tc.dnsTimeout + "\n"
			g.serve(t, "", map[string]string{
				"tenants/acme.yaml": pathAcme.yaml(pathRule("api", []string{zoneAPI, zoneNXDomain}, origin.port)),
			})
			target := net.JoinHostPort(tc.host, fmt.Sprint(origin.port))
			for _, e := range []pathRefusal{
				g.expectRefused(t, http.MethodGet, pathAcme.auth(), "http://"+target+"/", http.StatusBadGateway, "dns_failure", origin),
				g.expectRefusedCONNECT(t, pathAcme.auth(), target, http.StatusBadGateway, "dns_failure", origin),
			} {
				if !strings.Contains(e.Message, tc.say) || strings.Contains(e.Message, tc.not) {
					t.Errorf("message %q: want it to say %q, not %q", e.Message, tc.say, tc.not)
				}
				assertNoInternalDetail(t, e)
			}
			// The operator is told when the resolver is at fault, with
			// its error; a misspelt name is no news for the operator.
			warned := strings.Contains(g.log.String(), `"msg":"the DNS resolver`)
			if resolverFault := tc.not == "spelling"; warned != resolverFault {
				t.Errorf("resolver warning logged: %v, want %v; log:\n%s", warned, resolverFault, g.log.String())
			}
		})
	}
}
