package policy

import (
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// A connector's request_id_header names the header that carries the
// gateway's request id upstream: X-Request-Id when unset, none when "".
// Anything else that is not a header a connector may set is a config
// error on its line, never a header silently dropped or sent.
func TestConnectorRequestIDHeader(t *testing.T) {
	const secret = "s3cr3t-value-long-enough"
	for _, tc := range []struct {
		name, line string // line: the connector file's request_id_header line, "" for none
		want       string // the header sent; "" for none
		err        string // the load error, "" when it loads
	}{
		{name: "unset", want: "X-Request-Id"},
		{name: "another name, canonicalised", line: "request_id_header: x-correlation-id", want: "X-Correlation-Id"},
		{name: "quoted", line: `request_id_header: "X-Trace-Ref"`, want: "X-Trace-Ref"},
		{name: "empty sends none", line: `request_id_header: ""`, want: ""},
		{name: "null is ambiguous", line: "request_id_header:", err: `connectors/api.yaml:6: request_id_header: write "" to send no request id, or a header name`},
		{name: "tilde is ambiguous", line: "request_id_header: ~", err: `connectors/api.yaml:6: request_id_header: write "" to send no request id, or a header name`},
		{name: "not a header name", line: `request_id_header: "X Request Id"`, err: `connectors/api.yaml:6: request_id_header "X Request Id": not a header a connector may set`},
		{name: "framing", line: "request_id_header: Content-Length", err: `connectors/api.yaml:6: request_id_header "Content-Length": not a header a connector may set`},
		{name: "proxy header", line: "request_id_header: Proxy-Authorization", err: `connectors/api.yaml:6: request_id_header "Proxy-Authorization": not a header a connector may set`},
		{name: "an injected header", line: "request_id_header: authorization",
			err: `connectors/api.yaml:6: request_id_header "authorization": the connector injects that header (inject.headers)`},
		{name: "a list", line: "request_id_header: [X-Request-Id]", err: `connectors/api.yaml:6: wrong type for key "request_id_header"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			connector := "name: api\nhosts: [\"api.example.com\"]\ninject:\n  headers: { Authorization: \"Bearer ${secret:key}\" }\n  allow_plaintext: true\n"
			if tc.line != "" {
				connector += tc.line + "\n"
			}
			fsys := fstest.MapFS{
				"gateway.yaml":        {Data: []byte("secrets:\n  key: { file: key.txt }\n")},
				"key.txt":             {Data: []byte(secret)},
				"connectors/api.yaml": {Data: []byte(connector)},
				"tenants/acme.yaml":   {Data: []byte("id: acme\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [api]\n")},
			}
			snap, err := Load(fsys, time.Unix(1700000000, 0))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("load error %v, want one containing %q", err, tc.err)
				}
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("load error %q holds the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tenant, _ := snap.Tenant("acme")
			d := tenant.Decide(Request{Host: "api.example.com", Port: 80, Method: "GET", Path: "/"})
			if d.Connector == nil {
				t.Fatalf("decision %+v names no connector", d)
			}
			if got := d.Connector.RequestIDHeader; got != tc.want {
				t.Errorf("RequestIDHeader %q, want %q", got, tc.want)
			}
		})
	}
}
