package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
)

func TestSameSecret(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"", "", true},
		{"Basic YTpi", "Basic YTpi", true},
		{"Basic YTpi", "Basic YTpj", false},
		{"Basic YTpi", "Basic YTp", false},
		{"Basic YTp", "Basic YTpi", false},
		{"x", "", false},
	} {
		if got := sameSecret(tc.a, tc.b); got != tc.want {
			t.Errorf("sameSecret(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// FuzzSameSecret holds sameSecret to crypto/subtle's answer.
func FuzzSameSecret(f *testing.F) {
	f.Add("Basic YTpi", "Basic YTpi")
	f.Add("Basic YTpi", "Basic YTpj")
	f.Add("", "x")
	f.Fuzz(func(t *testing.T, a, b string) {
		want := subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
		if got := sameSecret(a, b); got != want {
			t.Fatalf("sameSecret(%q, %q) = %v, crypto/subtle says %v", a, b, got, want)
		}
	})
}

// memoPolicy is a policy of tenants with the given tokens, each allowed to
// reach the upstream at host:port.
func memoPolicy(t *testing.T, host, port string, tokens map[string]string) *policy.Snapshot {
	t.Helper()
	fsys := fstest.MapFS{"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\n")}}
	for tenant, token := range tokens {
		sum := sha256.Sum256([]byte(token))
		fsys["tenants/"+tenant+".yaml"] = &fstest.MapFile{Data: []byte("id: " + tenant + "\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) +
			"\" }\nrules:\n  - { name: upstream, hosts: [\"" + host + "\"], ports: [" + port + "] }\n")}
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// A keep-alive connection proves its credentials once per policy
// generation; whatever else it sends is checked afresh, and a reload that
// revokes its token refuses its next request.
func TestAuthMemoOnKeepAliveConnection(t *testing.T) {
	var reached atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		io.WriteString(w, "ok")
	}))
	defer upstream.Close()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(upstream.URL, "http://"))

	snap := memoPolicy(t, host, port, map[string]string{"acme": "acme-token-1", "bob": "bob-token"})
	audit := &flakyWriter{} // one that never fails: a buffer safe to read while written
	g := testGateway(t, snap, audit)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	}()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	responses := bufio.NewReader(conn)
	// send makes one request on the one connection; a refusal must not
	// close it, so every step below really shares the connection.
	send := func(tenant, token string) (status int, code string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, upstream.URL+"/", nil)
		req.Header.Set("Proxy-Authorization", "Basic "+basicEncode(tenant, token))
		if err := req.WriteProxy(conn); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(responses, req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Egressgw-Error")
	}
	expect := func(step, tenant, token string, wantStatus int, wantCode string, wantReached int64) {
		t.Helper()
		status, code := send(tenant, token)
		if status != wantStatus || code != wantCode || reached.Load() != wantReached {
			t.Fatalf("%s: status %d, error %q, upstream reached %d times; want %d, %q, %d", step, status, code, reached.Load(), wantStatus, wantCode, wantReached)
		}
	}

	expect("first request", "acme", "acme-token-1", http.StatusOK, "", 1)
	expect("same credentials again", "acme", "acme-token-1", http.StatusOK, "", 2)
	expect("wrong token after good ones", "acme", "acme-token-x", http.StatusProxyAuthRequired, "proxy_auth_required", 2)
	expect("another tenant on the same connection", "bob", "bob-token", http.StatusOK, "", 3)
	expect("back to the first tenant", "acme", "acme-token-1", http.StatusOK, "", 4)

	g.Apply(memoPolicy(t, host, port, map[string]string{"acme": "acme-token-2", "bob": "bob-token"}))
	expect("revoked token after reload", "acme", "acme-token-1", http.StatusProxyAuthRequired, "proxy_auth_required", 4)
	expect("new token after reload", "acme", "acme-token-2", http.StatusOK, "", 5)

	// Each request was audited under the tenant it proved.
	deadline := time.Now().Add(5 * time.Second)
	var tenants []string
	for {
		tenants = tenants[:0]
		for _, line := range strings.Split(strings.TrimSpace(audit.String()), "\n") {
			var rec struct{ Tenant string }
			if line != "" && json.Unmarshal([]byte(line), &rec) == nil {
				tenants = append(tenants, rec.Tenant)
			}
		}
		if len(tenants) >= 7 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, want := strings.Join(tenants, ","), "acme,acme,,bob,acme,,acme"; got != want {
		t.Fatalf("audit tenants %q, want %q", got, want)
	}
}

// A keep-alive connection that has authenticated is remembered only for
// the credentials it proved: its next request without Proxy-Authorization
// is refused like any other, never served as the remembered tenant.
func TestAuthMemoNeverServesAMissingHeader(t *testing.T) {
	var reached atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		io.WriteString(w, "ok")
	}))
	defer upstream.Close()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(upstream.URL, "http://"))
	g := testGateway(t, memoPolicy(t, host, port, map[string]string{"acme": "acme-token"}), io.Discard)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	})

	conn := dialRaw(t, ln.Addr().String())
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	target := "GET " + upstream.URL + "/ HTTP/1.1\r\nHost: " + host + ":" + port + "\r\n"
	status, _, err := conn.exchange(target + "Proxy-Authorization: Basic " + basicEncode("acme", "acme-token") + "\r\n\r\n")
	if err != nil || status != http.StatusOK || reached.Load() != 1 {
		t.Fatalf("authenticated request: status %d, %v, upstream reached %d times; want 200 once", status, err, reached.Load())
	}
	for _, header := range []string{"", "Proxy-Authorization: \r\n"} {
		if _, err := io.WriteString(conn, target+header+"\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(conn.reader, nil)
		if err != nil {
			t.Fatalf("request without credentials (%q): %v", header, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e errorBody
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != http.StatusProxyAuthRequired || resp.Header.Get("X-Egressgw-Error") != "proxy_auth_required" || e.Error != "proxy_auth_required" {
			t.Fatalf("request without credentials (%q) on an authenticated connection: status %d, header %q, body %s; want 407 proxy_auth_required",
				header, resp.StatusCode, resp.Header.Get("X-Egressgw-Error"), body)
		}
		if n := reached.Load(); n != 1 {
			t.Fatalf("the upstream saw %d requests; want only the authenticated one", n)
		}
	}
}
