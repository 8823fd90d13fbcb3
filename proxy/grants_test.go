package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressgw/egressgw/internal/redistest"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/state"
)

// grantPolicy lets tenant acme (token benchToken) reach allowed.example
// only, with loopback addresses dialable so that tests' upstreams can be
// granted; report makes acme a report-mode tenant.
func grantPolicy(t *testing.T, report bool) *policy.Snapshot {
	return grantPolicyMode(t, report)
}

// grantPolicyFor is grantPolicy in enforce mode, for benchmarks.
func grantPolicyFor(tb testing.TB) *policy.Snapshot { return grantPolicyMode(tb, false) }

func grantPolicyMode(t testing.TB, report bool) *policy.Snapshot {
	t.Helper()
	sum := sha256.Sum256([]byte(benchToken))
	mode := ""
	if report {
		mode = "mode: report\n"
	}
	fsys := fstest.MapFS{
		"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\n")},
		"tenants/acme.yaml": {Data: []byte("id: acme\n" + mode + "auth: { token_sha256: \"" + hex.EncodeToString(sum[:]) +
			"\" }\nrules:\n  - { name: allowed, hosts: [\"allowed.example\"] }\n  - { name: no-secret, action: deny, hosts: [\"127.0.0.1\"], ports: [1] }\n")},
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// fileStore is a real file-backed state store in a temporary directory.
func fileStore(t *testing.T) *state.File {
	t.Helper()
	s, err := state.NewFile(state.FileOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// serveGrantGateway is a gateway serving snap on a loopback listener with
// store as its state store.
func serveGrantGateway(t *testing.T, snap *policy.Snapshot, store state.Store) *servedGateway {
	t.Helper()
	return serveGrantGatewayLogging(t, snap, store, slog.New(slog.DiscardHandler))
}

func serveGrantGatewayLogging(t *testing.T, snap *policy.Snapshot, store state.Store, log *slog.Logger) *servedGateway {
	t.Helper()
	sg := &servedGateway{audit: &flakyWriter{}}
	g, err := New(Options{
		Logger:    log,
		Audit:     sg.audit,
		Registry:  prometheus.NewRegistry(),
		Quota:     quota.NewMemory(quota.MemoryOptions{}),
		Bandwidth: quota.NewBandwidth(quota.BandwidthOptions{}),
		Settings:  snap.Gateway,
		State:     store,
	})
	if err != nil {
		t.Fatal(err)
	}
	g.Apply(snap)
	sg.Gateway = g
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sg.addr = ln.Addr().String()
	go sg.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sg.Shutdown(ctx)
	})
	return sg
}

// countedUpstream is an HTTP upstream that counts the requests reaching it.
func countedUpstream(t *testing.T) (host, port string, hits *atomic.Int64) {
	t.Helper()
	hits = &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "hello")
	}))
	t.Cleanup(srv.Close)
	host, port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return host, port, hits
}

// refusalBody is the gateway's JSON error with its access request.
type refusalBody struct {
	Error         string            `json:"error"`
	Message       string            `json:"message"`
	AccessRequest *state.RequestRef `json:"access_request"`
}

func readRefusalBody(t *testing.T, r io.Reader) refusalBody {
	t.Helper()
	var body refusalBody
	if err := json.NewDecoder(r).Decode(&body); err != nil {
		t.Fatalf("decoding the refusal: %v", err)
	}
	return body
}

// connect opens a CONNECT tunnel to authority as acme and returns the
// connection and the response head.
func (sg *servedGateway) connect(t *testing.T, authority string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", sg.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	req := "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\nProxy-Authorization: Basic " + basicEncode("acme", benchToken) + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("reading the CONNECT response: %v", err)
	}
	return conn, br, resp
}

// get sends a plain GET of url through the gateway as acme, reading the
// whole response.
func (sg *servedGateway) get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, _ := sg.send(t, mustRequest(t, url))
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body of %s: %v", url, err)
	}
	return resp, body
}

// tryStatus sends a GET for url and reads the whole response, returning
// its status, or the error that cut it short.
func (sg *servedGateway) tryStatus(t *testing.T, url string) (int, error) {
	t.Helper()
	conn, err := net.Dial("tcp", sg.addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	req := mustRequest(t, url)
	req.Header.Set("Proxy-Authorization", "Basic "+basicEncode("acme", benchToken))
	if err := req.WriteProxy(conn); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return 0, err
	}
	_, err = io.ReadAll(resp.Body)
	return resp.StatusCode, err
}

