package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"go.uber.org/goleak"
	"time"

	"github.com/egressgw/egressgw/internal/freeport"
)

// Package-wide fixtures, set up once by TestMain.
var (
	gatewayBinary string     // the egressgw binary under test
	testPKI       *pki       // CA trusted by clients; signs TLS upstreams
	testDNS       *dnsServer // resolves testZone for every gateway
)

// binaryEnv names a prebuilt egressgw to test instead of building one, for
// running the suite against a release binary.
const binaryEnv = "EGRESSGW_E2E_BINARY"

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	before := goleak.IgnoreCurrent()
	workDir, err := os.MkdirTemp("", "egressgw-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(workDir)

	if gatewayBinary, err = buildGateway(workDir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building egressgw:", err)
		return 1
	}
	if testPKI, err = newPKI(workDir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: creating test CA:", err)
		return 1
	}
	if testDNS, err = startDNSServer(testZone); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: starting test DNS server:", err)
		return 1
	}
	code := m.Run()
	testDNS.Close()
	// The shared clients may keep connections to servers a test left
	// running until the end, such as the namespace tests' canaries.
	directClient.CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
	if code == 0 {
		// The tests' own goroutines (upstreams, relays, clients) must be
		// gone once every test has cleaned up; the gateway's are checked
		// through its metrics where a test needs it (TestFaultSoak).
		if err := goleak.Find(before); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: goroutines left behind:", err)
			return 1
		}
	}
	return code
}

// buildGateway compiles cmd/egressgw into dir. When the tests themselves run
// under the race detector, so does the gateway: its data races then fail
// the test that provoked them (see gateway.cleanup).
func buildGateway(dir string) (string, error) {
	if prebuilt := os.Getenv(binaryEnv); prebuilt != "" {
		return filepath.Abs(prebuilt) // tests run commands from other directories too
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	bin := filepath.Join(dir, "egressgw")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "github.com/egressgw/egressgw/cmd/egressgw")...)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w\n%s", err, out)
	}
	return bin, nil
}

// scaled stretches a deadline when the gateway runs under the race
// detector, which slows it several times over.
func scaled(d time.Duration) time.Duration {
	if raceEnabled {
		return 3 * d
	}
	return d
}

// eventually polls cond until it returns nil or timeout passes, then fails
// with cond's last complaint. cond must be cheap and side-effect free.
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(scaled(timeout))
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not the case after %v: %v", scaled(timeout), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---- configuration ----

// configFiles maps a path relative to the config directory to its content.
type configFiles map[string]string

// writeConfig writes files into a fresh directory and returns it.
func writeConfig(t *testing.T, files configFiles) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// yamlf formats a YAML document written as an indented Go raw string: the
// common leading tabs (Go indentation) are removed, the spaces after them
// (YAML nesting) are kept, and the first line of the result is line 1.
func yamlf(format string, args ...any) string {
	lines := strings.Split(fmt.Sprintf(format, args...), "\n")
	for len(lines) > 0 && strings.TrimSpace(lines[0]) == "" {
		lines = lines[1:]
	}
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	indent := -1
	for _, line := range lines {
		if strings.TrimSpace(line) == "" {
			continue
		}
		if n := len(line) - len(strings.TrimLeft(line, "\t")); indent < 0 || n < indent {
			indent = n
		}
	}
	prefix := strings.Repeat("\t", max(indent, 0))
	for i, line := range lines {
		lines[i] = strings.TrimRight(strings.TrimPrefix(line, prefix), " \t")
	}
	return strings.Join(lines, "\n") + "\n"
}

// gatewayYAML is a gateway.yaml that lets the gateway reach loopback
// upstreams on 127.0.0.1 (and nothing else special) and resolve names
// through the test DNS server. extra holds more top-level keys.
func gatewayYAML(extra string) string {
	return yamlf(`
		network:
		  allow_cidrs: ["127.0.0.1/32"]
		  dns_servers: [%q]
	`, testDNS.Addr()) + extra
}

