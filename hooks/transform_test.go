//go:build linux

package hooks

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestRequestHook(t *testing.T) {
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 2})
	tests := []struct {
		name   string
		script string
		input  func(*Request) // changes to sampleRequest, if any
		check  func(t *testing.T, in, out Request, oc Outcome)
	}{
		{
			name: "script sees every variable",
			script: `request.headers["X-Seen"] = [tenant.id, connector.name, string(connector.version),
				request.method, request.url, request.scheme, request.host, string(request.port),
				request.path, request.query, request.headers["Accept"][0], request.json.name,
				type_name(request.json.count), is_undefined(response) ? "no response" : "response",
				is_undefined(deny) ? "no deny" : "deny"]`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				want := []string{"acme", "crm", "2", "POST", in.URL, "https", "api.example.com", "443",
					"/v1/items", "page=2", "*/*", "widget", "int", "no response", "no deny"}
				if got := out.Headers["X-Seen"]; !slices.Equal(got, want) {
					t.Errorf("X-Seen = %q, want %q", got, want)
				}
			},
		},
		{
			name:   "header added, lower-case name canonicalized",
			script: `request.headers["x-trace-id"] = "abc"`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if got := out.Headers["X-Trace-Id"]; !slices.Equal(got, []string{"abc"}) {
					t.Errorf("X-Trace-Id = %q", got)
				}
				if _, ok := out.Headers["x-trace-id"]; ok {
					t.Error("non-canonical name kept")
				}
				if oc.BodyChanged || string(out.Body) != string(in.Body) {
					t.Error("body changed by a header edit")
				}
			},
		},
		{
			name:   "header removed and multi-valued header set",
			script: `delete(request.headers, "Accept"); request.headers["X-Multi"] = ["a", 2, true]`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if _, ok := out.Headers["Accept"]; ok {
					t.Error("Accept still present")
				}
				if got := out.Headers["X-Multi"]; !slices.Equal(got, []string{"a", "2", "true"}) {
					t.Errorf("X-Multi = %q", got)
				}
			},
		},
		{
			name:   "json edit re-encodes the body",
			script: `request.json.name = "gadget"; request.json.tags = ["x", "<y>"]`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if want := `{"count":1,"name":"gadget","tags":["x","<y>"]}`; string(out.Body) != want || !oc.BodyChanged {
					t.Errorf("body = %s (changed %v), want %s", out.Body, oc.BodyChanged, want)
				}
				if got := out.Headers["Content-Type"]; !slices.Equal(got, in.Headers["Content-Type"]) {
					t.Errorf("Content-Type = %q, want it kept", got)
				}
			},
		},
		{
			name:   "json read but not changed keeps the body's bytes",
			script: `request.headers["X-Name"] = request.json.name; request.json.name = "widget"`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if oc.BodyChanged || string(out.Body) != string(in.Body) {
					t.Errorf("body = %s (changed %v), want the original bytes", out.Body, oc.BodyChanged)
				}
			},
		},
		{
			name:   "json assigned on a text body makes it JSON",
			script: `request.json = {greeting: request.body, n: 1.5}`,
			input: func(r *Request) {
				r.Headers["Content-Type"] = []string{"text/plain"}
				r.Body = []byte("hello")
			},
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if want := `{"greeting":"hello","n":1.5}`; string(out.Body) != want {
					t.Errorf("body = %s, want %s", out.Body, want)
				}
				if got := out.Headers["Content-Type"]; !slices.Equal(got, []string{"application/json"}) {
					t.Errorf("Content-Type = %q", got)
				}
			},
		},
		{
			name:   "invalid JSON body leaves json undefined",
			script: `request.headers["X-Json"] = is_undefined(request.json) ? "undefined" : "set"`,
			input:  func(r *Request) { r.Body = []byte(`{"name": `) },
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if got := out.Headers["X-Json"]; !slices.Equal(got, []string{"undefined"}) {
					t.Errorf("X-Json = %q", got)
				}
			},
		},
		{
			name:   "body edit",
			script: `request.body = "name=gadget"`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if string(out.Body) != "name=gadget" || !oc.BodyChanged {
					t.Errorf("body = %q (changed %v)", out.Body, oc.BodyChanged)
				}
			},
		},
		{
			name:   "json edit wins over a body edit",
			script: `request.body = "ignored"; request.json.count = 2`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if want := `{"count":2,"name":"widget"}`; string(out.Body) != want {
					t.Errorf("body = %s, want %s", out.Body, want)
				}
			},
		},
		{
			name: "framing and hop-by-hop header edits are dropped",
			script: `
				request.headers["Content-Length"] = "999"
				request.headers["Transfer-Encoding"] = "chunked"
				request.headers["host"] = "evil.example"
				delete(request.headers, "Connection")
				request.headers["Proxy-Authorization"] = "Basic eA=="
				request.headers["TE"] = "trailers"
				request.headers["Upgrade"] = "websocket"
				request.headers["Keep-Alive"] = "timeout=5"
				request.headers["Trailer"] = "X-Sum"
				request.headers["X-Kept"] = "yes"`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				want := map[string][]string{
					"Accept": {"*/*"}, "Content-Type": in.Headers["Content-Type"],
					"Content-Length": {"31"}, "Connection": {"keep-alive"}, "X-Kept": {"yes"},
				}
				if !reflect.DeepEqual(out.Headers, want) {
					t.Errorf("headers = %q, want %q", out.Headers, want)
				}
				wantDropped := []string{"request.headers.Connection", "request.headers.Content-Length",
					"request.headers.Host", "request.headers.Keep-Alive", "request.headers.Proxy-Authorization",
					"request.headers.Te", "request.headers.Trailer", "request.headers.Transfer-Encoding",
					"request.headers.Upgrade"}
				if !slices.Equal(oc.DroppedEdits, wantDropped) {
					t.Errorf("DroppedEdits = %q, want %q", oc.DroppedEdits, wantDropped)
				}
			},
		},
		{
			name:   "destination fields are read-only",
			script: `request.host = "evil.example"; request.port = 8443; request.scheme = "http"; request.url = "http://evil.example/"`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if out.Host != in.Host || out.Port != in.Port || out.Scheme != in.Scheme || out.URL != in.URL {
					t.Errorf("destination changed: %+v", out)
				}
				want := []string{"request.url", "request.scheme", "request.host", "request.port"}
				if !slices.Equal(oc.DroppedEdits, want) {
					t.Errorf("DroppedEdits = %q, want %q", oc.DroppedEdits, want)
				}
			},
		},
		{
			name:   "method, path and query edits rebuild the URL",
			script: `request.method = "PUT"; request.path = "/v2/items/a%20b"; request.query = "page=3&x=%2F"`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if out.Method != "PUT" || out.Path != "/v2/items/a%20b" || out.Query != "page=3&x=%2F" {
					t.Errorf("got %s %s ? %s", out.Method, out.Path, out.Query)
				}
				if want := "https://api.example.com/v2/items/a%20b?page=3&x=%2F"; out.URL != want {
					t.Errorf("URL = %s, want %s", out.URL, want)
				}
			},
		},
		{
			name:   "deny with a reason",
			script: `if request.json.count < 5 { deny = "orders below 5 items go through the shop" }`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if !oc.Denied || oc.DenyReason != "orders below 5 items go through the shop" {
					t.Errorf("outcome = %+v", oc)
				}
				if !reflect.DeepEqual(out, in) {
					t.Errorf("denied request changed: %+v", out)
				}
			},
		},
		{
			name:   "undefined means unchanged",
			script: `request.headers = undefined; request.body = undefined; request.method = undefined; delete(request, "path")`,
			check: func(t *testing.T, in, out Request, oc Outcome) {
				if !reflect.DeepEqual(out, in) || oc.BodyChanged {
					t.Errorf("request changed: %+v", out)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := sampleRequest()
			if tt.input != nil {
				tt.input(&in)
			}
			inCopy := sampleRequest()
			if tt.input != nil {
				tt.input(&inCopy)
			}
			s := mustCompile(t, "hooks/test.tengo", tt.script)
			out, oc, err := rt.RunRequest(context.Background(), s, sampleMeta, in, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(in, inCopy) {
				t.Error("RunRequest modified its input")
			}
			tt.check(t, in, out, oc)
		})
	}
}

