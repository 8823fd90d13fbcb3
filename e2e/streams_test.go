package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Responses that do not end whole: an upstream that breaks off mid-body,
// a client that goes away, a reload that takes the destination away while
// a stream runs. The client must see a cut-short body, never a clean end;
// the audit line and the metrics must say which it was.

var streamer = credentials{tenant: "streamer", token: "streamer-token-7d2e91c4b0"}

// brokenOff is how many body bytes streamOrigin sends before breaking off.
const brokenOff = 1000

// streamOrigin answers, by path prefix:
//   - /cut: Content-Length 100000, brokenOff bytes, then it breaks off;
//   - /cut-chunked: brokenOff bytes of a chunked body, then it breaks off;
//   - /events: a server-sent event every 50 ms until the client goes away;
//   - anything else: reads the request body and says how long it was.
var streamOrigin = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	switch {
	case strings.HasPrefix(r.URL.Path, "/cut-chunked"):
		w.Write(make([]byte, brokenOff))
		rc.Flush()
		panic(http.ErrAbortHandler) // the connection ends, the body does not
	case strings.HasPrefix(r.URL.Path, "/cut"):
		w.Header().Set("Content-Length", "100000")
		w.Write(make([]byte, brokenOff))
		rc.Flush()
		panic(http.ErrAbortHandler)
	case strings.HasPrefix(r.URL.Path, "/events"):
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "data: event %d\n\n", i); err != nil || rc.Flush() != nil {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	default:
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "read %d bytes, %v", n, err)
	}
})

// streamFixture is a gateway that lets streamer reach streamOrigin over
// plain HTTP (a rule) and over HTTPS through inspecting connectors: secure
// through streams, gone through streams-gone.
type streamFixture struct {
	g                   *gateway
	dir                 string
	plain, secure, gone *upstream
	caFile              string         // the gateway's inspection CA
	caPool              *x509.CertPool // the same, for Go clients
}

func startStreamFixture(t *testing.T) *streamFixture {
	t.Helper()
	fx := &streamFixture{
		plain:  startHTTPUpstream(t, "127.0.0.1", streamOrigin),
		secure: startTLSUpstream(t, "127.0.0.1", streamOrigin),
		gone:   startTLSUpstream(t, "127.0.0.1", streamOrigin),
	}
	fx.dir = writeConfig(t, configFiles{
		"gateway.yaml": inspectingGatewayYAML(""),
		"connectors/streams.yaml": yamlf(`
			name: streams
			hosts: [%q]
			ports: [%d]
			inspect: true
		`, hostAPI, fx.secure.port),
		"connectors/streams-gone.yaml": yamlf(`
			name: streams-gone
			hosts: [%q]
			ports: [%d]
			inspect: true
		`, hostAPI, fx.gone.port),
		"connectors/streams-narrow.yaml": yamlf(`
			name: streams-narrow
			hosts: [%q]
			ports: [%d]
			paths: ["/narrow/"]
			inspect: true
		`, hostAPI, fx.secure.port),
		"tenants/streamer.yaml": fx.tenant(true),
	})
	if res := egressgw(t, "ca", "init", "--out", filepath.Join(fx.dir, "ca")); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	fx.caFile = filepath.Join(fx.dir, "ca", "ca.pem")
	pem, err := os.ReadFile(fx.caFile)
	if err != nil {
		t.Fatal(err)
	}
	fx.caPool = x509.NewCertPool()
	fx.caPool.AppendCertsFromPEM(pem)
	fx.g = newGateway(t)
	fx.g.start(t, "--config", fx.dir, "--log-format", "json")
	return fx
}

// tenant is streamer's tenant file: allowed to reach all three upstreams,
// or none: its rule then names another host, streams-gone is no longer
// among its connectors, and streams-narrow allows tunnels to secure but
// only requests under /narrow/ inside them, so what a reload ends there
// is the response, not the tunnel.
func (fx *streamFixture) tenant(allowed bool) string {
	if !allowed {
		return tenantYAML(streamer, "connectors: [streams-narrow]\n"+allowRule("plain", []string{hostOther}, fx.plain.port))
	}
	return tenantYAML(streamer, "connectors: [streams, streams-gone]\n"+allowRule("plain", []string{hostAPI}, fx.plain.port))
}

// client is a Go client through the gateway as streamer, trusting the
// gateway's CA for inspected HTTPS.
func (fx *streamFixture) client(t *testing.T) *http.Client {
	proxy := &url.URL{Scheme: "http", Host: fx.g.proxyAddr, User: url.UserPassword(streamer.tenant, streamer.token)}
	transport := &http.Transport{Proxy: http.ProxyURL(proxy), TLSClientConfig: &tls.Config{RootCAs: fx.caPool}}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: scaled(requestTimeout)}
}

