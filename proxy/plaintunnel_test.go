package proxy

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// port80Upstream is an HTTP server on port 80 of a loopback address of
// its own, where an http:// URL without a port goes. It records what
// reached it: connections and requests.
type port80Upstream struct {
	host  string
	conns atomic.Int64
	mu    sync.Mutex
	seen  []*http.Request
}

func startPort80Upstream(t *testing.T) *port80Upstream {
	t.Helper()
	u := &port80Upstream{}
	var ln net.Listener
	for range 8 {
		host := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(256), 1+rand.IntN(250))
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(host, "80"))
		if err == nil {
			u.host = host
			break
		}
		if errors.Is(err, syscall.EACCES) {
			t.Skipf("cannot listen on port 80 (this test needs it, as http:// URLs do): %v", err)
		}
	}
	if ln == nil {
		t.Skip("no free loopback address with port 80")
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u.mu.Lock()
			u.seen = append(u.seen, r.Clone(r.Context()))
			u.mu.Unlock()
			io.WriteString(w, "served "+r.URL.Path)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				u.conns.Add(1)
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return u
}

func (u *port80Upstream) requests() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.seen...)
}

// plainTunnelGateway serves tenant acme (token benchToken), whose rules
// follow in rules (YAML list items), on a loopback listener.
func plainTunnelGateway(t *testing.T, rules string) *servedGateway {
	t.Helper()
	return plainTunnelGatewayWith(t, "rules:\n"+rules, nil)
}

// plainTunnelGatewayWith is plainTunnelGateway with tenantBody as the
// tenant file's keys after auth, and more files; a file named
// gateway.yaml extends the gateway's.
func plainTunnelGatewayWith(t *testing.T, tenantBody string, files map[string]string) *servedGateway {
	t.Helper()
	sum := sha256.Sum256([]byte(benchToken))
	fsys := fstest.MapFS{
		"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.0/8\"] }\nlimits: { idle_timeout: 10s }\n" + files["gateway.yaml"])},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) +
			"\" }\n" + tenantBody)},
	}
	for name, content := range files {
		if name != "gateway.yaml" {
			fsys[name] = &fstest.MapFile{Data: []byte(content)}
		}
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return serveGateway(t, snap)
}

// connectHead is a CONNECT to authority with acme's credentials.
func connectHead(authority string) string {
	return "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\nProxy-Authorization: Basic " +
		basicEncode("acme", benchToken) + "\r\n\r\n"
}

// openTunnel sends a CONNECT to authority, with extra written in the same
// write right behind its head, and expects the tunnel to open.
func openTunnel(t *testing.T, sg *servedGateway, authority, extra string) *rawConn {
	t.Helper()
	c := dialRaw(t, sg.addr)
	_ = c.SetDeadline(time.Now().Add(hangGuard))
	if _, err := io.WriteString(c, connectHead(authority)+extra); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.reader, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("reading the CONNECT reply: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("CONNECT %s: status %d, body %s; want the tunnel open", authority, resp.StatusCode, body)
	}
	return c
}

// readInner reads one response inside a tunnel, body and all.
func readInner(t *testing.T, c *rawConn) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(c.reader, nil)
	if err != nil {
		t.Fatalf("reading a response inside the tunnel: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading a response body inside the tunnel: %v", err)
	}
	return resp, string(body)
}

// expectGatewayError checks a reply is the gateway's own JSON error.
func expectGatewayError(t *testing.T, resp *http.Response, body string, status int, code policy.Code) {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("reply body %q is not the gateway's JSON: %v", body, err)
	}
	if resp.StatusCode != status || e.Error != code || resp.Header.Get("X-Egressgw-Error") != string(code) ||
		resp.Header.Get("Content-Type") != "application/json" || e.RequestID == "" {
		t.Fatalf("reply %d %v %s; want %d %s from the gateway", resp.StatusCode, resp.Header, body, status, code)
	}
}

