package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// soakTenant is the tenant of TestFaultSoak.
var soakTenant = credentials{tenant: "soak", token: "soak-token-3f8a61c0e2"}

// soakOutcome is what one soak client saw of one request.
type soakOutcome struct {
	kind      string // get, reset, tunnel, abort
	status    int    // 0 when the client saw no response
	code      string // X-Egressgw-Error, "" for an upstream's own response
	requestID string
	err       error
}

// soakClientCodes are the gateway codes a soak request may legitimately
// meet, by kind: the quota backend restarts during the run, so any request
// may be refused as quota_unavailable meanwhile.
var soakClientCodes = map[string]map[string]bool{
	"get":    {"": true, "quota_unavailable": true},
	"reset":  {"upstream_unreachable": true, "quota_unavailable": true},
	"tunnel": {"": true, "quota_unavailable": true},
}

// soakAbortCodes are the audit codes of uploads the client abandons: the
// gateway either saw the client go or had refused it already.
var soakAbortCodes = map[string]bool{"client_closed": true, "quota_unavailable": true}

// TestFaultSoak runs mixed traffic for a while with the faults a gateway
// meets in production all at once: the policy reloaded every 100 ms, the
// Redis quota backend restarted, an upstream that resets every connection,
// and clients that abandon their uploads. Afterwards every request must
// have been answered or refused with a code, the audit log must hold
// exactly one line per request, and the gateway's goroutines and memory
// must come back to where they were.
func TestFaultSoak(t *testing.T) {
	t.Parallel()
	redis := startRedis(t)
	origin := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, greeting(r.URL.Path))
	}))
	resetter := startTCPServer(t, "127.0.0.1", func(c net.Conn) {
		// Read the request head, then reset the connection.
		bufio.NewReader(c).ReadString('\n')
		if tcp, ok := c.(*net.TCPConn); ok {
			tcp.SetLinger(0)
		}
	})
	echoServer := startTCPServer(t, "127.0.0.1", echo)

	tenant := func(generation int) string {
		return tenantYAML(soakTenant, yamlf(`
			quota: { requests_per_second: 100000, burst: 100000, max_concurrent: 1000 }
			rules:
			  - name: soak
			    hosts: [%q]
			    ports: [%d, %d, %d]
			  - name: unrelated-%d
			    hosts: ["unrelated-%d.example"]
		`, hostAPI, origin.port, resetter.port, echoServer.port, generation, generation))
	}
	g, dir := startReloadable(t, configFiles{
		// A short idle timeout retires pooled upstream connections quickly
		// (the transport keeps them half of it), so that the goroutine count
		// can come back to its baseline within the test.
		"gateway.yaml": gatewayYAML(yamlf(`
			limits: { idle_timeout: 2s }
			quota:
			  backend: redis
			  redis: { addr: %q, on_error: deny }
		`, redis.addr)),
		"tenants/soak.yaml": tenant(0),
	})

	// Warm up, then take the baseline the gateway must come back to.
	for range 20 {
		if status, err := soakRequest(g.client(t, soakTenant), origin.url(hostAPI, "/warm")); err != nil || status != http.StatusOK {
			t.Fatalf("warm-up request: status %d, error %v", status, err)
		}
	}
	baseGoroutines, baseRSS := gatewayRuntime(t, g)

	duration := scaled(8 * time.Second)
	stop := make(chan struct{})
	var (
		mu       sync.Mutex
		outcomes []soakOutcome
		aborted  atomic.Int64
		clients  sync.WaitGroup
	)
	keep := func(o soakOutcome) {
		mu.Lock()
		outcomes = append(outcomes, o)
		mu.Unlock()
	}
	loop := func(send func(n int)) {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				send(n)
			}
		}()
	}
	client := g.client(t, soakTenant)
	for range 2 {
		loop(func(int) { keep(soakGet(client, "get", origin.url(hostAPI, "/soak"))) })
	}
	loop(func(int) { keep(soakGet(client, "reset", "http://"+resetter.authority(hostAPI)+"/reset")) })
	loop(func(int) { keep(soakTunnel(g, echoServer.authority(hostAPI))) })
	loop(func(n int) {
		if err := soakAbortedUpload(g, origin.url(hostAPI, "/abort/"+strconv.Itoa(n))); err != nil {
			keep(soakOutcome{kind: "abort", err: err})
			return
		}
		aborted.Add(1)
	})

	// Reload every 100 ms, keeping every permission; restart Redis once.
	reloads := make(chan int, 1)
	go func() {
		path := filepath.Join(dir, "tenants", "soak.yaml")
		i := 0
		for {
			select {
			case <-stop:
				reloads <- i
				return
			case <-time.After(100 * time.Millisecond):
			}
			i++
			if err := os.WriteFile(path+".tmp", []byte(tenant(i)), 0o644); err == nil {
				os.Rename(path+".tmp", path)
			}
		}
	}()
	time.Sleep(duration / 3) // lets traffic run before the fault; not a synchronisation
	redis.kill(t)
	time.Sleep(time.Second) // an outage long enough for requests to meet it
	redis.start(t)
	time.Sleep(duration * 2 / 3)
	close(stop)
	clients.Wait()
	rewrites := <-reloads
	client.CloseIdleConnections()

	// Every request was answered or refused with a code.
	mu.Lock()
	defer mu.Unlock()
	counts := map[string]int{}
	for _, o := range outcomes {
		counts[o.kind+" "+strconv.Itoa(o.status)+" "+o.code]++
	}
	t.Logf("soak: %d requests, %d aborted uploads, %d rewrites; outcomes %v", len(outcomes), aborted.Load(), rewrites, counts)
	bad := 0
	for _, o := range outcomes {
		if o.err == nil && soakClientCodes[o.kind][o.code] {
			continue
		}
		if bad++; bad <= 5 {
			t.Errorf("%s request: status %d, code %q, error %v", o.kind, o.status, o.code, o.err)
		}
	}
	if bad > 5 {
		t.Errorf("... and %d more requests without an acceptable answer", bad-5)
	}
	for _, kind := range []string{"get 200 ", "reset 502 upstream_unreachable", "tunnel 200 "} {
		if counts[kind] == 0 {
			t.Errorf("no %q outcome at all: the soak did not exercise it (%v)", kind, counts)
		}
	}
	if aborted.Load() == 0 {
		t.Error("no upload was abandoned: the soak did not exercise it")
	}

	// The audit log holds exactly one line per request.
	want := len(outcomes) + int(aborted.Load())
	var records []map[string]any
	eventually(t, 10*time.Second, func() error {
		records = soakRecords(g)
		if len(records) < want {
			return fmt.Errorf("%d audit lines for %d requests", len(records), want)
		}
		return nil
	})
	if len(records) != want {
		t.Errorf("%d audit lines for %d requests", len(records), want)
	}
	seen := map[string]int{}
	abortCodes := map[string]int{}
	for _, rec := range records {
		id, _ := rec["request_id"].(string)
		seen[id]++
		if path, _ := rec["path"].(string); strings.HasPrefix(path, "/abort/") {
			code, _ := rec["code"].(string)
			abortCodes[code]++
		}
	}
	for _, o := range outcomes {
		if o.requestID != "" && seen[o.requestID] != 1 {
			t.Errorf("request %s (%s, status %d) has %d audit lines, want 1", o.requestID, o.kind, o.status, seen[o.requestID])
		}
	}
	t.Logf("abandoned uploads by audit code: %v", abortCodes)
	for code, n := range abortCodes {
		if !soakAbortCodes[code] {
			t.Errorf("%d abandoned uploads audited with code %q, want client_closed (all codes: %v)", n, code, abortCodes)
		}
	}

	// Goroutines and memory come back to the baseline.
	eventually(t, 15*time.Second, func() error {
		goroutines, rss := gatewayRuntime(t, g)
		switch {
		case goroutines > baseGoroutines+10:
			return fmt.Errorf("%.0f goroutines after the soak, %.0f before", goroutines, baseGoroutines)
		case rss > 2*baseRSS+64<<20:
			return fmt.Errorf("resident memory %.0f MiB after the soak, %.0f MiB before", rss/(1<<20), baseRSS/(1<<20))
		}
		return nil
	})
}

