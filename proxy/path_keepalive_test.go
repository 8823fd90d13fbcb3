package proxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"testing"
)

// An upload and a download of the same size on one kept-alive client
// connection, many times over: every response arrives whole and every
// upload reaches the upstream whole. A response cut short, or an upload
// the gateway lost track of, fails it.
func TestPathKeepAliveUploadsAndDownloadsAreWhole(t *testing.T) {
	for _, readFirst := range []bool{true, false} {
		name := "upstream answers after the upload"
		if !readFirst {
			name = "upstream answers while the upload goes on"
		}
		t.Run(name, func(t *testing.T) { keepAliveRounds(t, readFirst) })
	}
}

func keepAliveRounds(t *testing.T, readFirst bool) {
	const size = 100 << 10
	const rounds = 300
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	upstream := startPathUpstream(t, "127.0.0.1", false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !readFirst {
			_, _ = w.Write(payload)
		}
		got, err := io.ReadAll(r.Body)
		if err != nil || !bytes.Equal(got, payload) {
			if readFirst {
				http.Error(w, "upload not whole", http.StatusBadRequest)
			}
			return
		}
		if readFirst {
			_, _ = w.Write(payload)
		}
	}))
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("up", []string{zoneAPI}, upstream.port)),
	})
	client := g.client(t, pathAcme, nil)
	for i := range rounds {
		resp, err := client.Post(upstream.url(zoneAPI, "/echo"), "application/octet-stream", bytes.NewReader(payload))
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, payload) {
			t.Logf("log: %s", g.log.String()[max(0, len(g.log.String())-3000):])
			t.Logf("audit: %s", g.audit.String()[max(0, len(g.audit.String())-1500):])
			t.Fatalf("round %d: status %d, %d of %d bytes, %v", i, resp.StatusCode, len(got), size, err)
		}
	}
}