// auditLines are the audit lines written so far whose path is path and
// scheme is scheme.
func (sg *servedGateway) auditLines(scheme, path string) []auditRecord {
	var out []auditRecord
	for _, line := range strings.Split(sg.audit.String(), "\n") {
		var rec auditRecord
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Scheme == scheme && rec.Path == path {
			out = append(out, rec)
		}
	}
	return out
}

// waitAudit waits for n audit lines of scheme and path.
func (sg *servedGateway) waitAudit(t *testing.T, scheme, path string, n int) []auditRecord {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		recs := sg.auditLines(scheme, path)
		if len(recs) >= n {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d audit lines for %s %s, want %d, in:\n%s", len(recs), scheme, path, n, sg.audit.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A CONNECT to port 80 carrying plain HTTP, as Node's undici sends an
// http:// URL, is served on the plain HTTP path: each request is decided
// on its own method and path, a refusal is the gateway's JSON reply on
// the tunnel, and nothing refused reaches the upstream. Rules that name
// methods and paths no longer refuse the CONNECT itself on port 80.
func TestPlainTunnelDecidesEachRequest(t *testing.T) {
	up := startPort80Upstream(t)
	authority := net.JoinHostPort(up.host, "80")
	sg := plainTunnelGateway(t, "  - { name: api, hosts: [\""+up.host+"\"], ports: [80], methods: [GET], paths: [\"/allowed/\"] }\n")

	cases := []struct {
		name    string
		request string
		status  int
		code    policy.Code
		path    string // what the upstream sees, "" for nothing
	}{
		{"allowed path, Host header", "GET /allowed/a HTTP/1.1\r\nHost: " + authority + "\r\n\r\n", 200, policy.CodeOK, "/allowed/a"},
		{"allowed path, Host without the default port", "GET /allowed/b HTTP/1.1\r\nHost: " + up.host + "\r\n\r\n", 200, policy.CodeOK, "/allowed/b"},
		{"allowed path, absolute URI", "GET http://" + up.host + "/allowed/c HTTP/1.1\r\nHost: " + up.host + "\r\n\r\n", 200, policy.CodeOK, "/allowed/c"},
		{"method refused", "POST /allowed/d HTTP/1.1\r\nHost: " + up.host + "\r\nContent-Length: 2\r\n\r\nhi", 403, policy.CodeDestinationNotAllowed, ""},
		{"path refused", "GET /secret HTTP/1.1\r\nHost: " + up.host + "\r\n\r\n", 403, policy.CodeDestinationNotAllowed, ""},
		{"Host names another host", "GET /allowed/e HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400, policy.CodeBadRequest, ""},
		{"Host names another port", "GET /allowed/f HTTP/1.1\r\nHost: " + up.host + ":8080\r\n\r\n", 400, policy.CodeBadRequest, ""},
		{"absolute URI names another host", "GET http://evil.example/allowed/g HTTP/1.1\r\nHost: " + up.host + "\r\n\r\n", 400, policy.CodeBadRequest, ""},
		{"absolute URI with another scheme", "GET https://" + up.host + ":80/allowed/h HTTP/1.1\r\nHost: " + up.host + "\r\n\r\n", 400, policy.CodeBadRequest, ""},
		{"pipelined behind the CONNECT head", "GET /allowed/i HTTP/1.1\r\nHost: " + up.host + "\r\n\r\n", 200, policy.CodeOK, "/allowed/i"},
		{"refused, pipelined behind the CONNECT head", "DELETE /allowed/j HTTP/1.1\r\nHost: " + up.host + "\r\n\r\n", 403, policy.CodeDestinationNotAllowed, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.requests())
			if strings.HasSuffix(tc.name, "pipelined behind the CONNECT head") {
				c := openTunnel(t, sg, authority, tc.request)
				resp, body := readInner(t, c)
				if tc.code == policy.CodeOK && (resp.StatusCode != tc.status || body != "served "+tc.path) {
					t.Fatalf("status %d, body %q; want %d from the upstream", resp.StatusCode, body, tc.status)
				} else if tc.code != policy.CodeOK {
					expectGatewayError(t, resp, body, tc.status, tc.code)
				}
				if seen := up.requests()[before:]; (tc.path == "") != (len(seen) == 0) {
					t.Errorf("the upstream saw %d requests", len(seen))
				}
				return
			}
			c := openTunnel(t, sg, authority, "")
			if _, err := io.WriteString(c, tc.request); err != nil {
				t.Fatal(err)
			}
			resp, body := readInner(t, c)
			if tc.code == policy.CodeOK {
				if resp.StatusCode != tc.status || body != "served "+tc.path {
					t.Fatalf("status %d, body %q; want %d from the upstream", resp.StatusCode, body, tc.status)
				}
			} else {
				expectGatewayError(t, resp, body, tc.status, tc.code)
			}
			seen := up.requests()[before:]
			switch {
			case tc.path == "" && len(seen) > 0:
				t.Errorf("the upstream saw %s %s, which the gateway refused", seen[0].Method, seen[0].URL.Path)
			case tc.path != "" && (len(seen) != 1 || seen[0].URL.Path != tc.path || seen[0].Method != http.MethodGet):
				t.Errorf("the upstream saw %d requests, want GET %s", len(seen), tc.path)
			case tc.path != "" && seen[0].Header.Get("Proxy-Authorization") != "":
				t.Errorf("the upstream saw the sandbox's Proxy-Authorization")
			}
		})
	}
	if n := up.conns.Load(); n > int64(4) {
		t.Errorf("the upstream got %d connections for 4 allowed requests", n)
	}
	// Every request has its own audit line, with scheme http and the
	// tunnel's host and port.
	for _, tc := range cases {
		if tc.path == "" {
			continue
		}
		rec := sg.waitAudit(t, "http", tc.path, 1)[0]
		if rec.Host != up.host || rec.Port != 80 || rec.Method != http.MethodGet || rec.Decision != "allow" || rec.Code != "ok" || rec.Status != 200 || rec.Rule != "api" {
			t.Errorf("audit line %+v", rec)
		}
	}
	refused := sg.waitAudit(t, "http", "/secret", 1)[0]
	if refused.Decision != "deny" || refused.Code != string(policy.CodeDestinationNotAllowed) || refused.Status != 403 {
		t.Errorf("audit line of the refused path %+v", refused)
	}
}

// Two requests on one tunnel, the first pipelined in the same write as
// the CONNECT head: both are answered in order, each has its audit line,
// and the tunnel has its own when it ends.
func TestPlainTunnelKeepsAliveAndAuditsEachRequest(t *testing.T) {
	up := startPort80Upstream(t)
	authority := net.JoinHostPort(up.host, "80")
	sg := plainTunnelGateway(t, "  - { name: api, hosts: [\""+up.host+"\"], ports: [80] }\n")

	c := openTunnel(t, sg, authority, "GET /one HTTP/1.1\r\nHost: "+up.host+"\r\n\r\n")
	resp, body := readInner(t, c)
	if resp.StatusCode != 200 || body != "served /one" {
		t.Fatalf("pipelined request: %d %q", resp.StatusCode, body)
	}
	if _, err := io.WriteString(c, "GET /two HTTP/1.1\r\nHost: "+up.host+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, body = readInner(t, c)
	if resp.StatusCode != 200 || body != "served /two" {
		t.Fatalf("second request: %d %q", resp.StatusCode, body)
	}
	for _, path := range []string{"/one", "/two"} {
		rec := sg.waitAudit(t, "http", path, 1)
		if len(rec) != 1 || rec[0].Code != "ok" || rec[0].Status != 200 || rec[0].Method != http.MethodGet {
			t.Errorf("audit lines for %s: %+v", path, rec)
		}
	}
	c.Close()
	tun := sg.waitAudit(t, "tunnel", "", 1)
	if len(tun) != 1 || tun[0].Method != http.MethodConnect || tun[0].Status != 200 || tun[0].BytesUp == 0 || tun[0].BytesDown == 0 {
		t.Errorf("tunnel audit lines: %+v", tun)
	}
}

// Credentials are injected into plain HTTP inside a tunnel only where the
// connector says allow_plaintext, as for plain http:// requests: otherwise
// each request is refused on the tunnel and nothing reaches the upstream.
func TestPlainTunnelInjectsOnlyWhereThePlaintextIsAllowed(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow_plaintext %v", allow), func(t *testing.T) {
			up := startPort80Upstream(t)
			sg := plainTunnelGatewayWith(t, "connectors: [api]\n", map[string]string{
				"gateway.yaml": "secrets:\n  api_key: { file: api.key }\n",
				"api.key":      "s3cret-value\n",
				"connectors/api.yaml": fmt.Sprintf("name: api\nhosts: [%q]\nports: [80]\ninject:\n  headers: { Authorization: \"Bearer ${secret:api_key}\" }\n  allow_plaintext: %v\n",
					up.host, allow),
			})
			c := openTunnel(t, sg, net.JoinHostPort(up.host, "80"), "")
			if _, err := io.WriteString(c, "GET /data HTTP/1.1\r\nHost: "+up.host+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, body := readInner(t, c)
			seen := up.requests()
			if !allow {
				expectGatewayError(t, resp, body, http.StatusForbidden, policy.CodeDestinationNotAllowed)
				if len(seen) != 0 || up.conns.Load() != 0 {
					t.Errorf("the upstream was reached: %d requests, %d connections", len(seen), up.conns.Load())
				}
				return
			}
			if resp.StatusCode != 200 || len(seen) != 1 || seen[0].Header.Get("Authorization") != "Bearer s3cret-value" {
				t.Fatalf("status %d, upstream saw %d requests; want 200 and the injected credential", resp.StatusCode, len(seen))
			}
		})
	}
}

