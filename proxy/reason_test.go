package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"unicode/utf8"

	"github.com/egressgw/egressgw/policy"
)

func TestConnectReasonPhrase(t *testing.T) {
	long := "tenant \"acme\" may not reach x.example:443: it resolves to an address the gateway never dials (private, loopback, link-local, the gateway itself or another special-purpose range); if it is meant to be reachable, the operator can add it to network.allow_cidrs"
	for _, tc := range []struct {
		name    string
		code    policy.Code
		message string
		want    string
	}{
		{"code and message", policy.CodeDestinationNotAllowed, "tenant \"acme\" may not reach x.example:443: no connector or rule matches",
			"destination_not_allowed: tenant \"acme\" may not reach x.example:443: no connector or rule matches"},
		{"no message", policy.CodeBadRequest, "", "bad_request"},
		{"only space", policy.CodeBadRequest, " \t\r\n", "bad_request"},
		{"non-ASCII replaced", policy.CodeDestinationNotAllowed, "tenant \"acme\" may not reach bücher.例え.jp:443",
			"destination_not_allowed: tenant \"acme\" may not reach b?cher.??.jp:443"},
		{"invalid UTF-8 replaced", policy.CodeBadRequest, "bad\xffhost\xc3", "bad_request: bad?host?"},
		{"line breaks cannot end the line", policy.CodeBadRequest, "a\r\nX-Injected: 1\r\n\r\nb",
			"bad_request: a X-Injected: 1 b"},
		{"controls become one space", policy.CodeBadRequest, "a\x00\x01\x7f\tb", "bad_request: a b"},
		{"cut at a word", policy.CodeDestinationIPDenied, long,
			"destination_ip_denied: tenant \"acme\" may not reach x.example:443: it resolves to an address the gateway never dials (private, loopback, link-local, the..."},
		{"one long word cut where it is", policy.CodeBadRequest, "x" + strings.Repeat("y", 300),
			"bad_request: x" + strings.Repeat("y", maxReasonPhrase-len("bad_request: x")-len(truncated)) + truncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := connectReasonPhrase(tc.code, tc.message)
			if got != tc.want {
				t.Errorf("connectReasonPhrase(%q, %q)\n got %q\nwant %q", tc.code, tc.message, got, tc.want)
			}
			if len(got) > maxReasonPhrase {
				t.Errorf("%d bytes, over the bound of %d", len(got), maxReasonPhrase)
			}
		})
	}
}

// connectCodes are the codes a CONNECT can be refused with, with the
// messages the gateway gives for them (identify.go, decide.go, admit.go,
// dial.go).
var connectCodes = []struct {
	code    policy.Code
	status  int
	message string
}{
	{policy.CodeProxyAuthRequired, 407, "the proxy credentials were not accepted; send Proxy-Authorization: Basic base64(TENANT:TOKEN), e.g. HTTP_PROXY=http://TENANT:TOKEN@gateway:3128"},
	{policy.CodeDestinationNotAllowed, 403, "tenant \"acme\" may not reach x.example:443: no connector or rule matches; add the host to a connector the tenant uses or to the tenant's rules"},
	{policy.CodeDestinationIPDenied, 403, "tenant \"acme\" may not reach x.example:443: it resolves to an address the gateway never dials (private, loopback, link-local, the gateway itself or another special-purpose range); if it is meant to be reachable, the operator can add it to network.allow_cidrs"},
	{policy.CodeBadRequest, 400, "the request target is malformed or ambiguous: host \"x..example\" has an empty label"},
	{policy.CodeRateLimited, 429, "tenant \"acme\" is over its request rate (tenant limit of 5 burst); retry after 2 s"},
	{policy.CodeConcurrencyLimited, 429, "tenant \"acme\" already has 4 requests and tunnels open, its max_concurrent; close some or retry later"},
	{policy.CodeQuotaUnavailable, 503, "the quota backend is unreachable and the gateway fails closed; retry shortly"},
	{policy.CodeDNSFailure, 502, "the host of x.example:443 does not exist (no such host); check the spelling"},
	{policy.CodeUpstreamUnreachable, 502, "could not connect to x.example:443"},
	{policy.CodeUpstreamTimeout, 504, "connecting to x.example:443 timed out"},
}

