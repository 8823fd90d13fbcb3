package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/redaction"
)

// h2Echo answers with the protocol it was spoken to in, the credential
// it got and the TE header, and under /v1/trailer with trailers after the
// body (gRPC's grpc-status among them); under /v1/trailers-only with a
// head and no body, as a gRPC error is answered.
var h2Echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Upstream-Proto", r.Proto)
	w.Header().Set("X-Echo-Te", r.Header.Get("Te"))
	w.Header().Set("X-Echo-Authorization", r.Header.Get("Authorization"))
	switch r.URL.Path {
	case "/v1/trailer":
		w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
		io.WriteString(w, "body before trailers")
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set("Grpc-Message", "fine, "+r.Header.Get("Authorization"))
		return
	case "/v1/grpc-echo": // one gRPC message holding the credential, then grpc-status
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.Write(grpcFrame("you sent " + r.Header.Get("Authorization")))
		w.Header().Set("Grpc-Status", "0")
		return
	case "/v1/stream", "/v1/held": // a first piece, then nothing until the client goes
		io.WriteString(w, "first piece\n")
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
		return
	case "/v1/trailers-only":
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "5")
		w.WriteHeader(http.StatusOK)
		return
	}
	io.WriteString(w, "served "+r.Method+" "+r.URL.Path)
})

// pathH2Fixture is a gateway inspecting tunnels to an upstream that
// speaks HTTP/2 and to one that speaks HTTP/1.1 only, both behind
// connector api (inject, methods, paths).
type pathH2Fixture struct {
	g      *pathGateway
	h2     *pathUpstream
	h1only *pathUpstream
	client *http.Client
}

func startPathH2Fixture(t *testing.T) *pathH2Fixture {
	t.Helper()
	fx := &pathH2Fixture{
		h2:     startPathUpstreamH2(t, h2Echo),
		h1only: startPathUpstream(t, "127.0.0.1", true, h2Echo),
	}
	fx.g = startPathGateway(t, pathInspecting+"secrets:\n  api_token: { file: secrets/api_token }\n", pathInspectingFiles(t, map[string]string{
		"secrets/api_token": pathInjected,
		"connectors/api.yaml": fmt.Sprintf(`name: api
hosts: [%q, %q]
ports: [%d, %d]
methods: [GET, POST]
paths: ["/v1/"]
inspect: true
inject:
  headers: { Authorization: "Bearer ${secret:api_token}" }
`, zoneAPI, zoneSub, fx.h2.port, fx.h1only.port),
		"tenants/inspector.yaml": pathInspector.yaml("connectors: [api]\n"),
	}))
	fx.client = fx.g.h2Client(t, pathInspector)
	return fx
}

// startPathUpstreamH2 is startPathUpstream over TLS offering h2 by ALPN.
func startPathUpstreamH2(t *testing.T, handler http.Handler) *pathUpstream {
	t.Helper()
	ln := listenOrSkip(t, "127.0.0.1")
	u := &pathUpstream{ip: "127.0.0.1", port: ln.Addr().(*net.TCPAddr).Port, scheme: "https"}
	u.server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, pathSeen{Method: r.Method, Host: r.Host, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone()})
		u.mu.Unlock()
		handler.ServeHTTP(w, r)
	}))
	u.server.Listener.Close()
	u.server.Listener = ln
	u.server.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			u.conns.Add(1)
		}
	}
	u.server.EnableHTTP2 = true
	u.server.TLS = &tls.Config{Certificates: []tls.Certificate{zoneCertificate(t)}}
	u.server.StartTLS()
	t.Cleanup(u.server.Close)
	return u
}

// h2Client is a Go client that asks for HTTP/2 inside its tunnels
// through the gateway, trusting the gateway's leaves.
func (g *pathGateway) h2Client(t *testing.T, c pathTenant) *http.Client {
	proxyURL := &url.URL{Scheme: "http", Host: g.addr, User: url.UserPassword(c.id, c.token)}
	transport := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: zoneRoots(t)}, ForceAttemptHTTP2: true}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: pathGuard}
}