// A connector with inspect: true whose tunnel carries plain HTTP instead
// of TLS (an http:// URL through undici) is served as plain HTTP, its
// methods and paths applied to each request.
func TestInspectingConnectorServesPlainHTTP(t *testing.T) {
	up := startPort80Upstream(t)
	ca := testCA(t)
	key, err := x509.MarshalECPrivateKey(ca.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sg := plainTunnelGatewayWith(t, "connectors: [api]\n", map[string]string{
		"gateway.yaml":        "tls: { ca_cert: ca.pem, ca_key: ca-key.pem }\n",
		"ca.pem":              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate[0]})),
		"ca-key.pem":          string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key})),
		"connectors/api.yaml": fmt.Sprintf("name: api\nhosts: [%q]\nports: [80]\nmethods: [GET]\npaths: [\"/allowed/\"]\ninspect: true\n", up.host),
	})
	c := openTunnel(t, sg, net.JoinHostPort(up.host, "80"), "")
	for _, tc := range []struct {
		path   string
		status int
	}{{"/allowed/x", 200}, {"/other", 403}} {
		if _, err := io.WriteString(c, "GET "+tc.path+" HTTP/1.1\r\nHost: "+up.host+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, body := readInner(t, c)
		if tc.status == 200 && (resp.StatusCode != 200 || body != "served "+tc.path) {
			t.Fatalf("%s: %d %q", tc.path, resp.StatusCode, body)
		}
		if tc.status == 403 {
			expectGatewayError(t, resp, body, http.StatusForbidden, policy.CodeDestinationNotAllowed)
		}
	}
	if seen := up.requests(); len(seen) != 1 {
		t.Errorf("the upstream saw %d requests, want the allowed one", len(seen))
	}
	if rec := sg.waitAudit(t, "http", "/other", 1)[0]; rec.Rule != "api@1" || rec.Code != string(policy.CodeDestinationNotAllowed) {
		t.Errorf("audit line %+v", rec)
	}
}

