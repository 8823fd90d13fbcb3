package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/state"
)

// The admin tokens of adminFixture, by role.
const (
	adminTok       = "admin-token-0123456789"
	viewerTok      = "viewer-token-0123456789"
	approverAcme   = "approver-acme-0123456789"
	approverAllTok = "approver-all-0123456789"
)

func hexSum(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// adminTokensYAML is an admin section with one token of each role.
func adminTokensYAML() string {
	return "admin:\n  tokens:\n" +
		"    - { name: ops, role: admin, token_sha256: \"" + hexSum(adminTok) + "\" }\n" +
		"    - { name: watcher, role: viewer, token_sha256: \"" + hexSum(viewerTok) + "\" }\n" +
		"    - { name: alice, role: approver, tenants: [acme], token_sha256: \"" + hexSum(approverAcme) + "\" }\n" +
		"    - { name: bob, role: approver, token_sha256: \"" + hexSum(approverAllTok) + "\" }\n"
}

// adminFixture is a gateway with tenants acme and beta, a real file state
// store in a temporary directory, one pending access request per tenant
// and one grant per tenant.
type adminFixture struct {
	gw      *Gateway
	store   *state.File
	handler http.Handler
	audit   *auditBuffer
	reqAcme string // pending access request ids
	reqBeta string
	grAcme  string // active grant ids
	grBeta  string
}

type auditBuffer struct {
	buf bytes.Buffer
}

func (a *auditBuffer) Write(p []byte) (int, error) { return a.buf.Write(p) }

func newAdminFixture(t testing.TB, gatewayYAML string) *adminFixture {
	t.Helper()
	fsys := fstest.MapFS{
		"gateway.yaml":      {Data: []byte(gatewayYAML)},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hexSum("acme-proxy-token") + "\" }\nrules: [{ hosts: [\"docs.python.org\"] }]\n")},
		"tenants/beta.yaml": {Data: []byte("id: beta\nauth: { token_sha256: \"" + hexSum("beta-proxy-token") + "\" }\nrules: [{ hosts: [\"docs.python.org\"] }]\n")},
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.NewFile(state.FileOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	f := &adminFixture{store: store, audit: &auditBuffer{}}
	// The audit buffer is read only after Shutdown has flushed it.
	f.gw = testGateway(t, snap, f.audit)
	f.gw.state = store
	f.handler = f.gw.AdminHandler(&ConfigStatus{})
	ctx := context.Background()
	for _, tenant := range []string{"acme", "beta"} {
		ref, err := store.RecordRefusal(ctx, state.Sighting{Tenant: tenant, Host: "pypi.org", Port: 443, Method: "CONNECT"})
		if err != nil {
			t.Fatal(err)
		}
		gr, err := store.AddGrant(ctx, state.GrantSpec{Tenant: tenant, Host: "example.com", Ports: []int{443}, ExpiresAt: time.Now().Add(time.Hour), By: "setup"})
		if err != nil {
			t.Fatal(err)
		}
		if tenant == "acme" {
			f.reqAcme, f.grAcme = ref.ID, gr.ID
		} else {
			f.reqBeta, f.grBeta = ref.ID, gr.ID
		}
	}
	return f
}

// do sends one admin request with token ("" for none).
func (f *adminFixture) do(method, path, token, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	f.handler.ServeHTTP(w, req)
	return w
}

// errorCode is the error field of a JSON error reply.
func errorCode(t *testing.T, w *httptest.ResponseRecorder) policy.Code {
	t.Helper()
	var body struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("reply is not JSON: %q", w.Body.String())
	}
	if body.Message == "" || w.Header().Get("X-Egressgw-Error") != body.Error {
		t.Errorf("error reply %q without a message or X-Egressgw-Error header", w.Body.String())
	}
	return policy.Code(body.Error)
}