// h2Do sends req and reports whether it went on a connection already
// open (one tunnel for all of a test's streams).
func h2Do(t *testing.T, client *http.Client, req *http.Request) (*http.Response, bool) {
	t.Helper()
	var reused bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
	}))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp, reused
}

func TestPathInspectedH2(t *testing.T) {
	t.Parallel()
	fx := startPathH2Fixture(t)
	get := func(t *testing.T, u *pathUpstream, host, path string) (*http.Response, bool) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, u.url(host, path), nil)
		return h2Do(t, fx.client, req)
	}

	t.Run("the client gets HTTP/2 inside the tunnel, and so does the upstream", func(t *testing.T) {
		resp, _ := get(t, fx.h2, zoneAPI, "/v1/echo")
		body := pathBody(t, resp)
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			t.Fatalf("status %d over %s, body %q; want 200 over HTTP/2", resp.StatusCode, resp.Proto, body)
		}
		if got := resp.Header.Get("X-Upstream-Proto"); got != "HTTP/2.0" {
			t.Errorf("the upstream was spoken to in %q, want HTTP/2.0", got)
		}
		if resp.Header.Get("X-Request-Id") == "" {
			t.Errorf("no X-Request-Id on the stream's response")
		}
	})

	t.Run("a stream may go out as HTTP/1.1 to an upstream without h2", func(t *testing.T) {
		resp, _ := get(t, fx.h1only, zoneSub, "/v1/echo")
		body := pathBody(t, resp)
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || resp.Header.Get("X-Upstream-Proto") != "HTTP/1.1" {
			t.Fatalf("status %d over %s, upstream %q, body %q; want 200 over HTTP/2 from an HTTP/1.1 upstream",
				resp.StatusCode, resp.Proto, resp.Header.Get("X-Upstream-Proto"), body)
		}
	})

	t.Run("methods and paths are refused per stream, and the connection serves on", func(t *testing.T) {
		if resp, _ := get(t, fx.h2, zoneAPI, "/v1/warm"); pathBody(t, resp) == "" {
			t.Fatal("no body on the warm-up stream")
		}
		for _, c := range []struct {
			method, path string
			body         io.Reader
		}{
			{http.MethodDelete, "/v1/items", nil},
			{http.MethodGet, "/v2/items", nil},
			{http.MethodPost, "/v2/upload", strings.NewReader(strings.Repeat("x", 64<<10))}, // refused before its body is read
		} {
			before := len(fx.h2.requestsTo(c.path))
			req, _ := http.NewRequest(c.method, fx.h2.url(zoneAPI, c.path), c.body)
			resp, reused := h2Do(t, fx.client, req)
			if !reused {
				t.Errorf("%s %s went on a new connection", c.method, c.path)
			}
			if resp.ProtoMajor != 2 {
				t.Errorf("%s %s answered over %s", c.method, c.path, resp.Proto)
			}
			assertPathRefusal(t, resp, http.StatusForbidden, "destination_not_allowed")
			if after := len(fx.h2.requestsTo(c.path)); after != before {
				t.Errorf("%s %s reached the upstream", c.method, c.path)
			}
			// The next stream goes on the same connection: a refusal ends
			// its stream, not the tunnel.
			resp, reused = get(t, fx.h2, zoneAPI, "/v1/after-refusal")
			if body := pathBody(t, resp); resp.StatusCode != http.StatusOK || !reused {
				t.Errorf("after %s %s: status %d, reused %v, body %q; want 200 on the same connection", c.method, c.path, resp.StatusCode, reused, body)
			}
		}
	})

	t.Run("each stream gets the credential, and the sandbox never sees it", func(t *testing.T) {
		var wg sync.WaitGroup
		const streams = 8
		errs := make(chan error, streams)
		for i := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				path := fmt.Sprintf("/v1/concurrent/%d", i)
				resp, err := fx.client.Get(fx.h2.url(zoneAPI, path))
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				if echoed := resp.Header.Get("X-Echo-Authorization"); resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || strings.Contains(echoed, pathInjected) {
					errs <- fmt.Errorf("%s: status %d over %s, echoed credential %q", path, resp.StatusCode, resp.Proto, echoed)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		for i := range streams {
			seen := fx.h2.requestsTo(fmt.Sprintf("/v1/concurrent/%d", i))
			if len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer "+pathInjected {
				t.Errorf("stream %d: the upstream did not get the injected credential: %+v", i, seen)
			}
		}
		for _, rec := range fx.g.audit.records() {
			if path, _ := rec["path"].(string); strings.HasPrefix(path, "/v1/concurrent/") && rec["decision"] != "allow" {
				t.Errorf("audit line of %s: %v", path, rec)
			}
		}
		for i := range streams {
			fx.g.audit.wait(t, "path", fmt.Sprintf("/v1/concurrent/%d", i), "decision", "allow", "scheme", "https")
		}
	})

	t.Run("TE: trailers reaches the upstream and trailers come back, scrubbed", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, fx.h2.url(zoneAPI, "/v1/trailer"), nil)
		req.Header.Set("Te", "trailers")
		resp, _ := h2Do(t, fx.client, req)
		body := pathBody(t, resp)
		if body != "body before trailers" || resp.Header.Get("X-Echo-Te") != "trailers" || resp.ProtoMajor != 2 || resp.Header.Get("X-Upstream-Proto") != "HTTP/2.0" {
			t.Errorf("body %q over %s, TE at the upstream %q over %q; want the body and TE: trailers, HTTP/2 both sides",
				body, resp.Proto, resp.Header.Get("X-Echo-Te"), resp.Header.Get("X-Upstream-Proto"))
		}
		if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
			t.Errorf("trailer Grpc-Status %q, want 0 (trailers %v)", got, resp.Trailer)
		}
		if got := resp.Trailer.Get("Grpc-Message"); strings.Contains(got, pathInjected) || !strings.Contains(got, "[REDACTED:secret]") {
			t.Errorf("trailer Grpc-Message %q: the injected secret must be scrubbed", got)
		}
	})

	t.Run("a trailers-only answer keeps its status in the head", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, fx.h2.url(zoneAPI, "/v1/trailers-only"), strings.NewReader("\x00\x00\x00\x00\x00"))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		resp, _ := h2Do(t, fx.client, req)
		body := pathBody(t, resp)
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || resp.Header.Get("Grpc-Status") != "5" || body != "" {
			t.Errorf("status %d over %s, grpc-status %q, body %q; want 200 over HTTP/2, 5 and no body", resp.StatusCode, resp.Proto, resp.Header.Get("Grpc-Status"), body)
		}
	})

	t.Run("gRPC to an upstream without h2 is refused before it is sent", func(t *testing.T) {
		before := len(fx.h1only.requestsTo("/v1/grpc"))
		req, _ := http.NewRequest(http.MethodPost, fx.h1only.url(zoneSub, "/v1/grpc"), strings.NewReader("\x00\x00\x00\x00\x00"))
		req.Header.Set("Content-Type", "application/grpc+proto")
		req.Header.Set("Te", "trailers")
		resp, _ := h2Do(t, fx.client, req)
		e := assertPathRefusal(t, resp, http.StatusBadGateway, "upstream_unreachable")
		if !strings.Contains(e.Message, "HTTP/2") || !strings.Contains(e.Message, "gRPC") {
			t.Errorf("message %q does not say the upstream lacks HTTP/2 for gRPC", e.Message)
		}
		if after := len(fx.h1only.requestsTo("/v1/grpc")); after != before {
			t.Errorf("the gRPC request reached the HTTP/1.1 upstream")
		}
	})

	t.Run("a CONNECT stream is refused", func(t *testing.T) {
		before := fx.h2.reached()
		req, _ := http.NewRequest(http.MethodConnect, fx.h2.url(zoneAPI, ""), nil)
		req.Host = fx.h2.authority(zoneAPI)
		resp, _ := h2Do(t, fx.client, req)
		if resp.ProtoMajor != 2 {
			t.Errorf("answered over %s, want HTTP/2", resp.Proto)
		}
		e := assertPathRefusal(t, resp, http.StatusBadRequest, "bad_request")
		if !strings.Contains(e.Message, "CONNECT") {
			t.Errorf("message %q does not name CONNECT", e.Message)
		}
		if after := fx.h2.reached(); after != before {
			t.Errorf("the upstream was reached")
		}
	})
}

