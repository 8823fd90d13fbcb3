package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
)

var tracer = credentials{tenant: "tracer", token: "tracer-token-5f20c1d8a3"}

// forgeRequestID is a request hook that tries to name the request itself.
const forgeRequestID = `request.headers["X-Request-Id"] = ["forged-by-hook"]` + "\n"

// TestRequestIdReachesTheUpstream: the upstream of a plain or inspected
// request sees the gateway's request id, the one of the audit line and of
// the X-Request-Id the client got back, in the header the connector names
// (X-Request-Id unless it says otherwise). Neither the client nor a hook
// can put another id there; a connector that says "" sends none and
// leaves the client's header as it was.
func TestRequestIdReachesTheUpstream(t *testing.T) {
	t.Parallel()
	plain := startHTTPUpstream(t, "127.0.0.1", nil)
	secure := startTLSUpstream(t, "127.0.0.1", nil)
	dir := writeConfig(t, configFiles{
		"gateway.yaml":      inspectingGatewayYAML(""),
		"hooks/forge.tengo": forgeRequestID,
		"connectors/inspected.yaml": yamlf(`
			name: inspected
			hosts: [%q]
			ports: [%d]
			inspect: true
			hooks: { request: hooks/forge.tengo }
		`, hostAPI, secure.port),
		"connectors/hooked.yaml": yamlf(`
			name: hooked
			hosts: [%q]
			ports: [%d]
			hooks: { request: hooks/forge.tengo }
		`, hostReadOnly, plain.port),
		"connectors/quiet.yaml": yamlf(`
			name: quiet
			hosts: [%q]
			ports: [%d]
			request_id_header: ""
		`, hostSub, plain.port),
		"connectors/renamed.yaml": yamlf(`
			name: renamed
			hosts: [%q]
			ports: [%d]
			request_id_header: X-Correlation-Id
		`, hostSubSub, plain.port),
		"tenants/tracer.yaml": tenantYAML(tracer, "connectors: [inspected, hooked, quiet, renamed]\n"+
			allowRule("plain", []string{hostAPI}, plain.port)),
	})
	if res := egressgw(t, "ca", "init", "--out", filepath.Join(dir, "ca")); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	gatewayCA := x509.NewCertPool()
	gatewayCA.AppendCertsFromPEM(caPEM)
	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")
	proxy := &url.URL{Scheme: "http", Host: g.proxyAddr, User: url.UserPassword(tracer.tenant, tracer.token)}
	transport := &http.Transport{Proxy: http.ProxyURL(proxy), TLSClientConfig: &tls.Config{RootCAs: gatewayCA}}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport, Timeout: scaled(requestTimeout)}

	// get sends GET target with the client's own X-Request-Id and returns
	// what the upstream saw of it and the id the gateway gave it.
	get := func(t *testing.T, origin *upstream, target string) (seen http.Header, id string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, target, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Request-Id", "chosen-by-the-client")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", target, err)
		}
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d, body %q", target, resp.StatusCode, body)
		}
		path := req.URL.Path
		rec := g.waitAudit(t, auditWith("tenant", tracer.tenant, "path", path))
		id, _ = rec["request_id"].(string)
		if id == "" || resp.Header.Get("X-Request-Id") != id {
			t.Errorf("the client got X-Request-Id %q, the audit line says %q", resp.Header.Get("X-Request-Id"), id)
		}
		requests := origin.requestsTo(path)
		if len(requests) != 1 {
			t.Fatalf("the upstream saw %d requests to %s, want 1", len(requests), path)
		}
		return requests[0].Header, id
	}
	for _, tc := range []struct {
		name   string
		origin *upstream
		target string
	}{
		{"plain, through a tenant rule", plain, plain.url(hostAPI, "/rule")},
		{"plain, through a connector whose hook sets one", plain, plain.url(hostReadOnly, "/hooked")},
		{"inspected, through a connector whose hook sets one", secure, secure.url(hostAPI, "/inspected")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen, id := get(t, tc.origin, tc.target)
			if got := seen.Values("X-Request-Id"); len(got) != 1 || got[0] != id {
				t.Errorf("the upstream saw X-Request-Id %q, want exactly the gateway's %q", got, id)
			}
		})
	}
	t.Run("a connector that names another header", func(t *testing.T) {
		seen, id := get(t, plain, plain.url(hostSubSub, "/renamed"))
		if got := seen.Values("X-Correlation-Id"); len(got) != 1 || got[0] != id {
			t.Errorf("the upstream saw X-Correlation-Id %q, want exactly the gateway's %q", got, id)
		}
		if got := seen.Values("X-Request-Id"); len(got) != 1 || got[0] != "chosen-by-the-client" {
			t.Errorf("the upstream saw X-Request-Id %q, want the client's own, untouched", got)
		}
	})
	t.Run("a connector that sends none", func(t *testing.T) {
		seen, id := get(t, plain, plain.url(hostSub, "/quiet"))
		if got := seen.Values("X-Request-Id"); len(got) != 1 || got[0] != "chosen-by-the-client" {
			t.Errorf("the upstream saw X-Request-Id %q, want the client's own, untouched", got)
		}
		for name, values := range seen {
			for _, v := range values {
				if v == id {
					t.Errorf("the upstream saw the gateway's id in %s", name)
				}
			}
		}
	})
}
