package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"github.com/egressgw/egressgw/budget"
	"io"
	"log/slog"
	"math/big"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// This file is the harness of the request-path tests (path_*_test.go): a
// gateway built from YAML strings through New, Apply and Serve alone,
// served on loopback with its admin handler beside it, resolving names
// through a small DNS server, in front of upstreams that count every
// connection and request they get.

// Names the path tests' DNS server answers. The gateway sees a host name,
// resolves it and must check the address it dials, as in production.
const (
	zoneAPI      = "api.allowed.test"   // → 127.0.0.1, the usual allowed upstream
	zoneApex     = "allowed.test"       // → 127.0.0.1, never matched by *.allowed.test
	zoneSub      = "a.allowed.test"     // → 127.0.0.1
	zoneSubSub   = "a.b.allowed.test"   // → 127.0.0.1
	zoneReadOnly = "ro.allowed.test"    // → 127.0.0.1, behind a methods/paths connector
	zonePaste    = "paste.allowed.test" // → 127.0.0.1, denied by a tenant rule
	zoneOther    = "other.test"         // → 127.0.0.1, resolvable but in no policy
	zoneV1       = "v1.connector.test"  // → 127.0.0.1, host of connector version 1
	zoneV2       = "v2.connector.test"  // → 127.0.0.1, host of connector version 2
	zoneRebind   = "rebind.test"        // → zoneVictim, outside network.allow_cidrs
	zoneMetadata = "meta.test"          // → 169.254.169.254, cloud metadata
	zoneNXDomain = "nx.test"            // not in the zone: NXDOMAIN
	zoneVictim   = "127.0.0.2"          // where a denied name points; an upstream there must stay untouched
)

var zoneRecords = map[string]netip.Addr{
	zoneAPI:      netip.MustParseAddr("127.0.0.1"),
	zoneApex:     netip.MustParseAddr("127.0.0.1"),
	zoneSub:      netip.MustParseAddr("127.0.0.1"),
	zoneSubSub:   netip.MustParseAddr("127.0.0.1"),
	zoneReadOnly: netip.MustParseAddr("127.0.0.1"),
	zonePaste:    netip.MustParseAddr("127.0.0.1"),
	zoneOther:    netip.MustParseAddr("127.0.0.1"),
	zoneV1:       netip.MustParseAddr("127.0.0.1"),
	zoneV2:       netip.MustParseAddr("127.0.0.1"),
	zoneRebind:   netip.MustParseAddr(zoneVictim),
	zoneMetadata: netip.MustParseAddr("169.254.169.254"),
}

// pathTenant identifies a tenant the way a sandbox does: user = tenant id,
// password = token.
type pathTenant struct{ id, token string }

var (
	pathAcme    = pathTenant{"acme", "acme-token-7c1f09d24b"}
	pathWild    = pathTenant{"wild", "wild-token-2e8a51c3f0"}
	pathPinned  = pathTenant{"pinned", "pinned-token-94d0b7a6e1"}
	pathLenient = pathTenant{"lenient", "lenient-token-03b6c8e2d7"}
)

// auth is the Proxy-Authorization value the tenant's clients send.
func (c pathTenant) auth() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.id+":"+c.token))
}

// yaml is a tenant file identifying c by its token's hash, followed by
// body (rules, connectors, mode...).
func (c pathTenant) yaml(body string) string {
	sum := sha256.Sum256([]byte(c.token))
	return fmt.Sprintf("id: %s\nauth: { token_sha256: %q }\n", c.id, hex.EncodeToString(sum[:])) + body
}

// pathRule is a tenant file body with one rule allowing hosts on ports.
func pathRule(name string, hosts []string, ports ...int) string {
	quoted := make([]string, len(hosts))
	for i, h := range hosts {
		quoted[i] = strconv.Quote(h)
	}
	portList := make([]string, len(ports))
	for i, p := range ports {
		portList[i] = strconv.Itoa(p)
	}
	return fmt.Sprintf("rules:\n  - { name: %s, hosts: [%s], ports: [%s] }\n", name, strings.Join(quoted, ", "), strings.Join(portList, ", "))
}