// metricValue sums the samples of a counter family with the given labels.
func (sg *servedGateway) metricValue(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := sg.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metric
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

// eventually polls cond until it holds or within passes, and fails with
// what.
func pollWithin(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// grantWait bounds the polls for a grant change: the gateway applies one
// within 2 s (docs/reference.md); the margin is for a loaded machine.
const grantWait = 8 * time.Second

func addGrant(t *testing.T, store state.Store, host string, port int, expires time.Time) state.Grant {
	t.Helper()
	g, err := store.AddGrant(context.Background(), state.GrantSpec{
		Tenant: "acme", Host: host, Ports: []int{port}, ExpiresAt: expires, By: "admin",
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// Every destination_not_allowed refusal, plain or CONNECT, is recorded as
// an access request, whose id and status the 403 carries; nothing reaches
// the upstream; the stored request has the path without its query.
func TestRefusalRecordsAccessRequest(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	host, port, hits := countedUpstream(t)

	resp, body := sg.get(t, "http://"+net.JoinHostPort(host, port)+"/simple/pkg?token=s3cret")
	refusal := readRefusalBody(t, strings.NewReader(string(body)))
	if resp.StatusCode != http.StatusForbidden || refusal.Error != "destination_not_allowed" {
		t.Fatalf("got %d %q, want 403 destination_not_allowed", resp.StatusCode, refusal.Error)
	}
	if refusal.AccessRequest == nil || refusal.AccessRequest.ID == "" || refusal.AccessRequest.Status != state.StatusPending {
		t.Fatalf("access_request %+v, want a pending one with an id", refusal.AccessRequest)
	}
	reqs, err := store.ListRequests(context.Background(), state.Filter{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 1 || reqs[0].ID != refusal.AccessRequest.ID || reqs[0].Host != host || reqs[0].Method != "GET" ||
		reqs[0].Path != "/simple/pkg" || reqs[0].ReportMode {
		t.Fatalf("stored requests %+v", reqs)
	}

	// The CONNECT refusal on the same host and port folds into it.
	conn, br, cresp := sg.connect(t, net.JoinHostPort(host, port))
	creq := readRefusalBody(t, br)
	conn.Close()
	if cresp.StatusCode != http.StatusForbidden || creq.AccessRequest == nil || creq.AccessRequest.ID != refusal.AccessRequest.ID {
		t.Fatalf("CONNECT: %d, access_request %+v; want 403 with %s", cresp.StatusCode, creq.AccessRequest, refusal.AccessRequest.ID)
	}
	pollWithin(t, grantWait, "the count of the folded refusal", func() bool {
		reqs, err := store.ListRequests(context.Background(), state.Filter{Tenant: "acme"})
		return err == nil && len(reqs) == 1 && reqs[0].Count == 2
	})
	if n := hits.Load(); n != 0 {
		t.Errorf("the upstream got %d requests", n)
	}
	rec := sg.auditLine(t, "/simple/pkg")
	if rec.Code != "destination_not_allowed" || strings.Contains(sg.audit.String(), "s3cret") {
		t.Errorf("audit line %+v (or the query leaked)", rec)
	}
}

// Refusals that are not destination_not_allowed, and requests without
// credentials, file no access request and carry none.
func TestOtherRefusalsRecordNothing(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)

	// No credentials.
	conn, err := net.Dial("tcp", sg.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(hangGuard))
	req := mustRequest(t, "http://unknown.example/x")
	if err := req.WriteProxy(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readRefusalBody(t, resp.Body); resp.StatusCode != http.StatusProxyAuthRequired || body.AccessRequest != nil {
		t.Errorf("unauthenticated: %d %+v", resp.StatusCode, body)
	}
	// A metadata address: destination_ip_denied, not a request.
	resp, body := sg.get(t, "http://169.254.169.254/latest/meta-data")
	if refusal := readRefusalBody(t, strings.NewReader(string(body))); resp.StatusCode != http.StatusForbidden ||
		refusal.Error != "destination_not_allowed" || refusal.AccessRequest == nil {
		t.Fatalf("metadata host without a rule: %d %+v", resp.StatusCode, refusal)
	}
	// Malformed: bad_request.
	resp, body = sg.get(t, "http://allowed.example/a/../b")
	if refusal := readRefusalBody(t, strings.NewReader(string(body))); resp.StatusCode != http.StatusBadRequest || refusal.AccessRequest != nil {
		t.Errorf("ambiguous path: %d %+v", resp.StatusCode, refusal)
	}
	reqs, err := store.ListRequests(context.Background(), state.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 1 || reqs[0].Host != "169.254.169.254" {
		t.Errorf("stored requests %+v, want only the destination_not_allowed one", reqs)
	}
}

// A report-mode tenant's would-be denial is recorded as such; the request
// went through, so no body carries it.
func TestReportModeRecordsWouldBeDenials(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, true), store)
	host, port, hits := countedUpstream(t)
	resp, body := sg.get(t, "http://"+net.JoinHostPort(host, port)+"/report")
	if resp.StatusCode != http.StatusOK || string(body) != "hello" || hits.Load() != 1 {
		t.Fatalf("report mode: %d %q, %d upstream hits", resp.StatusCode, body, hits.Load())
	}
	reqs, err := store.ListRequests(context.Background(), state.Filter{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 1 || !reqs[0].ReportMode || reqs[0].Path != "/report" {
		t.Errorf("stored requests %+v, want one in report mode", reqs)
	}
}

// A store that fails leaves the refusal as it was: 403
// destination_not_allowed, without access_request, counted.
func TestRefusalSurvivesStoreErrors(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	host, port, hits := countedUpstream(t)
	resp, body := sg.get(t, "http://"+net.JoinHostPort(host, port)+"/x")
	refusal := readRefusalBody(t, strings.NewReader(string(body)))
	if resp.StatusCode != http.StatusForbidden || refusal.Error != "destination_not_allowed" || refusal.AccessRequest != nil {
		t.Errorf("with the store closed: %d %+v", resp.StatusCode, refusal)
	}
	if hits.Load() != 0 {
		t.Errorf("the upstream got %d requests", hits.Load())
	}
	if n := sg.metricValue(t, "egressgw_state_errors_total", map[string]string{"operation": "record_refusal"}); n < 1 {
		t.Errorf("egressgw_state_errors_total{operation=record_refusal} = %v", n)
	}
}

// A grant added in the store applies within 2 s: the request it allows is
// forwarded and audited with rule grant:ID; ports it does not name stay
// refused.
func TestGrantAllowsRequests(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	host, port, hits := countedUpstream(t)
	url := "http://" + net.JoinHostPort(host, port) + "/granted"

	if resp, _ := sg.get(t, url); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("before the grant: %d", resp.StatusCode)
	}
	g := addGrant(t, store, host, atoi(t, port), time.Now().Add(time.Hour))
	var resp *http.Response
	var body []byte
	pollWithin(t, grantWait, "the grant applied", func() bool {
		resp, body = sg.get(t, url)
		return resp.StatusCode == http.StatusOK
	})
	if string(body) != "hello" {
		t.Errorf("body %q", body)
	}
	pollWithin(t, hangGuard, "an audit line with rule grant:"+g.ID, func() bool {
		return strings.Contains(sg.audit.String(), `"decision":"allow","code":"ok","rule":"grant:`+g.ID+`","status":200`)
	})
	// The grant names one port: another is refused still.
	other, _ := sg.get(t, "http://"+net.JoinHostPort(host, "1")+"/other")
	if other.StatusCode != http.StatusForbidden {
		t.Errorf("a port the grant does not name: %d", other.StatusCode)
	}
	if hits.Load() == 0 {
		t.Errorf("the upstream saw nothing")
	}
}

// A grant never waives network safety: the metadata address is refused
// with destination_ip_denied although a grant names it.
func TestGrantKeepsNetworkSafety(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	addGrant(t, store, "169.254.169.254", 80, time.Now().Add(time.Hour))
	host, port, _ := countedUpstream(t)
	// A second grant, to see when grants have been read.
	addGrant(t, store, host, atoi(t, port), time.Now().Add(time.Hour))
	pollWithin(t, grantWait, "grants read", func() bool {
		resp, _ := sg.get(t, "http://"+net.JoinHostPort(host, port)+"/ready")
		return resp.StatusCode == http.StatusOK
	})
	resp, body := sg.get(t, "http://169.254.169.254/latest/meta-data")
	refusal := readRefusalBody(t, strings.NewReader(string(body)))
	if resp.StatusCode != http.StatusForbidden || refusal.Error != "destination_ip_denied" {
		t.Errorf("metadata address under a grant: %d %+v", resp.StatusCode, refusal)
	}
	conn, br, cresp := sg.connect(t, "169.254.169.254:80")
	defer conn.Close()
	if refusal := readRefusalBody(t, br); cresp.StatusCode != http.StatusForbidden || refusal.Error != "destination_ip_denied" {
		t.Errorf("CONNECT to the metadata address under a grant: %d %+v", cresp.StatusCode, refusal)
	}
}

// A grant with methods or paths cannot be checked inside an opaque
// tunnel: the CONNECT is refused with a message saying why.
func TestGrantWithPathsRefusesTunnels(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	host, port, hits := countedUpstream(t)
	if _, err := store.AddGrant(context.Background(), state.GrantSpec{
		Tenant: "acme", Host: host, Ports: []int{atoi(t, port)}, Paths: []string{"/v1/"}, ExpiresAt: time.Now().Add(time.Hour), By: "admin",
	}); err != nil {
		t.Fatal(err)
	}
	pollWithin(t, grantWait, "the grant applied", func() bool {
		resp, _ := sg.get(t, "http://"+net.JoinHostPort(host, port)+"/v1/x")
		return resp.StatusCode == http.StatusOK
	})
	before := hits.Load()
	conn, br, resp := sg.connect(t, net.JoinHostPort(host, port))
	defer conn.Close()
	refusal := readRefusalBody(t, br)
	if resp.StatusCode != http.StatusForbidden || refusal.Error != "destination_not_allowed" || !strings.Contains(refusal.Message, "tunnel") {
		t.Errorf("CONNECT under a grant with paths: %d %+v", resp.StatusCode, refusal)
	}
	if hits.Load() != before {
		t.Errorf("the upstream was reached")
	}
}

// echoUpstream is a TCP server that echoes what it reads.
func echoUpstream(t *testing.T) (host, port string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	host, port, _ = net.SplitHostPort(ln.Addr().String())
	return host, port
}

// openGrantedTunnel waits until a grant lets a tunnel to host:port open,
// and returns it, checked to carry bytes.
func openGrantedTunnel(t *testing.T, sg *servedGateway, host, port string) (net.Conn, *bufio.Reader) {
	t.Helper()
	var conn net.Conn
	var br *bufio.Reader
	pollWithin(t, grantWait, "the grant applied", func() bool {
		var resp *http.Response
		conn, br, resp = sg.connect(t, net.JoinHostPort(host, port))
		if resp.StatusCode == http.StatusOK {
			return true
		}
		conn.Close()
		return false
	})
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo through the tunnel: %q, %v", line, err)
	}
	return conn, br
}

// expectTunnelClosed waits for the gateway to close the tunnel.
func expectTunnelClosed(t *testing.T, conn net.Conn, br *bufio.Reader) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(grantWait))
	_, err := br.ReadString('\n')
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the tunnel was not closed: %v", err)
	}
}

// revokedTunnelLine waits for the audit line of the tunnel to host:port.
func revokedTunnelLine(t *testing.T, sg *servedGateway, port string) auditRecord {
	t.Helper()
	var rec auditRecord
	pollWithin(t, hangGuard, "the tunnel's audit line", func() bool {
		for _, line := range strings.Split(sg.audit.String(), "\n") {
			var r auditRecord
			if json.Unmarshal([]byte(line), &r) == nil && r.Method == http.MethodConnect && r.Code == string(policy.CodeRevoked) && itoa(r.Port) == port {
				rec = r
				return true
			}
		}
		return false
	})
	return rec
}

// A tunnel a grant allowed is closed when the grant ends, revoked or
// expired, and audited revoked, naming the grant.
func TestGrantedTunnelClosedWhenGrantEnds(t *testing.T) {
	for _, end := range []string{"revoked", "expired"} {
		t.Run(end, func(t *testing.T) {
			store := fileStore(t)
			sg := serveGrantGateway(t, grantPolicy(t, false), store)
			host, port := echoUpstream(t)
			expires := time.Now().Add(time.Hour)
			if end == "expired" {
				// Long enough to open the tunnel first, on a loaded machine too.
				expires = time.Now().Add(3 * time.Second)
			}
			g := addGrant(t, store, host, atoi(t, port), expires)
			conn, br := openGrantedTunnel(t, sg, host, port)
			if end == "revoked" {
				if err := store.RevokeGrant(context.Background(), g.ID); err != nil {
					t.Fatal(err)
				}
			} else if time.Now().After(expires) {
				t.Skip("the machine took longer than the grant lasted to open the tunnel")
			}
			expectTunnelClosed(t, conn, br)
			rec := revokedTunnelLine(t, sg, port)
			if rec.Decision != "deny" || rec.Rule != "grant:"+g.ID || !strings.Contains(rec.Reason, g.ID) || !strings.Contains(rec.Reason, end) {
				t.Errorf("audit line %+v, want revoked naming grant %s %s", rec, g.ID, end)
			}
		})
	}
}

// A reload of the config keeps what a grant allows open: the grant is
// still there.
func TestReloadKeepsGrantedTunnel(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	host, port := echoUpstream(t)
	addGrant(t, store, host, atoi(t, port), time.Now().Add(time.Hour))
	conn, br := openGrantedTunnel(t, sg, host, port)
	sg.Apply(grantPolicy(t, false))
	// Past the stream grace and a poll of the store.
	for start := time.Now(); time.Since(start) < streamGrace+grantPollInterval+500*time.Millisecond; {
		if _, err := io.WriteString(conn, "again\n"); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != "again\n" {
			t.Fatalf("after a reload the granted tunnel gave %q, %v", line, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A store that cannot be read applies no grant: what a grant allowed is
// refused again, the open tunnel closed, and the failure counted.
func TestUnreadableStoreAppliesNoGrant(t *testing.T) {
	t.Run("file closed", func(t *testing.T) {
		store := fileStore(t)
		checkStoreLoss(t, store, func() {
			if err := store.Close(); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("redis stopped", func(t *testing.T) {
		srv := redistest.Start(t)
		store, err := state.NewRedis(state.RedisOptions{Addr: srv.Addr, Prefix: "egressgw:"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		checkStoreLoss(t, store, srv.Stop)
	})
}

func checkStoreLoss(t *testing.T, store state.Store, lose func()) {
	t.Helper()
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	host, port := echoUpstream(t)
	g := addGrant(t, store, host, atoi(t, port), time.Now().Add(time.Hour))
	conn, br := openGrantedTunnel(t, sg, host, port)
	lose()
	expectTunnelClosed(t, conn, br)
	rec := revokedTunnelLine(t, sg, port)
	if rec.Rule != "grant:"+g.ID || !strings.Contains(rec.Reason, "state store") {
		t.Errorf("audit line %+v, want revoked for the unreadable state store", rec)
	}
	conn2, br2, resp := sg.connect(t, net.JoinHostPort(host, port))
	defer conn2.Close()
	if refusal := readRefusalBody(t, br2); resp.StatusCode != http.StatusForbidden || refusal.Error != "destination_not_allowed" || refusal.AccessRequest != nil {
		t.Errorf("with the store lost: %d %+v", resp.StatusCode, refusal)
	}
	if n := sg.metricValue(t, "egressgw_state_errors_total", map[string]string{"operation": "read_grants"}); n < 1 {
		t.Errorf("egressgw_state_errors_total{operation=read_grants} = %v", n)
	}
}

// Two gateways sharing one Redis apply the same grant, each within 2 s.
func TestGatewaysShareGrantsThroughRedis(t *testing.T) {
	srv := redistest.Start(t)
	var stores []*state.Redis
	var gateways []*servedGateway
	for range 2 {
		store, err := state.NewRedis(state.RedisOptions{Addr: srv.Addr, Prefix: "egressgw:"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		stores = append(stores, store)
		gateways = append(gateways, serveGrantGateway(t, grantPolicy(t, false), store))
	}
	host, port, hits := countedUpstream(t)
	url := "http://" + net.JoinHostPort(host, port) + "/shared"
	for i, sg := range gateways {
		if resp, _ := sg.get(t, url); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("gateway %d before the grant: %d", i, resp.StatusCode)
		}
	}
	g := addGrant(t, stores[0], host, atoi(t, port), time.Now().Add(time.Hour))
	for i, sg := range gateways {
		pollWithin(t, grantWait, "the grant applied on gateway "+itoa(uint16(i)), func() bool {
			resp, _ := sg.get(t, url)
			return resp.StatusCode == http.StatusOK
		})
	}
	if err := stores[1].RevokeGrant(context.Background(), g.ID); err != nil {
		t.Fatal(err)
	}
	for i, sg := range gateways {
		pollWithin(t, grantWait, "the revocation applied on gateway "+itoa(uint16(i)), func() bool {
			// A response in flight as the grant ends is cut off: that is
			// the revocation, not yet its refusal.
			status, err := sg.tryStatus(t, url)
			return err == nil && status == http.StatusForbidden
		})
	}
	if hits.Load() < 2 {
		t.Errorf("the upstream saw %d requests, want one per gateway at least", hits.Load())
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("not a port: %q", s)
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// inspectedGrantPolicy lets acme reach, through an inspecting connector,
// only /v1/ of the TLS upstream at host:port.
func inspectedGrantPolicy(t *testing.T, upstream *httptest.Server, ca *tls.Certificate, host, port string) *policy.Snapshot {
	t.Helper()
	sum := sha256.Sum256([]byte(benchToken))
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	pemOf := func(kind string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}) }
	fsys := fstest.MapFS{
		"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\n" +
			"tls: { ca_cert: ca.pem, ca_key: ca-key.pem, upstream_roots: [upstream.pem] }\n")},
		"ca.pem":              {Data: pemOf("CERTIFICATE", ca.Certificate[0])},
		"ca-key.pem":          {Data: pemOf("PRIVATE KEY", keyDER)},
		"upstream.pem":        {Data: pemOf("CERTIFICATE", upstream.Certificate().Raw)},
		"connectors/api.yaml": {Data: []byte("name: api\nhosts: [\"" + host + "\"]\nports: [" + port + "]\npaths: [\"/v1/\"]\ninspect: true\n")},
		"tenants/acme.yaml":   {Data: []byte("id: acme\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) + "\" }\nconnectors: [api]\n")},
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// innerGet sends GET path inside a new inspected tunnel to host:port.
func (sg *servedGateway) innerGet(t *testing.T, ca *tls.Certificate, host, port, path string) (*http.Response, []byte) {
	t.Helper()
	conn, br, resp := sg.connect(t, net.JoinHostPort(host, port))
	defer conn.Close()
	if resp.StatusCode != http.StatusOK || br.Buffered() > 0 {
		t.Fatalf("CONNECT to the inspecting connector: %d", resp.StatusCode)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Leaf)
	tc := tls.Client(conn, &tls.Config{RootCAs: roots, ServerName: host})
	req := mustRequest(t, "https://"+net.JoinHostPort(host, port)+path)
	if err := req.Write(tc); err != nil {
		t.Fatalf("inner request: %v", err)
	}
	inner, err := http.ReadResponse(bufio.NewReader(tc), req)
	if err != nil {
		t.Fatalf("inner response: %v", err)
	}
	body, err := io.ReadAll(inner.Body)
	if err != nil {
		t.Fatalf("inner body: %v", err)
	}
	return inner, body
}

// Inside an inspected tunnel, a refused request is recorded and its 403
// names the access request; a grant with a path then allows that path,
// checked request by request.
func TestInnerRefusalRecordsAccessRequest(t *testing.T) {
	var hits atomic.Int64
	upstream := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "inner "+r.URL.Path)
	}))
	defer upstream.Close()
	host, port, _ := net.SplitHostPort(upstream.Listener.Addr().String())
	ca := testCA(t)
	store := fileStore(t)
	sg := serveGrantGateway(t, inspectedGrantPolicy(t, upstream, ca, host, port), store)

	if resp, body := sg.innerGet(t, ca, host, port, "/v1/ok"); resp.StatusCode != http.StatusOK || string(body) != "inner /v1/ok" {
		t.Fatalf("allowed inner request: %d %q", resp.StatusCode, body)
	}
	resp, body := sg.innerGet(t, ca, host, port, "/admin/users?secret=1")
	refusal := readRefusalBody(t, strings.NewReader(string(body)))
	if resp.StatusCode != http.StatusForbidden || refusal.Error != "destination_not_allowed" ||
		refusal.AccessRequest == nil || refusal.AccessRequest.Status != state.StatusPending {
		t.Fatalf("refused inner request: %d %+v", resp.StatusCode, refusal)
	}
	if hits.Load() != 1 {
		t.Errorf("the upstream got %d requests, want only the allowed one", hits.Load())
	}
	reqs, err := store.ListRequests(context.Background(), state.Filter{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 1 || reqs[0].ID != refusal.AccessRequest.ID || reqs[0].Path != "/admin/users" || reqs[0].Method != "GET" {
		t.Fatalf("stored requests %+v", reqs)
	}

	g, err := store.Approve(context.Background(), refusal.AccessRequest.ID, state.GrantSpec{
		Paths: []string{"/admin/"}, ExpiresAt: time.Now().Add(time.Hour), By: "admin",
	})
	if err != nil {
		t.Fatal(err)
	}
	pollWithin(t, grantWait, "the grant applied inside the tunnel", func() bool {
		resp, body := sg.innerGet(t, ca, host, port, "/admin/users")
		return resp.StatusCode == http.StatusOK && string(body) == "inner /admin/users"
	})
	if resp, _ := sg.innerGet(t, ca, host, port, "/other"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a path neither the connector nor the grant allows: %d", resp.StatusCode)
	}
	pollWithin(t, hangGuard, "an audit line with rule grant:"+g.ID, func() bool {
		return strings.Contains(sg.audit.String(), `"path":"/admin/users","decision":"allow","code":"ok","rule":"grant:`+g.ID+`"`)
	})
}

// /v1/explain lists the tenant's grants as rules and decides with them.
func TestAdminExplainShowsGrants(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	host, port, _ := countedUpstream(t)
	expires := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	g := addGrant(t, store, host, atoi(t, port), expires)
	pollWithin(t, grantWait, "the grant applied", func() bool {
		resp, _ := sg.get(t, "http://"+net.JoinHostPort(host, port)+"/")
		return resp.StatusCode == http.StatusOK
	})
	rec := httptest.NewRecorder()
	sg.AdminHandler(&ConfigStatus{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet,
		"/v1/explain?tenant=acme&method=GET&url=http://"+net.JoinHostPort(host, port)+"/x", nil))
	var trace policy.Trace
	if err := json.Unmarshal(rec.Body.Bytes(), &trace); err != nil {
		t.Fatalf("%d %s: %v", rec.Code, rec.Body, err)
	}
	if trace.Decision != "allow" || trace.Rule != "grant:"+g.ID {
		t.Errorf("explain decided %s by %q, want allow by grant:%s", trace.Decision, trace.Rule, g.ID)
	}
	var listed bool
	for _, r := range trace.Rules {
		if r.Name == "grant:"+g.ID && r.Kind == policy.KindGrant && r.Matched && r.ExpiresAt.Equal(expires) {
			listed = true
		}
	}
	if !listed {
		t.Errorf("grant:%s with expires_at %v not among the rules %+v", g.ID, expires, trace.Rules)
	}
}

// BenchmarkRefusal is the decide step refusing a destination, without a
// state store and with a file store that records each refusal (a repeat,
// so a count update in memory); compare the two within one run.
func BenchmarkRefusal(b *testing.B) {
	for _, withStore := range []bool{false, true} {
		name := "no store"
		if withStore {
			name = "file store"
		}
		b.Run(name, func(b *testing.B) {
			var store state.Store
			if withStore {
				fs, err := state.NewFile(state.FileOptions{Dir: b.TempDir()})
				if err != nil {
					b.Fatal(err)
				}
				defer fs.Close()
				store = fs
			}
			snap := grantPolicyFor(b)
			g, err := New(Options{
				Logger: slog.New(slog.DiscardHandler), Audit: io.Discard, Registry: prometheus.NewRegistry(),
				Quota: quota.NewMemory(quota.MemoryOptions{}), Bandwidth: quota.NewBandwidth(quota.BandwidthOptions{}),
				Settings: snap.Gateway, State: store,
			})
			if err != nil {
				b.Fatal(err)
			}
			defer g.Shutdown(context.Background())
			g.Apply(snap)
			r := httptest.NewRequest(http.MethodGet, "http://refused.example/path", nil)
			r.Header.Set("Proxy-Authorization", "Basic "+basicEncode("acme", benchToken))
			b.ReportAllocs()
			for b.Loop() {
				ex := g.begin(r, nil, false)
				o := ex.identify(r)
				if o.ok() {
					o = ex.decide(plainTarget(r))
				}
				if o.code != policy.CodeDestinationNotAllowed || (withStore && ex.accessRequest == nil) {
					b.Fatalf("outcome %s, access request %v", o.code, ex.accessRequest)
				}
			}
		})
	}
}

// A response streaming under a grant is cut short as soon as the grant is
// revoked, without the grace a reload gives, and audited revoked.
func TestGrantedStreamClosedWhenRevoked(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	host, port := sseUpstream(t)
	g := addGrant(t, store, host, atoi(t, port), time.Now().Add(time.Hour))
	target := "http://" + net.JoinHostPort(host, port)
	var events *bufio.Reader
	pollWithin(t, grantWait, "the grant applied", func() bool {
		resp, _ := sg.send(t, mustRequest(t, target+"/stream"))
		events = bufio.NewReader(resp.Body)
		return resp.StatusCode == http.StatusOK
	})
	if _, err := events.ReadString('\n'); err != nil {
		t.Fatalf("first event: %v", err)
	}
	if err := store.RevokeGrant(context.Background(), g.ID); err != nil {
		t.Fatal(err)
	}
	var err error
	for err == nil {
		_, err = events.ReadString('\n')
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("the stream ended with %v, want it cut short (unexpected EOF)", err)
	}
	var rec auditRecord
	pollWithin(t, hangGuard, "the stream's audit line", func() bool {
		for _, line := range strings.Split(sg.audit.String(), "\n") {
			var r auditRecord
			if json.Unmarshal([]byte(line), &r) == nil && r.Path == "/stream" && r.Status == http.StatusOK {
				rec = r
				return true
			}
		}
		return false
	})
	if rec.Code != string(policy.CodeRevoked) || rec.Rule != "grant:"+g.ID || !strings.Contains(rec.Reason, "revoked") {
		t.Errorf("audit line %+v", rec)
	}
}

// A grant the store holds but whose host pattern does not parse (a
// wildcard across a public suffix) is dropped, never widened.
func TestUnparsableGrantDropped(t *testing.T) {
	store := fileStore(t)
	sg := serveGrantGateway(t, grantPolicy(t, false), store)
	addGrant(t, store, "*.com", 80, time.Now().Add(time.Hour))
	host, port, hits := countedUpstream(t)
	addGrant(t, store, host, atoi(t, port), time.Now().Add(time.Hour))
	pollWithin(t, grantWait, "the valid grant applied", func() bool {
		resp, _ := sg.get(t, "http://"+net.JoinHostPort(host, port)+"/")
		return resp.StatusCode == http.StatusOK
	})
	if resp, _ := sg.get(t, "http://refused.com/"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a host only the dropped grant covers: %d", resp.StatusCode)
	}
	if hits.Load() != 1 {
		t.Errorf("the upstream got %d requests", hits.Load())
	}
}

// The refresher logs a dropped grant once, however often the store's
// version changes (each access request changes it) and the grants are
// read again; a set that did not change is kept, not rebuilt.
func TestGrantSourceLogsDroppedGrantOnce(t *testing.T) {
	ctx := context.Background()
	store := fileStore(t)
	logs := &flakyWriter{}
	src := newGrantSource(store, slog.New(slog.NewJSONHandler(logs, nil)), prometheus.NewRegistry(), time.Now)
	bad := addGrant(t, store, "*.com", 80, time.Now().Add(time.Hour))

	first, v, err := src.read(ctx, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	src.current.Store(first)
	if _, err := store.RecordRefusal(ctx, state.Sighting{Tenant: "acme", Host: "x.example", Port: 443}); err != nil {
		t.Fatal(err)
	}
	same, v2, err := src.read(ctx, v, true)
	if err != nil || v2 == v || same != first {
		t.Errorf("after an access request: version %d -> %d, set kept %v, err %v", v, v2, same == first, err)
	}
	addGrant(t, store, "good.example", 443, time.Now().Add(time.Hour))
	rebuilt, _, err := src.read(ctx, v2, true)
	if err != nil || rebuilt == first || rebuilt.Len() != 1 {
		t.Fatalf("after a new grant: rebuilt %v with %d grants, err %v", rebuilt != first, rebuilt.Len(), err)
	}
	if n := strings.Count(logs.String(), `"msg":"grant not applied"`); n != 1 || !strings.Contains(logs.String(), bad.ID) {
		t.Errorf("%d log lines about the dropped grant, want 1 naming %s:\n%s", n, bad.ID, logs.String())
	}
}