// unchanged asserts that the fixture's state is as it was set up: both
// requests pending, both grants active, no other grant.
func (f *adminFixture) unchanged(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	reqs, err := f.store.ListRequests(ctx, state.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if r.Status != state.StatusPending {
			t.Errorf("access request %s of %s is %s after a refused write", r.ID, r.Tenant, r.Status)
		}
	}
	grants, err := f.store.Grants(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(grants) != 2 {
		t.Errorf("%d grants after a refused write, want the 2 set up", len(grants))
	}
}

func TestAdminAuthMatrix(t *testing.T) {
	approve := `{"for": "1h"}`
	grantFor := func(tenant string) string {
		return `{"tenant": "` + tenant + `", "for": "1h", "host": "api.example.org", "ports": [443]}`
	}
	type call struct {
		method, path, body string
	}
	cases := []struct {
		name   string
		token  string
		call   func(f *adminFixture) call
		status int
		code   policy.Code // for refusals
	}{
		// Open paths.
		{"healthz open", "", func(*adminFixture) call { return call{"GET", "/healthz", ""} }, 200, ""},
		{"readyz open", "", func(*adminFixture) call { return call{"GET", "/readyz", ""} }, 200, ""},
		{"metrics open", "", func(*adminFixture) call { return call{"GET", "/metrics", ""} }, 200, ""},
		// No token, or a wrong one.
		{"config without token", "", func(*adminFixture) call { return call{"GET", "/v1/config", ""} }, 401, codeAdminAuthRequired},
		{"explain without token", "", func(*adminFixture) call {
			return call{"GET", "/v1/explain?tenant=acme&url=http://docs.python.org/", ""}
		}, 401, codeAdminAuthRequired},
		{"debug without token", "", func(*adminFixture) call { return call{"GET", "/debug/pprof/", ""} }, 401, codeAdminAuthRequired},
		{"unknown path without token", "", func(*adminFixture) call { return call{"GET", "/v2/anything", ""} }, 401, codeAdminAuthRequired},
		{"requests with wrong token", "not-a-token", func(*adminFixture) call { return call{"GET", "/v1/access-requests", ""} }, 401, codeAdminAuthRequired},
		{"approve with wrong token", "not-a-token", func(f *adminFixture) call {
			return call{"POST", "/v1/access-requests/" + f.reqAcme + "/approve", approve}
		}, 401, codeAdminAuthRequired},
		{"approve without token", "", func(f *adminFixture) call {
			return call{"POST", "/v1/access-requests/" + f.reqAcme + "/approve", approve}
		}, 401, codeAdminAuthRequired},
		// Viewer reads, writes nothing.
		{"viewer reads config", viewerTok, func(*adminFixture) call { return call{"GET", "/v1/config", ""} }, 200, ""},
		{"viewer reads requests", viewerTok, func(*adminFixture) call { return call{"GET", "/v1/access-requests", ""} }, 200, ""},
		{"viewer reads grants", viewerTok, func(*adminFixture) call { return call{"GET", "/v1/grants", ""} }, 200, ""},
		{"viewer reads a rule", viewerTok, func(f *adminFixture) call { return call{"GET", "/v1/grants/" + f.grAcme + "/rule", ""} }, 200, ""},
		{"viewer approves", viewerTok, func(f *adminFixture) call {
			return call{"POST", "/v1/access-requests/" + f.reqAcme + "/approve", approve}
		}, 403, codeAdminAuthRequired},
		{"viewer denies", viewerTok, func(f *adminFixture) call { return call{"POST", "/v1/access-requests/" + f.reqAcme + "/deny", ""} }, 403, codeAdminAuthRequired},
		{"viewer adds a grant", viewerTok, func(*adminFixture) call { return call{"POST", "/v1/grants", grantFor("acme")} }, 403, codeAdminAuthRequired},
		{"viewer revokes", viewerTok, func(f *adminFixture) call { return call{"DELETE", "/v1/grants/" + f.grAcme, ""} }, 403, codeAdminAuthRequired},
		// Approver of acme: acme only.
		{"approver reads beta's requests", approverAcme, func(*adminFixture) call { return call{"GET", "/v1/access-requests?tenant=beta", ""} }, 200, ""},
		{"approver approves acme", approverAcme, func(f *adminFixture) call {
			return call{"POST", "/v1/access-requests/" + f.reqAcme + "/approve", approve}
		}, 200, ""},
		{"approver approves beta", approverAcme, func(f *adminFixture) call {
			return call{"POST", "/v1/access-requests/" + f.reqBeta + "/approve", approve}
		}, 403, codeAdminAuthRequired},
		{"approver denies acme", approverAcme, func(f *adminFixture) call { return call{"POST", "/v1/access-requests/" + f.reqAcme + "/deny", ""} }, 200, ""},
		{"approver denies beta", approverAcme, func(f *adminFixture) call { return call{"POST", "/v1/access-requests/" + f.reqBeta + "/deny", ""} }, 403, codeAdminAuthRequired},
		{"approver grants acme", approverAcme, func(*adminFixture) call { return call{"POST", "/v1/grants", grantFor("acme")} }, 201, ""},
		{"approver grants beta", approverAcme, func(*adminFixture) call { return call{"POST", "/v1/grants", grantFor("beta")} }, 403, codeAdminAuthRequired},
		{"approver revokes acme", approverAcme, func(f *adminFixture) call { return call{"DELETE", "/v1/grants/" + f.grAcme, ""} }, 200, ""},
		{"approver revokes beta", approverAcme, func(f *adminFixture) call { return call{"DELETE", "/v1/grants/" + f.grBeta, ""} }, 403, codeAdminAuthRequired},
		// Approver of every tenant.
		{"approver-all approves beta", approverAllTok, func(f *adminFixture) call {
			return call{"POST", "/v1/access-requests/" + f.reqBeta + "/approve", approve}
		}, 200, ""},
		{"approver-all revokes beta", approverAllTok, func(f *adminFixture) call { return call{"DELETE", "/v1/grants/" + f.grBeta, ""} }, 200, ""},
		// Admin: everything.
		{"admin approves beta", adminTok, func(f *adminFixture) call {
			return call{"POST", "/v1/access-requests/" + f.reqBeta + "/approve", approve}
		}, 200, ""},
		{"admin grants beta", adminTok, func(*adminFixture) call { return call{"POST", "/v1/grants", grantFor("beta")} }, 201, ""},
		{"admin revokes acme", adminTok, func(f *adminFixture) call { return call{"DELETE", "/v1/grants/" + f.grAcme, ""} }, 200, ""},
		{"admin reads debug", adminTok, func(*adminFixture) call { return call{"GET", "/debug/pprof/", ""} }, 404, ""}, // authenticated; no profiling handler here
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newAdminFixture(t, adminTokensYAML())
			cl := c.call(f)
			w := f.do(cl.method, cl.path, c.token, cl.body)
			if w.Code != c.status {
				t.Fatalf("%s %s: status %d, body %s; want %d", cl.method, cl.path, w.Code, w.Body.String(), c.status)
			}
			if c.code == "" {
				return
			}
			if got := errorCode(t, w); got != c.code {
				t.Errorf("error %q, want %q", got, c.code)
			}
			if w.Code == http.StatusUnauthorized && !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: Bearer (got %q)", w.Header().Get("WWW-Authenticate"))
			}
			f.unchanged(t)
		})
	}
}