// ---- the gateway ----

// pathGateway is a gateway serving a policy on a loopback proxy listener,
// with its admin handler on a second one; both are its own addresses.
type pathGateway struct {
	*Gateway
	addr      string // the proxy listener
	adminAddr string // the admin listener
	audit     *pathAudit
	log       *pathAudit // the operational log, debug level included
	registry  *prometheus.Registry
	// network holds more lines for the network block of gateway.yaml,
	// indented by two spaces; set it before serve.
	network string
	// hooks runs the policy's hook scripts; set it before serve (nil: a
	// hooked request fails closed).
	hooks *hooks.Runtime

	proxyLn, adminLn net.Listener
	dns              string // network.dns_servers entry
	// ledger, set before serve, counts budgets; nil: the gateway's own.
	ledger *budget.Ledger
}

// startPathGateway is newPathGateway then serve.
func startPathGateway(t *testing.T, gatewayExtra string, files map[string]string) *pathGateway {
	t.Helper()
	g := newPathGateway(t)
	g.serve(t, gatewayExtra, files)
	return g
}

// newPathGateway takes the gateway's listeners and DNS server, so a test
// can write their addresses into the policy before serve.
func newPathGateway(t *testing.T) *pathGateway {
	t.Helper()
	g := &pathGateway{audit: &pathAudit{}, log: &pathAudit{}, registry: prometheus.NewRegistry(), dns: startPathDNS(t)}
	var err error
	if g.proxyLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.proxyLn.Close() })
	if g.adminLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.adminLn.Close() })
	g.addr, g.adminAddr = g.proxyLn.Addr().String(), g.adminLn.Addr().String()
	return g
}

// serve loads files (paths relative to the config directory; gateway.yaml
// is generated: loopback upstreams allowed, names resolved through the
// zone above, then gatewayExtra) and serves them until the test ends.
func (g *pathGateway) serve(t *testing.T, gatewayExtra string, files map[string]string) {
	t.Helper()
	fsys := fstest.MapFS{
		"gateway.yaml": {Data: []byte(fmt.Sprintf("network:\n  allow_cidrs: [\"127.0.0.1/32\"]\n  dns_servers: [%q]\n", g.dns) + g.network + gatewayExtra)},
	}
	for name, content := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(content)}
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatalf("loading the policy: %v", err)
	}
	gw, err := New(Options{
		Logger:    slog.New(slog.NewJSONHandler(g.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Audit:     g.audit,
		Registry:  g.registry,
		Listeners: []netip.AddrPort{netip.MustParseAddrPort(g.addr), netip.MustParseAddrPort(g.adminAddr)},
		Settings:  snap.Gateway,
		Quota:     quota.NewMemory(quota.MemoryOptions{}),
		Bandwidth: quota.NewBandwidth(quota.BandwidthOptions{}),
		Ledger:    g.ledger,
		Hooks:     g.hooks,
	})
	if err != nil {
		t.Fatal(err)
	}
	g.Gateway = gw
	gw.Apply(snap)
	admin := &http.Server{Handler: gw.AdminHandler(&ConfigStatus{Source: "path test"}), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 2)
	go func() { served <- gw.Serve(g.proxyLn) }()
	go func() { served <- admin.Serve(g.adminLn) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := gw.Shutdown(ctx); err != nil {
			t.Errorf("shutting the gateway down: %v", err)
		}
		admin.Close()
		for range 2 {
			<-served
		}
	})
}

// client is a Go HTTP client that uses the gateway as its proxy with c's
// credentials and trusts roots for HTTPS upstreams.
func (g *pathGateway) client(t *testing.T, c pathTenant, roots *x509.CertPool) *http.Client {
	proxyURL := &url.URL{Scheme: "http", Host: g.addr, User: url.UserPassword(c.id, c.token)}
	transport := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: roots}}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: pathGuard}
}