func TestRequestHookInvalidOutput(t *testing.T) {
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 1})
	tests := []struct {
		name, script, message string
	}{
		{"header value with a line break", `request.headers["X-A"] = "a\r\nX-Injected: 1"`, "line break"},
		{"invalid header name", `request.headers["Bad Name"] = "x"`, "invalid header name"},
		{"header value of a map", `request.headers["X-A"] = {a: 1}`, "must be strings"},
		{"deny not a string", `deny = true`, "deny must be a string"},
		{"body not a string", `request.body = 5`, "request.body must be a string or bytes"},
		{"request replaced", `request = "x"`, "request must stay a map"},
		{"path without slash", `request.path = "v2"`, "must start with /"},
		{"path with a space", `request.path = "/a b"`, "must start with /"},
		{"method not a token", `request.method = "GE T"`, "not a valid HTTP method"},
		{"json with a cycle", `m := {}; m.self = m; request.json = m`, "request.json: json:"},
		{"json with a function", `request.json = {f: func() {}}`, "cannot encode"},
		{"body over max_body_bytes", `request.body = text.repeat("x", 2048)`, "larger than max_body_bytes"},
		{"query with a space", `request.query = "token=query-marker-7f3a b"`, "request.query must hold no spaces"},
		{"path with a query", `request.path = "/v2?token=query-marker-7f3a"`, `"/v2?…" must start with /`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustCompile(t, "hooks/bad.tengo", `text := import("text")`+"\n"+tt.script)
			_, _, err := rt.RunRequest(context.Background(), s, sampleMeta, sampleRequest(), Limits{MaxBodyBytes: 1024})
			re := runError(t, err, FailInvalidOutput)
			if !strings.Contains(re.Message, tt.message) {
				t.Errorf("message %q does not mention %q", re.Message, tt.message)
			}
			// The message reaches the audit log and the client: never a
			// query value.
			if strings.Contains(re.Error(), "query-marker") {
				t.Errorf("message %q holds a query value", re.Error())
			}
		})
	}
}