// curl runs curl through the gateway as streamer and returns its result.
func (fx *streamFixture) curl(t *testing.T, target string, extra ...string) commandResult {
	t.Helper()
	curl := lookPathOrSkip(t, "curl")
	args := append([]string{"-sS", "--max-time", "20", "-o", "/dev/null", "--cacert", fx.caFile,
		"-x", "http://" + fx.g.proxyAddr, "--proxy-user", streamer.tenant + ":" + streamer.token}, extra...)
	return run(t, clientEnv(), "", curl, append(args, target)...)
}

// upstreamOf is the upstream the scheme names.
func (fx *streamFixture) upstreamOf(scheme string) *upstream {
	if scheme == "https" {
		return fx.secure
	}
	return fx.plain
}

// requests is the number of streamer's requests counted with code.
func (fx *streamFixture) requests(t *testing.T, code string) float64 {
	t.Helper()
	samples, err := fx.g.metrics()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := sumMetric(samples, "egressgw_requests_total", map[string]string{"tenant": streamer.tenant, "code": code})
	return n
}

// expectAudit waits for the audit line of path and checks its code,
// status and bytes (bytesDown < 0: any).
func (fx *streamFixture) expectAudit(t *testing.T, path, code string, status int, bytesDown float64) map[string]any {
	t.Helper()
	rec := fx.g.waitAudit(t, auditWith("tenant", streamer.tenant, "path", path))
	if rec["code"] != code || auditNumber(rec, "status") != float64(status) || (bytesDown >= 0 && auditNumber(rec, "bytes_down") != bytesDown) {
		t.Errorf("audit line of %s: %v\nwant code %s, status %d, bytes_down %v", path, rec, code, status, bytesDown)
	}
	return rec
}

// An upstream that breaks off mid-body: the client gets the bytes that
// came and then a truncated body (curl exit 18, or 92 for the reset of an
// HTTP/2 stream; Go's unexpected EOF is in
// the proxy package's tests), plain and inside an inspected tunnel;
// upstream_failed_midway with the status the client got, in the audit
// line and the metrics.
func TestResponseBrokenOffMidway(t *testing.T) {
	t.Parallel()
	fx := startStreamFixture(t)
	cases := 0
	for _, scheme := range []string{"http", "https"} {
		for _, kind := range []string{"cut", "cut-chunked"} {
			up := fx.upstreamOf(scheme)
			t.Run(scheme+" "+kind+" curl", func(t *testing.T) {
				path := "/" + kind + "/curl-" + scheme
				res := fx.curl(t, up.url(hostAPI, path), "-w", "%{http_code} %{size_download}")
				// Inside the inspected tunnel curl speaks HTTP/2, where the
				// cut is a stream reset: exit 92 (stream not closed cleanly).
				wantExit := 18
				if scheme == "https" {
					wantExit = 92
				}
				if res.exitCode != wantExit || res.stdout != fmt.Sprintf("200 %d", brokenOff) {
					t.Errorf("curl exit %d, %q; want exit %d (transfer cut short) after 200 and %d bytes\n%s",
						res.exitCode, res.stdout, wantExit, brokenOff, res.stderr)
				}
				fx.expectAudit(t, path, "upstream_failed_midway", http.StatusOK, brokenOff)
			})
			cases++
		}
	}
	if n := fx.requests(t, "upstream_failed_midway"); n != float64(cases) {
		t.Errorf("egressgw_requests_total{code=upstream_failed_midway} = %v, want %d", n, cases)
	}
}