// inspectingGatewayYAML is gatewayYAML for a gateway that inspects tunnels
// with the CA in ca/ of the config directory (see startInspectFixture and
// the tests that copy testPKI there) and trusts the test CA for upstreams,
// whose directory config.allow_paths must list. extra holds more
// top-level keys.
func inspectingGatewayYAML(extra string) string {
	return gatewayYAML(yamlf(`
		config: { allow_paths: [%q] }
		tls:
		  ca_cert: ca/ca.pem
		  ca_key: ca/ca-key.pem
		  upstream_roots: [%q]
	`, filepath.Dir(testPKI.caFile), testPKI.caFile) + extra)
}

// credentials identify a tenant the way a sandbox does: user = tenant id,
// password = token.
type credentials struct {
	tenant string
	token  string
}

// header is the Proxy-Authorization value a client sends; none for the
// zero value.
func (c credentials) header() string {
	if c == (credentials{}) {
		return ""
	}
	return basicAuth(c.tenant, c.token)
}

func basicAuth(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// tenantYAML is a tenant file identifying c by its token's hash; body holds
// further top-level keys (connectors, rules, mode...).
func tenantYAML(c credentials, body string) string {
	return yamlf(`
		id: %s
		auth:
		  token_sha256: %q
	`, c.tenant, sha256Hex(c.token)) + body
}

// ---- the gateway process ----

// gateway is one egressgw serve process with its own ports and config.
type gateway struct {
	proxyAddr string // 127.0.0.1:P, the proxy listener
	adminAddr string // 127.0.0.1:A, the admin listener
	env       []string
	// dir is the process's working directory; "" means the test's.
	dir string

	stdout lockedBuffer // audit log
	stderr lockedBuffer // operational log

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error // valid once exited is closed
}

// newGateway reserves the gateway's ports, so a test can write them into
// the config, then start it with serve or start.
func newGateway(t *testing.T) *gateway {
	t.Helper()
	return &gateway{proxyAddr: freeAddr(t), adminAddr: freeAddr(t), env: childEnv()}
}

// startGateway serves files as the config directory and waits until ready.
func startGateway(t *testing.T, files configFiles) *gateway {
	t.Helper()
	g := newGateway(t)
	g.serve(t, files)
	return g
}

// serve writes files as the config directory and starts the gateway on it,
// logging JSON.
func (g *gateway) serve(t *testing.T, files configFiles) {
	t.Helper()
	g.start(t, "--config", writeConfig(t, files), "--log-format", "json")
}

// start runs `egressgw serve` on the reserved ports with extra arguments and
// waits until /readyz answers 200.
func (g *gateway) start(t *testing.T, args ...string) {
	t.Helper()
	args = append([]string{"serve", "--listen", g.proxyAddr, "--admin-listen", g.adminAddr}, args...)
	g.cmd = exec.Command(gatewayBinary, args...)
	g.cmd.Env = g.env
	g.cmd.Dir = g.dir
	g.cmd.Stdout = &g.stdout
	g.cmd.Stderr = &g.stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("starting egressgw: %v", err)
	}
	g.exited = make(chan struct{})
	go func() {
		g.waitErr = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(func() { g.cleanup(t) })
	g.waitReady(t)
}

func (g *gateway) waitReady(t *testing.T) {
	t.Helper()
	timeout := scaled(10 * time.Second)
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-g.exited:
			t.Fatalf("egressgw exited before becoming ready (%v); stderr:\n%s", g.waitErr, g.stderr.String())
		default:
		}
		if status, _, err := directGet("http://" + g.adminAddr + "/readyz"); err == nil && status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("egressgw not ready after %v (GET /readyz on %s); stderr:\n%s", timeout, g.adminAddr, g.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// signal sends sig to the gateway process.
func (g *gateway) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := g.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signalling egressgw: %v", err)
	}
}

