package proxy

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/state"
)

// Every refused admin input answers 400 (or 413) with a clear message,
// and changes nothing.
func TestAdminAccessRefusesBadInput(t *testing.T) {
	cases := []struct {
		name    string
		grant   bool // POST /v1/grants; otherwise an approval of acme's request
		body    string
		status  int
		code    policy.Code
		message string // a part of the message
	}{
		{"unknown field", false, `{"for": "1h", "hosts": ["a.example"]}`, 400, "bad_request", `unknown field "hosts"; the fields are for, host, ports`},
		{"tenant on approval", false, `{"for": "1h", "tenant": "beta"}`, 400, "bad_request", `unknown field "tenant"`},
		{"no for", false, `{"host": "pypi.org"}`, 400, "bad_request", "for is required"},
		{"for not a duration", false, `{"for": "2 days"}`, 400, "bad_request", `for "2 days": want a positive duration`},
		{"negative for", false, `{"for": "-1h"}`, 400, "bad_request", "want a positive duration"},
		{"for too long", false, `{"for": "721h"}`, 400, "bad_request", "longer than access.max_grant_duration (720h0m0s)"},
		{"every host", false, `{"for": "1h", "host": "*"}`, 400, "bad_request", "would match every host"},
		{"a top-level domain", false, `{"for": "1h", "host": "*.com"}`, 400, "bad_request", "public suffix"},
		{"a wide range", false, `{"for": "1h", "host": "100.0.0.0/8"}`, 400, "bad_request", "covers more than a /24"},
		{"a URL", false, `{"for": "1h", "host": "https://pypi.org/"}`, 400, "bad_request", "is a URL"},
		{"port zero", false, `{"for": "1h", "ports": [0]}`, 400, "bad_request", "port 0: want 1 to 65535"},
		{"lower-case method", false, `{"for": "1h", "methods": ["get"]}`, 400, "bad_request", `method "get"`},
		{"relative path", false, `{"for": "1h", "paths": ["api/"]}`, 400, "bad_request", `path "api/"`},
		{"two objects", false, `{"for": "1h"} {"for": "2h"}`, 400, "bad_request", "more than one JSON object"},
		{"empty body", false, ``, 400, "bad_request", "the body is empty"},
		{"not JSON", false, `for=1h`, 400, "bad_request", "not a valid JSON object"},
		{"wrong type", false, `{"for": 3600}`, 400, "bad_request", "not a valid JSON object"},
		{"huge body", false, `{"for": "1h", "note": "` + strings.Repeat("x", 70<<10) + `"}`, 413, "body_too_large", "larger than 65536 bytes"},
		{"long note", false, `{"for": "1h", "note": "` + strings.Repeat("x", 1025) + `"}`, 400, "bad_request", "note is longer than 1024 bytes"},
		{"grant without tenant", true, `{"for": "1h", "host": "api.example.org"}`, 400, "bad_request", "tenant is required"},
		{"grant without host", true, `{"tenant": "acme", "for": "1h"}`, 400, "bad_request", "host is required"},
		{"grant for an unknown tenant", true, `{"tenant": "nobody", "for": "1h", "host": "api.example.org"}`, 400, "bad_request", `tenant "nobody" is not defined in the live policy`},
		{"grant unknown field", true, `{"tenant": "acme", "for": "1h", "host": "a.example", "expires_at": "2030-01-01T00:00:00Z"}`, 400, "bad_request", `unknown field "expires_at"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newAdminFixture(t, adminTokensYAML())
			path := "/v1/access-requests/" + f.reqAcme + "/approve"
			if c.grant {
				path = "/v1/grants"
			}
			w := f.do("POST", path, adminTok, c.body)
			if w.Code != c.status {
				t.Fatalf("status %d, body %s; want %d", w.Code, w.Body.String(), c.status)
			}
			if got := errorCode(t, w); got != c.code {
				t.Errorf("error %q, want %q", got, c.code)
			}
			if !strings.Contains(w.Body.String(), jsonEscape(c.message)) {
				t.Errorf("message %s does not say %q", w.Body.String(), c.message)
			}
			f.unchanged(t)
		})
	}
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return strings.Trim(string(b), `"`)
}

func TestAdminApproveCreatesGrant(t *testing.T) {
	f := newAdminFixture(t, adminTokensYAML())
	before := time.Now()
	w := f.do("POST", "/v1/access-requests/"+f.reqAcme+"/approve", adminTok, `{"for": "2h", "note": "build deps"}`)
	if w.Code != http.StatusOK {
		t.Fatalf("approve: %d %s", w.Code, w.Body.String())
	}
	var reply struct{ Grant state.Grant }
	if err := json.Unmarshal(w.Body.Bytes(), &reply); err != nil {
		t.Fatal(err)
	}
	g := reply.Grant
	// Host and ports default to the request's.
	if g.Tenant != "acme" || g.Host != "pypi.org" || len(g.Ports) != 1 || g.Ports[0] != 443 || g.ApprovedBy != "ops" || g.RequestID != f.reqAcme || g.Note != "build deps" {
		t.Errorf("grant %+v", g)
	}
	if d := g.ExpiresAt.Sub(before); d < 2*time.Hour || d > 2*time.Hour+time.Minute {
		t.Errorf("grant expires %v after the approval, want 2h", d)
	}
	reqs, _ := f.store.ListRequests(t.Context(), state.Filter{Tenant: "acme", Status: state.StatusApproved})
	if len(reqs) != 1 || reqs[0].GrantID != g.ID || reqs[0].DecidedBy != "ops" {
		t.Errorf("approved requests of acme: %+v", reqs)
	}
	// A decided request cannot be decided again.
	for action, body := range map[string]string{"approve": `{"for": "1h"}`, "deny": ""} {
		w = f.do("POST", "/v1/access-requests/"+f.reqAcme+"/"+action, adminTok, body)
		if w.Code != http.StatusConflict || errorCode(t, w) != codeAlreadyDecided {
			t.Errorf("%s a decided request: %d %s, want 409 already_decided", action, w.Code, w.Body.String())
		}
	}
	// Listing filters by tenant and status.
	w = f.do("GET", "/v1/access-requests?status=pending", viewerTok, "")
	var list struct{ Requests []state.AccessRequest }
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || len(list.Requests) != 1 || list.Requests[0].Tenant != "beta" {
		t.Errorf("pending requests: %s", w.Body.String())
	}
	if w = f.do("GET", "/v1/access-requests?status=open", viewerTok, ""); w.Code != 400 || errorCode(t, w) != policy.CodeBadRequest {
		t.Errorf("status=open: %d %s, want 400", w.Code, w.Body.String())
	}
}

func TestAdminUnknownIDs(t *testing.T) {
	f := newAdminFixture(t, adminTokensYAML())
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/access-requests/ar_nosuch/approve", `{"for": "1h"}`},
		{"POST", "/v1/access-requests/ar_nosuch/deny", ""},
		{"DELETE", "/v1/grants/gr_nosuch", ""},
		{"GET", "/v1/grants/gr_nosuch/rule", ""},
	} {
		w := f.do(c.method, c.path, adminTok, c.body)
		if w.Code != http.StatusNotFound || errorCode(t, w) != codeNotFound {
			t.Errorf("%s %s: %d %s, want 404 not_found", c.method, c.path, w.Code, w.Body.String())
		}
	}
	f.unchanged(t)
}

// Without a state store, the endpoints say so instead of pretending.
func TestAdminWithoutStore(t *testing.T) {
	f := newAdminFixture(t, adminTokensYAML())
	f.gw.state = nil
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/access-requests", ""},
		{"GET", "/v1/grants", ""},
		{"POST", "/v1/grants", `{"tenant": "acme", "for": "1h", "host": "a.example"}`},
	} {
		w := f.do(c.method, c.path, adminTok, c.body)
		if w.Code != http.StatusServiceUnavailable || errorCode(t, w) != codeStateUnavailable {
			t.Errorf("%s %s: %d %s, want 503 state_unavailable", c.method, c.path, w.Code, w.Body.String())
		}
	}
}

