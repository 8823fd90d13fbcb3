package policy

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/state"
)

var grantNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func testGrant(id, tenant, host string, ports []int, methods, paths []string, expires time.Time) state.Grant {
	return state.Grant{
		ID: id, Tenant: tenant, Host: host, Ports: ports, Methods: methods, Paths: paths,
		ExpiresAt: expires, CreatedAt: grantNow.Add(-time.Hour), ApprovedBy: "admin",
	}
}

func compileTestGrants(t *testing.T, gs ...state.Grant) *Grants {
	t.Helper()
	set, dropped := CompileGrants(gs, grantNow)
	for _, err := range dropped {
		t.Logf("dropped: %v", err)
	}
	return set
}

func TestDecideWithGrants(t *testing.T) {
	snap := decisionFixture(t)
	later := grantNow.Add(time.Hour)
	grants := compileTestGrants(t,
		testGrant("gr_pypi", "acme", "*.pypi.org", []int{443}, nil, nil, later),
		testGrant("gr_uploads", "acme", "uploads.github.com", []int{443}, nil, nil, later),
		testGrant("gr_old", "acme", "old.example", []int{443}, nil, nil, grantNow.Add(-time.Second)),
		testGrant("gr_ends", "acme", "ends.example", []int{80}, nil, nil, grantNow.Add(time.Minute)),
		testGrant("gr_api", "acme", "api.example", []int{80, 443}, []string{"GET"}, []string{"/v1/"}, later),
		testGrant("gr_other", "pinned", "other.example", []int{443}, nil, nil, later),
		testGrant("gr_watch", "watcher", "watched.example", []int{80}, nil, nil, later),
	)
	cases := []struct {
		name     string
		tenant   string
		req      Request
		at       time.Time
		allow    bool
		report   bool
		code     Code
		rule     string
		inReason string
	}{
		{"grant allows a tunnel", "acme", Request{Host: "files.pypi.org", Port: 443, Tunnel: true}, grantNow, true, false, CodeOK, "grant:gr_pypi", ""},
		{"grant allows plain http on its port only", "acme", Request{Host: "files.pypi.org", Port: 80, Method: "GET", Path: "/"}, grantNow, false, false, CodeDestinationNotAllowed, "", "no connector or rule matches"},
		{"deny rule beats grant", "acme", Request{Host: "uploads.github.com", Port: 443, Tunnel: true}, grantNow, false, false, CodeDestinationNotAllowed, "no-uploads", `denied by rule "no-uploads"`},
		{"expired grant ignored", "acme", Request{Host: "old.example", Port: 443, Tunnel: true}, grantNow, false, false, CodeDestinationNotAllowed, "", "no connector or rule matches"},
		{"grant applies until its expiry", "acme", Request{Host: "ends.example", Port: 80, Method: "GET", Path: "/"}, grantNow.Add(time.Minute - time.Nanosecond), true, false, CodeOK, "grant:gr_ends", ""},
		{"grant ignored from its expiry on", "acme", Request{Host: "ends.example", Port: 80, Method: "GET", Path: "/"}, grantNow.Add(time.Minute), false, false, CodeDestinationNotAllowed, "", "no connector or rule matches"},
		{"grant with path on plain http", "acme", Request{Host: "api.example", Port: 80, Method: "GET", Path: "/v1/items"}, grantNow, true, false, CodeOK, "grant:gr_api", ""},
		{"grant with path: other path refused", "acme", Request{Host: "api.example", Port: 80, Method: "GET", Path: "/admin"}, grantNow, false, false, CodeDestinationNotAllowed, "grant:gr_api", `GET /admin is not among the methods and paths that grant "grant:gr_api" allows`},
		{"grant with path: other method refused", "acme", Request{Host: "api.example", Port: 80, Method: "DELETE", Path: "/v1/items"}, grantNow, false, false, CodeDestinationNotAllowed, "grant:gr_api", "not among the methods and paths"},
		{"grant with path inside an inspected request", "acme", Request{Host: "api.example", Port: 443, Method: "GET", Path: "/v1/x", TLS: true}, grantNow, true, false, CodeOK, "grant:gr_api", ""},
		{"grant with path refuses a tunnel", "acme", Request{Host: "api.example", Port: 443, Tunnel: true}, grantNow, false, false, CodeDestinationNotAllowed, "grant:gr_api", "an HTTPS tunnel hides"},
		{"grant with path lets a plain-HTTP tunnel in", "acme", Request{Host: "api.example", Port: 80, Tunnel: true, PlainHTTP: true}, grantNow, true, false, CodeOK, "grant:gr_api", ""},
		{"grant with path refuses an opaque tunnel on port 80", "acme", Request{Host: "api.example", Port: 80, Tunnel: true}, grantNow, false, false, CodeDestinationNotAllowed, "grant:gr_api", "hides"},
		{"grant with path refuses an upgrade", "acme", Request{Host: "api.example", Port: 80, Method: "GET", Path: "/v1/ws", Upgrade: true}, grantNow, false, false, CodeDestinationNotAllowed, "grant:gr_api", "101"},
		{"grant of another tenant", "acme", Request{Host: "other.example", Port: 443, Tunnel: true}, grantNow, false, false, CodeDestinationNotAllowed, "", "no connector or rule matches"},
		{"connector allows before grant", "acme", Request{Host: "api.github.com", Port: 443, Tunnel: true}, grantNow, true, false, CodeOK, "github@2", ""},
		{"report-mode tenant allowed by grant is not a report", "watcher", Request{Host: "watched.example", Port: 80, Method: "GET", Path: "/"}, grantNow, true, false, CodeOK, "grant:gr_watch", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tenant, ok := snap.Tenant(c.tenant)
			if !ok {
				t.Fatalf("no tenant %s", c.tenant)
			}
			d := tenant.DecideGranted(c.req, grants.At(c.at))
			if d.Allow != c.allow || d.Report != c.report || d.Code != c.code || d.Rule != c.rule || !strings.Contains(d.Reason, c.inReason) {
				t.Errorf("got allow=%v report=%v code=%s rule=%q reason=%q\nwant allow=%v report=%v code=%s rule=%q reason containing %q",
					d.Allow, d.Report, d.Code, d.Rule, d.Reason, c.allow, c.report, c.code, c.rule, c.inReason)
			}
			if d.Allow && d.Connector != nil && strings.HasPrefix(d.Rule, "grant:") {
				t.Errorf("a grant allowed with connector %q: a grant has none", d.Connector.Name)
			}
			// Without grants, nothing a grant allowed is allowed.
			if strings.HasPrefix(d.Rule, "grant:") && d.Allow {
				if plain := tenant.Decide(c.req); plain.Allow && !plain.Report {
					t.Errorf("allowed without the grant too: the case tests nothing")
				}
			}
		})
	}
}

