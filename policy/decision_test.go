package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func decisionFixture(t testing.TB) *Snapshot {
	return mustLoad(t, map[string]string{
		"connectors/github-v1.yaml": "name: github\nversion: 1\nhosts: [\"api.github.com\"]\nports: [443]\n",
		"connectors/github-v2.yaml": "name: github\nversion: 2\nhosts: [\"api.github.com\", \"uploads.github.com\"]\nports: [443]\n",
		"connectors/crm.yaml":       "name: crm\nhosts: [\"*.crm.example\"]\nports: [80]\nmethods: [GET, POST]\npaths: [\"/v1/\"]\n",
		"tenants/acme.yaml": `id: acme
auth: { token_sha256: "` + testTokenHash + `" }
connectors: [github, crm]
rules:
  - name: docs
    hosts: ["docs.python.org", "203.0.113.7", "198.51.100.0/24"]
  - name: no-uploads
    action: deny
    hosts: ["uploads.github.com"]
  - name: no-crm-delete
    action: deny
    hosts: ["*.crm.example"]
    ports: [80]
    methods: [DELETE]
`,
		"tenants/pinned.yaml":  "id: pinned\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [github@1]\n",
		"tenants/watcher.yaml": "id: watcher\nmode: report\nauth: { source_cidrs: [\"10.20.0.0/16\"] }\nconnectors: [crm]\n",
	})
}

func TestDecide(t *testing.T) {
	snap := decisionFixture(t)
	cases := []struct {
		name     string
		tenant   string
		req      Request
		allow    bool
		report   bool
		rule     string
		inReason string
	}{
		{"connector host", "acme", Request{Host: "api.github.com", Port: 443, Tunnel: true}, true, false, "github@2", ""},
		{"connector port not listed", "acme", Request{Host: "api.github.com", Port: 80, Method: "GET", Path: "/"}, false, false, "", "no connector or rule matches"},
		{"deny rule without ports covers every port", "acme", Request{Host: "uploads.github.com", Port: 8443, Tunnel: true}, false, false, "no-uploads", `denied by rule "no-uploads"`},
		{"deny rule beats connector", "acme", Request{Host: "uploads.github.com", Port: 443, Tunnel: true}, false, false, "no-uploads", `denied by rule "no-uploads"`},
		{"pinned version lacks host", "pinned", Request{Host: "uploads.github.com", Port: 443, Tunnel: true}, false, false, "", "no connector or rule matches"},
		{"pinned version", "pinned", Request{Host: "api.github.com", Port: 443, Tunnel: true}, true, false, "github@1", ""},
		{"wildcard subdomain", "acme", Request{Host: "eu.crm.example", Port: 80, Method: "GET", Path: "/v1/contacts"}, true, false, "crm@1", ""},
		{"wildcard deep subdomain", "acme", Request{Host: "a.b.crm.example", Port: 80, Method: "POST", Path: "/v1/x"}, true, false, "crm@1", ""},
		{"wildcard never the apex", "acme", Request{Host: "crm.example", Port: 80, Method: "GET", Path: "/v1/"}, false, false, "", "no connector or rule matches"},
		{"method not allowed", "acme", Request{Host: "eu.crm.example", Port: 80, Method: "PUT", Path: "/v1/x"}, false, false, "crm@1", "PUT /v1/x is not among the methods and paths"},
		{"path not allowed", "acme", Request{Host: "eu.crm.example", Port: 80, Method: "GET", Path: "/admin"}, false, false, "crm@1", "GET /admin is not among"},
		{"conditional deny rule", "acme", Request{Host: "eu.crm.example", Port: 80, Method: "DELETE", Path: "/v1/x"}, false, false, "no-crm-delete", "denied by rule"},
		{"tunnel to conditional connector", "acme", Request{Host: "eu.crm.example", Port: 80, Tunnel: true}, false, false, "no-crm-delete", "uninspected tunnel"},
		{"default ports", "acme", Request{Host: "docs.python.org", Port: 80, Method: "GET", Path: "/3/"}, true, false, "docs", ""},
		{"default ports exclude others", "acme", Request{Host: "docs.python.org", Port: 8080, Method: "GET", Path: "/"}, false, false, "", ""},
		{"ip literal rule", "acme", Request{Host: "203.0.113.7", Port: 443, Tunnel: true}, true, false, "docs", ""},
		{"cidr rule", "acme", Request{Host: "198.51.100.200", Port: 443, Tunnel: true}, true, false, "docs", ""},
		{"outside cidr", "acme", Request{Host: "198.51.101.1", Port: 443, Tunnel: true}, false, false, "", ""},
		{"unknown host", "acme", Request{Host: "evil.example", Port: 443, Tunnel: true}, false, false, "", `tenant "acme" may not reach evil.example:443`},
		{"report mode lets it through", "watcher", Request{Host: "evil.example", Port: 443, Tunnel: true}, true, true, "", "no connector or rule matches"},
		{"report mode, allowed request is plain allow", "watcher", Request{Host: "x.crm.example", Port: 80, Method: "GET", Path: "/v1/"}, true, false, "crm@1", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tenant, ok := snap.Tenant(c.tenant)
			if !ok {
				t.Fatalf("no tenant %s", c.tenant)
			}
			d := tenant.Decide(c.req)
			if d.Allow != c.allow || d.Report != c.report || d.Rule != c.rule || !strings.Contains(d.Reason, c.inReason) {
				t.Errorf("got %+v\nwant allow=%v report=%v rule=%q reason containing %q", d, c.allow, c.report, c.rule, c.inReason)
			}
			if !d.Allow && d.Code != CodeDestinationNotAllowed {
				t.Errorf("denied with code %q", d.Code)
			}
			if d.Report && d.Code != CodeDestinationNotAllowed {
				t.Errorf("report decision should carry the enforce code, got %q", d.Code)
			}
			// Explain must reach the same verdict as the indexed matcher.
			tr := tenant.Explain(c.req)
			want := map[bool]string{true: "allow", false: "deny"}[c.allow]
			if c.report {
				want = "report"
			}
			if tr.Decision != want || tr.Rule != d.Rule {
				t.Errorf("explain says %s by %q, decide says %s by %q", tr.Decision, tr.Rule, want, d.Rule)
			}
		})
	}
}