// reloadPath applies a policy built as serve builds it, from
// gatewayExtra and files: what a saved config change does.
func reloadPath(t *testing.T, g *pathGateway, gatewayExtra string, files map[string]string) {
	t.Helper()
	fsys := fstest.MapFS{
		"gateway.yaml": {Data: []byte(fmt.Sprintf("network:\n  allow_cidrs: [\"127.0.0.1/32\"]\n  dns_servers: [%q]\n", g.dns) + g.network + gatewayExtra)},
	}
	for name, content := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(content)}
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatalf("loading the policy: %v", err)
	}
	g.Apply(snap)
}

// h2StreamStarted opens a GET of path as a stream of client's connection
// and reads the first piece of its body.
func h2StreamStarted(t *testing.T, client *http.Client, u *pathUpstream, path string) *http.Response {
	t.Helper()
	resp, err := client.Get(u.url(zoneAPI, path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.ProtoMajor != 2 {
		t.Fatalf("%s answered over %s, want HTTP/2", path, resp.Proto)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "first piece\n" {
		t.Fatalf("%s: read %q, %v; want the first piece", path, line, err)
	}
	return resp
}

func TestPathInspectedH2Revocation(t *testing.T) {
	t.Parallel()
	upstream := startPathUpstreamH2(t, h2Echo)
	connector := func(paths string) string {
		return fmt.Sprintf("name: api\nhosts: [%q]\nports: [%d]\npaths: [%s]\ninspect: true\n", zoneAPI, upstream.port, paths)
	}
	files := pathInspectingFiles(t, map[string]string{
		"connectors/api.yaml":    connector(`"/v1/"`),
		"tenants/inspector.yaml": pathInspector.yaml("connectors: [api]\n"),
	})
	g := startPathGateway(t, pathInspecting, files)
	client := g.h2Client(t, pathInspector)

	t.Run("a reload that no longer allows a path ends its stream, not the connection", func(t *testing.T) {
		stream := h2StreamStarted(t, client, upstream, "/v1/stream")
		files["connectors/api.yaml"] = connector(`"/v1/held", "/v1/echo"`)
		reloadPath(t, g, pathInspecting, files)
		if _, err := io.ReadAll(stream.Body); err == nil {
			t.Fatal("the revoked stream ended as if complete")
		}
		g.audit.wait(t, "path", "/v1/stream", "code", "revoked")
		req, _ := http.NewRequest(http.MethodGet, upstream.url(zoneAPI, "/v1/echo"), nil)
		resp, reused := h2Do(t, client, req)
		if body := pathBody(t, resp); resp.StatusCode != http.StatusOK || !reused {
			t.Errorf("after the revocation: status %d, reused %v, body %q; want 200 on the same connection", resp.StatusCode, reused, body)
		}
	})

	t.Run("a reload that no longer allows the host closes the tunnel and all its streams", func(t *testing.T) {
		held := h2StreamStarted(t, client, upstream, "/v1/held")
		files["connectors/api.yaml"] = fmt.Sprintf("name: api\nhosts: [%q]\nports: [%d]\ninspect: true\n", zoneOther, upstream.port)
		reloadPath(t, g, pathInspecting, files)
		if _, err := io.ReadAll(held.Body); err == nil {
			t.Fatal("a stream of the revoked tunnel ended as if complete")
		}
		g.audit.wait(t, "method", "CONNECT", "host", zoneAPI, "code", "revoked")
	})
}

func TestPathInspectedGRPC(t *testing.T) {
	t.Parallel()
	upstream := startPathUpstreamH2(t, h2Echo)
	connector := func(name, host, extra string) string {
		return fmt.Sprintf("name: %s\nhosts: [%q]\nports: [%d]\ninspect: true\n", name, host, upstream.port) + extra
	}
	g := startPathGateway(t, pathInspecting+`secrets:
  api_token: { file: secrets/api_token }
redaction:
  profiles:
    lenient: { detectors: [email], headers: [X-Contact], on_unsupported_body: pass }
    strict: { detectors: [email], on_unsupported_body: block }
`, pathInspectingFiles(t, map[string]string{
		"secrets/api_token": pathInjected,
		"connectors/api.yaml": connector("api", zoneAPI,
			"inject:\n  headers: { Authorization: \"Bearer ${secret:api_token}\" }\nredact: { request: [lenient] }\n"),
		"connectors/hooked.yaml":   connector("hooked", zoneSub, "hooks: { request: hooks/stamp.tengo }\n"),
		"connectors/blocking.yaml": connector("blocking", zoneReadOnly, "redact: { response: [strict] }\n"),
		"hooks/stamp.tengo":        "request.headers[\"X-Stamp\"] = [\"stamped\"]\n",
		"tenants/inspector.yaml":   pathInspector.yaml("connectors: [api, hooked, blocking]\n"),
	}))
	client := g.h2Client(t, pathInspector)
	call := func(t *testing.T, host, path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, upstream.url(host, path), bytes.NewReader(grpcFrame("hello")))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		req.Header.Set("Grpc-Accept-Encoding", "gzip")
		req.Header.Set("X-Contact", "alice@example.com")
		resp, _ := h2Do(t, client, req)
		return resp
	}

	t.Run("messages are scrubbed one by one and keep their framing", func(t *testing.T) {
		resp := call(t, zoneAPI, "/v1/grpc-echo")
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, %v", resp.StatusCode, err)
		}
		if got := grpcMessages(t, body); len(got) != 1 || got[0] != "you sent Bearer "+redaction.SecretMask {
			t.Errorf("messages %q, want the credential scrubbed inside one well-framed message", got)
		}
		if resp.Trailer.Get("Grpc-Status") != "0" {
			t.Errorf("trailers %v, want grpc-status 0", resp.Trailer)
		}
		seen := upstream.requestsTo("/v1/grpc-echo")
		if len(seen) != 1 {
			t.Fatalf("the upstream saw %d calls", len(seen))
		}
		if h := seen[0].Header; h.Get("Grpc-Accept-Encoding") != "" || h.Get("Te") != "trailers" || strings.Contains(h.Get("X-Contact"), "alice@") {
			t.Errorf("upstream headers %v: want no grpc-accept-encoding (a compressed answer could not be scrubbed), TE: trailers, X-Contact redacted", h)
		}
	})

	t.Run("a connector with hooks refuses gRPC before it is sent", func(t *testing.T) {
		before := len(upstream.requestsTo("/v1/hooked"))
		e := assertPathRefusal(t, call(t, zoneSub, "/v1/hooked"), http.StatusBadGateway, "hook_failed")
		if !strings.Contains(e.Message, "gRPC") {
			t.Errorf("message %q does not say why", e.Message)
		}
		if len(upstream.requestsTo("/v1/hooked")) != before {
			t.Error("the call reached the upstream")
		}
	})

	t.Run("a profile that blocks unparsed bodies refuses gRPC before it is sent", func(t *testing.T) {
		before := len(upstream.requestsTo("/v1/blocked"))
		e := assertPathRefusal(t, call(t, zoneReadOnly, "/v1/blocked"), http.StatusRequestEntityTooLarge, "body_too_large")
		if !strings.Contains(e.Message, "strict") {
			t.Errorf("message %q does not name the profile", e.Message)
		}
		if len(upstream.requestsTo("/v1/blocked")) != before {
			t.Error("the call reached the upstream")
		}
	})
}

// A stream whose body stalls is answered on its own: the body's bound is
// the stream's, so the connection's other streams go on.
func TestPathInspectedH2BodyStall(t *testing.T) {
	t.Parallel()
	upstream := startPathUpstreamH2(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		io.WriteString(w, "served "+r.URL.Path)
	}))
	g := startPathGateway(t, pathInspecting+"limits:\n  request_body_timeout: 300ms\n", pathInspectingFiles(t, map[string]string{
		"connectors/api.yaml":    fmt.Sprintf("name: api\nhosts: [%q]\nports: [%d]\ninspect: true\n", zoneAPI, upstream.port),
		"tenants/inspector.yaml": pathInspector.yaml("connectors: [api]\n"),
	}))
	client := g.h2Client(t, pathInspector)
	warm, _ := h2Do(t, client, h2Request(t, http.MethodGet, upstream.url(zoneAPI, "/warm"), nil))
	pathBody(t, warm)

	body, stall := io.Pipe()
	defer stall.Close()
	go stall.Write([]byte("the start of a body that never ends"))
	resp, reused := h2Do(t, client, h2Request(t, http.MethodPost, upstream.url(zoneAPI, "/stalled"), body))
	if !reused || resp.ProtoMajor != 2 {
		t.Errorf("the stalled stream went on a new connection (reused %v) over %s", reused, resp.Proto)
	}
	e := assertPathRefusal(t, resp, http.StatusBadRequest, "bad_request")
	if !strings.Contains(e.Message, "request_body_timeout") {
		t.Errorf("message %q does not name request_body_timeout", e.Message)
	}
	after, reused := h2Do(t, client, h2Request(t, http.MethodGet, upstream.url(zoneAPI, "/after"), nil))
	if got := pathBody(t, after); after.StatusCode != http.StatusOK || !reused || got != "served /after" {
		t.Errorf("after the stall: status %d, reused %v, body %q; want 200 on the same connection", after.StatusCode, reused, got)
	}
}