func TestResponseHook(t *testing.T) {
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 1})
	tests := []struct {
		name   string
		script string
		check  func(t *testing.T, in, out Response, oc Outcome)
	}{
		{
			name:   "status, header and json edits",
			script: `response.status = 203; delete(response.headers, "Set-Cookie"); response.headers["X-From"] = request.host; delete(response.json.user, "ssn")`,
			check: func(t *testing.T, in, out Response, oc Outcome) {
				if out.Status != 203 {
					t.Errorf("status = %d", out.Status)
				}
				want := map[string][]string{"Content-Type": {"application/json"}, "Transfer-Encoding": {"chunked"}, "X-From": {"api.example.com"}}
				if !reflect.DeepEqual(out.Headers, want) {
					t.Errorf("headers = %q, want %q", out.Headers, want)
				}
				if want := `{"user":{"name":"Ada"}}`; string(out.Body) != want || !oc.BodyChanged {
					t.Errorf("body = %s, want %s", out.Body, want)
				}
			},
		},
		{
			name:   "body edit and dropped framing edit",
			script: `response.body = "replaced"; response.headers["Content-Length"] = "8"; delete(response.headers, "Transfer-Encoding")`,
			check: func(t *testing.T, in, out Response, oc Outcome) {
				if string(out.Body) != "replaced" || !oc.BodyChanged {
					t.Errorf("body = %q", out.Body)
				}
				if got := out.Headers["Transfer-Encoding"]; !slices.Equal(got, []string{"chunked"}) {
					t.Errorf("Transfer-Encoding = %q, want the upstream's", got)
				}
				want := []string{"response.headers.Content-Length", "response.headers.Transfer-Encoding"}
				if !slices.Equal(oc.DroppedEdits, want) {
					t.Errorf("DroppedEdits = %q, want %q", oc.DroppedEdits, want)
				}
			},
		},
		{
			name:   "deny",
			script: `if response.json.user.ssn { deny = "upstream leaked an SSN" }`,
			check: func(t *testing.T, in, out Response, oc Outcome) {
				if !oc.Denied || oc.DenyReason != "upstream leaked an SSN" {
					t.Errorf("outcome = %+v", oc)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustCompile(t, "hooks/resp.tengo", tt.script)
			in := sampleResponse()
			out, oc, err := rt.RunResponse(context.Background(), s, sampleMeta, sampleRequest(), in, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, in, out, oc)
		})
	}

	t.Run("request is read-only in a response hook", func(t *testing.T) {
		s := mustCompile(t, "hooks/resp.tengo", "x := 1\nrequest.headers[\"X-A\"] = \"b\"")
		_, _, err := rt.RunResponse(context.Background(), s, sampleMeta, sampleRequest(), sampleResponse(), Limits{})
		re := runError(t, err, FailRuntime)
		if re.Line != 2 || !strings.Contains(re.Message, "not index-assignable") {
			t.Errorf("error %q (line %d), want line 2, not index-assignable", re, re.Line)
		}
	})
	t.Run("status out of range", func(t *testing.T) {
		s := mustCompile(t, "hooks/resp.tengo", `response.status = 1000`)
		_, _, err := rt.RunResponse(context.Background(), s, sampleMeta, sampleRequest(), sampleResponse(), Limits{})
		runError(t, err, FailInvalidOutput)
	})
}

func TestBodyTooLarge(t *testing.T) {
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 1})
	s := mustCompile(t, "hooks/any.tengo", `x := 1`)
	req := sampleRequest()
	req.Body = make([]byte, 1025)
	_, _, err := rt.RunRequest(context.Background(), s, sampleMeta, req, Limits{MaxBodyBytes: 1024})
	var tooLarge *BodyTooLargeError
	if !errors.As(err, &tooLarge) || tooLarge.Size != 1025 || tooLarge.Limit != 1024 {
		t.Fatalf("error %v, want a *BodyTooLargeError for 1025 > 1024", err)
	}
	_, _, err = rt.RunResponse(context.Background(), s, sampleMeta, sampleRequest(), Response{Status: 200, Body: make([]byte, 2048)}, Limits{MaxBodyBytes: 1024})
	if !errors.As(err, &tooLarge) {
		t.Fatalf("response: error %v, want a *BodyTooLargeError", err)
	}
}