func TestAuthenticate(t *testing.T) {
	snap := decisionFixture(t)
	cases := []struct {
		name, tenant, token string
		ok                  bool
	}{
		{"right token", "acme", "test", true},
		{"wrong token", "acme", "tesT", false},
		{"empty token", "acme", "", false},
		{"unknown tenant", "nobody", "test", false},
		{"tenant without token", "watcher", "test", false},
		{"token of another tenant's id", "pinned", "test", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tenant, ok := snap.Authenticate(c.tenant, c.token)
			if ok != c.ok || (ok && tenant.ID != c.tenant) {
				t.Errorf("Authenticate(%q, %q) = %v, %v", c.tenant, c.token, tenant, ok)
			}
		})
	}
}

func TestTenantBySource(t *testing.T) {
	snap := decisionFixture(t)
	cases := []struct {
		addr string
		want string
	}{
		{"10.20.3.4", "watcher"},
		{"::ffff:10.20.3.4", "watcher"},
		{"10.21.0.1", ""},
		{"127.0.0.1", ""},
	}
	for _, c := range cases {
		got := snap.TenantBySource(netip.MustParseAddr(c.addr))
		if (got == nil && c.want != "") || (got != nil && got.ID != c.want) {
			t.Errorf("TenantBySource(%s) = %v, want %q", c.addr, got, c.want)
		}
	}
}

func TestRequestsForURL(t *testing.T) {
	cases := []struct {
		method, url string
		want        Request
		ok          bool
	}{
		{"", "http://Example.COM./a?b=c", Request{Host: "example.com", Port: 80, Method: "GET", Path: "/a"}, true},
		{"post", "http://example.com:8080", Request{Host: "example.com", Port: 8080, Method: "POST", Path: "/"}, true},
		{"GET", "https://api.github.com/repos", Request{Host: "api.github.com", Port: 443, Tunnel: true}, true},
		{"GET", "https://[2001:db8::1]:8443/", Request{Host: "2001:db8::1", Port: 8443, Tunnel: true}, true},
		{"GET", "http://bücher.example/", Request{Host: "xn--bcher-kva.example", Port: 80, Method: "GET", Path: "/"}, true},
		{"GET", "http://2130706433/", Request{}, false},
		{"GET", "http://0x7f.1/", Request{}, false},
		{"GET", "http://example.com:0/", Request{}, false},
		{"GET", "http://example.com:99999/", Request{}, false},
		{"GET", "ftp://example.com/", Request{}, false},
		{"GET", "http://example.com/v1/../admin", Request{}, false},
		{"GET", "http://example.com/v1/%2e%2E/admin", Request{}, false},
		{"GET", "http://example.com/v1/..%2Fadmin", Request{}, false},
		{"GET", "http://example.com/v1/..%5cadmin", Request{}, false},
		{"GET", "http://example.com/v1/./x", Request{}, false},
		{"GET", "http://example.com/v1/..x/.y", Request{Host: "example.com", Port: 80, Method: "GET", Path: "/v1/..x/.y"}, true},
		{"GET", "http://exa mple.com/", Request{}, false},
	}
	for _, c := range cases {
		got, _, err := requestsForURL(c.method, c.url)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("requestsForURL(%q, %q) = %+v, %v; want %+v ok=%v", c.method, c.url, got, err, c.want, c.ok)
		}
	}
}