// pathGuard bounds every client exchange: far beyond what any path test
// needs, so a gateway that hangs fails the test instead of the package.
const pathGuard = 20 * time.Second

// dial opens a raw connection to the proxy listener.
func (g *pathGateway) dial(t *testing.T) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("connecting to the gateway: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(pathGuard))
	return conn
}

// exchange sends raw on a new connection and reads one response to a
// request with method. The body is read in full unless the response opens
// a tunnel, which the returned connection then carries.
func (g *pathGateway) exchange(t *testing.T, method string, raw []byte) (*http.Response, net.Conn) {
	t.Helper()
	conn := g.dial(t)
	if _, err := conn.Write(raw); err != nil {
		t.Fatalf("writing to the gateway: %v", err)
	}
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the gateway's response to %s: %v", method, err)
	}
	if method == http.MethodConnect && resp.StatusCode == http.StatusOK {
		resp.Body = http.NoBody // what follows belongs to the tunnel
		return resp, &pathBufferedConn{Conn: conn, reader: reader}
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the gateway's response body: %v", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, conn
}

// pathBufferedConn reads through the reader that parsed the CONNECT
// response, so no tunnel bytes that arrived with it are lost.
type pathBufferedConn struct {
	net.Conn
	reader *bufio.Reader
}

func (c *pathBufferedConn) Read(p []byte) (int, error) { return c.reader.Read(p) }

// request sends a bodiless request in absolute form with the given
// Proxy-Authorization ("" for none) and returns the response, body
// buffered.
func (g *pathGateway) request(t *testing.T, method, proxyAuthorization, target string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if proxyAuthorization != "" {
		req.Header.Set("Proxy-Authorization", proxyAuthorization)
	}
	req.Close = true
	var raw bytes.Buffer
	if err := req.WriteProxy(&raw); err != nil {
		t.Fatalf("encoding the request: %v", err)
	}
	resp, _ := g.exchange(t, method, raw.Bytes())
	return resp
}

// connect sends CONNECT authority with the given Proxy-Authorization (""
// for none). On 200 it returns the tunnel.
func (g *pathGateway) connect(t *testing.T, proxyAuthorization, authority string) (*http.Response, net.Conn) {
	t.Helper()
	raw := "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n"
	if proxyAuthorization != "" {
		raw += "Proxy-Authorization: " + proxyAuthorization + "\r\n"
	}
	return g.exchange(t, http.MethodConnect, []byte(raw+"\r\n"))
}

// tunnel opens a CONNECT tunnel and fails unless the gateway answers 200.
func (g *pathGateway) tunnel(t *testing.T, c pathTenant, authority string) net.Conn {
	t.Helper()
	resp, conn := g.connect(t, c.auth(), authority)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: status %d, want 200; body %q", authority, resp.StatusCode, pathBody(t, resp))
	}
	return conn
}

// expectRefused sends a plain-HTTP request for target and asserts the
// gateway refused it with status and code without reaching any of targets.
func (g *pathGateway) expectRefused(t *testing.T, method, proxyAuthorization, target string, status int, code string, targets ...pathReachable) pathRefusal {
	t.Helper()
	before := pathSnapshotReach(targets...)
	e := assertPathRefusal(t, g.request(t, method, proxyAuthorization, target), status, code)
	before.assertUnchanged(t)
	return e
}

// expectRefusedCONNECT sends CONNECT authority and asserts the gateway
// refused it with status and code without reaching any of targets.
func (g *pathGateway) expectRefusedCONNECT(t *testing.T, proxyAuthorization, authority string, status int, code string, targets ...pathReachable) pathRefusal {
	t.Helper()
	before := pathSnapshotReach(targets...)
	resp, _ := g.connect(t, proxyAuthorization, authority)
	e := assertPathRefusal(t, resp, status, code)
	before.assertUnchanged(t)
	return e
}