// A grant that does not parse is dropped, never widened: its tenant gets
// nothing from it, and the rest of the set still applies.
func TestCompileGrantsDropsWhatDoesNotParse(t *testing.T) {
	later := grantNow.Add(time.Hour)
	bad := []state.Grant{
		testGrant("gr_star", "acme", "*", []int{443}, nil, nil, later),
		testGrant("gr_suffix", "acme", "*.com", []int{443}, nil, nil, later),
		testGrant("gr_port", "acme", "port.example", []int{0}, nil, nil, later),
		testGrant("gr_bigport", "acme", "port.example", []int{70000}, nil, nil, later),
		testGrant("gr_noport", "acme", "port.example", nil, nil, nil, later),
		testGrant("gr_method", "acme", "method.example", []int{443}, []string{"get"}, nil, later),
		testGrant("gr_path", "acme", "path.example", []int{443}, nil, []string{"v1/"}, later),
		testGrant("gr_nohost", "acme", "", []int{443}, nil, nil, later),
		testGrant("", "acme", "noid.example", []int{443}, nil, nil, later),
		testGrant("gr_notenant", "", "notenant.example", []int{443}, nil, nil, later),
	}
	good := testGrant("gr_good", "acme", "good.example", []int{443}, nil, nil, later)
	set, dropped := CompileGrants(append(bad, good), grantNow)
	if len(dropped) != len(bad) {
		t.Errorf("dropped %d grants (%v), want %d", len(dropped), dropped, len(bad))
	}
	snap := decisionFixture(t)
	acme, _ := snap.Tenant("acme")
	for _, host := range []string{"anything.com", "x.com", "port.example", "method.example", "path.example", "noid.example"} {
		for _, r := range []Request{{Host: host, Port: 443, Tunnel: true}, {Host: host, Port: 443, Method: "GET", Path: "/v1/x", TLS: true}} {
			if d := acme.DecideGranted(r, set.At(grantNow)); d.Allow {
				t.Errorf("%+v allowed by %q: a dropped grant applied", r, d.Rule)
			}
		}
	}
	if d := acme.DecideGranted(Request{Host: "good.example", Port: 443, Tunnel: true}, set.At(grantNow)); !d.Allow || d.Rule != "grant:gr_good" {
		t.Errorf("the valid grant beside the dropped ones: %+v", d)
	}
	if set.Len() != 1 {
		t.Errorf("set holds %d grants, want 1", set.Len())
	}
}

