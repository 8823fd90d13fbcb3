package policy

import (
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// explainFixture loads testdata/explain with a CA made for the test, since
// its connector inspects.
func explainFixture(t *testing.T) *Snapshot {
	t.Helper()
	fsys := fstest.MapFS{}
	err := fs.WalkDir(os.DirFS("testdata/explain"), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile("testdata/explain/" + path)
		fsys[path] = &fstest.MapFile{Data: data}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	cert, key := testCA(t)
	fsys["ca.pem"] = &fstest.MapFile{Data: []byte(cert)}
	fsys["ca-key.pem"] = &fstest.MapFile{Data: []byte(key)}
	snap, err := Load(fsys, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// TestExplainURL checks that explain reaches, for a URL, the decision the
// gateway reaches for the request a client makes for it: for https, the
// CONNECT and, in an inspected tunnel, the request inside.
func TestExplainURL(t *testing.T) {
	snap := explainFixture(t)
	cases := []struct {
		name, tenant, method, url string

		decision  string
		code      Code
		rule      string
		reason    string   // exact, as the gateway's error message; "" for none
		steps     []string // each step's request
		unchecked string   // a part of Unchecked; "" when it must be empty
		inText    []string // lines of the text output
	}{
		{
			name: "inspected, method and path allowed", tenant: "acme", method: "POST", url: "https://insp.test/v1/items",
			decision: "allow", code: CodeOK, rule: "inspected@1",
			steps:  []string{"CONNECT insp.test:443", "POST insp.test:443/v1/items"},
			inText: []string{"request:  CONNECT insp.test:443", "then:     POST insp.test:443/v1/items, inside the inspected tunnel", `decision: ALLOW (ok) by "inspected@1"`},
		},
		{
			name: "inspected, method not allowed", tenant: "acme", method: "DELETE", url: "https://insp.test/admin",
			decision: "deny", code: CodeDestinationNotAllowed, rule: "inspected@1",
			reason: `tenant "acme" may not reach insp.test:443: DELETE /admin is not among the methods and paths that connector "inspected@1" allows`,
			steps:  []string{"CONNECT insp.test:443", "DELETE insp.test:443/admin"},
			inText: []string{`  step decision: ALLOW (ok) by "inspected@1"`, "  no match allow connector \"inspected@1\": method DELETE is not in [GET POST]", `decision: DENY (destination_not_allowed) by "inspected@1"`},
		},
		{
			name: "inspected, path not allowed, method defaults to GET", tenant: "acme", url: "https://insp.test/admin",
			decision: "deny", code: CodeDestinationNotAllowed, rule: "inspected@1",
			reason: `tenant "acme" may not reach insp.test:443: GET /admin is not among the methods and paths that connector "inspected@1" allows`,
			steps:  []string{"CONNECT insp.test:443", "GET insp.test:443/admin"},
		},
		{
			name: "inspected, deny rule on a path", tenant: "acme", method: "GET", url: "https://insp.test/v1/secrets/1",
			decision: "deny", code: CodeDestinationNotAllowed, rule: "no-secrets",
			reason: `tenant "acme" may not reach insp.test:443: denied by rule "no-secrets"`,
			steps:  []string{"CONNECT insp.test:443", "GET insp.test:443/v1/secrets/1"},
		},
		{
			name: "inspected, ambiguous path", tenant: "acme", method: "GET", url: "https://insp.test/v1/../admin",
			decision: "deny", code: CodeBadRequest,
			reason: `the request is ambiguous: bad request target: the path has a dot segment ("/v1/../admin"); send the resolved path`,
			steps:  []string{"CONNECT insp.test:443", "GET insp.test:443/v1/../admin"},
		},
		{
			name: "report mode, inspected, method not allowed", tenant: "watcher", method: "DELETE", url: "https://insp.test/admin",
			decision: "report", code: CodeDestinationNotAllowed, rule: "inspected@1",
			reason: `tenant "watcher" may not reach insp.test:443: DELETE /admin is not among the methods and paths that connector "inspected@1" allows`,
			steps:  []string{"CONNECT insp.test:443", "DELETE insp.test:443/admin"},
		},
		{
			name: "uninspected tunnel, method and path unchecked", tenant: "acme", method: "DELETE", url: "https://open.test/admin",
			decision: "allow", code: CodeOK, rule: "open@1",
			steps:     []string{"CONNECT open.test:443"},
			unchecked: "DELETE /admin is sent inside a tunnel the gateway does not inspect",
			inText:    []string{"request:  CONNECT open.test:443", "unchecked: DELETE /admin is sent inside a tunnel the gateway does not inspect: no method or path is checked", `decision: ALLOW (ok) by "open@1"`},
		},
		{
			name: "report mode, tunnel to an unknown host, unchecked", tenant: "watcher", method: "DELETE", url: "https://evil.test/x",
			decision: "report", code: CodeDestinationNotAllowed,
			reason:    `tenant "watcher" may not reach evil.test:443: no connector or rule matches; add the host to a connector the tenant uses or to the tenant's rules`,
			steps:     []string{"CONNECT evil.test:443"},
			unchecked: "DELETE /x",
		},
		{
			name: "tunnel refused, nothing inside", tenant: "acme", method: "DELETE", url: "https://evil.test/x",
			decision: "deny", code: CodeDestinationNotAllowed,
			reason: `tenant "acme" may not reach evil.test:443: no connector or rule matches; add the host to a connector the tenant uses or to the tenant's rules`,
			steps:  []string{"CONNECT evil.test:443"},
		},
		{
			name: "plain http, method not allowed", tenant: "acme", method: "DELETE", url: "http://insp.test/admin",
			decision: "deny", code: CodeDestinationNotAllowed, rule: "inspected@1",
			reason: `tenant "acme" may not reach insp.test:80: DELETE /admin is not among the methods and paths that connector "inspected@1" allows`,
			steps:  []string{"DELETE insp.test:80/admin"},
			inText: []string{"request:  DELETE insp.test:80/admin", "rules (a matching deny wins, then the first matching allow):"},
		},
		{
			name: "plain http, allowed", tenant: "acme", method: "post", url: "http://insp.test/v1/x",
			decision: "allow", code: CodeOK, rule: "inspected@1",
			steps: []string{"POST insp.test:80/v1/x"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tenant, ok := snap.Tenant(c.tenant)
			if !ok {
				t.Fatalf("no tenant %s", c.tenant)
			}
			tr, err := tenant.ExplainURL(c.method, c.url)
			if err != nil {
				t.Fatal(err)
			}
			if tr.Decision != c.decision || tr.Code != c.code || tr.Rule != c.rule || tr.Reason != c.reason {
				t.Errorf("decision %s (%s) by %q, reason %q\nwant %s (%s) by %q, reason %q", tr.Decision, tr.Code, tr.Rule, tr.Reason, c.decision, c.code, c.rule, c.reason)
			}
			var steps []string
			for _, s := range tr.Steps {
				steps = append(steps, s.Request)
			}
			if !reflect.DeepEqual(steps, c.steps) {
				t.Errorf("steps %q, want %q", steps, c.steps)
			}
			if last := tr.Steps[len(tr.Steps)-1]; last.Decision != tr.Decision || last.Code != tr.Code || last.Rule != tr.Rule || !reflect.DeepEqual(last.Rules, tr.Rules) {
				t.Errorf("the last step %+v is not the trace's decision", last)
			}
			if (c.unchecked == "") != (tr.Unchecked == "") || !strings.Contains(tr.Unchecked, c.unchecked) {
				t.Errorf("unchecked %q, want it to hold %q", tr.Unchecked, c.unchecked)
			}
			var text strings.Builder
			if err := tr.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(text.String(), "\n")
			for _, want := range c.inText {
				if !slices.Contains(lines, want) {
					t.Errorf("text output has no line %q:\n%s", want, text.String())
				}
			}
			if strings.HasPrefix(c.url, "http:") {
				// Plain HTTP is one request, traced as Explain always has.
				r, _, err := requestsForURL(c.method, c.url)
				if err != nil {
					t.Fatal(err)
				}
				if want := tenant.Explain(r); !reflect.DeepEqual(tr, want) {
					t.Errorf("ExplainURL differs from Explain:\n got %+v\nwant %+v", tr, want)
				}
			}
		})
	}
}