// expectAllowedGET sends GET target as c and asserts the upstream's
// greeting came back.
func (g *pathGateway) expectAllowedGET(t *testing.T, c pathTenant, target string) {
	t.Helper()
	resp := g.request(t, http.MethodGet, c.auth(), target)
	body := pathBody(t, resp)
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || body != pathGreeting(u.Path) {
		t.Errorf("GET %s: status %d, body %q; want 200 and the upstream's greeting", target, resp.StatusCode, body)
	}
}

// httpsOverTunnel speaks TLS to upstream u as host inside tunnel, sends
// GET path and returns the status and body.
func httpsOverTunnel(t *testing.T, tunnel net.Conn, u *pathUpstream, host, path string) (int, string) {
	t.Helper()
	tlsConn := tls.Client(tunnel, &tls.Config{ServerName: host, RootCAs: u.roots()})
	req, err := http.NewRequest(http.MethodGet, "https://"+host+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := req.Write(tlsConn); err != nil {
		t.Fatalf("request inside the tunnel: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tlsConn), req)
	if err != nil {
		t.Fatalf("response inside the tunnel: %v", err)
	}
	return resp.StatusCode, pathBody(t, resp)
}

// pingThroughTunnel proves a tunnel to an echo server carries bytes.
func pingThroughTunnel(t *testing.T, tunnel net.Conn) {
	t.Helper()
	if _, err := tunnel.Write([]byte("ping")); err != nil {
		t.Fatalf("writing into the tunnel: %v", err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(tunnel, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo through the tunnel: got %q, %v; want \"ping\"", got, err)
	}
}

func pathBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the response body: %v", err)
	}
	return string(body)
}

// ---- what clients see ----

// pathRefusal is the JSON body of a response the gateway made itself.
type pathRefusal struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
}

// assertPathRefusal checks a response the gateway made itself
// (docs/reference.md, "What clients see"): status, Content-Type,
// X-Egressgw-Error, X-Request-Id, the JSON body, and for 407 the Basic
// challenge. It returns the decoded body.
func assertPathRefusal(t *testing.T, resp *http.Response, wantStatus int, wantCode string) pathRefusal {
	t.Helper()
	body := pathBody(t, resp)
	errorf := func(format string, args ...any) {
		t.Helper()
		t.Errorf("%s (status %d, headers %v, body %q)", fmt.Sprintf(format, args...), resp.StatusCode, resp.Header, body)
	}
	if resp.StatusCode != wantStatus {
		errorf("status %d, want %d", resp.StatusCode, wantStatus)
	}
	if mediaType, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mediaType != "application/json" {
		errorf("Content-Type %q, want application/json", resp.Header.Get("Content-Type"))
	}
	if got := resp.Header.Get("X-Egressgw-Error"); got != wantCode {
		errorf("X-Egressgw-Error %q, want %q", got, wantCode)
	}
	requestID := resp.Header.Get("X-Request-Id")
	if requestID == "" {
		errorf("no X-Request-Id header")
	}
	if wantStatus == http.StatusProxyAuthRequired {
		if got := resp.Header.Get("Proxy-Authenticate"); got != `Basic realm="egressgw"` {
			errorf("Proxy-Authenticate %q, want %q", got, `Basic realm="egressgw"`)
		}
	}
	var e pathRefusal
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		errorf("body is not JSON: %v", err)
		return e
	}
	if e.Error != wantCode {
		errorf("body error %q, want %q", e.Error, wantCode)
	}
	if e.Message == "" {
		errorf("body has no message")
	}
	if e.RequestID != requestID {
		errorf("body request_id %q differs from X-Request-Id %q", e.RequestID, requestID)
	}
	return e
}