// Report mode lets host, port, method and path denials through with the
// connector that covers the host, so its quota and redaction still apply;
// what the gateway cannot read stays refused.
func TestReportModeRelaxesOnlyWhatItMay(t *testing.T) {
	caCert, caKey := testCA(t)
	snap := mustLoad(t, map[string]string{
		"gateway.yaml":          "tls: { ca_cert: ca.pem, ca_key: ca-key.pem }\nsecrets:\n  vault_key: { file: vault.key }\n",
		"ca.pem":                caCert,
		"ca-key.pem":            caKey,
		"vault.key":             "s3cret-value\n",
		"connectors/crm.yaml":   "name: crm\nhosts: [\"*.crm.example\"]\nports: [80]\nmethods: [GET]\npaths: [\"/v1/\"]\n",
		"connectors/vault.yaml": "name: vault\nhosts: [\"vault.example\"]\nmethods: [GET]\ninspect: true\ninject:\n  headers: { Authorization: \"Bearer ${secret:vault_key}\" }\n",
		"tenants/watcher.yaml": `id: watcher
mode: report
auth: { source_cidrs: ["10.20.0.0/16"] }
connectors: [crm, vault]
rules:
  - name: no-blocked
    action: deny
    hosts: ["blocked.crm.example"]
  - name: no-vault-tls
    action: deny
    hosts: ["vault.example"]
    ports: [443]
`,
	})
	tenant, ok := snap.Tenant("watcher")
	if !ok {
		t.Fatal("no tenant watcher")
	}
	cases := []struct {
		name      string
		req       Request
		allow     bool
		rule      string
		connector string // the connector the decision carries
		inReason  string
	}{
		{"unknown host is reported", Request{Host: "evil.example", Port: 443, Tunnel: true}, true, "", "", "no connector or rule matches"},
		{"path denial keeps the connector", Request{Host: "x.crm.example", Port: 80, Method: "GET", Path: "/admin"}, true, "crm", "crm", "GET /admin is not among"},
		{"deny rule on plain HTTP keeps the connector", Request{Host: "blocked.crm.example", Port: 80, Method: "GET", Path: "/v1/"}, true, "no-blocked", "crm", `denied by rule "no-blocked"`},
		{"uninspected tunnel to a conditional connector stays refused", Request{Host: "x.crm.example", Port: 80, Tunnel: true}, false, "crm", "", "needs inspect: true"},
		{"denied host behind an uninspected connector stays refused", Request{Host: "blocked.crm.example", Port: 80, Tunnel: true}, false, "crm", "", "needs inspect: true"},
		{"credentials over plain HTTP stay refused", Request{Host: "vault.example", Port: 80, Method: "GET", Path: "/"}, false, "vault", "", "plain HTTP"},
		{"inspected tunnel to a denied host is reported", Request{Host: "vault.example", Port: 443, Tunnel: true}, true, "no-vault-tls", "vault", `denied by rule "no-vault-tls"`},
		{"inner method denial keeps the connector", Request{Host: "vault.example", Port: 443, Method: "DELETE", Path: "/x", TLS: true}, true, "no-vault-tls", "vault", `denied by rule "no-vault-tls"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := tenant.Decide(c.req)
			var connector string
			if d.Connector != nil {
				connector = d.Connector.Name
			}
			if d.Allow != c.allow || d.Report != c.allow || !strings.HasPrefix(d.Rule, c.rule) || connector != c.connector || !strings.Contains(d.Reason, c.inReason) {
				t.Errorf("got allow=%v report=%v rule=%q connector=%q reason=%q\nwant allow=report=%v rule %q connector %q reason containing %q",
					d.Allow, d.Report, d.Rule, connector, d.Reason, c.allow, c.rule, c.connector, c.inReason)
			}
			if d.Code != CodeDestinationNotAllowed {
				t.Errorf("code %q, want the code enforce answers", d.Code)
			}
		})
	}
}

// testCA returns a fresh signing CA, PEM-encoded, for configs that inspect.
func testCA(t testing.TB) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "policy test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
}

// TestDecideAmbiguousPath: where a rule names paths, a spelling of the path
// that no prefix comparison can settle is refused as bad_request, in
// report mode too; where none does, it makes no difference.
func TestDecideAmbiguousPath(t *testing.T) {
	snap := mustLoad(t, map[string]string{
		"connectors/api.yaml":   "name: api\nhosts: [\"api.example.com\"]\nports: [443]\n",
		"connectors/files.yaml": "name: files\nhosts: [\"files.example.com\"]\nports: [443]\npaths: [\"/public/\"]\n",
		"tenants/acme.yaml": `id: acme
auth: { token_sha256: "` + testTokenHash + `" }
connectors: [api, files]
rules:
  - name: no-admin
    action: deny
    hosts: ["api.example.com"]
    paths: ["/admin"]
`,
		"tenants/watcher.yaml": "id: watcher\nmode: report\nauth: { source_cidrs: [\"10.20.0.0/16\"] }\nconnectors: [api, files]\nrules: [{name: no-admin, action: deny, hosts: [\"api.example.com\"], paths: [\"/admin\"]}]\n",
	})
	for _, tc := range []struct {
		tenant, host, path string
		code               Code
	}{
		{"acme", "api.example.com", "/\uff41dmin", CodeBadRequest},
		{"acme", "api.example.com", "/%EF%BD%81dmin", CodeBadRequest},
		{"acme", "api.example.com", "/admin./x", CodeBadRequest},
		{"acme", "api.example.com", "/x/..%2Fadmin", CodeBadRequest},
		{"acme", "api.example.com", "/ADMIN", CodeDestinationNotAllowed},
		{"acme", "api.example.com", "/adm%69n", CodeDestinationNotAllowed}, // read decoded, as servers do
		{"acme", "api.example.com", "/v1/users", CodeOK},
		{"acme", "files.example.com", "/public/%C3%A9", CodeBadRequest},
		{"acme", "files.example.com", "/public/a%2Fb", CodeBadRequest},
		{"acme", "files.example.com", "/public/a.txt", CodeOK},
		{"watcher", "api.example.com", "/\uff41dmin", CodeBadRequest},
		{"watcher", "files.example.com", "/public/%C3%A9", CodeBadRequest},
	} {
		tenant, _ := snap.Tenant(tc.tenant)
		d := tenant.Decide(Request{Host: tc.host, Port: 443, Method: "GET", Path: tc.path, TLS: true})
		if d.Code != tc.code || d.Allow != (tc.code == CodeOK) {
			t.Errorf("%s: Decide(%s%s) = %+v, want code %s", tc.tenant, tc.host, tc.path, d, tc.code)
		}
		if tc.code == CodeBadRequest && !strings.Contains(d.Reason, "ambiguous") {
			t.Errorf("%s: Decide(%s%s) reason %q does not say why", tc.tenant, tc.host, tc.path, d.Reason)
		}
	}
}

// A tunnel the gateway reads as plain HTTP (Request.PlainHTTP) is decided
// as an inspected one: rules that name methods and paths, and connectors
// that need to read what passes, let it in, since each request inside is
// decided on its own; what refuses the host and port still refuses it.
func TestDecidePlainHTTPTunnel(t *testing.T) {
	snap := decisionFixture(t)
	cases := []struct {
		name   string
		tenant string
		req    Request
		allow  bool
		rule   string
	}{
		{"conditional connector and conditional deny", "acme", Request{Host: "eu.crm.example", Port: 80, Tunnel: true, PlainHTTP: true}, true, "crm@1"},
		{"unconditional deny still wins", "acme", Request{Host: "uploads.github.com", Port: 80, Tunnel: true, PlainHTTP: true}, false, "no-uploads"},
		{"no rule still denies", "acme", Request{Host: "evil.example", Port: 80, Tunnel: true, PlainHTTP: true}, false, ""},
		{"port not listed still denies", "acme", Request{Host: "eu.crm.example", Port: 8080, Tunnel: true, PlainHTTP: true}, false, ""},
		{"report mode: a plain allow, not a report", "watcher", Request{Host: "x.crm.example", Port: 80, Tunnel: true, PlainHTTP: true}, true, "crm@1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tenant, _ := snap.Tenant(c.tenant)
			d := tenant.Decide(c.req)
			if d.Allow != c.allow || d.Report || d.Rule != c.rule {
				t.Errorf("got %+v\nwant allow=%v rule %q, not a report", d, c.allow, c.rule)
			}
			if c.allow {
				opaque := c.req
				opaque.PlainHTTP = false
				if tenant.Decide(opaque).Allow {
					t.Errorf("the same tunnel is allowed unread too: the case tests nothing")
				}
			}
		})
	}
}
