package e2e

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
)

// The gateway forwards plain responses itself: streams flow as they
// arrive (trailers, HEAD and bodies cut short are in
// the proxy package's tests).
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
}