// refuseConnect has g refuse a CONNECT to x.example:443 by acme with
// code and message, as replyHijacked does, and returns what the client
// read: the raw status line and the parsed response, body read.
func refuseConnect(t *testing.T, g *Gateway, code policy.Code, message string) (statusLine string, resp *http.Response, body []byte) {
	t.Helper()
	ex := g.begin(httptest.NewRequest(http.MethodConnect, "x.example:443", nil), nil, true)
	tenant, ok := g.runtime.Load().live.Snapshot.Tenant("acme")
	if !ok {
		t.Fatal("no tenant acme in the test policy")
	}
	ex.setTenant(tenant)
	ex.host, ex.port = "x.example", 443
	client, gatewaySide := net.Pipe()
	defer client.Close()
	o := refused(code, message)
	if code == policy.CodeRateLimited {
		o.retryAfter = 2
	}
	go func() {
		g.replyHijacked(ex, o, gatewaySide)
		ex.finish()
	}()
	raw, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	statusLine, _, _ = strings.Cut(string(raw), "\r\n")
	resp, err = http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("Go cannot read the reply %q: %v", raw, err)
	}
	body, err = io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the reply's body: %v", err)
	}
	return statusLine, resp, body
}

// TestRefusedConnectReasonPhrase: every refusal a CONNECT can get names
// its code and reason in the status line, while the headers and the JSON
// body stay those of every gateway reply.
func TestRefusedConnectReasonPhrase(t *testing.T) {
	g := benchGateway(t, "listen: \"127.0.0.1:3128\"\n", "rules: [{ name: r, hosts: [\"a.example\"], ports: [443] }]\n")
	for _, tc := range connectCodes {
		t.Run(string(tc.code), func(t *testing.T) {
			statusLine, resp, body := refuseConnect(t, g, tc.code, tc.message)
			phrase := connectReasonPhrase(tc.code, tc.message)
			if want := "HTTP/1.1 " + strconv.Itoa(tc.status) + " " + phrase; statusLine != want {
				t.Errorf("status line\n got %q\nwant %q", statusLine, want)
			}
			if want := string(tc.code) + ": "; !strings.HasPrefix(phrase, want) || len(phrase) > maxReasonPhrase {
				t.Errorf("reason phrase %q: want it to start with %q and be at most %d bytes", phrase, want, maxReasonPhrase)
			}
			if want := strings.TrimSuffix(phrase[len(tc.code)+2:], truncated); !strings.HasPrefix(tc.message, want) {
				t.Errorf("reason phrase %q is not the start of the message %q", phrase, tc.message)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if got := resp.Header.Get("X-Egressgw-Error"); got != string(tc.code) {
				t.Errorf("X-Egressgw-Error %q, want %q", got, tc.code)
			}
			if got := resp.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type %q, want application/json", got)
			}
			var e errorBody
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("body %q is not the JSON error: %v", body, err)
			}
			if e.Error != tc.code || e.Message != tc.message || e.Tenant != "acme" || e.Host != "x.example" || e.Port != 443 {
				t.Errorf("body %q, want code %q, the whole message, tenant, host and port", body, tc.code)
			}
			if id := resp.Header.Get("X-Request-Id"); id == "" || e.RequestID != id {
				t.Errorf("X-Request-Id %q, body request_id %q: want the same, not empty", id, e.RequestID)
			}
		})
	}
}