// A reload rechecks a tunnel let in only to carry plain HTTP as what it
// is: one whose rules still allow it stays open, one they no longer allow
// is closed.
func TestPlainTunnelSurvivesReloadsThatStillAllowIt(t *testing.T) {
	up := startPort80Upstream(t)
	authority := net.JoinHostPort(up.host, "80")
	rules := "  - { name: api, hosts: [\"" + up.host + "\"], ports: [80], methods: [GET] }\n"
	sg := plainTunnelGateway(t, rules)
	get := func(c *rawConn, path string) (*http.Response, error) {
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: "+up.host+"\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(c.reader, nil)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	c := openTunnel(t, sg, authority, "")
	if resp, err := get(c, "/before"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("before the reload: %v %v", resp, err)
	}
	sg.Apply(plainTunnelGateway(t, rules).runtime.Load().live.Snapshot)
	if resp, err := get(c, "/after"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after a reload that changed nothing: %v %v", resp, err)
	}
	sg.Apply(plainTunnelGateway(t, "  - { name: other, hosts: [\"other.example\"] }\n").runtime.Load().live.Snapshot)
	_ = c.SetReadDeadline(time.Now().Add(hangGuard))
	if n, err := io.Copy(io.Discard, c.reader); n != 0 || err != nil {
		t.Errorf("after a reload that removed its rule the tunnel gave %d bytes (%v); want it closed", n, err)
	}
}

// A tunnel let in only to carry plain HTTP (its rules name methods) is
// closed when what it carries is anything else, before a byte reaches
// the upstream: a TLS handshake, or bytes that are no request line.
func TestPlainTunnelClosesWhatIsNotHTTP(t *testing.T) {
	up := startPort80Upstream(t)
	authority := net.JoinHostPort(up.host, "80")
	sg := plainTunnelGateway(t, "  - { name: api, hosts: [\""+up.host+"\"], ports: [80], methods: [GET] }\n")

	for _, tc := range []struct {
		name  string
		first []byte
	}{
		{"TLS", realClientHello(t, up.host)},
		{"SSH", []byte("SSH-2.0-OpenSSH_9.6\r\n")},
		{"HTTP/2 prior knowledge", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openTunnel(t, sg, authority, "")
			if _, err := c.Write(tc.first); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(hangGuard))
			n, err := io.Copy(io.Discard, c.reader)
			if err != nil || n != 0 {
				t.Errorf("read %d bytes (%v); want the tunnel closed without a reply", n, err)
			}
		})
	}
	recs := sg.waitAudit(t, "tunnel", "", 3)
	for _, rec := range recs {
		if rec.Decision != "deny" || rec.Code != string(policy.CodeDestinationNotAllowed) || !strings.Contains(rec.Reason, "plain HTTP") {
			t.Errorf("tunnel audit line %+v; want a denial saying it carried no plain HTTP", rec)
		}
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("the upstream got %d connections", n)
	}
}