// assertNoInternalDetail fails if a client-facing message exposes how the
// gateway failed internally (raw Go errors, its resolver's or upstream's
// address) instead of saying what the user can act on.
func assertNoInternalDetail(t *testing.T, e pathRefusal) {
	t.Helper()
	for _, leak := range []string{"127.0.0.1", "dial tcp", "read tcp", "connection refused", "i/o timeout"} {
		if strings.Contains(e.Message, leak) {
			t.Errorf("message %q exposes internal detail %q", e.Message, leak)
		}
	}
}

// metric sums the samples of the counter or gauge name whose labels
// include labels, and reports whether there were any.
func (g *pathGateway) metric(t *testing.T, name string, labels map[string]string) (sum float64, found bool) {
	t.Helper()
	families, err := g.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	samples:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue samples
				}
			}
			found = true
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum, found
}

// eventually polls cond until it returns nil, failing with its last error
// after pathGuard.
func eventually(t *testing.T, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(pathGuard)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- the audit log ----

// pathAudit is the gateway's audit (or operational) output: a buffer safe
// to read while the gateway writes it.
type pathAudit struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (a *pathAudit) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.buf.Write(p)
}

func (a *pathAudit) String() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.buf.String()
}

// records parses the audit lines written so far.
func (a *pathAudit) records() []map[string]any {
	a.mu.Lock()
	text := a.buf.String()
	a.mu.Unlock()
	var records []map[string]any
	for _, line := range strings.Split(text, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec != nil {
			records = append(records, rec)
		}
	}
	return records
}

// wait polls for an audit record whose fields equal keyValues (compared
// by their printed form, so 443 matches the JSON number 443).
func (a *pathAudit) wait(t *testing.T, keyValues ...any) map[string]any {
	t.Helper()
	deadline := time.Now().Add(pathGuard)
	for {
		records := a.records()
		for _, rec := range records {
			if auditMatches(rec, keyValues...) {
				return rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("none of the %d audit lines has %v", len(records), keyValues)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func auditMatches(rec map[string]any, keyValues ...any) bool {
	for i := 0; i+1 < len(keyValues); i += 2 {
		got, ok := rec[keyValues[i].(string)]
		if !ok || fmt.Sprint(got) != fmt.Sprint(keyValues[i+1]) {
			return false
		}
	}
	return true
}

// ---- upstreams ----

// pathReachable is a server a refused request must not reach.
type pathReachable interface {
	// reached counts connections accepted plus requests served; requests
	// matter because a wrongly forwarded request may reuse a pooled
	// connection.
	reached() int64
	String() string
}

// pathReach remembers how often some targets were reached, so a test can
// prove that a refused request never left the gateway.
type pathReach map[pathReachable]int64

func pathSnapshotReach(targets ...pathReachable) pathReach {
	s := make(pathReach, len(targets))
	for _, target := range targets {
		s[target] = target.reached()
	}
	return s
}

// assertUnchanged fails if any target was reached since the snapshot.
func (s pathReach) assertUnchanged(t *testing.T) {
	t.Helper()
	for target, before := range s {
		if now := target.reached(); now != before {
			t.Errorf("%s was reached %d time(s) by a request the gateway should have refused", target, now-before)
		}
	}
}

// pathSeen is what an upstream recorded about one request it served.
type pathSeen struct {
	Method string
	Host   string
	Path   string
	Query  string
	Header http.Header
}

// pathUpstream is an HTTP or HTTPS origin on a loopback address that
// records every connection and request it receives.
type pathUpstream struct {
	server *httptest.Server
	ip     string
	port   int
	scheme string

	conns atomic.Int64
	mu    sync.Mutex
	seen  []pathSeen
}

// pathGreeting is the body the default upstream handler answers with.
func pathGreeting(path string) string { return "hello from upstream, path " + path }

var pathGreet = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, pathGreeting(r.URL.Path))
})

// startPathUpstream serves handler (a greeting when nil) on ip, over TLS
// when useTLS with a certificate for every zone name (see roots).
func startPathUpstream(t *testing.T, ip string, useTLS bool, handler http.Handler) *pathUpstream {
	t.Helper()
	if handler == nil {
		handler = pathGreet
	}
	ln := listenOrSkip(t, ip)
	u := &pathUpstream{ip: ip, port: ln.Addr().(*net.TCPAddr).Port, scheme: "http"}
	u.server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, pathSeen{Method: r.Method, Host: r.Host, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone()})
		u.mu.Unlock()
		handler.ServeHTTP(w, r)
	}))
	u.server.Listener.Close()
	u.server.Listener = ln
	u.server.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			u.conns.Add(1)
		}
	}
	if useTLS {
		u.scheme = "https"
		u.server.TLS = &tls.Config{Certificates: []tls.Certificate{zoneCertificate(t)}}
		u.server.StartTLS()
	} else {
		u.server.Start()
	}
	t.Cleanup(u.server.Close)
	return u
}