// waitExit waits for the process to end and returns its exit code.
func (g *gateway) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-g.exited:
		return g.cmd.ProcessState.ExitCode()
	case <-time.After(scaled(timeout)):
		t.Fatalf("egressgw still running %v after being asked to stop; stderr:\n%s", scaled(timeout), g.stderr.String())
		return -1
	}
}

// stop asks the gateway to shut down (SIGTERM) and returns its exit code.
func (g *gateway) stop(t *testing.T) int {
	t.Helper()
	select {
	case <-g.exited:
	default:
		g.signal(t, syscall.SIGTERM)
	}
	return g.waitExit(t, 30*time.Second)
}

// cleanup stops the process if the test did not, and reports what a failed
// test needs to see: the gateway's own logs, and any data race it hit.
func (g *gateway) cleanup(t *testing.T) {
	select {
	case <-g.exited:
	default:
		g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.exited:
		case <-time.After(scaled(10 * time.Second)):
			g.cmd.Process.Kill()
			<-g.exited
		}
	}
	if stderr := g.stderr.String(); strings.Contains(stderr, "WARNING: DATA RACE") {
		t.Errorf("egressgw hit a data race:\n%s", stderr)
	}
	if t.Failed() {
		t.Logf("egressgw stderr:\n%s", tail(g.stderr.String(), 8000))
		t.Logf("egressgw stdout:\n%s", tail(g.stdout.String(), 8000))
	}
}

// tail keeps the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// freeAddr returns 127.0.0.1:P for a port that was free a moment ago and
// that a process the test starts binds later (see freeport).
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// childEnv is the environment of every process the tests start: this
// process's, without proxy variables, so neither the gateway nor a client
// picks up a proxy from the machine the suite runs on; and with the race
// detector's one-second pause at exit turned off, unless the caller set
// GORACE.
func childEnv() []string {
	var env []string
	hasGORACE := false
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY":
			continue
		case "GORACE":
			hasGORACE = true
		}
		env = append(env, kv)
	}
	if !hasGORACE {
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	return env
}

// ---- audit log ----

// auditRecords parses the audit lines (one JSON object each) written so far;
// other lines are skipped.
func (g *gateway) auditRecords() []map[string]any {
	var records []map[string]any
	for _, line := range strings.Split(g.stdout.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec != nil {
			records = append(records, rec)
		}
	}
	return records
}

// waitAudit waits for an audit record that matches and returns it.
func (g *gateway) waitAudit(t *testing.T, match func(map[string]any) bool) map[string]any {
	t.Helper()
	var found map[string]any
	eventually(t, 5*time.Second, func() error {
		records := g.auditRecords()
		for _, rec := range records {
			if match(rec) {
				found = rec
				return nil
			}
		}
		return fmt.Errorf("none of the %d audit lines on stdout matches", len(records))
	})
	return found
}

// auditWith matches records whose fields equal the given key/value pairs.
// Values compare by their printed form, so 443 matches the JSON number 443.
func auditWith(keyValues ...any) func(map[string]any) bool {
	return func(rec map[string]any) bool {
		for i := 0; i+1 < len(keyValues); i += 2 {
			got, ok := rec[keyValues[i].(string)]
			if !ok || fmt.Sprint(got) != fmt.Sprint(keyValues[i+1]) {
				return false
			}
		}
		return true
	}
}

// ruleIs reports whether a decision's rule names want: a tenant rule by its
// name, a connector by its name with or without "@version".
func ruleIs(got any, want string) bool {
	name, ok := got.(string)
	return ok && (name == want || strings.HasPrefix(name, want+"@"))
}

// auditNumber reads a numeric audit field, 0 when absent or not a number.
func auditNumber(rec map[string]any, key string) float64 {
	n, _ := rec[key].(float64)
	return n
}

// ---- clients ----

// requestTimeout bounds every client exchange, so a gateway that hangs
// fails a test instead of the whole suite.
const requestTimeout = 20 * time.Second

