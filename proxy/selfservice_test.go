package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/budget"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/state"
)

// selfServiceFixture is a served gateway with two tenants, acme and beta,
// each with its own rules, grant and access request, and an upstream that
// counts every connection made to it.
type selfServiceFixture struct {
	g         *Gateway
	addr      string
	audit     *flakyWriter
	store     state.Store
	upstream  string // host:port
	upConns   *atomic.Int64
	acmeGrant string
	acmeReq   string
}

// Names of beta's that acme must never see.
var betaSecrets = []string{"beta-only.example", "beta-secret-rule", "beta-granted.example", "beta-requested.example", "beta-proxy-token"}

type selfServiceSetup struct {
	gatewayExtra string // more gateway.yaml
	acmeExtra    string // more of acme's tenant file
	acmeHost     string // a further host acme's rule allows (default: none)
	noStore      bool
	clock        func() time.Time // the quota's clock
	ledger       *budget.Ledger   // the budget counters (default: the gateway's own)
}

func newSelfServiceFixture(t *testing.T, setup selfServiceSetup) *selfServiceFixture {
	t.Helper()
	var conns atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "from the upstream")
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	upHost, upPort, _ := net.SplitHostPort(strings.TrimPrefix(up.URL, "http://"))
	hosts := `"` + upHost + `"`
	if setup.acmeHost != "" {
		hosts += `, "` + setup.acmeHost + `"`
	}
	fsys := fstest.MapFS{
		"gateway.yaml":         {Data: []byte("listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\n" + setup.gatewayExtra)},
		"connectors/docs.yaml": {Data: []byte("name: docs\nversion: 2\nhosts: [\"docs.python.org\"]\nports: [443]\n")},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hexSum("acme-proxy-token") + "\" }\nconnectors: [docs@2]\n" + setup.acmeExtra +
			"rules:\n  - { name: upstream, hosts: [" + hosts + "], ports: [" + upPort + "], methods: [GET, POST] }\n  - { name: no-admin, action: deny, hosts: [\"" + upHost + "\"], paths: [\"/admin\"] }\n")},
		"tenants/beta.yaml": {Data: []byte("id: beta\nauth: { token_sha256: \"" + hexSum("beta-proxy-token") + "\" }\nrules:\n  - { name: beta-secret-rule, hosts: [\"beta-only.example\"] }\n")},
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := &selfServiceFixture{audit: &flakyWriter{}, upstream: net.JoinHostPort(upHost, upPort), upConns: &conns}
	f.g = testGateway(t, snap, f.audit)
	if setup.clock != nil {
		f.g.quota = quota.NewMemory(quota.MemoryOptions{Clock: setup.clock})
	}
	if setup.ledger != nil {
		f.g.ledger = setup.ledger
	}
	if !setup.noStore {
		store, err := state.NewFile(state.FileOptions{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		f.store, f.g.state = store, store
		ctx := context.Background()
		expires := time.Now().Add(time.Hour)
		for _, s := range []struct{ tenant, granted, requested string }{
			{"acme", "acme-granted.example", "acme-requested.example"},
			{"beta", "beta-granted.example", "beta-requested.example"},
		} {
			gr, err := store.AddGrant(ctx, state.GrantSpec{Tenant: s.tenant, Host: s.granted, Ports: []int{443}, ExpiresAt: expires, By: "ops", Note: "setup"})
			if err != nil {
				t.Fatal(err)
			}
			ref, err := store.RecordRefusal(ctx, state.Sighting{Tenant: s.tenant, Host: s.requested, Port: 443, Method: "CONNECT"})
			if err != nil {
				t.Fatal(err)
			}
			if s.tenant == "acme" {
				f.acmeGrant, f.acmeReq = gr.ID, ref.ID
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	go f.g.Serve(ln)
	return f
}

// do sends one plain proxy request as user:token ("" user: none).
func (f *selfServiceFixture) do(t *testing.T, user, token, method, rawURL, body string) (*http.Response, []byte) {
	t.Helper()
	proxyURL := &url.URL{Scheme: "http", Host: f.addr}
	if user != "" {
		proxyURL.User = url.UserPassword(user, token)
	}
	client := &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true},
		Timeout:   hangGuard,
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, rawURL, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

func (f *selfServiceFixture) acme(t *testing.T, method, rawURL, body string) (*http.Response, []byte) {
	t.Helper()
	return f.do(t, "acme", "acme-proxy-token", method, rawURL, body)
}

// auditLine waits for the audit line of request id.
func (f *selfServiceFixture) auditLine(t *testing.T, id string) auditRecord {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		for _, line := range strings.Split(f.audit.String(), "\n") {
			var rec auditRecord
			if json.Unmarshal([]byte(line), &rec) == nil && rec.RequestID == id {
				return rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit line for %s in:\n%s", id, f.audit.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkAnswer asserts what every answer on the self-service host has: JSON,
// a request id, the error code (or none), an audit line, no upstream
// connection and nothing of beta's.
func (f *selfServiceFixture) checkAnswer(t *testing.T, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	asked := resp.Request.URL.String()
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var e struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body is not JSON: %s", body)
	}
	if e.Error != code || resp.Header.Get("X-Egressgw-Error") != code {
		t.Errorf("error %q, X-Egressgw-Error %q; want %q (body %s)", e.Error, resp.Header.Get("X-Egressgw-Error"), code, body)
	}
	if code != "" && e.Message == "" {
		t.Errorf("error without a message: %s", body)
	}
	id := resp.Header.Get("X-Request-Id")
	if id == "" {
		t.Fatal("no X-Request-Id")
	}
	for _, s := range betaSecrets {
		if strings.Contains(string(body), s) && !strings.Contains(asked, url.QueryEscape(s)) {
			t.Errorf("acme's answer names beta's %q: %s", s, body)
		}
	}
	if n := f.upConns.Load(); n != 0 {
		t.Errorf("%d connections reached the upstream", n)
	}
	rec := f.auditLine(t, id)
	if rec.Status != status || rec.Tenant != "acme" || rec.Rule != "self_service" || rec.Host != policy.DefaultSelfServiceHost || strings.Contains(rec.Path, "?") {
		t.Errorf("audit line %+v", rec)
	}
}

func TestSelfServiceEndpoints(t *testing.T) {
	f := newSelfServiceFixture(t, selfServiceSetup{})
	base := "http://" + policy.DefaultSelfServiceHost
	upstreamURL := url.QueryEscape("http://" + f.upstream + "/items")
	cases := []struct {
		name, method, url, body string
		status                  int
		code                    string
		check                   func(t *testing.T, body []byte)
	}{
		{name: "policy", method: "GET", url: base + "/v1/policy", status: 200, check: func(t *testing.T, body []byte) {
			var p struct {
				Tenant     string `json:"tenant"`
				Mode       string `json:"mode"`
				Connectors []struct {
					Name    string   `json:"name"`
					Version int      `json:"version"`
					Hosts   []string `json:"hosts"`
					Ports   []int    `json:"ports"`
				} `json:"connectors"`
				Rules []struct {
					Name    string   `json:"name"`
					Action  string   `json:"action"`
					Methods []string `json:"methods"`
					Paths   []string `json:"paths"`
				} `json:"rules"`
				Grants []struct {
					ID        string    `json:"id"`
					Host      string    `json:"host"`
					ExpiresAt time.Time `json:"expires_at"`
				} `json:"grants"`
				Budgets []any `json:"budgets"`
			}
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatal(err)
			}
			if p.Tenant != "acme" || p.Mode != "enforce" {
				t.Errorf("tenant %q mode %q", p.Tenant, p.Mode)
			}
			if len(p.Connectors) != 1 || p.Connectors[0].Name != "docs" || p.Connectors[0].Version != 2 || p.Connectors[0].Hosts[0] != "docs.python.org" || p.Connectors[0].Ports[0] != 443 {
				t.Errorf("connectors %+v", p.Connectors)
			}
			if len(p.Rules) != 2 || p.Rules[0].Name != "upstream" || len(p.Rules[0].Methods) != 2 || p.Rules[1].Action != "deny" || p.Rules[1].Paths[0] != "/admin" {
				t.Errorf("rules %+v", p.Rules)
			}
			if len(p.Grants) != 1 || p.Grants[0].ID != f.acmeGrant || p.Grants[0].Host != "acme-granted.example" || p.Grants[0].ExpiresAt.IsZero() {
				t.Errorf("grants %+v, want acme's one", p.Grants)
			}
			if p.Budgets == nil {
				t.Errorf("budgets missing: %s", body)
			}
		}},
		{name: "check allowed", method: "GET", url: base + "/v1/check?method=GET&url=" + upstreamURL, status: 200, check: func(t *testing.T, body []byte) {
			var tr policy.Trace
			if err := json.Unmarshal(body, &tr); err != nil {
				t.Fatal(err)
			}
			if tr.Tenant != "acme" || tr.Decision != "allow" || tr.Rule != "upstream" {
				t.Errorf("trace %+v", tr)
			}
		}},
		{name: "check denied by a rule", method: "GET", url: base + "/v1/check?method=GET&url=" + url.QueryEscape("http://"+f.upstream+"/admin/x"), status: 200, check: func(t *testing.T, body []byte) {
			var tr policy.Trace
			_ = json.Unmarshal(body, &tr)
			if tr.Decision != "deny" || tr.Rule != "no-admin" {
				t.Errorf("trace %+v", tr)
			}
		}},
		{name: "check another tenant's host", method: "GET", url: base + "/v1/check?url=" + url.QueryEscape("https://beta-only.example/"), status: 200, check: func(t *testing.T, body []byte) {
			var tr policy.Trace
			_ = json.Unmarshal(body, &tr)
			if tr.Tenant != "acme" || tr.Decision != "deny" || tr.Code != policy.CodeDestinationNotAllowed {
				t.Errorf("trace %+v", tr)
			}
		}},
		{name: "check a private address", method: "GET", url: base + "/v1/check?url=" + url.QueryEscape("http://10.0.0.1/"), status: 200},
		{name: "check without url", method: "GET", url: base + "/v1/check?method=GET", status: 400, code: "bad_request"},
		{name: "check malformed url", method: "GET", url: base + "/v1/check?url=" + url.QueryEscape("http://127.1/"), status: 400, code: "bad_request"},
		{name: "file a request", method: "POST", url: base + "/v1/access-requests", body: `{"url": "https://pypi.org/simple/requests/?token=x", "method": "get", "reason": "pip install requests"}`, status: 202, check: func(t *testing.T, body []byte) {
			var ref state.RequestRef
			if err := json.Unmarshal(body, &ref); err != nil || ref.ID == "" || ref.Status != state.StatusPending {
				t.Errorf("reply %s", body)
			}
			reqs, err := f.store.ListRequests(context.Background(), state.Filter{Tenant: "acme"})
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, r := range reqs {
				if r.ID == ref.ID {
					found = true
					if r.Host != "pypi.org" || r.Port != 443 || r.Method != "GET" || r.Path != "/simple/requests/" || r.Reason != "pip install requests" {
						t.Errorf("stored %+v", r)
					}
				}
			}
			if !found {
				t.Errorf("request %s not stored for acme: %+v", ref.ID, reqs)
			}
		}},
		{name: "file with an unknown field", method: "POST", url: base + "/v1/access-requests", body: `{"url": "https://pypi.org/", "tenant": "beta"}`, status: 400, code: "bad_request"},
		{name: "file two objects", method: "POST", url: base + "/v1/access-requests", body: `{"url": "https://pypi.org/"} {}`, status: 400, code: "bad_request"},
		{name: "file without url", method: "POST", url: base + "/v1/access-requests", body: `{"reason": "x"}`, status: 400, code: "bad_request"},
		{name: "file an ftp url", method: "POST", url: base + "/v1/access-requests", body: `{"url": "ftp://pypi.org/"}`, status: 400, code: "bad_request"},
		{name: "file a non-canonical address", method: "POST", url: base + "/v1/access-requests", body: `{"url": "http://0x7f.1/"}`, status: 400, code: "bad_request"},
		{name: "file the gateway itself", method: "POST", url: base + "/v1/access-requests", body: `{"url": "http://EGRESSGW.internal./v1/policy"}`, status: 400, code: "bad_request"},
		{name: "file a bad method", method: "POST", url: base + "/v1/access-requests", body: `{"url": "https://pypi.org/", "method": "GE T"}`, status: 400, code: "bad_request"},
		{name: "file an oversized body", method: "POST", url: base + "/v1/access-requests", body: `{"url": "https://pypi.org/", "reason": "` + strings.Repeat("x", 64<<10) + `"}`, status: 413, code: "body_too_large"},
		{name: "list requests", method: "GET", url: base + "/v1/access-requests", status: 200, check: func(t *testing.T, body []byte) {
			var l struct {
				Requests []struct {
					ID     string `json:"id"`
					Host   string `json:"host"`
					Status string `json:"status"`
				} `json:"requests"`
			}
			if err := json.Unmarshal(body, &l); err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, r := range l.Requests {
				ids = append(ids, r.ID)
			}
			if !strings.Contains(strings.Join(ids, ","), f.acmeReq) || len(l.Requests) != 2 {
				t.Errorf("requests %+v, want acme's two", l.Requests)
			}
		}},
		{name: "unknown path", method: "GET", url: base + "/v1/tenants", status: 404, code: "not_found"},
		{name: "root", method: "GET", url: base + "/", status: 404, code: "not_found"},
		{name: "delete policy", method: "DELETE", url: base + "/v1/policy", status: 405, code: "method_not_allowed"},
		{name: "put requests", method: "PUT", url: base + "/v1/access-requests", body: `{}`, status: 405, code: "method_not_allowed"},
		{name: "post check", method: "POST", url: base + "/v1/check", body: `{}`, status: 405, code: "method_not_allowed"},
		{name: "another port", method: "GET", url: "http://" + policy.DefaultSelfServiceHost + ":8080/v1/nothing", status: 404, code: "not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := f.acme(t, c.method, c.url, c.body)
			f.checkAnswer(t, resp, body, c.status, c.code)
			if c.status == 405 && resp.Header.Get("Allow") == "" {
				t.Errorf("405 without Allow")
			}
			if c.check != nil {
				c.check(t, body)
			}
		})
	}
}

// Without a state store there are no grants, and the access-request
// endpoints say so.
func TestSelfServiceWithoutStore(t *testing.T) {
	f := newSelfServiceFixture(t, selfServiceSetup{noStore: true})
	base := "http://" + policy.DefaultSelfServiceHost
	for _, c := range []struct{ method, body string }{{"GET", ""}, {"POST", `{"url": "https://pypi.org/"}`}} {
		resp, body := f.acme(t, c.method, base+"/v1/access-requests", c.body)
		f.checkAnswer(t, resp, body, 503, "state_unavailable")
	}
	resp, body := f.acme(t, "GET", base+"/v1/policy", "")
	f.checkAnswer(t, resp, body, 200, "")
	var p struct {
		Grants            []any  `json:"grants"`
		GrantsUnavailable string `json:"grants_unavailable"`
	}
	if err := json.Unmarshal(body, &p); err != nil || p.Grants == nil || len(p.Grants) != 0 || p.GrantsUnavailable == "" {
		t.Errorf("policy without a store: %s", body)
	}
}

// Budget counters that cannot be read are said to be so, never shown as
// budgets with nothing used; the rest of the policy is answered as ever.
func TestSelfServiceBudgetsUnavailable(t *testing.T) {
	ledger := budget.New(budget.Options{Backend: unreadableCounters{budget.NewMemory(nil)}, FlushEvery: -1})
	t.Cleanup(func() { ledger.Close() })
	ledger.SetBudgets(map[string][]budget.Budget{"acme": {{Name: "daily", Period: budget.Day, Limit: budget.Usage{Requests: 100}}}})
	f := newSelfServiceFixture(t, selfServiceSetup{ledger: ledger})
	resp, body := f.acme(t, "GET", "http://"+policy.DefaultSelfServiceHost+"/v1/policy", "")
	f.checkAnswer(t, resp, body, 200, "")
	var p struct {
		Grants             []any  `json:"grants"`
		Budgets            []any  `json:"budgets"`
		BudgetsUnavailable string `json:"budgets_unavailable"`
	}
	if err := json.Unmarshal(body, &p); err != nil || p.Budgets != nil || p.BudgetsUnavailable == "" || len(p.Grants) != 1 {
		t.Errorf("policy with unreadable budget counters: %s; want budgets null, budgets_unavailable and the grant", body)
	}
	if strings.Contains(string(body), counterFailure) {
		t.Errorf("the answer shows the backend's error: %s", body)
	}
}

// The endpoint answers only a tenant the credentials identify.
func TestSelfServiceNeedsCredentials(t *testing.T) {
	f := newSelfServiceFixture(t, selfServiceSetup{})
	for _, c := range []struct{ user, token string }{{"", ""}, {"acme", "wrong"}, {"beta", "acme-proxy-token"}} {
		resp, body := f.do(t, c.user, c.token, "GET", "http://"+policy.DefaultSelfServiceHost+"/v1/policy", "")
		if resp.StatusCode != 407 || resp.Header.Get("X-Egressgw-Error") != "proxy_auth_required" || resp.Header.Get("Proxy-Authenticate") == "" {
			t.Errorf("%s:%s: %d %s, want 407 proxy_auth_required", c.user, c.token, resp.StatusCode, body)
		}
		if strings.Contains(string(body), "docs.python.org") {
			t.Errorf("an unidentified client saw acme's policy: %s", body)
		}
	}
	if n := f.upConns.Load(); n != 0 {
		t.Errorf("%d connections reached the upstream", n)
	}
}

// Each request counts against the tenant's request quota.
func TestSelfServiceCountsAgainstQuota(t *testing.T) {
	now := time.Unix(1700000000, 0)
	f := newSelfServiceFixture(t, selfServiceSetup{
		acmeExtra: "quota: { requests_per_second: 1, burst: 1 }\n",
		clock:     func() time.Time { return now }, // never advances: no token comes back
	})
	resp, body := f.acme(t, "GET", "http://"+policy.DefaultSelfServiceHost+"/v1/policy", "")
	f.checkAnswer(t, resp, body, 200, "")
	if resp.Header.Get("RateLimit-Limit") != "1" {
		t.Errorf("RateLimit-Limit %q, want 1", resp.Header.Get("RateLimit-Limit"))
	}
	var p struct {
		Quota struct {
			Requests struct {
				RequestsPerSecond float64 `json:"requests_per_second"`
				Burst             int     `json:"burst"`
				Remaining         *int    `json:"remaining"`
			} `json:"requests"`
		} `json:"quota"`
	}
	if err := json.Unmarshal(body, &p); err != nil || p.Quota.Requests.RequestsPerSecond != 1 || p.Quota.Requests.Burst != 1 || p.Quota.Requests.Remaining == nil || *p.Quota.Requests.Remaining != 0 {
		t.Errorf("quota in the policy: %s", body)
	}
	resp, body = f.acme(t, "GET", "http://"+policy.DefaultSelfServiceHost+"/v1/policy", "")
	if resp.StatusCode != 429 || resp.Header.Get("X-Egressgw-Error") != "rate_limited" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("second request: %d %s, want 429 rate_limited with Retry-After", resp.StatusCode, body)
	}
	if rec := f.auditLine(t, resp.Header.Get("X-Request-Id")); rec.Code != "rate_limited" || rec.Host != policy.DefaultSelfServiceHost {
		t.Errorf("audit line %+v", rec)
	}
}

// The self-service host is answered before the tenant's rules are asked and
// is never dialled, even where a rule allows it and DNS resolves it
// (localhost resolves to the upstream's address here).
func TestSelfServiceIsNeverForwarded(t *testing.T) {
	f := newSelfServiceFixture(t, selfServiceSetup{gatewayExtra: "self_service: { host: localhost }\n", acmeHost: "localhost"})
	_, port, _ := net.SplitHostPort(f.upstream)
	for _, host := range []string{"localhost", "LOCALHOST.", "LocalHost"} {
		resp, body := f.acme(t, "GET", "http://"+host+":"+port+"/v1/policy", "")
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"tenant": "acme"`) {
			t.Errorf("%s: %d %s, want the gateway's answer", host, resp.StatusCode, body)
		}
	}
	if n := f.upConns.Load(); n != 0 {
		t.Errorf("%d connections reached the upstream", n)
	}
	// A tunnel to it is refused before anything is dialled, whatever its port.
	for _, authority := range []string{"localhost:" + port, "localhost:443", "localhost:80"} {
		line, code := connectTo(t, f.addr, authority, "acme", "acme-proxy-token")
		if !strings.Contains(line, " 400 ") || code != "bad_request" || !strings.Contains(line, "http://") {
			t.Errorf("CONNECT %s: %q %s, want 400 bad_request telling to use http://", authority, line, code)
		}
	}
	if n := f.upConns.Load(); n != 0 {
		t.Errorf("%d connections reached the upstream", n)
	}
}

// Turned off, the name is an ordinary host, decided by the tenant's rules.
func TestSelfServiceTurnedOff(t *testing.T) {
	f := newSelfServiceFixture(t, selfServiceSetup{gatewayExtra: "self_service: { host: localhost, enabled: false }\n", acmeHost: "localhost"})
	_, port, _ := net.SplitHostPort(f.upstream)
	resp, body := f.acme(t, "GET", "http://localhost:"+port+"/v1/policy", "")
	if resp.StatusCode != 200 || string(body) != "from the upstream" {
		t.Errorf("%d %s, want the upstream's answer", resp.StatusCode, body)
	}
	resp, body = f.acme(t, "GET", "http://"+policy.DefaultSelfServiceHost+"/v1/policy", "")
	if resp.StatusCode != 403 || resp.Header.Get("X-Egressgw-Error") != "destination_not_allowed" {
		t.Errorf("the default name with self-service off: %d %s, want 403 destination_not_allowed", resp.StatusCode, body)
	}
}

// A CONNECT to the default name is refused too, credentials first.
func TestSelfServiceRefusesConnect(t *testing.T) {
	f := newSelfServiceFixture(t, selfServiceSetup{})
	for _, port := range []string{"443", "80"} {
		authority := policy.DefaultSelfServiceHost + ":" + port
		line, code := connectTo(t, f.addr, authority, "acme", "acme-proxy-token")
		if !strings.Contains(line, " 400 ") || code != "bad_request" {
			t.Errorf("CONNECT %s: %q %s, want 400 bad_request", authority, line, code)
		}
		if _, code := connectTo(t, f.addr, authority, "", ""); code != "proxy_auth_required" {
			t.Errorf("CONNECT %s without credentials: %s, want proxy_auth_required", authority, code)
		}
	}
}

// connectTo sends a CONNECT and returns the reply's status line and code.
func connectTo(t *testing.T, addr, authority, user, token string) (statusLine, code string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	auth := ""
	if user != "" {
		auth = "Proxy-Authorization: Basic " + basicEncode(user, token) + "\r\n"
	}
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", authority, authority, auth)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("CONNECT %s: %v", authority, err)
	}
	defer resp.Body.Close()
	return "HTTP/1.1 " + resp.Status, resp.Header.Get("X-Egressgw-Error")
}

// self_service is reloadable: a new policy that turns it off applies to
// the next request.
func TestSelfServiceFollowsReload(t *testing.T) {
	f := newSelfServiceFixture(t, selfServiceSetup{})
	resp, body := f.acme(t, "GET", "http://"+policy.DefaultSelfServiceHost+"/v1/policy", "")
	f.checkAnswer(t, resp, body, 200, "")
	snap, err := policy.Load(fstest.MapFS{
		"gateway.yaml":      {Data: []byte("listen: \"127.0.0.1:3128\"\nself_service: { enabled: false }\n")},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hexSum("acme-proxy-token") + "\" }\nrules: [{ hosts: [\"docs.python.org\"] }]\n")},
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f.g.Apply(snap)
	resp, body = f.acme(t, "GET", "http://"+policy.DefaultSelfServiceHost+"/v1/policy", "")
	if resp.StatusCode != 403 || resp.Header.Get("X-Egressgw-Error") != "destination_not_allowed" {
		t.Errorf("after turning it off: %d %s, want 403 destination_not_allowed", resp.StatusCode, body)
	}
}