// With no admin tokens configured, reads stay open (loopback setups) and
// every write is refused.
func TestAdminWithoutTokensIsReadOnly(t *testing.T) {
	f := newAdminFixture(t, "")
	for _, path := range []string{"/v1/config", "/v1/access-requests", "/v1/grants", "/v1/grants/" + f.grAcme + "/rule"} {
		if w := f.do("GET", path, "", ""); w.Code != http.StatusOK {
			t.Errorf("GET %s without tokens configured: %d %s, want 200", path, w.Code, w.Body.String())
		}
	}
	writes := []struct{ method, path, body string }{
		{"POST", "/v1/access-requests/" + f.reqAcme + "/approve", `{"for": "1h"}`},
		{"POST", "/v1/access-requests/" + f.reqAcme + "/deny", ""},
		{"POST", "/v1/grants", `{"tenant": "acme", "for": "1h", "host": "api.example.org"}`},
		{"DELETE", "/v1/grants/" + f.grAcme, ""},
	}
	for _, wr := range writes {
		// A token is no help when none is configured.
		for _, token := range []string{"", adminTok} {
			w := f.do(wr.method, wr.path, token, wr.body)
			if w.Code != http.StatusForbidden || errorCode(t, w) != codeAdminAuthRequired {
				t.Errorf("%s %s (token %q) without tokens configured: %d %s, want 403 admin_auth_required", wr.method, wr.path, token, w.Code, w.Body.String())
			}
		}
	}
	f.unchanged(t)
}