// On other ports than 80 a CONNECT whose rules name methods is still
// refused at once: the gateway cannot read what it would carry.
func TestConnectToOtherPortsStillNeedsInspection(t *testing.T) {
	sg := plainTunnelGateway(t, "  - { name: api, hosts: [\"api.example.com\"], ports: [443, 8080], methods: [GET] }\n")
	for _, port := range []string{"443", "8080"} {
		c := dialRaw(t, sg.addr)
		if _, err := io.WriteString(c, connectHead("api.example.com:"+port)); err != nil {
			t.Fatal(err)
		}
		readRefusal(t, c, http.StatusForbidden, string(policy.CodeDestinationNotAllowed))
	}
}

// A tunnel whose rule lets everything through is still served as plain
// HTTP when it carries it: every request is audited, and one that names
// another host than the CONNECT is refused.
func TestOpaqueTunnelCarryingHTTPIsServedPerRequest(t *testing.T) {
	up := startPort80Upstream(t)
	authority := net.JoinHostPort(up.host, "80")
	sg := plainTunnelGateway(t, "  - { name: api, hosts: [\""+up.host+"\"], ports: [80] }\n")

	c := openTunnel(t, sg, authority, "")
	if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, body := readInner(t, c)
	expectGatewayError(t, resp, body, http.StatusBadRequest, policy.CodeBadRequest)
	if seen := up.requests(); len(seen) != 0 {
		t.Errorf("the upstream saw %d requests", len(seen))
	}
	// Refused before its path was read: the line names the host it asked for.
	rec := sg.waitAudit(t, "http", "", 1)[0]
	if rec.Code != string(policy.CodeBadRequest) || rec.Status != 400 || rec.Host != "evil.example" {
		t.Errorf("audit line %+v", rec)
	}
}