// A client that goes away mid-request, uploading or reading, is
// client_closed: never an upstream failure.
func TestClientGoesAwayMidRequest(t *testing.T) {
	t.Parallel()
	fx := startStreamFixture(t)
	upload := func(t *testing.T, conn io.ReadWriteCloser, target string) {
		t.Helper()
		u, _ := url.Parse(target)
		head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 100000\r\n", target, u.Host)
		if u.Scheme == "http" {
			head += "Proxy-Authorization: " + streamer.header() + "\r\n"
		} else {
			head = strings.Replace(head, target, u.Path, 1)
		}
		if _, err := io.WriteString(conn, head+"\r\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(make([]byte, brokenOff)); err != nil {
			t.Fatal(err)
		}
		// The upstream has the first bytes before the client leaves.
		eventually(t, 5*time.Second, func() error {
			if len(fx.upstreamOf(u.Scheme).requestsTo(u.Path)) == 0 {
				return errors.New("the upload has not reached the upstream")
			}
			return nil
		})
		conn.Close()
	}
	t.Run("plain upload broken off", func(t *testing.T) {
		upload(t, fx.g.dial(t), fx.plain.url(hostAPI, "/upload/plain"))
		fx.expectAudit(t, "/upload/plain", "client_closed", 0, 0)
	})
	// The inspected upload and stream are in the proxy package's tests.
	for _, scheme := range []string{"http"} {
		t.Run(scheme+" stream left mid-way", func(t *testing.T) {
			path := "/events/left-" + scheme
			resp, err := fx.client(t).Get(fx.upstreamOf(scheme).url(hostAPI, path))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
				t.Fatalf("first event: %v", err)
			}
			resp.Body.Close() // an unfinished body: Go closes the connection
			fx.expectAudit(t, path, "client_closed", http.StatusOK, -1)
		})
	}
	if n := fx.requests(t, "client_closed"); n != 2 {
		t.Errorf("egressgw_requests_total{code=client_closed} = %v, want 2", n)
	}
	for _, code := range []string{"upstream_unreachable", "upstream_timeout", "upstream_failed_midway"} {
		if n := fx.requests(t, code); n != 0 {
			t.Errorf("egressgw_requests_total{code=%s} = %v: a client that went away was counted as an upstream failure", code, n)
		}
	}
}

// Streams to a destination a saved edit no longer allows end within the
// reload window, plain and inspected alike: the client sees its body cut
// short, the audit line says revoked.
func TestReloadEndsRevokedStreams(t *testing.T) {
	t.Parallel()
	fx := startStreamFixture(t)
	type stream struct {
		path  string
		ended chan error
	}
	var streams []stream
	for _, target := range []struct {
		name string
		up   *upstream
	}{
		{"plain", fx.plain},
		{"inspected", fx.secure},              // the tunnel stays, the response ends
		{"inspected-tunnel-revoked", fx.gone}, // the tunnel ends, and with it the response
	} {
		s := stream{path: "/events/revoked-" + target.name, ended: make(chan error, 1)}
		resp, err := fx.client(t).Get(target.up.url(hostAPI, s.path))
		if err != nil {
			t.Fatal(err)
		}
		events := bufio.NewReader(resp.Body)
		if _, err := events.ReadString('\n'); err != nil {
			t.Fatalf("%s: first event: %v", s.path, err)
		}
		go func() {
			defer resp.Body.Close()
			for {
				if _, err := events.ReadString('\n'); err != nil {
					s.ended <- err
					return
				}
			}
		}()
		streams = append(streams, s)
	}
	// And curl, reading the plain stream as it comes.
	curlDone := make(chan commandResult, 1)
	go func() { curlDone <- fx.curl(t, fx.plain.url(hostAPI, "/events/revoked-curl"), "-N") }()
	eventually(t, 5*time.Second, func() error {
		if len(fx.plain.requestsTo("/events/revoked-curl")) == 0 {
			return errors.New("curl's stream has not started")
		}
		return nil
	})

	writeFile(t, filepath.Join(fx.dir, "tenants", "streamer.yaml"), fx.tenant(false))
	deadline := time.After(scaled(reloadWindow))
	for _, s := range streams {
		select {
		case err := <-s.ended:
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%s ended with %v, want it cut short (unexpected EOF)", s.path, err)
			}
		case <-deadline:
			t.Fatalf("%s still streams %v after the edit", s.path, scaled(reloadWindow))
		}
		rec := fx.expectAudit(t, s.path, "revoked", http.StatusOK, -1)
		if reason, _ := rec["reason"].(string); rec["decision"] != "deny" || !strings.Contains(reason, "reload") {
			t.Errorf("audit line of %s does not say why it ended: %v", s.path, rec)
		}
	}
	select {
	case res := <-curlDone:
		if res.exitCode != 18 {
			t.Errorf("curl exit %d, want 18 (transfer closed with data remaining)\n%s", res.exitCode, res.stderr)
		}
	case <-deadline:
		t.Fatalf("curl's stream still runs %v after the edit", scaled(reloadWindow))
	}
	fx.expectAudit(t, "/events/revoked-curl", "revoked", http.StatusOK, -1)
	// The four streams, and the one tunnel streams-gone no longer allows.
	if n := fx.requests(t, "revoked"); n != 5 {
		t.Errorf("egressgw_requests_total{code=revoked} = %v, want 5", n)
	}
}