// The rule GET /v1/grants/ID/rule prints is valid in a tenant file's
// rules: list, as the real loader reads it, and allows what the grant
// allows and nothing else.
func TestGrantRuleLoadsAndMatchesTheGrant(t *testing.T) {
	f := newAdminFixture(t, adminTokensYAML())
	w := f.do("POST", "/v1/grants", adminTok, `{"tenant": "acme", "for": "1h", "host": "*.PyPI.org.", "ports": [443, 8443], "methods": ["GET", "HEAD"], "paths": ["/simple/"]}`)
	if w.Code != http.StatusCreated {
		t.Fatalf("add grant: %d %s", w.Code, w.Body.String())
	}
	var reply struct{ Grant state.Grant }
	if err := json.Unmarshal(w.Body.Bytes(), &reply); err != nil {
		t.Fatal(err)
	}
	grant := reply.Grant
	if grant.Host != "*.pypi.org" {
		t.Errorf("grant host %q, want the canonical *.pypi.org", grant.Host)
	}
	w = f.do("GET", "/v1/grants/"+grant.ID+"/rule", viewerTok, "")
	if w.Code != http.StatusOK || !strings.HasPrefix(w.Header().Get("Content-Type"), "application/yaml") {
		t.Fatalf("rule: %d %q %s", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
	rule := w.Body.String()
	if !strings.Contains(rule, "tenants/acme.yaml") || !regexp.MustCompile(`(?m)^- name: grant-`+grant.ID+`$`).MatchString(rule) {
		t.Errorf("rule does not name its tenant file or grant:\n%s", rule)
	}
	tenantFile := "id: acme\nauth: { token_sha256: \"" + hexSum("x") + "\" }\nrules:\n" + rule
	snap, err := policy.Load(fstest.MapFS{"tenants/acme.yaml": {Data: []byte(tenantFile)}}, time.Now())
	if err != nil {
		t.Fatalf("the rule does not load in a tenant file:\n%s\n%v", tenantFile, err)
	}
	tenant, _ := snap.Tenant("acme")
	cases := []struct {
		host   string
		port   uint16
		method string
		path   string
		allow  bool
	}{
		{"files.pypi.org", 443, "GET", "/simple/requests/", true},
		{"a.b.pypi.org", 8443, "HEAD", "/simple/", true},
		{"pypi.org", 443, "GET", "/simple/", false}, // a wildcard never matches the bare domain
		{"files.pypi.org", 80, "GET", "/simple/", false},
		{"files.pypi.org", 443, "POST", "/simple/", false},
		{"files.pypi.org", 443, "GET", "/packages/", false},
		{"evil.example", 443, "GET", "/simple/", false},
	}
	for _, c := range cases {
		d := tenant.Decide(policy.Request{Host: c.host, Port: c.port, Method: c.method, Path: c.path})
		if d.Allow != c.allow || grantMatches(grant, c.host, c.port, c.method, c.path) != c.allow {
			t.Errorf("%s %s:%d%s: rule allows %v (grant %v), want %v", c.method, c.host, c.port, c.path, d.Allow, grantMatches(grant, c.host, c.port, c.method, c.path), c.allow)
		}
	}
}

// grantMatches is what the grant says in words: its host pattern, one of
// its ports, and its methods and path prefixes when it lists any.
func grantMatches(g state.Grant, host string, port uint16, method, path string) bool {
	p, err := allowlist.ParsePattern(g.Host)
	if err != nil || !p.Match(host) {
		return false
	}
	okPort, okMethod, okPath := false, len(g.Methods) == 0, len(g.Paths) == 0
	for _, gp := range g.Ports {
		okPort = okPort || gp == int(port)
	}
	for _, m := range g.Methods {
		okMethod = okMethod || m == method
	}
	for _, pre := range g.Paths {
		okPath = okPath || strings.HasPrefix(path, pre)
	}
	return okPort && okMethod && okPath
}