// TestRefusalReasonOnTheWire: through the gateway's front door a refused
// CONNECT names its code in the status line and reaches nothing; a
// refused plain request keeps the standard phrase.
func TestRefusalReasonOnTheWire(t *testing.T) {
	var reached atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(1) }))
	defer upstream.Close()
	g := benchGateway(t, "listen: \"127.0.0.1:3128\"\n", "rules: [{ name: r, hosts: [\"a.example\"], ports: [443] }]\n")
	front := httptest.NewServer(g)
	defer front.Close()
	auth := "Proxy-Authorization: Basic " + basicEncode("acme", benchToken) + "\r\n"
	target := strings.TrimPrefix(upstream.URL, "http://")

	for _, tc := range []struct {
		name, request, wantLine string
	}{
		{"CONNECT without credentials", "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n",
			"HTTP/1.1 407 proxy_auth_required: this gateway needs proxy credentials; set HTTP_PROXY="},
		{"CONNECT not allowed", "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n" + auth + "\r\n",
			"HTTP/1.1 403 destination_not_allowed: tenant \"acme\" may not reach " + target + ": no connector or rule matches;"},
		{"CONNECT without a port", "CONNECT a.example HTTP/1.1\r\nHost: a.example\r\n" + auth + "\r\n",
			"HTTP/1.1 400 bad_request: the request target is malformed or ambiguous: "},
		{"plain request not allowed", "GET " + upstream.URL + "/ HTTP/1.1\r\nHost: " + target + "\r\n" + auth + "\r\n",
			"HTTP/1.1 403 Forbidden"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(front.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, tc.request); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil {
				t.Fatalf("reading the status line: %v", err)
			}
			line = strings.TrimSuffix(line, "\r\n")
			if !strings.HasPrefix(line, tc.wantLine) {
				t.Errorf("status line\n got %q\nwant it to start with %q", line, tc.wantLine)
			}
			if strings.HasPrefix(tc.wantLine, "HTTP/1.1 403 Forbidden") && line != tc.wantLine {
				t.Errorf("status line %q, want exactly %q", line, tc.wantLine)
			}
		})
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("the upstream was reached %d times by refused requests", n)
	}
}

// FuzzConnectReasonPhrase: whatever the message, the reply to a CONNECT
// has a status line Go reads with the same code, in printable ASCII,
// its reason phrase bounded and led by the error code; the body keeps the
// whole message.
func FuzzConnectReasonPhrase(f *testing.F) {
	for i, tc := range connectCodes {
		f.Add(uint8(i), tc.message)
	}
	f.Add(uint8(1), "a\r\nX-Injected: 1\r\n\r\nHTTP/1.1 200 OK")
	f.Add(uint8(3), "bücher.例え.jp \x00\x7f\xff")
	f.Add(uint8(2), strings.Repeat("word ", 64))
	g := benchGateway(f, "listen: \"127.0.0.1:3128\"\n", "rules: [{ name: r, hosts: [\"a.example\"], ports: [443] }]\n")
	f.Fuzz(func(t *testing.T, which uint8, message string) {
		tc := connectCodes[int(which)%len(connectCodes)]
		ex := g.begin(httptest.NewRequest(http.MethodConnect, "x.example:443", nil), nil, true)
		ex.end(refused(tc.code, message))
		var raw bytes.Buffer
		if err := errorResponse(ex, nil).Write(&raw); err != nil {
			t.Fatal(err)
		}
		statusLine, _, _ := strings.Cut(raw.String(), "\r\n")
		for i := 0; i < len(statusLine); i++ {
			if c := statusLine[i]; c < 0x20 || c > 0x7e {
				t.Fatalf("status line %q has byte %#x outside printable ASCII", statusLine, c)
			}
		}
		resp, err := http.ReadResponse(bufio.NewReader(&raw), &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatalf("Go cannot read the reply to a CONNECT refused with %q: %v", message, err)
		}
		phrase, ok := strings.CutPrefix(resp.Status, strconv.Itoa(tc.status)+" ")
		if resp.StatusCode != tc.status || resp.Proto != "HTTP/1.1" || !ok {
			t.Fatalf("read %s %q, want HTTP/1.1 and status %d", resp.Proto, resp.Status, tc.status)
		}
		if len(phrase) > maxReasonPhrase || !strings.HasPrefix(phrase, string(tc.code)) {
			t.Fatalf("reason phrase %q: want it led by %s and at most %d bytes", phrase, tc.code, maxReasonPhrase)
		}
		if got := resp.Header.Get("X-Egressgw-Error"); got != string(tc.code) {
			t.Fatalf("X-Egressgw-Error %q, want %q", got, tc.code)
		}
		var e errorBody
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatalf("body is not the JSON error: %v", err)
		}
		if e.Error != tc.code || (utf8.ValidString(message) && e.Message != message) {
			t.Fatalf("body error %q message %q, want %q and the whole message %q", e.Error, e.Message, tc.code, message)
		}
	})
}
