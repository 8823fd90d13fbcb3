package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// A body that streams in fast is written without a flush after every
// piece; what comes after a pause must still reach the client as soon as
// it arrives, not wait for the upstream's next bytes. The upstream sends
// a burst, then a short tail, and sends nothing more until the client has
// read the tail: held in the gateway, the tail would never come.
func TestPathTailAfterBurstReachesTheClientAtOnce(t *testing.T) {
	t.Parallel()
	const burst, tail = 1 << 20, "tail after the burst\n"
	released := make(chan struct{})
	origin := startPathUpstream(t, "127.0.0.1", false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/length" {
			w.Header().Set("Content-Length", strconv.Itoa(burst+len(tail)+1))
		}
		rc := http.NewResponseController(w)
		w.Write(bytes.Repeat([]byte("b"), burst))
		io.WriteString(w, tail)
		rc.Flush()
		select {
		case <-released:
		case <-r.Context().Done():
		case <-time.After(pathGuard):
		}
		io.WriteString(w, "\n") // the last byte, after the client has the tail
	}))
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("origin", []string{zoneAPI}, origin.port)),
	})
	client := g.client(t, pathAcme, nil)
	for i, path := range []string{"/chunked", "/length"} {
		t.Run(path[1:], func(t *testing.T) {
			resp, err := client.Get(origin.url(zoneAPI, path))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got := make(chan error, 1)
			go func() {
				b := make([]byte, burst+len(tail))
				_, err := io.ReadFull(resp.Body, b)
				if err == nil && string(b[burst:]) != tail {
					err = io.ErrUnexpectedEOF
				}
				got <- err
			}()
			select {
			case err := <-got:
				if err != nil {
					t.Fatalf("reading the burst and the tail: %v", err)
				}
			case <-time.After(pathGuard):
				t.Fatal("the tail did not reach the client while the upstream waited")
			}
			if i == 1 {
				close(released)
			} else {
				released <- struct{}{}
			}
			if rest, err := io.ReadAll(resp.Body); err != nil || string(rest) != "\n" {
				t.Errorf("the rest of the body: %q, %v", rest, err)
			}
		})
	}
}
