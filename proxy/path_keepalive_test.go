package proxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
)

// An upload and a download of the same size on one kept-alive client
// connection, many times over, with an upstream that answers after the
// upload and one that answers while it goes on: every response arrives
// whole and every upload reaches the upstream whole. Without full duplex
// the server discards and closes what is left of a request body as the
// response starts, under the transport still sending it: the upstream
// connection was dropped mid-response about once in two hundred rounds.
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
	var cutUploads atomic.Int64
	upstream := startPathUpstream(t, "127.0.0.1", false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !readFirst {
			// An upstream that answers as it reads: its own server must
			// not discard the upload when the answer starts.
			_ = http.NewResponseController(w).EnableFullDuplex()
			_, _ = w.Write(payload)
		}
		got, err := io.ReadAll(r.Body)
		if err != nil || !bytes.Equal(got, payload) {
			cutUploads.Add(1)
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
			t.Fatalf("round %d: status %d, %d of %d bytes, %v", i, resp.StatusCode, len(got), size, err)
		}
	}
	if n := cutUploads.Load(); n > 0 {
		t.Errorf("%d of %d uploads reached the upstream cut short", n, rounds)
	}
}