// NextExpiry is when the set must be recompiled; expired grants are left
// out, and a nil set (no store, or the store unreadable) allows nothing.
func TestGrantsExpiryAndNil(t *testing.T) {
	set := compileTestGrants(t,
		testGrant("gr_a", "acme", "a.example", []int{443}, nil, nil, grantNow.Add(2*time.Hour)),
		testGrant("gr_b", "acme", "b.example", []int{443}, nil, nil, grantNow.Add(time.Hour)),
		testGrant("gr_gone", "acme", "gone.example", []int{443}, nil, nil, grantNow),
	)
	if got, want := set.NextExpiry(), grantNow.Add(time.Hour); !got.Equal(want) {
		t.Errorf("NextExpiry %v, want %v", got, want)
	}
	if set.Len() != 2 {
		t.Errorf("Len %d, want 2: a grant expiring at the compile time is over", set.Len())
	}
	var none *Grants
	if !none.NextExpiry().IsZero() || none.Len() != 0 {
		t.Errorf("nil set: NextExpiry %v, Len %d", none.NextExpiry(), none.Len())
	}
	acme, _ := decisionFixture(t).Tenant("acme")
	if d := acme.DecideGranted(Request{Host: "a.example", Port: 443, Tunnel: true}, none.At(grantNow)); d.Allow {
		t.Errorf("a nil grant set allowed %+v", d)
	}
	// A zero time is no moment: it sees no grant. AnyTime sees the
	// expired ones too, to name what allowed a connection that ended.
	if d := acme.DecideGranted(Request{Host: "a.example", Port: 443, Tunnel: true}, set.At(time.Time{})); d.Allow {
		t.Errorf("the zero time saw grant %q", d.Rule)
	}
	if d := acme.DecideGranted(Request{Host: "b.example", Port: 443, Tunnel: true}, set.At(grantNow.Add(2*time.Hour))); d.Allow {
		t.Errorf("an expired grant applied: %q", d.Rule)
	}
	if d := acme.DecideGranted(Request{Host: "b.example", Port: 443, Tunnel: true}, set.AnyTime()); !d.Allow || d.Rule != "grant:gr_b" {
		t.Errorf("AnyTime: %+v, want allowed by grant:gr_b", d)
	}
}

// Explain lists the tenant's grants as rules, after its connectors and
// rules, with their expiry, and decides as the gateway does.
func TestExplainListsGrants(t *testing.T) {
	acme, _ := decisionFixture(t).Tenant("acme")
	expires := grantNow.Add(90 * time.Minute)
	set := compileTestGrants(t,
		testGrant("gr_pypi", "acme", "*.pypi.org", []int{443}, nil, nil, expires),
		testGrant("gr_api", "acme", "api.example", []int{443}, []string{"GET"}, []string{"/v1/"}, expires),
	)
	tr, err := acme.ExplainURLGranted("GET", "https://files.pypi.org/simple/", set.At(grantNow))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Decision != "allow" || tr.Rule != "grant:gr_pypi" {
		t.Errorf("decision %s by %q, want allow by grant:gr_pypi", tr.Decision, tr.Rule)
	}
	var found bool
	for i, r := range tr.Rules {
		if r.Name != "grant:gr_pypi" {
			continue
		}
		found = true
		if r.Kind != KindGrant || !r.Matched || r.Action != "allow" || !r.ExpiresAt.Equal(expires) {
			t.Errorf("grant trace %+v", r)
		}
		if i != len(tr.Rules)-2 && i != len(tr.Rules)-1 {
			t.Errorf("grant listed at %d of %d: grants come after connectors and rules", i, len(tr.Rules))
		}
	}
	if !found {
		t.Errorf("grant:gr_pypi not among the rules %+v", tr.Rules)
	}
	var text bytes.Buffer
	if err := tr.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), `allow grant "grant:gr_pypi"`) || !strings.Contains(text.String(), expires.Format(time.RFC3339)) {
		t.Errorf("text trace does not show the grant and its expiry:\n%s", text.String())
	}

	// A grant with a path, asked about over https: refused at the CONNECT.
	tr, err = acme.ExplainURLGranted("GET", "https://api.example/v1/x", set.At(grantNow))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Decision != "deny" || tr.Rule != "grant:gr_api" || !strings.Contains(tr.Reason, "tunnel") {
		t.Errorf("https to a grant with paths: %s by %q: %s", tr.Decision, tr.Rule, tr.Reason)
	}
	// Without grants, no grant is listed.
	tr, _ = acme.ExplainURL("GET", "https://files.pypi.org/simple/")
	for _, r := range tr.Rules {
		if r.Kind == KindGrant {
			t.Errorf("grant listed without grants: %+v", r)
		}
	}
}

