package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/budget"
)

// FuzzLoad feeds arbitrary tenant and connector files to the loader: it must
// never panic, must fail with a *LoadError whose every entry names a file,
// or succeed with a snapshot whose tenants all decide without panicking.
func FuzzLoad(f *testing.F) {
	f.Add("id: acme\nauth: { token_sha256: \""+testTokenHash+"\" }\nconnectors: [github]\n",
		"name: github\nhosts: [\"api.github.com\"]\n")
	f.Add("id: a\nauth: { source_cidrs: [\"10.0.0.0/8\"] }\nrules: [{hosts: [\"*.example.com\"], ports: [8080], methods: [GET], paths: [/x]}]\n", "")
	f.Add("id: [\n", "name: x\nversion: -3\nhosts: [\"*.co.uk\"]\n")
	f.Add("id: acme\nid: acme\n", "name: x\nhosts: [\"10.0.0.1/8\", \"0x7f.1\"]\n")
	f.Add("&a [*a]", "? [a]\n: b\n")
	f.Add("id: acme\nauth: { token_sha256: \""+testTokenHash+"\" }\nconnectors: [github]\n",
		"name: github\nhosts: [\"api.github.com\"]\nrequest_id_header: x-trace\n")
	f.Add("id: acme\nauth: { token_sha256: \""+testTokenHash+"\" }\nconnectors: [github]\n",
		"name: github\nhosts: [\"api.github.com\"]\nrequest_id_header: \"Proxy-X\"\n")
	f.Add("id: acme\nauth: { token_sha256: \""+testTokenHash+"\" }\nconnectors: [github]\nbudgets:\n  - { name: daily, period: day, requests: 10, egress: 1GiB, cost: 2.5, warn_at: 0.8, connectors: [github] }\n",
		"name: github\nhosts: [\"api.github.com\"]\nprice: { per_request: 0.002, per_gib_egress: 0.09 }\n")
	f.Fuzz(func(t *testing.T, tenant, connector string) {
		fsys := fstest.MapFS{
			"tenants/t.yaml":    {Data: []byte(tenant)},
			"connectors/c.yaml": {Data: []byte(connector)},
		}
		snap, err := Load(fsys, time.Unix(0, 0))
		if err != nil {
			var le *LoadError
			if !errors.As(err, &le) || len(le.Errors) == 0 {
				t.Fatalf("error %T without entries: %v", err, err)
			}
			for _, ce := range le.Errors {
				if ce.File == "" || ce.Msg == "" {
					t.Fatalf("entry without file or message: %+v", ce)
				}
			}
			return
		}
		for _, id := range snap.TenantIDs() {
			tn, _ := snap.Tenant(id)
			for _, b := range tn.Budgets {
				l := b.Limit
				if !b.Period.Valid() || l.Requests < 0 || l.Egress < 0 || l.Ingress < 0 || !(l.Cost >= 0 && l.Cost <= maxCost) ||
					l == (budget.Usage{}) || !(b.WarnAt >= 0 && b.WarnAt < 1) {
					t.Fatalf("budget loaded that the gateway cannot enforce: %+v", b)
				}
				for _, c := range b.Connectors {
					if !slices.ContainsFunc(tn.Rules(), func(r Rule) bool { return r.Connector != nil && r.Connector.Name == c }) {
						t.Fatalf("budget %q counts connector %q the tenant does not list", b.Name, c)
					}
				}
			}
			for _, r := range tn.Rules() {
				if c := r.Connector; c != nil {
					for _, v := range []float64{c.Price.PerRequest, c.Price.PerGiBEgress, c.Price.PerGiBIngress} {
						if !(v >= 0 && v <= maxPrice) {
							t.Fatalf("connector %s has price %+v", c.Name, c.Price)
						}
					}
				}
			}
			for _, port := range []uint16{80, 443, 8080} {
				d := tn.Decide(Request{Host: "api.github.com", Port: port, Method: "GET", Path: "/x"})
				if c := d.Connector; c != nil && c.RequestIDHeader != "" &&
					(!headerName.MatchString(c.RequestIDHeader) || isHopOrFraming(c.RequestIDHeader) || c.RequestIDHeader != http.CanonicalHeaderKey(c.RequestIDHeader)) {
					t.Fatalf("connector %s sends the request id in %q, not a header a connector may set", c.Name, c.RequestIDHeader)
				}
				tn.Decide(Request{Host: "a.example.com", Port: port, Tunnel: true})
			}
		}
	})
}

// generatedConfig builds a config of tenants x connectors, each tenant using
// connectorsPerTenant connectors and a few rules of its own.
func generatedConfig(tenants, connectors, connectorsPerTenant int) fstest.MapFS {
	fsys := fstest.MapFS{"gateway.yaml": {Data: []byte("listen: \":3128\"\n")}}
	for c := 0; c < connectors; c++ {
		body := fmt.Sprintf("name: api%d\nversion: 1\nhosts: [\"api%d.example.com\", \"*.svc%d.example.net\"]\nports: [443]\n", c, c, c)
		fsys[fmt.Sprintf("connectors/api%d.yaml", c)] = &fstest.MapFile{Data: []byte(body)}
	}
	for t := 0; t < tenants; t++ {
		var refs []string
		for i := 0; i < connectorsPerTenant; i++ {
			refs = append(refs, fmt.Sprintf("api%d", (t+i)%connectors))
		}
		body := fmt.Sprintf(`id: tenant%d
auth: { token_sha256: "%s" }
connectors: [%s]
rules:
  - name: docs
    hosts: ["docs%d.example.org"]
  - name: block
    action: deny
    hosts: ["paste%d.example.org"]
`, t, testTokenHash, strings.Join(refs, ", "), t, t)
		fsys[fmt.Sprintf("tenants/tenant%d.yaml", t)] = &fstest.MapFile{Data: []byte(body)}
	}
	return fsys
}