// Admin tokens come from the live policy: a reload that adds, removes or
// changes one applies to the next request.
func TestAdminTokensFollowReload(t *testing.T) {
	f := newAdminFixture(t, adminTokensYAML())
	if w := f.do("GET", "/v1/grants", viewerTok, ""); w.Code != http.StatusOK {
		t.Fatalf("viewer before reload: %d", w.Code)
	}
	fsys := fstest.MapFS{
		"gateway.yaml":      {Data: []byte("admin:\n  tokens:\n    - { name: ops, role: admin, token_sha256: \"" + hexSum(adminTok) + "\" }\n")},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hexSum("acme-proxy-token") + "\" }\nrules: [{ hosts: [\"docs.python.org\"] }]\n")},
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f.gw.Apply(snap)
	if w := f.do("GET", "/v1/grants", viewerTok, ""); w.Code != http.StatusUnauthorized {
		t.Errorf("removed viewer token after reload: %d, want 401", w.Code)
	}
	if w := f.do("GET", "/v1/grants", adminTok, ""); w.Code != http.StatusOK {
		t.Errorf("admin token after reload: %d, want 200", w.Code)
	}
}

// Every admin write is audited with the token's name, and no line holds
// the token.
func TestAdminWritesAreAudited(t *testing.T) {
	f := newAdminFixture(t, adminTokensYAML())
	if w := f.do("POST", "/v1/access-requests/"+f.reqAcme+"/approve", approverAcme, `{"for": "2h", "host": "*.pypi.org", "ports": [443]}`); w.Code != 200 {
		t.Fatalf("approve: %d %s", w.Code, w.Body.String())
	}
	if w := f.do("DELETE", "/v1/grants/"+f.grBeta, adminTok, ""); w.Code != 200 {
		t.Fatalf("revoke: %d %s", w.Code, w.Body.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f.gw.Shutdown(ctx) // flushes the audit log
	text := f.audit.buf.String()
	for _, tok := range []string{adminTok, approverAcme, hexSum(adminTok)} {
		if strings.Contains(text, tok) {
			t.Errorf("the audit log holds a token: %s", text)
		}
	}
	var lines []adminAuditRecord
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		var rec adminAuditRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		lines = append(lines, rec)
	}
	if len(lines) != 2 {
		t.Fatalf("%d audit lines, want 2:\n%s", len(lines), text)
	}
	if a := lines[0]; a.Kind != "admin" || a.Action != "approve" || a.Actor != "alice" || a.Tenant != "acme" || a.AccessRequest != f.reqAcme || a.Grant == "" || a.Host != "*.pypi.org" {
		t.Errorf("approve audit line %+v", a)
	}
	if r := lines[1]; r.Kind != "admin" || r.Action != "grant_revoke" || r.Actor != "ops" || r.Tenant != "beta" || r.Grant != f.grBeta {
		t.Errorf("revoke audit line %+v", r)
	}
}
