package policy

import (
	"strings"
	"testing"
)

// upgradeFixture has, for each way a rule can restrict what it carries, one
// rule without and one with upgrade: true.
func upgradeFixture(t testing.TB) *Snapshot {
	return mustLoad(t, map[string]string{
		"hooks/stamp.tengo":           "request.headers[\"X-Stamp\"] = [\"stamped\"]\n",
		"connectors/open.yaml":        "name: open\nhosts: [\"open.example\"]\nquota: { requests_per_second: 10, burst: 10 }\n",
		"connectors/narrow.yaml":      "name: narrow\nhosts: [\"narrow.example\"]\nmethods: [GET]\npaths: [\"/upgrade\"]\n",
		"connectors/narrow-up.yaml":   "name: narrow-up\nhosts: [\"narrow-up.example\"]\nmethods: [GET]\npaths: [\"/upgrade\"]\nupgrade: true\n",
		"connectors/hooked.yaml":      "name: hooked\nhosts: [\"hooked.example\"]\nhooks: { request: hooks/stamp.tengo }\n",
		"connectors/hooked-up.yaml":   "name: hooked-up\nhosts: [\"hooked-up.example\"]\nhooks: { request: hooks/stamp.tengo }\nupgrade: true\n",
		"connectors/report-hook.yaml": "name: report-hook\nhosts: [\"watched.example\"]\nmethods: [GET]\nhooks: { request: hooks/stamp.tengo }\n",
		"tenants/acme.yaml": `id: acme
auth: { token_sha256: "` + testTokenHash + `" }
connectors: [open, narrow, narrow-up, hooked, hooked-up]
rules:
  - name: docs
    hosts: ["docs.example"]
    methods: [GET]
  - name: docs-up
    hosts: ["docs-up.example"]
    methods: [GET]
    upgrade: true
  - name: no-admin
    action: deny
    hosts: ["guarded.example"]
    paths: ["/admin"]
  - name: no-admin-but-upgrades
    action: deny
    hosts: ["guarded-up.example"]
    paths: ["/admin"]
    upgrade: true
  - name: guarded
    hosts: ["guarded.example", "guarded-up.example"]
`,
		"tenants/watcher.yaml": "id: watcher\nmode: report\nauth: { source_cidrs: [\"10.20.0.0/16\"] }\nconnectors: [report-hook]\n",
	})
}

func TestDecideUpgrade(t *testing.T) {
	snap := upgradeFixture(t)
	get := func(host, path string) Request {
		return Request{Host: host, Port: 80, Method: "GET", Path: path, Upgrade: true}
	}
	cases := []struct {
		name     string
		tenant   string
		req      Request
		allow    bool
		rule     string
		inReason string
	}{
		{"a rule with no restriction lets upgrades through", "acme", get("open.example", "/ws"), true, "open@1", ""},
		{"restricted connector", "acme", get("narrow.example", "/upgrade"), false, "narrow@1", "sets upgrade: true"},
		{"restricted connector with upgrade: true", "acme", get("narrow-up.example", "/upgrade"), true, "narrow-up@1", ""},
		{"restricted connector still decides the request itself", "acme", get("narrow-up.example", "/admin"), false, "narrow-up@1", "GET /admin is not among"},
		{"hooks", "acme", get("hooked.example", "/"), false, "hooked@1", "runs hooks"},
		{"hooks with upgrade: true", "acme", get("hooked-up.example", "/"), true, "hooked-up@1", ""},
		{"inspected request inside a tunnel", "acme", Request{Host: "narrow.example", Port: 443, Method: "GET", Path: "/upgrade", TLS: true, Upgrade: true}, false, "narrow@1", "upgrade: true"},
		{"tenant rule with methods", "acme", get("docs.example", "/"), false, "docs", `rule "docs" restricts methods or paths`},
		{"tenant rule with upgrade: true", "acme", get("docs-up.example", "/"), true, "docs-up", ""},
		{"a path deny on the host", "acme", get("guarded.example", "/ws"), false, "no-admin", `rule "no-admin" denies some methods or paths`},
		{"a path deny with upgrade: true", "acme", get("guarded-up.example", "/ws"), true, "guarded", ""},
		{"the deny still denies its own paths", "acme", get("guarded-up.example", "/admin"), false, "no-admin-but-upgrades", "denied by rule"},
		{"report mode keeps the refusal", "watcher", get("watched.example", "/"), false, "report-hook@1", "runs hooks"},
		{"report mode keeps it for a reported path too", "watcher", Request{Host: "watched.example", Port: 80, Method: "POST", Path: "/", Upgrade: true}, false, "report-hook@1", "runs hooks"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tenant, ok := snap.Tenant(c.tenant)
			if !ok {
				t.Fatalf("no tenant %s", c.tenant)
			}
			d := tenant.Decide(c.req)
			if d.Allow != c.allow || d.Report || d.Rule != c.rule || !strings.Contains(d.Reason, c.inReason) {
				t.Errorf("got %+v\nwant allow=%v rule=%q reason containing %q", d, c.allow, c.rule, c.inReason)
			}
			if !d.Allow && d.Code != CodeDestinationNotAllowed {
				t.Errorf("denied with code %q", d.Code)
			}
			// The same request without Upgrade is decided as before.
			plain := c.req
			plain.Upgrade = false
			if d := tenant.Decide(plain); !d.Allow && c.allow {
				t.Errorf("without Upgrade: %+v", d)
			}
		})
	}
}

// TestExplainShowsUpgrade: explain tells an admin whether the request it
// traces may switch protocols, with the reason the gateway would give.
func TestExplainShowsUpgrade(t *testing.T) {
	snap := upgradeFixture(t)
	tenant, _ := snap.Tenant("acme")
	cases := []struct {
		name, url, want string
	}{
		{"no restriction", "http://open.example/ws", "allowed: "},
		{"restricted", "http://narrow.example/upgrade", "refused: " + `tenant "acme" may not reach narrow.example:80: connector "narrow" restricts`},
		{"upgrade: true", "http://narrow-up.example/upgrade", "allowed: "},
		{"path deny on the host", "http://guarded.example/ws", `refused: tenant "acme" may not reach guarded.example:80: rule "no-admin"`},
		{"uninspected tunnel", "https://open.example/ws", "not seen: "},
		{"denied request", "http://narrow.example/other", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, err := tenant.ExplainURL("GET", c.url)
			if err != nil {
				t.Fatal(err)
			}
			if c.want == "" && tr.Upgrade != "" || !strings.HasPrefix(tr.Upgrade, c.want) {
				t.Errorf("upgrade %q, want it to start with %q", tr.Upgrade, c.want)
			}
			var text strings.Builder
			if err := tr.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			if c.want != "" && !strings.Contains(text.String(), "upgrade:  "+c.want) {
				t.Errorf("text output lacks the upgrade line:\n%s", text.String())
			}
		})
	}
}