// roots trusts the upstream's certificate.
func (u *pathUpstream) roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(u.server.Certificate())
	return pool
}

// zoneCertificate is a self-signed certificate for every zone name and
// 127.0.0.1, made once for the package: clients check the name they
// asked for, and the gateway matches a tunnel's SNI with its CONNECT.
var zoneCertificate = func() func(t *testing.T) tls.Certificate {
	made := sync.OnceValues(func() (tls.Certificate, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return tls.Certificate{}, err
		}
		names := []string{"*." + zoneApex, "*.b." + zoneApex}
		for name := range zoneRecords {
			names = append(names, name)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "egressgw path tests"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			DNSNames:              names,
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			return tls.Certificate{}, err
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
	})
	return func(t *testing.T) tls.Certificate {
		t.Helper()
		cert, err := made()
		if err != nil {
			t.Fatalf("making the zone certificate: %v", err)
		}
		return cert
	}
}()

// url is the address of path on this upstream under the given host name.
func (u *pathUpstream) url(host, path string) string {
	return u.scheme + "://" + u.authority(host) + path
}

// authority is host:port for CONNECT.
func (u *pathUpstream) authority(host string) string {
	return net.JoinHostPort(host, strconv.Itoa(u.port))
}

func (u *pathUpstream) reached() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.conns.Load() + int64(len(u.seen))
}

func (u *pathUpstream) String() string {
	return fmt.Sprintf("%s upstream %s:%d", u.scheme, u.ip, u.port)
}