// directClient talks to the gateway's admin listener, never through a proxy.
var directClient = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}

// directGet fetches url without a proxy and returns status and body.
func directGet(url string) (int, string, error) {
	resp, err := directClient.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// admin fetches path from the admin listener and fails unless it is a 200.
func (g *gateway) admin(t *testing.T, path string) string {
	t.Helper()
	status, body, err := directGet("http://" + g.adminAddr + path)
	if err != nil {
		t.Fatalf("GET admin %s: %v", path, err)
	}
	if status != http.StatusOK {
		t.Fatalf("GET admin %s: status %d, body %q", path, status, body)
	}
	return body
}

// proxyURL is the proxy address with c's credentials, as HTTP_PROXY holds it.
func (g *gateway) proxyURL(c credentials) string {
	return "http://" + c.tenant + ":" + c.token + "@" + g.proxyAddr
}

// client is a Go HTTP client that uses the gateway as its proxy with c's
// credentials and trusts the test CA for HTTPS upstreams.
func (g *gateway) client(t *testing.T, c credentials) *http.Client {
	proxy := &url.URL{Scheme: "http", Host: g.proxyAddr, User: url.UserPassword(c.tenant, c.token)}
	transport := &http.Transport{
		Proxy:           http.ProxyURL(proxy),
		TLSClientConfig: &tls.Config{RootCAs: testPKI.pool},
	}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: scaled(requestTimeout)}
}

// fetch GETs url with client and returns the status and body.
func fetch(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s through the gateway: %v", url, err)
	}
	return resp.StatusCode, readBody(t, resp)
}

// dial opens a raw connection to the proxy listener.
func (g *gateway) dial(t *testing.T) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", g.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatalf("connecting to the gateway: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(scaled(requestTimeout)))
	return conn
}

// exchange sends raw bytes on a new connection to the proxy and reads one
// response to a request with the given method. The body is read in full
// (unless the response establishes a tunnel) so callers can close conn.
func (g *gateway) exchange(t *testing.T, method string, raw []byte) (*http.Response, net.Conn) {
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
		return resp, &bufferedConn{Conn: conn, reader: reader}
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the gateway's response body: %v", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, conn
}

// bufferedConn reads through the reader that parsed the CONNECT response,
// so no tunnel bytes that arrived with it are lost.
type bufferedConn struct {
	net.Conn
	reader *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.reader.Read(p) }

// send writes req to the proxy in absolute form on a fresh connection and
// returns the response with its body buffered. Use it where a test needs
// exact control over Proxy-Authorization or the request target.
func (g *gateway) send(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	req.Close = true
	var raw bytes.Buffer
	if err := req.WriteProxy(&raw); err != nil {
		t.Fatalf("encoding request: %v", err)
	}
	resp, _ := g.exchange(t, req.Method, raw.Bytes())
	return resp
}

// get sends GET target with the given Proxy-Authorization ("" for none).
func (g *gateway) get(t *testing.T, proxyAuthorization, target string) *http.Response {
	t.Helper()
	return g.request(t, http.MethodGet, proxyAuthorization, target)
}

// request sends a bodiless request with the given Proxy-Authorization (""
// for none).
func (g *gateway) request(t *testing.T, method, proxyAuthorization, target string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if proxyAuthorization != "" {
		req.Header.Set("Proxy-Authorization", proxyAuthorization)
	}
	return g.send(t, req)
}

// connect sends CONNECT authority with the given Proxy-Authorization (""
// for none). On 200 it returns the tunnel; otherwise the connection is done.
func (g *gateway) connect(t *testing.T, proxyAuthorization, authority string) (*http.Response, net.Conn) {
	t.Helper()
	raw := "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n"
	if proxyAuthorization != "" {
		raw += "Proxy-Authorization: " + proxyAuthorization + "\r\n"
	}
	return g.exchange(t, http.MethodConnect, []byte(raw+"\r\n"))
}