// soakGet sends one GET through client and reports what came back.
func soakGet(client *http.Client, kind, url string) soakOutcome {
	resp, err := client.Get(url)
	if err != nil {
		return soakOutcome{kind: kind, err: err}
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return soakOutcome{kind: kind, status: resp.StatusCode, code: resp.Header.Get("X-Egressgw-Error"),
		requestID: resp.Header.Get("X-Request-Id"), err: err}
}

// soakTunnel opens a tunnel to an echo server, checks one round trip
// through it and closes it.
func soakTunnel(g *gateway, authority string) soakOutcome {
	o := soakOutcome{kind: "tunnel"}
	conn, err := net.DialTimeout("tcp", g.proxyAddr, 5*time.Second)
	if err != nil {
		o.err = err
		return o
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(scaled(requestTimeout)))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", authority, authority, soakTenant.header())
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, &http.Request{Method: http.MethodConnect})
	if err != nil {
		o.err = err
		return o
	}
	o.status, o.code, o.requestID = resp.StatusCode, resp.Header.Get("X-Egressgw-Error"), resp.Header.Get("X-Request-Id")
	if resp.StatusCode != http.StatusOK {
		return o
	}
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		o.err = err
		return o
	}
	if line, err := reader.ReadString('\n'); err != nil || line != "ping\n" {
		o.err = fmt.Errorf("echo through the tunnel: %q, %v", line, err)
	}
	return o
}

// soakAbortedUpload starts an upload of 100000 bytes, sends 1000 of them
// and goes away.
func soakAbortedUpload(g *gateway, url string) error {
	conn, err := net.DialTimeout("tcp", g.proxyAddr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(scaled(requestTimeout)))
	u, err := neturl.Parse(url)
	if err != nil {
		return err
	}
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nContent-Length: 100000\r\n\r\n",
		url, u.Host, soakTenant.header())
	if _, err := io.WriteString(conn, head+strings.Repeat("x", 1000)); err != nil {
		return err
	}
	// Give the gateway a moment to start forwarding, as a client that dies
	// mid-upload would; not a synchronisation.
	time.Sleep(20 * time.Millisecond)
	return nil
}

// soakRecords are the audit lines of requests (not the gateway's own
// events).
func soakRecords(g *gateway) []map[string]any {
	var out []map[string]any
	for _, rec := range g.auditRecords() {
		if id, _ := rec["request_id"].(string); id != "" && rec["path"] != "/warm" {
			out = append(out, rec)
		}
	}
	return out
}

// gatewayRuntime reads the gateway's goroutine count and resident memory
// from its metrics.
func gatewayRuntime(t *testing.T, g *gateway) (goroutines, rss float64) {
	t.Helper()
	samples, err := g.metrics()
	if err != nil {
		t.Fatal(err)
	}
	goroutines, ok1 := sumMetric(samples, "go_goroutines", nil)
	rss, ok2 := sumMetric(samples, "process_resident_memory_bytes", nil)
	if !ok1 || !ok2 {
		t.Fatal(errors.New("the gateway's metrics lack go_goroutines or process_resident_memory_bytes"))
	}
	return goroutines, rss
}