// An opaque tunnel that carries something else than HTTP still relays it
// as it is, whoever speaks first.
func TestOpaqueTunnelRelaysWhatIsNotHTTP(t *testing.T) {
	for _, tc := range []struct {
		name          string
		serverFirst   bool
		clientMessage string
	}{
		{"client speaks first", false, "ping\n"},
		{"server speaks first", true, "EHLO client.example\r\n"},
		{"client speaks first, a word and a space", false, "PING x\r\n"},
		{"client sends a bare word and waits", false, "ping"},
		{"client sends what may start a request line and waits", false, "GET /x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				if tc.serverFirst {
					io.WriteString(c, "220 hello\r\n")
				}
				msg := make([]byte, len(tc.clientMessage))
				if _, err := io.ReadFull(c, msg); err != nil {
					return
				}
				io.WriteString(c, "echo "+string(msg))
			}()
			host, port, _ := net.SplitHostPort(ln.Addr().String())
			sg := plainTunnelGateway(t, "  - { name: raw, hosts: [\""+host+"\"], ports: ["+port+"] }\n")
			c := openTunnel(t, sg, ln.Addr().String(), "")
			if tc.serverFirst {
				greeting, err := c.reader.ReadString('\n')
				if err != nil || greeting != "220 hello\r\n" {
					t.Fatalf("greeting %q, %v", greeting, err)
				}
			}
			if _, err := io.WriteString(c, tc.clientMessage); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len("echo "+tc.clientMessage))
			if _, err := io.ReadFull(c.reader, got); err != nil || string(got) != "echo "+tc.clientMessage {
				t.Fatalf("got %q, %v; want the upstream's echo", got, err)
			}
		})
	}
}

// The bytes of a shaped tenant's tunnel that carries plain HTTP are paid
// to its egress shaper once, as they are counted in the tunnel's bytes_up:
// the first bytes, read before the gateway knew what the tunnel carries,
// are paid when the HTTP server reads them, not also when they were read
// first. Whether the tunnel's rule must read it or lets anything through.
func TestShapedPlainTunnelPaysItsFirstBytesOnce(t *testing.T) {
	up := startPort80Upstream(t)
	authority := net.JoinHostPort(up.host, "80")
	for _, tc := range []struct{ name, rule string }{
		{"rule reads the tunnel", "  - { name: api, hosts: [\"" + up.host + "\"], ports: [80], methods: [POST] }\n"},
		{"rule lets anything through", "  - { name: api, hosts: [\"" + up.host + "\"], ports: [80] }\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sg := plainTunnelGatewayWith(t, "quota: { bandwidth: { egress: 1MiB } }\nrules:\n"+tc.rule, nil)
			minuteBefore := time.Now().Unix() / 60
			body := strings.Repeat("b", 3000)
			request := "POST /paid HTTP/1.1\r\nHost: " + authority + "\r\nContent-Length: 3000\r\nConnection: close\r\n\r\n" + body
			c := openTunnel(t, sg, authority, "")
			if _, err := io.WriteString(c, request); err != nil {
				t.Fatal(err)
			}
			if resp, got := readInner(t, c); resp.StatusCode != http.StatusOK || got != "served /paid" {
				t.Fatalf("POST through the tunnel: %d %q", resp.StatusCode, got)
			}
			c.Close()
			var tunnelLine auditRecord
			for _, rec := range sg.waitAudit(t, "tunnel", "", 1) {
				tunnelLine = rec
			}
			paid := sg.bandwidth.Lookup(bandwidthKey("acme", "egress")).BytesThisMinute()
			if tunnelLine.BytesUp != int64(len(request)) {
				t.Errorf("tunnel bytes_up %d, want the %d bytes of the request", tunnelLine.BytesUp, len(request))
			}
			if time.Now().Unix()/60 == minuteBefore && paid != tunnelLine.BytesUp {
				t.Errorf("the egress shaper was paid for %d bytes; the tunnel sent %d", paid, tunnelLine.BytesUp)
			}
		})
	}
}