// FuzzCompileGrants feeds grants as an admin or a tampered store could
// hold them: compiling never panics, and a grant that compiles allows a
// request only on a host its pattern matches and a port it lists, and
// only before its expiry; one that does not compile allows nothing.
func FuzzCompileGrants(f *testing.F) {
	f.Add("*.pypi.org", "files.pypi.org", 443, 443, "", "")
	f.Add("api.example", "api.example", 80, 80, "GET", "/v1/")
	f.Add("*", "x.com", 443, 443, "", "")
	f.Add("*.com", "a.com", 443, 443, "", "")
	f.Add("10.0.0.0/8", "10.1.2.3", 8080, 8080, "", "")
	f.Add("169.254.169.254", "169.254.169.254", 80, 80, "", "")
	f.Add("EXAMPLE.COM.", "example.com", 0, 443, "get", "v1")
	f.Add("xn--bcher-kva.example", "bücher.example", 443, 443, "POST", "/")
	f.Fuzz(func(t *testing.T, pattern, host string, grantPort, port int, method, path string) {
		g := testGrant("gr_f", "acme", pattern, []int{grantPort}, nil, nil, grantNow.Add(time.Hour))
		if method != "" {
			g.Methods = []string{method}
		}
		if path != "" {
			g.Paths = []string{path}
		}
		set, dropped := CompileGrants([]state.Grant{g}, grantNow)
		if set.Len()+len(dropped) != 1 {
			t.Fatalf("%d compiled and %d dropped of one grant", set.Len(), len(dropped))
		}
		normalized, err := allowlist.NormalizeHost(host)
		if err != nil || port < 1 || port > 65535 {
			return
		}
		acme := fuzzTenant(t)
		r := Request{Host: normalized, Port: uint16(port), Method: method, Path: path, TLS: true}
		if r.Path == "" || r.Path[0] != '/' {
			r.Path = "/" + r.Path
		}
		d := acme.DecideGranted(r, set.At(grantNow))
		if !d.Allow || !strings.HasPrefix(d.Rule, GrantRulePrefix) {
			return
		}
		p, err := allowlist.ParsePattern(pattern)
		switch {
		case len(dropped) > 0:
			t.Fatalf("a dropped grant allowed %+v", r)
		case err != nil || !p.Match(normalized):
			t.Fatalf("grant for %q allowed host %q", pattern, normalized)
		case port != grantPort:
			t.Fatalf("grant for port %d allowed port %d", grantPort, port)
		}
		if later := acme.DecideGranted(r, set.At(g.ExpiresAt)); later.Allow {
			t.Fatalf("grant allowed %+v at its expiry", r)
		}
	})
}

var fuzzTenantOnce struct {
	sync.Once
	t *Tenant
}

// fuzzTenant is a tenant with no rules: whatever it is allowed, a grant
// allowed.
func fuzzTenant(t *testing.T) *Tenant {
	fuzzTenantOnce.Do(func() {
		snap := mustLoad(t, map[string]string{"tenants/acme.yaml": "id: acme\nauth: { token_sha256: \"" + testTokenHash + "\" }\n"})
		fuzzTenantOnce.t, _ = snap.Tenant("acme")
	})
	return fuzzTenantOnce.t
}