// BenchmarkLoad1000Tenants200Connectors is the reload cost an admin's save
// pays: read, decode, validate and compile a large config.
func BenchmarkLoad1000Tenants200Connectors(b *testing.B) {
	fsys := generatedConfig(1000, 200, 5)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(fsys, time.Unix(0, 0)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecide(b *testing.B) {
	snap, err := Load(generatedConfig(10, 200, 200), time.Unix(0, 0))
	if err != nil {
		b.Fatal(err)
	}
	tenant, _ := snap.Tenant("tenant3")
	req := Request{Host: "x.svc150.example.net", Port: 443, Tunnel: true}
	b.ReportAllocs()
	for b.Loop() {
		if !tenant.Decide(req).Allow {
			b.Fatal("denied")
		}
	}
}

// FuzzResolveInFS follows arbitrary links inside a file system with no
// directory on disk: resolving never panics, and whatever it returns is a
// path inside the file system with no link on the way.
func FuzzResolveInFS(f *testing.F) {
	f.Add("tenants/a.yaml", "..data/tenants/a.yaml", "..2026_01_01")
	f.Add("tenants/a.yaml", "../../etc/passwd", "x")
	f.Add("tenants/a.yaml", "/etc/passwd", "..data")
	f.Add("tenants/a.yaml", "a.yaml", "..data/../..data")
	f.Add("tenants/a.yaml", "./../tenants/a.yaml", "")
	f.Fuzz(func(t *testing.T, name, link, dataLink string) {
		if !fs.ValidPath(name) {
			return
		}
		fsys := fstest.MapFS{
			"tenants/a.yaml":                   {Mode: fs.ModeSymlink, Data: []byte(link)},
			"..data":                           {Mode: fs.ModeSymlink, Data: []byte(dataLink)},
			"..2026_01_01/tenants/a.yaml":      {Data: []byte("id: a\n")},
			"..2026_01_01/tenants/loop.yaml":   {Mode: fs.ModeSymlink, Data: []byte("loop.yaml")},
			"..2026_01_01/tenants/b/c.yaml":    {Data: []byte("id: c\n")},
			"..2026_01_01/tenants/up.yaml":     {Mode: fs.ModeSymlink, Data: []byte("../../..")},
			"..2026_01_01/tenants/inside.yaml": {Mode: fs.ModeSymlink, Data: []byte("b/c.yaml")},
		}
		resolved, err := resolveInFS(fsys, name)
		if err != nil {
			return
		}
		if !fs.ValidPath(resolved) {
			t.Fatalf("resolveInFS(%q) = %q, outside the file system", name, resolved)
		}
		for p := resolved; p != "."; p = path.Dir(p) {
			if info, err := fsys.Lstat(p); err == nil && info.Mode()&fs.ModeSymlink != 0 {
				t.Fatalf("resolveInFS(%q) = %q, which goes through the link %s", name, resolved, p)
			}
		}
	})
}

// FuzzDecodeErrorsQuoteNoValue puts a value where a YAML document says
// VALUE (a scalar, a key, an anchor, a tag...) and decodes it as a tenant
// and as gateway.yaml: no error may quote the value, since a file that
// does not decode may be anything (docs/admins.md).
func FuzzDecodeErrorsQuoteNoValue(f *testing.F) {
	for _, doc := range []string{
		"id: VALUE\n", "VALUE\n", "mode: [VALUE]\n", "quota: { burst: VALUE }\n", "VALUE: 1\n",
		"auth: *VALUE\n", "auth: !VALUE {}\n", "rules: [{ ports: [VALUE] }]\n", "id: &VALUE a\nmode: *VALUE\n",
		"limits: { max_header_bytes: VALUE, idle_timeout: VALUE }\n", "? VALUE\n: x\n", "id: \"VALUE\n", "VALUE: 1\nVALUE: 2\n",
		"secrets: { VALUE: { file: x } }\n", "quota: { requests_per_second: VALUE }\n",
	} {
		f.Add(doc, "$6$SALT$HASHVALUE0123")
	}
	f.Fuzz(func(t *testing.T, doc, value string) {
		// Upper case or symbols: no message of ours holds such a run of 8.
		if len(value) < 8 || len(value) > 64 || strings.ToLower(value) == value || strings.ContainsAny(value, " \t\r\n:#{}[],&*!|>'\"%@`") {
			return
		}
		data := []byte(strings.ReplaceAll(doc, "VALUE", value))
		for _, out := range []any{&tenantFile{}, &gatewayFile{}, &connectorFile{}} {
			_, errs := decodeStrict("f.yaml", data, out)
			for _, ce := range errs {
				if strings.Contains(ce.Msg, value) {
					t.Fatalf("decoding %q as %T: error %q quotes the value", data, out, ce.Msg)
				}
			}
		}
	})
}