// requestsTo returns the requests served so far for path.
func (u *pathUpstream) requestsTo(path string) []pathSeen {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []pathSeen
	for _, r := range u.seen {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// pathTCPServer accepts raw TCP connections and hands each to handle: an
// echo service behind a tunnel, or a server that never answers.
type pathTCPServer struct {
	ln       net.Listener
	port     int
	accepted atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// echoConn writes back everything it reads.
func echoConn(c net.Conn) { io.Copy(c, c) }

// silentConn reads and discards everything and never writes.
func silentConn(c net.Conn) { io.Copy(io.Discard, c) }

func startPathTCPServer(t *testing.T, ip string, handle func(net.Conn)) *pathTCPServer {
	t.Helper()
	ln := listenOrSkip(t, ip)
	s := &pathTCPServer{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, conns: map[net.Conn]struct{}{}}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close() // releases handlers blocked in Read
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *pathTCPServer) reached() int64 { return s.accepted.Load() }

func (s *pathTCPServer) String() string { return "tcp server " + s.ln.Addr().String() }

// authority is host:port for CONNECT.
func (s *pathTCPServer) authority(host string) string {
	return net.JoinHostPort(host, strconv.Itoa(s.port))
}

// listenOrSkip listens on a free TCP port of ip. Addresses other than
// 127.0.0.1 are loopback on Linux but not everywhere, hence the skip.
func listenOrSkip(t *testing.T, ip string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s (this test needs it as a loopback address): %v", ip, err)
	}
	return ln
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// pathInspecting is gateway.yaml text for a gateway that inspects
// tunnels, signing with the zone certificate (a CA too) and trusting it
// for upstreams; pathInspectingFiles holds the files it names.
const pathInspecting = "tls:\n  ca_cert: ca/ca.pem\n  ca_key: ca/ca-key.pem\n  upstream_roots: [ca/ca.pem]\n"

func pathInspectingFiles(t *testing.T, files map[string]string) map[string]string {
	t.Helper()
	cert := zoneCertificate(t)
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	files["ca/ca.pem"] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	files["ca/ca-key.pem"] = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))
	return files
}

// zoneRoots trusts the zone certificate: the upstreams' and, as a CA,
// the leaves an inspecting gateway makes.
func zoneRoots(t *testing.T) *x509.CertPool {
	t.Helper()
	leaf, err := x509.ParseCertificate(zoneCertificate(t).Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return pool
}

// ---- DNS ----

// startPathDNS serves zoneRecords over UDP on loopback until the test
// ends and returns its address, as network.dns_servers takes it. Unknown
// names get NXDOMAIN.
func startPathDNS(t *testing.T) string {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	records := make(map[string]netip.Addr, len(zoneRecords))
	for name, addr := range zoneRecords {
		records[name+"."] = addr
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			if reply, err := answerDNS(records, buf[:n]); err == nil {
				_, _ = conn.WriteTo(reply, from)
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return conn.LocalAddr().String()
}

// answerDNS builds the reply to one query. It is authoritative and claims
// recursion, as Go's resolver treats a non-authoritative, non-recursive
// empty answer as a lame referral and tries the next server.
func answerDNS(records map[string]netip.Addr, query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	addr, known := records[strings.ToLower(q.Name.String())]
	reply := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if !known {
		reply.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, reply)
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if known && q.Type == dnsmessage.TypeA && addr.Is4() {
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
		if err := b.AResource(rh, dnsmessage.AResource{A: addr.As4()}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// admin fetches path from the admin listener and fails unless it is a 200.
func (g *pathGateway) admin(t *testing.T, path string) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: pathGuard}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + g.adminAddr + path)
	if err != nil {
		t.Fatalf("GET admin %s: %v", path, err)
	}
	body := pathBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET admin %s: status %d, body %q", path, resp.StatusCode, body)
	}
	return body
}

// jsonEcho answers with what it received, as JSON, plus an internal field
// a response filter is meant to remove.
var jsonEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"method": r.Method, "path": r.URL.Path, "stamp": r.Header.Get("X-Stamp"),
		"body": string(body), "internal_id": "db-7731",
	})
})

// startDNSReplier serves a resolver that answers every query with rcode
// and no record, and returns its address. When silent it answers nothing
// while the test runs, and everything as it ends: Go's resolver keeps a
// lookup the gateway gave up on (dns_timeout) reading for its own
// timeout, which would outlive the test.
func startDNSReplier(t *testing.T, rcode dnsmessage.RCode, silent bool) string {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	type query struct {
		from    net.Addr
		payload []byte
	}
	var mu sync.Mutex
	var held []query
	reply := func(q query) {
		var p dnsmessage.Parser
		h, err := p.Start(q.payload)
		if err != nil {
			return
		}
		question, err := p.Question()
		if err != nil {
			return
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true, RCode: rcode})
		if b.StartQuestions() != nil || b.Question(question) != nil {
			return
		}
		if answer, err := b.Finish(); err == nil {
			_, _ = conn.WriteTo(answer, q.from)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			q := query{from: from, payload: bytes.Clone(buf[:n])}
			if silent {
				mu.Lock()
				held = append(held, q)
				mu.Unlock()
				continue
			}
			reply(q)
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		for _, q := range held {
			reply(q)
		}
		mu.Unlock()
		conn.Close()
		<-done
	})
	return conn.LocalAddr().String()
}