// isRequestLine recognises the start of an HTTP/1.x request and nothing
// else, and asks for more bytes only while they could still be one.
func TestRequestLineDetection(t *testing.T) {
	cases := []struct {
		in   string
		want requestLine
	}{
		{"GET / HTTP/1.1\r\n", isRequestLine},
		{"GET http://a.example/x?y HTTP/1.0\r\n", isRequestLine},
		{"OPTIONS * HTTP/1.1\r\n", isRequestLine},
		{"M-SEARCH / HTTP/1.1", isRequestLine},
		{"GET / HTTP/1.", isRequestLine},
		{"", mayBeRequestLine},
		{"G", mayBeRequestLine},
		{"GET", mayBeRequestLine},
		{"GET ", mayBeRequestLine},
		{"GET /a/b", mayBeRequestLine},
		{"GET / ", mayBeRequestLine},
		{"GET / HTTP/", mayBeRequestLine},
		{"\x16\x03\x01", notRequestLine},
		{"SSH-2.0-OpenSSH_9.6\r\n", notRequestLine},
		{"EHLO mail.example\r\n", notRequestLine},
		{"PRI * HTTP/2.0\r\n", notRequestLine},
		{"GET / HTTP/2\r\n", notRequestLine},
		{" GET / HTTP/1.1\r\n", notRequestLine},
		{"GET  / HTTP/1.1\r\n", notRequestLine},
		{"GET / HTTP/1.1 \r\n", isRequestLine},
		{"GET /a\x00b HTTP/1.1\r\n", notRequestLine},
		{"GET /a\tb HTTP/1.1\r\n", notRequestLine},
		{"GET\r\n", notRequestLine},
		{"G(T / HTTP/1.1\r\n", notRequestLine},
		{"GET / http/1.1\r\n", notRequestLine},
	}
	for _, tc := range cases {
		if got := classifyRequestLine([]byte(tc.in)); got != tc.want {
			t.Errorf("classifyRequestLine(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// FuzzClassifyRequestLine: the answer never changes once bytes are added
// to a decided start (a tunnel is routed on a prefix of what follows),
// "may be" becomes a decision as bytes come, and whatever Go's HTTP server
// reads as an HTTP/1.x request line is recognised.
func FuzzClassifyRequestLine(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\n", "POST http://a.example/x HTTP/1.0\r\n", "OPTIONS * HTTP/1.1\r\n",
		"PRI * HTTP/2.0\r\n", "SSH-2.0-x\r\n", "\x16\x03\x01\x00\x05", "GET /\xff HTTP/1.1\r\n", "GET", "",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := classifyRequestLine(data)
		for i := range len(data) {
			prefix := classifyRequestLine(data[:i])
			if prefix != mayBeRequestLine && prefix != got {
				t.Fatalf("%q is %v but its prefix %q was %v", data, got, data[:i], prefix)
			}
		}
		line, _, complete := bytes.Cut(data, []byte("\r\n"))
		if !complete {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(append(bytes.Clone(line), "\r\nHost: x\r\n\r\n"...))))
		if err == nil && req.ProtoMajor == 1 && got != isRequestLine {
			t.Fatalf("Go reads %q as %s %s %s, but it is %v", line, req.Method, req.RequestURI, req.Proto, got)
		}
	})
}