// tunnel opens a CONNECT tunnel and fails unless the gateway answers 200.
func (g *gateway) tunnel(t *testing.T, c credentials, authority string) net.Conn {
	t.Helper()
	resp, conn := g.connect(t, c.header(), authority)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: status %d, want 200; body %q", authority, resp.StatusCode, readBody(t, resp))
	}
	return conn
}

// pingThroughTunnel proves a tunnel to an echo server carries bytes.
func pingThroughTunnel(t *testing.T, tunnel net.Conn) {
	t.Helper()
	if _, err := tunnel.Write([]byte("ping")); err != nil {
		t.Fatalf("writing into tunnel: %v", err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(tunnel, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo through tunnel: got %q, %v; want \"ping\"", got, err)
	}
}

// httpsOverTunnel speaks TLS to host inside tunnel, sends GET path and
// returns the status and body.
func httpsOverTunnel(t *testing.T, tunnel net.Conn, host, path string) (int, string) {
	t.Helper()
	tlsConn := tls.Client(tunnel, &tls.Config{ServerName: host, RootCAs: testPKI.pool})
	req, err := http.NewRequest(http.MethodGet, "https://"+host+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := req.Write(tlsConn); err != nil {
		t.Fatalf("request inside tunnel: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tlsConn), req)
	if err != nil {
		t.Fatalf("response inside tunnel: %v", err)
	}
	return resp.StatusCode, readBody(t, resp)
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	return string(body)
}

// ---- asserting what clients see ----

// gatewayError is the JSON body of a response the gateway made itself.
type gatewayError struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
}

// assertGatewayError checks a response the gateway made itself (docs/reference.md, "What clients see"):
// status, Content-Type, X-Egressgw-Error, X-Request-Id, the JSON body, and
// for 407 the Basic challenge. It returns the decoded body.
func assertGatewayError(t *testing.T, resp *http.Response, wantStatus int, wantCode string) gatewayError {
	t.Helper()
	body := readBody(t, resp)
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
	var e gatewayError
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

// expectRefused sends a plain-HTTP request for target and asserts the
// gateway refused it with status and code without reaching any of targets.
func (g *gateway) expectRefused(t *testing.T, method, proxyAuthorization, target string, status int, code string, targets ...reachable) gatewayError {
	t.Helper()
	before := snapshotReach(targets...)
	e := assertGatewayError(t, g.request(t, method, proxyAuthorization, target), status, code)
	before.assertUnchanged(t)
	return e
}

// expectRefusedCONNECT sends CONNECT authority and asserts the gateway
// refused it with status and code without reaching any of targets.
func (g *gateway) expectRefusedCONNECT(t *testing.T, proxyAuthorization, authority string, status int, code string, targets ...reachable) gatewayError {
	t.Helper()
	before := snapshotReach(targets...)
	resp, _ := g.connect(t, proxyAuthorization, authority)
	e := assertGatewayError(t, resp, status, code)
	before.assertUnchanged(t)
	return e
}

// expectAllowedGET sends GET target with c's credentials and asserts the
// upstream's greeting came back.
func (g *gateway) expectAllowedGET(t *testing.T, c credentials, target string) {
	t.Helper()
	resp := g.get(t, c.header(), target)
	body := readBody(t, resp)
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || body != greeting(u.Path) {
		t.Errorf("GET %s: status %d, body %q; want 200 and the upstream's greeting", target, resp.StatusCode, body)
	}
}

// assertNoInternalDetail fails if a client-facing message exposes how the
// gateway failed internally (raw Go errors, its resolver's or upstream's
// address) instead of saying what the user can act on.
func assertNoInternalDetail(t *testing.T, e gatewayError) {
	t.Helper()
	for _, leak := range []string{"127.0.0.1", "dial tcp", "read tcp", "connection refused", "i/o timeout"} {
		if strings.Contains(e.Message, leak) {
			t.Errorf("message %q exposes internal detail %q", e.Message, leak)
		}
	}
}

// ---- other processes ----

// commandResult is what a finished command printed and how it exited.
type commandResult struct {
	stdout, stderr string
	exitCode       int
}

func (r commandResult) output() string { return r.stdout + r.stderr }

// run executes name with args and env (nil = childEnv) in dir
// ("" = the test's working directory) and returns what it printed. It fails
// the test only if the command cannot run at all.
func run(t *testing.T, env []string, dir, name string, args ...string) commandResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(60*time.Second))
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if env == nil {
		env = childEnv()
	}
	cmd.Env = env
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	result := commandResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s %s did not finish in time; output:\n%s", name, strings.Join(args, " "), result.output())
	case errors.As(err, &exit):
		result.exitCode = exit.ExitCode()
	case err != nil:
		t.Fatalf("running %s: %v", name, err)
	}
	return result
}

// egressgw runs a CLI command of the binary under test.
func egressgw(t *testing.T, args ...string) commandResult {
	t.Helper()
	return run(t, nil, "", gatewayBinary, args...)
}

// lookPathOrSkip returns the path of a client program, skipping the test
// when the machine does not have it.
func lookPathOrSkip(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed, so this client is not exercised: %v", name, err)
	}
	return path
}