func h2Request(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// What refuses one request refuses one stream: a stream naming another
// host, or one over the connector's rate, gets the gateway's reply and
// nothing reaches the upstream, while the connection serves on.
func TestPathInspectedH2StreamRefusals(t *testing.T) {
	t.Parallel()
	upstream := startPathUpstreamH2(t, h2Echo)
	g := startPathGateway(t, pathInspecting, pathInspectingFiles(t, map[string]string{
		"connectors/api.yaml": fmt.Sprintf("name: api\nhosts: [%q, %q]\nports: [%d]\ninspect: true\nquota: { requests_per_second: 0.001, burst: 3 }\n",
			zoneAPI, zoneOther, upstream.port),
		"tenants/inspector.yaml": pathInspector.yaml("connectors: [api]\n"),
	}))
	client := g.h2Client(t, pathInspector)
	first, _ := h2Do(t, client, h2Request(t, http.MethodGet, upstream.url(zoneAPI, "/v1/first"), nil))
	if body := pathBody(t, first); first.StatusCode != http.StatusOK || first.ProtoMajor != 2 {
		t.Fatalf("first stream: status %d over %s, body %q", first.StatusCode, first.Proto, body)
	}

	t.Run("a stream whose :authority names another host", func(t *testing.T) {
		before := len(upstream.requestsTo("/v1/elsewhere"))
		req := h2Request(t, http.MethodGet, upstream.url(zoneAPI, "/v1/elsewhere"), nil)
		req.Host = upstream.authority(zoneOther) // allowed too, but not the tunnel's host
		resp, reused := h2Do(t, client, req)
		if !reused || resp.ProtoMajor != 2 {
			t.Errorf("the refusal came over %s on a new connection (reused %v), want a stream of the tunnel's", resp.Proto, reused)
		}
		assertPathRefusal(t, resp, http.StatusBadRequest, "bad_request")
		if len(upstream.requestsTo("/v1/elsewhere")) != before {
			t.Error("the stream reached the upstream")
		}
	})

	t.Run("a stream over the rate", func(t *testing.T) {
		// The burst of three: the CONNECT took one, the first stream one,
		// the stream refused above none (refused before admission), this
		// one the last.
		ok, _ := h2Do(t, client, h2Request(t, http.MethodGet, upstream.url(zoneAPI, "/v1/second"), nil))
		if body := pathBody(t, ok); ok.StatusCode != http.StatusOK {
			t.Fatalf("the stream within the burst: status %d, body %q", ok.StatusCode, body)
		}
		before := len(upstream.requestsTo("/v1/over"))
		resp, reused := h2Do(t, client, h2Request(t, http.MethodGet, upstream.url(zoneAPI, "/v1/over"), nil))
		if !reused || resp.ProtoMajor != 2 {
			t.Errorf("the refusal came over %s on a new connection (reused %v), want a stream of the tunnel's", resp.Proto, reused)
		}
		assertPathRefusal(t, resp, http.StatusTooManyRequests, "rate_limited")
		if resp.Header.Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
		if len(upstream.requestsTo("/v1/over")) != before {
			t.Error("the stream reached the upstream")
		}
	})
}
