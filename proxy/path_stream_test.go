package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

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

var pathStreamer = pathTenant{"streamer", "streamer-token-7d2e91c4b0"}

// pathStreamFixture is a gateway that lets streamer reach streamOrigin
// over plain HTTP (a rule) and over HTTPS through an inspecting connector.
type pathStreamFixture struct {
	g             *pathGateway
	plain, secure *pathUpstream
}

func startPathStreamFixture(t *testing.T) *pathStreamFixture {
	t.Helper()
	fx := &pathStreamFixture{
		plain:  startPathUpstream(t, "127.0.0.1", false, streamOrigin),
		secure: startPathUpstream(t, "127.0.0.1", true, streamOrigin),
	}
	fx.g = startPathGateway(t, pathInspecting, pathInspectingFiles(t, map[string]string{
		"connectors/streams.yaml": fmt.Sprintf("name: streams\nhosts: [%q]\nports: [%d]\ninspect: true\n", zoneAPI, fx.secure.port),
		"tenants/streamer.yaml":   pathStreamer.yaml("connectors: [streams]\n" + pathRule("plain", []string{zoneAPI}, fx.plain.port)),
	}))
	return fx
}

// upstreamOf is the upstream the scheme names.
func (fx *pathStreamFixture) upstreamOf(scheme string) *pathUpstream {
	if scheme == "https" {
		return fx.secure
	}
	return fx.plain
}

// requests is the number of streamer's requests counted with code.
func (fx *pathStreamFixture) requests(t *testing.T, code string) float64 {
	t.Helper()
	n, _ := fx.g.metric(t, "egressgw_requests_total", map[string]string{"tenant": pathStreamer.id, "code": code})
	return n
}

// expectAudit waits for the audit line of path and checks its code,
// status and bytes (bytesDown < 0: any).
func (fx *pathStreamFixture) expectAudit(t *testing.T, path, code string, status int, bytesDown float64) {
	t.Helper()
	rec := fx.g.audit.wait(t, "tenant", pathStreamer.id, "path", path)
	if rec["code"] != code || auditNumber(rec, "status") != float64(status) || (bytesDown >= 0 && auditNumber(rec, "bytes_down") != bytesDown) {
		t.Errorf("audit line of %s: %v\nwant code %s, status %d, bytes_down %v", path, rec, code, status, bytesDown)
	}
}

// Moved from e2e/streams_test.go (Go's client; curl stays there): an
// upstream that breaks off mid-body leaves the client the bytes that came
// and then a truncated body, plain and inside an inspected tunnel;
// upstream_failed_midway with the status the client got, in the audit
// line and the metrics.
func TestPathResponseBrokenOffMidway(t *testing.T) {
	t.Parallel()
	fx := startPathStreamFixture(t)
	client := fx.g.client(t, pathStreamer, zoneRoots(t))
	cases := 0
	for _, scheme := range []string{"http", "https"} {
		for _, kind := range []string{"cut", "cut-chunked"} {
			up := fx.upstreamOf(scheme)
			t.Run(scheme+" "+kind+" go", func(t *testing.T) {
				path := "/" + kind + "/go-" + scheme
				resp, err := client.Get(up.url(zoneAPI, path))
				if err != nil {
					t.Fatalf("GET: %v", err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || len(body) != brokenOff || !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("status %d, %d bytes, %v; want 200, %d bytes, then unexpected EOF", resp.StatusCode, len(body), err, brokenOff)
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

// Moved from e2e/streams_test.go: a client that goes away mid-request,
// uploading or reading, is client_closed: never an upstream failure.
func TestPathClientGoesAwayMidRequest(t *testing.T) {
	t.Parallel()
	fx := startPathStreamFixture(t)
	upload := func(t *testing.T, conn io.ReadWriteCloser, target string) {
		t.Helper()
		u, _ := url.Parse(target)
		head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 100000\r\n", target, u.Host)
		if u.Scheme == "http" {
			head += "Proxy-Authorization: " + pathStreamer.auth() + "\r\n"
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
		eventually(t, func() error {
			if len(fx.upstreamOf(u.Scheme).requestsTo(u.Path)) == 0 {
				return errors.New("the upload has not reached the upstream")
			}
			return nil
		})
		conn.Close()
	}
	t.Run("plain upload broken off", func(t *testing.T) {
		upload(t, fx.g.dial(t), fx.plain.url(zoneAPI, "/upload/plain"))
		fx.expectAudit(t, "/upload/plain", "client_closed", 0, 0)
	})
	t.Run("inspected upload broken off", func(t *testing.T) {
		tunnel := fx.g.tunnel(t, pathStreamer, fx.secure.authority(zoneAPI))
		conn := tls.Client(tunnel, &tls.Config{ServerName: zoneAPI, RootCAs: zoneRoots(t)})
		upload(t, conn, fx.secure.url(zoneAPI, "/upload/inspected"))
		fx.expectAudit(t, "/upload/inspected", "client_closed", 0, 0)
	})
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme+" stream left mid-way", func(t *testing.T) {
			path := "/events/left-" + scheme
			resp, err := fx.g.client(t, pathStreamer, zoneRoots(t)).Get(fx.upstreamOf(scheme).url(zoneAPI, path))
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
	if n := fx.requests(t, "client_closed"); n != 4 {
		t.Errorf("egressgw_requests_total{code=client_closed} = %v, want 4", n)
	}
	for _, code := range []string{"upstream_unreachable", "upstream_timeout", "upstream_failed_midway"} {
		if n := fx.requests(t, code); n != 0 {
			t.Errorf("egressgw_requests_total{code=%s} = %v: a client that went away was counted as an upstream failure", code, n)
		}
	}
}