// ---- metrics ----

// metricSample is one sample line of the Prometheus text format.
type metricSample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseMetrics reads the Prometheus text exposition format, enough of it
// for the gateway's own metrics: comments skipped, labels unescaped.
func parseMetrics(text string) ([]metricSample, error) {
	var samples []metricSample
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := metricSample{labels: map[string]string{}}
		nameEnd := strings.IndexAny(line, "{ ")
		if nameEnd < 0 {
			return nil, fmt.Errorf("metric line without value: %q", line)
		}
		s.name, line = line[:nameEnd], line[nameEnd:]
		if strings.HasPrefix(line, "{") {
			rest, err := parseLabels(line[1:], s.labels)
			if err != nil {
				return nil, fmt.Errorf("%w in %q", err, line)
			}
			line = rest
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			return nil, fmt.Errorf("metric %s without value", s.name)
		}
		value, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", s.name, err)
		}
		s.value = value
		samples = append(samples, s)
	}
	return samples, nil
}

// parseLabels reads `name="value",...}` into labels and returns what
// follows the closing brace.
func parseLabels(s string, labels map[string]string) (string, error) {
	for {
		s = strings.TrimLeft(s, " ,")
		if strings.HasPrefix(s, "}") {
			return s[1:], nil
		}
		name, rest, ok := strings.Cut(s, "=\"")
		if !ok {
			return "", errors.New("malformed labels")
		}
		var value strings.Builder
		for i := 0; ; i++ {
			if i >= len(rest) {
				return "", errors.New("unterminated label value")
			}
			c := rest[i]
			if c == '"' {
				s = rest[i+1:]
				break
			}
			if c == '\\' && i+1 < len(rest) {
				i++
				switch rest[i] {
				case 'n':
					c = '\n'
				default:
					c = rest[i]
				}
			}
			value.WriteByte(c)
		}
		labels[strings.TrimSpace(name)] = value.String()
	}
}

// sumMetric adds the samples named name that carry all of labels; found is
// false when there is none.
func sumMetric(samples []metricSample, name string, labels map[string]string) (sum float64, found bool) {
	for _, s := range samples {
		if s.name != name {
			continue
		}
		matches := true
		for k, v := range labels {
			if s.labels[k] != v {
				matches = false
				break
			}
		}
		if matches {
			sum += s.value
			found = true
		}
	}
	return sum, found
}

// metrics scrapes the admin listener's /metrics.
func (g *gateway) metrics() ([]metricSample, error) {
	status, body, err := directGet("http://" + g.adminAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: status %d", status)
	}
	return parseMetrics(body)
}
