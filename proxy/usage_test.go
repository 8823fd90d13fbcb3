package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
)

const usageBytes = 100 << 10

// usageOf reads /v1/tenants/ID/usage from the admin handler: bytes this
// minute and whether they are counted, by direction.
func usageOf(t *testing.T, g *Gateway, tenant string) map[string]bandwidthUsage {
	t.Helper()
	rec := httptest.NewRecorder()
	g.AdminHandler(&ConfigStatus{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/tenants/"+tenant+"/usage", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("usage: status %d, body %s", rec.Code, rec.Body)
	}
	var u usage
	if err := json.Unmarshal(rec.Body.Bytes(), &u); err != nil {
		t.Fatalf("usage: %v; body %s", err, rec.Body)
	}
	out := map[string]bandwidthUsage{}
	for _, b := range u.Bandwidth {
		out[b.Direction] = b
	}
	return out
}

// atLeast reports whether both directions count at least n bytes this
// minute, counted.
func atLeast(u map[string]bandwidthUsage, n int64) error {
	for _, direction := range []string{"egress", "ingress"} {
		if b := u[direction]; !b.Counted || b.BytesThisMinute < n {
			return fmt.Errorf("%s: counted %v, %d bytes this minute; want counted, at least %d", direction, b.Counted, b.BytesThisMinute, n)
		}
	}
	return nil
}

// untilCounted repeats exchange until the usage endpoint shows at least
// usageBytes each way: a minute that turns between the exchange and the
// look starts again from nothing, so one more round is then needed.
func untilCounted(t *testing.T, g *Gateway, exchange func(t *testing.T)) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		exchange(t)
		var err error
		for poll := time.Now().Add(5 * time.Second); time.Now().Before(poll); time.Sleep(20 * time.Millisecond) {
			if err = atLeast(usageOf(t, g, "acme"), usageBytes); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage of acme after moving %d bytes each way: %v", usageBytes, err)
		}
	}
}

// A tenant without a bandwidth limit has its bytes this minute counted
// each way, for plain requests once they end and for a tunnel while it
// is still open, and no shaper is made for it: an unlimited tenant's
// bytes take no shaper's path.
func TestUsageCountsUnlimitedTenants(t *testing.T) {
	// Uploads and downloads in requests of their own: a plain request
	// that does both at once sometimes loses its response's end, which is
	// not what this test is about.
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			_, _ = io.Copy(io.Discard, r.Body)
			return
		}
		_, _ = w.Write(bytes.Repeat([]byte("d"), usageBytes))
	}))
	t.Cleanup(upstream.Close)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(upstream.URL, "http://"))
	_, echoPort, _ := net.SplitHostPort(echo.Addr().String())
	sg := serveGateway(t, streamPolicy(t, "", host, port+", "+echoPort))

	if err := atLeast(usageOf(t, sg.Gateway, "acme"), 0); err != nil {
		t.Errorf("before any traffic: %v", err)
	}
	t.Run("plain upload and download", func(t *testing.T) {
		untilCounted(t, sg.Gateway, func(t *testing.T) {
			up, _ := http.NewRequest(http.MethodPost, upstream.URL+"/up", bytes.NewReader(bytes.Repeat([]byte("u"), usageBytes)))
			down, _ := http.NewRequest(http.MethodGet, upstream.URL+"/down", nil)
			for _, req := range []*http.Request{up, down} {
				resp, _ := sg.send(t, req)
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if want := map[string]int64{http.MethodPost: 0, http.MethodGet: usageBytes}[req.Method]; resp.StatusCode != http.StatusOK || n != want || err != nil {
					t.Fatalf("%s: status %d, %d bytes back, %v; want 200 and %d bytes", req.Method, resp.StatusCode, n, err, want)
				}
			}
		})
	})
	t.Run("an open tunnel", func(t *testing.T) {
		conn, err := net.Dial("tcp", sg.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		_ = conn.SetDeadline(time.Now().Add(hangGuard))
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\nProxy-Authorization: Basic %s\r\n\r\n",
			net.JoinHostPort(host, echoPort), basicEncode("acme", benchToken))
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT: %v, %v", resp, err)
		}
		// The tunnel stays open throughout: its bytes must count before
		// its audit line is written.
		untilCounted(t, sg.Gateway, func(t *testing.T) {
			if _, err := conn.Write(bytes.Repeat([]byte("t"), usageBytes)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.CopyN(io.Discard, br, usageBytes); err != nil {
				t.Fatalf("echo through the tunnel: %v", err)
			}
		})
	})
	for _, direction := range []string{"egress", "ingress"} {
		if s := sg.bandwidth.Lookup(bandwidthKey("acme", direction)); s != nil {
			t.Errorf("a %s shaper was made for a tenant without a bandwidth limit", direction)
		}
	}
}

// Callers that account one exchange at once add each byte exactly once.
func TestAccountUsageCountsEachByteOnce(t *testing.T) {
	now := time.Date(2026, 12, 6, 19, 0, 0, 0, time.UTC)
	ex := &exchange{ts: newTenantState("acme", nil)}
	const writers, steps = 4, 1000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range steps {
			ex.bytesUp.Add(3)
			ex.bytesDown.Add(5)
			ex.accountUsage(now)
		}
	}()
	var accounting sync.WaitGroup
	for range writers {
		accounting.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
					ex.accountUsage(now)
				}
			}
		})
	}
	<-done
	accounting.Wait()
	ex.accountUsage(now)
	if up, down := ex.ts.usage.egress.ThisMinute(now), ex.ts.usage.ingress.ThisMinute(now); up != 3*steps || down != 5*steps {
		t.Errorf("counted %d up, %d down; want %d, %d", up, down, 3*steps, 5*steps)
	}
}

// A reload hands each tenant's usage to the new generation; a tenant the
// reload adds starts from nothing, one it removes is forgotten.
func TestTenantUsageSurvivesReload(t *testing.T) {
	tenant := func(id string) string {
		sum := sha256.Sum256([]byte(benchToken + id))
		return "id: " + id + "\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) + "\" }\n"
	}
	load := func(ids ...string) *policy.Snapshot {
		fsys := fstest.MapFS{"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\n")}}
		for _, id := range ids {
			fsys["tenants/"+id+".yaml"] = &fstest.MapFile{Data: []byte(tenant(id))}
		}
		snap, err := policy.Load(fsys, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return snap
	}
	generation := func(snap *policy.Snapshot, prev *runtimeState) *runtimeState {
		return &runtimeState{live: &policy.Live{Snapshot: snap}, tenants: newTenantStates(snap, prev)}
	}
	first := generation(load("kept", "removed"), nil)
	stateOf := func(rt *runtimeState, id string) *tenantState {
		for tn, s := range rt.tenants {
			if tn.ID == id {
				return s
			}
		}
		return nil
	}
	second := generation(load("kept", "added"), first)
	if stateOf(second, "kept").usage != stateOf(first, "kept").usage {
		t.Error("a reload gave the kept tenant new usage counts")
	}
	if u := stateOf(second, "added").usage; u == nil || u == stateOf(first, "removed").usage {
		t.Error("the added tenant does not start with counts of its own")
	}
	if stateOf(second, "removed") != nil {
		t.Error("the removed tenant still has a state")
	}
}
