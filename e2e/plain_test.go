package e2e

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
)

// The gateway forwards plain responses itself: streams flow as they
// arrive, trailers pass, a HEAD keeps its length, and an upstream that
// fails mid-body never looks like a complete response to the client.
func TestPlainResponses(t *testing.T) {
	t.Parallel()
	secondPiece := make(chan struct{})
	origin := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: first\n\n")
			w.(http.Flusher).Flush()
			// The second piece waits for the client to have read the
			// first: a gateway that buffered the stream would hang here.
			select {
			case <-secondPiece:
			case <-r.Context().Done():
				return
			}
			_, _ = io.WriteString(w, "data: second\n\n")
		case "/trailer":
			w.Header().Set("Trailer", "X-Checksum")
			_, _ = io.WriteString(w, "body with a trailer")
			w.Header().Set("X-Checksum", "c0ffee")
		case "/sized":
			w.Header().Set("Content-Length", "1234")
			if r.Method != http.MethodHead {
				_, _ = w.Write(make([]byte, 1234))
			}
		case "/cut":
			// Promise a chunked body, send part of it, then drop the
			// connection.
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		}
	}))
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("origin", []string{hostAPI}, origin.port)),
	})
	client := g.client(t, acme)
	base := "http://" + origin.authority(hostAPI)

	t.Run("a stream flows as it arrives", func(t *testing.T) {
		resp, err := client.Get(base + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		lines := bufio.NewReader(resp.Body)
		first, err := lines.ReadString('\n')
		if err != nil || first != "data: first\n" {
			t.Fatalf("first event %q, %v", first, err)
		}
		close(secondPiece)
		rest, err := io.ReadAll(lines)
		if err != nil || !strings.Contains(string(rest), "data: second") {
			t.Fatalf("rest of the stream %q, %v", rest, err)
		}
	})
	t.Run("trailers reach the client", func(t *testing.T) {
		resp, err := client.Get(base + "/trailer")
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if body != "body with a trailer" || resp.Trailer.Get("X-Checksum") != "c0ffee" {
			t.Errorf("body %q, trailer %q; want the body and X-Checksum: c0ffee", body, resp.Trailer.Get("X-Checksum"))
		}
	})
	t.Run("HEAD keeps the length", func(t *testing.T) {
		resp, err := client.Head(base + "/sized")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ContentLength != 1234 {
			t.Errorf("HEAD: status %d, length %d; want 200 and 1234", resp.StatusCode, resp.ContentLength)
		}
	})
	t.Run("a body cut by the upstream is an error, not an end", func(t *testing.T) {
		resp, err := client.Get(base + "/cut")
		if err != nil {
			t.Fatalf("the upstream's headers did not arrive: %v", err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Errorf("read %q and a clean end; want an error after the upstream dropped the connection", body)
		}
		rec := g.waitAudit(t, auditWith("path", "/cut"))
		if auditNumber(rec, "status") != http.StatusOK {
			t.Errorf("audit status %v, want the upstream's 200", rec["status"])
		}
	})
}
