package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tenants of the quota tests, each with a quota of its own.
var (
	throttled  = credentials{tenant: "throttled", token: "throttled-token-61c0e4a9b2"}
	neighbour  = credentials{tenant: "neighbour", token: "neighbour-token-3f7d2b8c15"}
	tunneller  = credentials{tenant: "tunneller", token: "tunneller-token-a4e19c07d6"}
	subscriber = credentials{tenant: "subscriber", token: "subscriber-token-58b3f1e2a0"}
	crowded    = credentials{tenant: "crowded", token: "crowded-token-0d9a6e4c73"}
	shaped     = credentials{tenant: "shaped", token: "shaped-token-c27e5b9f41"}
	unshaped   = credentials{tenant: "unshaped", token: "unshaped-token-7b1f08d3e6"}
	replicated = credentials{tenant: "replicated", token: "replicated-token-e5c4a2917f"}
)

func TestQuotaRequestRate(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	echoServer := startTCPServer(t, "127.0.0.1", echo)
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"connectors/metered.yaml": yamlf(`
			name: metered
			version: 1
			hosts: [%q]
			ports: [%d]
			quota: { requests_per_second: 0.1, burst: 1 }
		`, hostV1, origin.port),
		"tenants/throttled.yaml": tenantYAML(throttled, "quota: { requests_per_second: 2, burst: 3 }\n"+
			allowRule("api", []string{hostAPI}, origin.port)),
		"tenants/neighbour.yaml": tenantYAML(neighbour, "quota: { requests_per_second: 2, burst: 3 }\n"+
			allowRule("api", []string{hostAPI}, origin.port)),
		"tenants/tunneller.yaml": tenantYAML(tunneller, "quota: { requests_per_second: 0.2, burst: 1 }\n"+
			allowRule("echo", []string{hostAPI}, echoServer.port)),
		// The tenant's own bucket refills in 10 s and the connector's too,
		// so nothing the test does is undone by a refill.
		"tenants/subscriber.yaml": tenantYAML(subscriber, "quota: { requests_per_second: 0.1, burst: 5 }\n"+
			"connectors: [metered]\n"+allowRule("api", []string{hostAPI}, origin.port)),
	})

	// Subtests run one after another: each refusal checks that the shared
	// upstreams saw nothing while it ran.
	t.Run("tenant bucket", func(t *testing.T) {
		// A token comes back every 0.5 s, so the burst and the refusal
		// are judged only if all four requests took less than that. On a
		// machine that stalls longer, try again once the bucket is full.
		const interval = 500 * time.Millisecond
		refusals := 0
		var path, target string
		var burst []*http.Response
		var answeredAt time.Time
		for attempt := 1; ; attempt++ {
			path = fmt.Sprintf("/throttled/%d", attempt)
			target = origin.url(hostAPI, path)
			burst = burst[:0]
			start := time.Now()
			for range 4 {
				burst = append(burst, g.get(t, throttled.header(), target))
			}
			answeredAt = time.Now()
			if answeredAt.Sub(start) < interval {
				break
			}
			for _, resp := range burst {
				if resp.StatusCode == http.StatusTooManyRequests {
					refusals++
				}
			}
			if attempt == 3 {
				t.Fatalf("four requests took longer than %v three times; the machine is too slow to test this burst", interval)
			}
			t.Logf("four requests took %v, more than a token's %v; trying again", answeredAt.Sub(start), interval)
			eventually(t, 5*time.Second, func() error {
				if r := quotaUsageOf(t, g, throttled.tenant).Requests; r == nil || r.Tokens != 3 {
					return fmt.Errorf("usage requests %+v; want the bucket full again, 3 tokens", r)
				}
				return nil
			})
		}
		for i, resp := range burst[:3] {
			assertRateHeaders(t, resp, 3, 2-i)
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != greeting(path) {
				t.Fatalf("request %d of the burst: status %d, body %q; want 200 and the greeting", i+1, resp.StatusCode, body)
			}
		}
		retry, _ := assertRateLimited(t, burst[3])
		retryAt := answeredAt.Add(time.Duration(retry) * time.Second)
		refusals++
		if n := len(origin.requestsTo(path)); n != 3 {
			t.Errorf("upstream saw %d requests, want the burst of 3", n)
		}

		// Other tenants have buckets of their own.
		resp := g.get(t, neighbour.header(), origin.url(hostAPI, "/neighbour"))
		assertRateHeaders(t, resp, 3, 2)
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
			t.Errorf("another tenant while %s is limited: status %d, body %q; want 200", throttled.tenant, resp.StatusCode, body)
		}

		// A client that waits as long as Retry-After says gets through.
		// Retries before then are refused and must not spend the token
		// that is coming back, or this would never succeed.
		eventually(t, time.Duration(retry)*time.Second+5*time.Second, func() error {
			sentAt := time.Now()
			resp := g.get(t, throttled.header(), target)
			body := readBody(t, resp)
			switch {
			case resp.StatusCode == http.StatusOK:
				return nil
			case resp.StatusCode != http.StatusTooManyRequests:
				t.Fatalf("retry: status %d, body %q; want 200, or 429 until Retry-After has passed", resp.StatusCode, body)
			case sentAt.After(retryAt):
				t.Errorf("retry sent %v after the advertised Retry-After of %d s was refused: %s", sentAt.Sub(retryAt), retry, body)
			}
			refusals++
			return fmt.Errorf("still refused; the first 429 said Retry-After: %d", retry)
		})
		if n := len(origin.requestsTo(path)); n != 4 {
			t.Errorf("upstream saw %d requests, want 4: the burst and the one after Retry-After", n)
		}
		g.expectAllowedGET(t, neighbour, origin.url(hostAPI, "/neighbour"))
		assertQuotaRejections(t, g, throttled.tenant, "rate", refusals)
		assertQuotaRejections(t, g, neighbour.tenant, "rate", 0)
	})

	t.Run("CONNECT takes a token", func(t *testing.T) {
		resp, tunnel := g.connect(t, tunneller.header(), echoServer.authority(hostAPI))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("first CONNECT: status %d", resp.StatusCode)
		}
		assertRateHeaders(t, resp, 1, 0) // the 200 that opens a tunnel carries them too
		pingThroughTunnel(t, tunnel)
		retry, _ := expectRateLimited(t, func() *http.Response {
			resp, _ := g.connect(t, tunneller.header(), echoServer.authority(hostAPI))
			return resp
		}, echoServer)
		if retry > 5 {
			t.Errorf("Retry-After %d s; a token comes back every 5 s", retry)
		}
		pingThroughTunnel(t, tunnel) // the open tunnel is not affected
		assertQuotaRejections(t, g, tunneller.tenant, "rate", 1)
	})

	t.Run("connector bucket", func(t *testing.T) {
		resp := g.get(t, subscriber.header(), origin.url(hostV1, "/via-connector"))
		assertRateHeaders(t, resp, 1, 0) // the tighter of the two buckets
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
			t.Fatalf("first request through the connector: status %d, body %q; want 200", resp.StatusCode, body)
		}
		_, e := expectRateLimited(t, func() *http.Response {
			return g.get(t, subscriber.header(), origin.url(hostV1, "/via-connector"))
		}, origin)
		if !strings.Contains(e.Message, "connector metered") {
			t.Errorf("message %q does not say that the connector's limit refused it", e.Message)
		}

		// The tenant's own bucket still had tokens, and the refusal above
		// spent none of them.
		resp = g.get(t, subscriber.header(), origin.url(hostAPI, "/via-rule"))
		assertRateHeaders(t, resp, 5, 3)
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
			t.Errorf("request by the tenant's own rule: status %d, body %q; want 200", resp.StatusCode, body)
		}

		u := quotaUsageOf(t, g, subscriber.tenant)
		if r := u.Requests; r == nil || r.RequestsPerSecond != 0.1 || r.Burst != 5 || r.Tokens != 3 {
			t.Errorf("usage requests %+v; want 0.1 requests/s, burst 5, 3 tokens left", r)
		}
		if len(u.Connectors) != 1 || !ruleIs(u.Connectors[0].Connector, "metered") ||
			u.Connectors[0].RequestsPerSecond != 0.1 || u.Connectors[0].Burst != 1 || u.Connectors[0].Tokens != 0 {
			t.Errorf("usage connectors %+v; want metered with 0.1 requests/s, burst 1, 0 tokens left", u.Connectors)
		}
		assertQuotaRejections(t, g, subscriber.tenant, "rate", 1)
	})
}

func TestQuotaConcurrency(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	echoServer := startTCPServer(t, "127.0.0.1", echo)
	const maxConcurrent = 2
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"tenants/crowded.yaml": tenantYAML(crowded, fmt.Sprintf("quota: { max_concurrent: %d }\n", maxConcurrent)+
			allowRule("api", []string{hostAPI}, origin.port, echoServer.port)),
	})
	echoAuthority := echoServer.authority(hostAPI)
	openSlots := func(t *testing.T, want int) func() error {
		return func() error {
			if u := quotaUsageOf(t, g, crowded.tenant); u.Open != want {
				return fmt.Errorf("usage shows %d requests and tunnels open, want %d", u.Open, want)
			}
			return nil
		}
	}
	holdTunnels := func(t *testing.T, n int) []net.Conn {
		t.Helper()
		var held []net.Conn
		for range n {
			tunnel := g.tunnel(t, crowded, echoAuthority)
			pingThroughTunnel(t, tunnel)
			held = append(held, tunnel)
		}
		return held
	}

	t.Run("held tunnels use the slots", func(t *testing.T) {
		held := holdTunnels(t, maxConcurrent)
		if err := openSlots(t, maxConcurrent)(); err != nil {
			t.Error(err)
		}
		g.expectRefusedCONNECT(t, crowded.header(), echoAuthority, http.StatusTooManyRequests, "concurrency_limited", echoServer)
		g.expectRefused(t, http.MethodGet, crowded.header(), origin.url(hostAPI, "/crowded"), http.StatusTooManyRequests, "concurrency_limited", origin)

		// The slot comes free once the gateway sees the tunnel close.
		held[0].Close()
		eventually(t, 5*time.Second, openSlots(t, maxConcurrent-1))
		pingThroughTunnel(t, g.tunnel(t, crowded, echoAuthority))
		pingThroughTunnel(t, held[1])
		assertQuotaRejections(t, g, crowded.tenant, "concurrency", 2)
	})

	// Failed requests giving their slot back is in
	// the proxy package's tests.
}

// Bandwidth figures: the limit, and transfers long enough (seconds at the
// limit) that the shaper's initial burst stays well inside the tolerance.
// Scheduling stalls can only slow a transfer; measureBandwidth retries those.
const (
	bandwidthLimit     = 1 << 20            // bytes a second, each direction
	downloadSize       = 4 * bandwidthLimit // about 4 s
	uploadSize         = 3 * bandwidthLimit // about 3 s
	bandwidthTolerance = 0.15
)

func TestQuotaBandwidth(t *testing.T) {
	t.Parallel()
	// Each measurement has a gateway and upstream of its own, so that the
	// measurements can run at once without sharing a shaper.
	start := func(t *testing.T, upstream *upstream) *gateway {
		return startGateway(t, configFiles{
			"gateway.yaml": gatewayYAML(""),
			"tenants/shaped.yaml": tenantYAML(shaped, yamlf(`
				quota:
				  bandwidth: { egress: %dKiB, ingress: %dKiB }
			`, bandwidthLimit>>10, bandwidthLimit>>10)+allowRule("bulk", []string{hostAPI}, upstream.port)),
			"tenants/unshaped.yaml": tenantYAML(unshaped, allowRule("bulk", []string{hostAPI}, upstream.port)),
		})
	}

	t.Run("plain download", func(t *testing.T) {
		t.Parallel()
		origin := startHTTPUpstream(t, "127.0.0.1", bulkHandler(nil))
		g := start(t, origin)
		target := origin.url(hostAPI, fmt.Sprintf("/bytes/%d", downloadSize))
		limited := measureBandwidth(t, "plain download", func() transfer {
			return download(t, g.client(t, shaped), target, nil)
		})

		unlimited := download(t, g.client(t, unshaped), target, nil)
		t.Logf("same download by a tenant without a bandwidth limit: %.0f KiB/s", unlimited.rate/1024)
		if unlimited.rate < 3*limited.rate {
			t.Errorf("a tenant without a bandwidth limit downloaded at %.0f KiB/s, not even 3 times the limited tenant's %.0f KiB/s",
				unlimited.rate/1024, limited.rate/1024)
		}

		u := quotaUsageOf(t, g, shaped.tenant)
		found := false
		for _, b := range u.Bandwidth {
			if b.Direction == "ingress" {
				found = true
				// bytes_this_minute starts again at each minute of the
				// clock, so it says nothing certain about the download.
				if b.BytesPerSecond != bandwidthLimit {
					t.Errorf("usage ingress %+v; want %d bytes/s", b, bandwidthLimit)
				}
			}
		}
		if !found {
			t.Errorf("usage %+v shows no ingress bandwidth", u)
		}
	})

	t.Run("plain upload", func(t *testing.T) {
		t.Parallel()
		uploads := make(chan transfer, 1)
		origin := startHTTPUpstream(t, "127.0.0.1", bulkHandler(uploads))
		g := start(t, origin)
		client := g.client(t, shaped)
		measureBandwidth(t, "plain upload", func() transfer {
			resp, err := client.Post(origin.url(hostAPI, "/upload"), "application/octet-stream", io.LimitReader(zeros{}, uploadSize))
			if err != nil {
				t.Fatalf("POST through the gateway: %v", err)
			}
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != strconv.Itoa(uploadSize) {
				t.Fatalf("upload: status %d, body %q; want 200 and the upstream counting %d bytes", resp.StatusCode, body, uploadSize)
			}
			// The upstream times the body: the client's own writes end
			// early, in socket buffers.
			select {
			case got := <-uploads:
				return got
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream answered the upload but reported no measurement")
				return transfer{}
			}
		})
	})

	t.Run("download through a tunnel", func(t *testing.T) {
		t.Parallel()
		origin := startTLSUpstream(t, "127.0.0.1", bulkHandler(nil))
		g := start(t, origin)
		// An https URL makes the client CONNECT and speak TLS inside.
		target := origin.url(hostAPI, fmt.Sprintf("/bytes/%d", downloadSize))
		measureBandwidth(t, "download through a CONNECT tunnel", func() transfer {
			return download(t, g.client(t, shaped), target, nil)
		})
	})

	t.Run("download through an upgraded connection", func(t *testing.T) {
		t.Parallel()
		origin := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			conn, rw, ok := acceptUpgrade(w, time.Minute)
			if !ok {
				return
			}
			defer conn.Close()
			io.Copy(rw, io.LimitReader(zeros{}, downloadSize))
			rw.Flush()
		}))
		g := start(t, origin)
		measureBandwidth(t, "download through a WebSocket-style upgrade", func() transfer {
			conn := g.dial(t)
			defer conn.Close()
			fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
				origin.url(hostAPI, "/stream"), origin.authority(hostAPI), shaped.header())
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v, %v; want 101", resp, err)
			}
			got, err := timedRead(br, nil)
			if err != nil || got.bytes != downloadSize {
				t.Fatalf("read %d bytes after the upgrade, %v; want %d", got.bytes, err, downloadSize)
			}
			return got
		})
	})

	t.Run("concurrent downloads share the limit", func(t *testing.T) {
		t.Parallel()
		origin := startHTTPUpstream(t, "127.0.0.1", bulkHandler(nil))
		g := start(t, origin)
		client := g.client(t, shaped)
		target := origin.url(hostAPI, fmt.Sprintf("/bytes/%d", downloadSize/2))

		// When the first download ends, the bytes each has received say
		// how the limit was shared while both ran.
		var results [2]transfer
		var shares [2]int64
		measureBandwidth(t, "two concurrent downloads combined", func() transfer {
			var progress [2]atomic.Int64
			var firstDone sync.Once
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Go(func() {
					results[i] = download(t, client, target, &progress[i])
					firstDone.Do(func() { shares = [2]int64{progress[0].Load(), progress[1].Load()} })
				})
			}
			wg.Wait()
			combined := transfer{
				bytes: results[0].bytes + results[1].bytes,
				first: earliest(results[0].first, results[1].first),
				last:  latest(results[0].last, results[1].last),
			}
			combined.rate = float64(combined.bytes) / combined.last.Sub(combined.first).Seconds()
			return combined
		})
		if t.Failed() {
			return
		}
		for i, n := range shares {
			share := float64(n) / float64(shares[0]+shares[1])
			t.Logf("download %d: %.0f KiB/s, %.0f%% of the bytes while both ran", i+1, results[i].rate/1024, 100*share)
			if share < 0.3 || share > 0.7 {
				t.Errorf("download %d got %.0f%% of the bytes while both ran (%d of %d); want a fair share, 30%% to 70%%",
					i+1, 100*share, n, shares[0]+shares[1])
			}
		}
	})
}

func TestQuotaRedisBackend(t *testing.T) {
	t.Parallel()
	redis := startRedis(t)
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	prefix := fmt.Sprintf("e2e:%s:%d:", t.Name(), time.Now().UnixNano())
	config := func(onError string) configFiles {
		return configFiles{
			"gateway.yaml": gatewayYAML(yamlf(`
				quota:
				  backend: redis
				  redis: { addr: %q, prefix: %q, on_error: %s }
			`, redis.addr, prefix, onError)),
			// A token comes back every 10 s: the test ends long before
			// a refill could let a sixth request through.
			"tenants/replicated.yaml": tenantYAML(replicated, "quota: { requests_per_second: 0.1, burst: 5 }\n"+
				allowRule("api", []string{hostAPI}, origin.port)),
		}
	}
	replicas := []*gateway{startGateway(t, config("deny")), startGateway(t, config("deny"))}
	failOpen := startGateway(t, config("allow"))
	const path = "/replicated"
	target := origin.url(hostAPI, path)

	t.Run("replicas share one bucket", func(t *testing.T) {
		for i := range 10 {
			g := replicas[i%len(replicas)]
			if i >= 5 {
				expectRateLimited(t, func() *http.Response { return g.get(t, replicated.header(), target) }, origin)
				continue
			}
			resp := g.get(t, replicated.header(), target)
			assertRateHeaders(t, resp, 5, 4-i)
			if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
				t.Errorf("request %d (replica %d): status %d, body %q; want 200", i+1, i%len(replicas)+1, resp.StatusCode, body)
			}
		}
		if n := len(origin.requestsTo(path)); n != 5 {
			t.Errorf("upstream saw %d requests, want the shared burst of 5", n)
		}
	})

	redis.kill(t)
	t.Run("redis down fails closed", func(t *testing.T) {
		for _, g := range replicas {
			e := g.expectRefused(t, http.MethodGet, replicated.header(), target, http.StatusServiceUnavailable, "quota_unavailable", origin)
			assertNoInternalDetail(t, e)
			assertQuotaRejections(t, g, replicated.tenant, "unavailable", 1)
		}
	})
	t.Run("redis down with on_error allow", func(t *testing.T) {
		failOpen.expectAllowedGET(t, replicated, origin.url(hostAPI, "/fail-open"))
		samples, err := failOpen.metrics()
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := sumMetric(samples, "egressgw_quota_fail_open_total", map[string]string{"tenant": replicated.tenant}); v != 1 {
			t.Errorf("egressgw_quota_fail_open_total{tenant=%q} is %v, want 1", replicated.tenant, v)
		}
		if log := failOpen.stderr.String(); !strings.Contains(log, "requests pass without a quota check") {
			t.Errorf("no warning in the log that requests pass unchecked:\n%s", tail(log, 20))
		}
	})

	redis.start(t)
	t.Run("redis back", func(t *testing.T) {
		for i, g := range replicas {
			eventually(t, 10*time.Second, func() error {
				resp := g.get(t, replicated.header(), target)
				if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
					return fmt.Errorf("replica %d after Redis restarted: status %d, body %q", i+1, resp.StatusCode, body)
				}
				return nil
			})
		}
	})
}

// ---- helpers ----

// assertRateHeaders checks the RateLimit headers docs/reference.md, "What clients see" promises on a
// response that passed a request-rate quota.
func assertRateHeaders(t *testing.T, resp *http.Response, limit, remaining int) {
	t.Helper()
	for name, want := range map[string]int{"RateLimit-Limit": limit, "RateLimit-Remaining": remaining} {
		if got := resp.Header.Get(name); got != strconv.Itoa(want) {
			t.Errorf("%s %q, want %d (status %d)", name, got, want, resp.StatusCode)
		}
	}
	if reset := resp.Header.Get("RateLimit-Reset"); !isWholeNumber(reset, 0) {
		t.Errorf("RateLimit-Reset %q, want whole seconds (status %d)", reset, resp.StatusCode)
	}
}

// expectRateLimited asserts that send's response is the gateway's 429
// rate_limited with a Retry-After of whole seconds, and that it reached
// none of targets. It returns Retry-After and the error body.
func expectRateLimited(t *testing.T, send func() *http.Response, targets ...reachable) (int, gatewayError) {
	t.Helper()
	before := snapshotReach(targets...)
	resp := send()
	before.assertUnchanged(t)
	return assertRateLimited(t, resp)
}

// assertRateLimited checks that resp is the gateway's 429 rate_limited with
// a Retry-After of whole seconds, and returns Retry-After and the body.
func assertRateLimited(t *testing.T, resp *http.Response) (int, gatewayError) {
	t.Helper()
	retry := resp.Header.Get("Retry-After")
	e := assertGatewayError(t, resp, http.StatusTooManyRequests, "rate_limited")
	if !isWholeNumber(retry, 1) {
		t.Fatalf("Retry-After %q, want whole seconds, at least 1", retry)
	}
	seconds, _ := strconv.Atoi(retry)
	return seconds, e
}

// isWholeNumber reports whether s is a decimal integer of at least min,
// written without sign, fraction or padding.
func isWholeNumber(s string, min int) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= min && strconv.Itoa(n) == s
}

// assertQuotaRejections checks egressgw_quota_rejections_total for tenant
// and kind.
func assertQuotaRejections(t *testing.T, g *gateway, tenant, kind string, want int) {
	t.Helper()
	samples, err := g.metrics()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"tenant": tenant, "kind": kind}
	if got, _ := sumMetric(samples, "egressgw_quota_rejections_total", labels); got != float64(want) {
		t.Errorf("egressgw_quota_rejections_total%v is %v, want %d", labels, got, want)
	}
}

// quotaUsage is a tenant's quota state as /v1/tenants/ID/usage reports it.
type quotaUsage struct {
	Requests   *bucketState  `json:"requests"`
	Connectors []bucketState `json:"connectors"`
	Open       int           `json:"open"`
	Bandwidth  []struct {
		Direction      string `json:"direction"`
		BytesPerSecond int64  `json:"bytes_per_second"`
	} `json:"bandwidth"`
}

type bucketState struct {
	Connector         string  `json:"connector"`
	RequestsPerSecond float64 `json:"requests_per_second"`
	Burst             int     `json:"burst"`
	Tokens            int     `json:"tokens"`
}

func quotaUsageOf(t *testing.T, g *gateway, tenant string) quotaUsage {
	t.Helper()
	body := g.admin(t, "/v1/tenants/"+tenant+"/usage")
	var u quotaUsage
	if err := json.Unmarshal([]byte(body), &u); err != nil {
		t.Fatalf("/v1/tenants/%s/usage: %v; body %q", tenant, err, body)
	}
	return u
}

// transfer is how many bytes a body delivered and how fast. The rate is
// measured from the first byte to the last, leaving out the first read:
// connection set-up and the shaper's initial burst are not the limit.
type transfer struct {
	bytes       int64
	rate        float64 // bytes a second
	first, last time.Time
}

// timedRead reads r to the end, adding what it reads to progress (if not
// nil) as it goes.
func timedRead(r io.Reader, progress *atomic.Int64) (transfer, error) {
	buf := make([]byte, 32<<10)
	var tr transfer
	var firstRead int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			now := time.Now()
			if tr.bytes == 0 {
				tr.first, firstRead = now, int64(n)
			}
			tr.last = now
			tr.bytes += int64(n)
			if progress != nil {
				progress.Add(int64(n))
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return tr, err
		}
	}
	tr.rate = math.Inf(1)
	if d := tr.last.Sub(tr.first); d > 0 {
		tr.rate = float64(tr.bytes-firstRead) / d.Seconds()
	}
	return tr, nil
}

// download GETs target with client and times its body; progress as for
// timedRead. It may run on any goroutine: it reports with Errorf.
func download(t *testing.T, client *http.Client, target string, progress *atomic.Int64) transfer {
	t.Helper()
	resp, err := client.Get(target)
	if err != nil {
		t.Errorf("GET %s through the gateway: %v", target, err)
		return transfer{}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s: status %d, want 200", target, resp.StatusCode)
		return transfer{}
	}
	got, err := timedRead(resp.Body, progress)
	if err != nil || got.bytes != resp.ContentLength {
		t.Errorf("GET %s: read %d of %d bytes: %v", target, got.bytes, resp.ContentLength, err)
	}
	return got
}

// measureBandwidth runs measure until its transfer comes within the
// tolerance of the limit, at most three times, and fails unless one does.
// Faster than the limit fails at once: nothing makes shaping faster. Slower
// is tried again, because a machine that stalls the gateway or this test
// for longer than the shaper's burst loses time that a token bucket rightly
// never gives back; a gateway that is slow every time still fails.
func measureBandwidth(t *testing.T, what string, measure func() transfer) transfer {
	t.Helper()
	low, high := (1-bandwidthTolerance)*bandwidthLimit, (1+bandwidthTolerance)*bandwidthLimit
	const attempts = 3
	for attempt := 1; ; attempt++ {
		got := measure()
		if t.Failed() {
			return got
		}
		t.Logf("%s: %d bytes at %.0f KiB/s (limit %d KiB/s)", what, got.bytes, got.rate/1024, bandwidthLimit/1024)
		switch {
		case got.rate > high:
			t.Errorf("%s ran at %.0f KiB/s, faster than the limit of %d KiB/s + %.0f%%", what, got.rate/1024, bandwidthLimit/1024, 100*bandwidthTolerance)
			return got
		case got.rate >= low:
			return got
		case attempt == attempts:
			t.Errorf("%s ran slower than the limit of %d KiB/s - %.0f%% %d times in a row", what, bandwidthLimit/1024, 100*bandwidthTolerance, attempts)
			return got
		}
	}
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// bulkHandler serves GET /bytes/N with N bytes, and counts POST bodies: it
// answers with the byte count and, if uploads is not nil, sends it how the
// body arrived.
func bulkHandler(uploads chan<- transfer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			got, err := timedRead(r.Body, nil)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if uploads != nil {
				select {
				case uploads <- got:
				default:
				}
			}
			io.WriteString(w, strconv.FormatInt(got.bytes, 10))
			return
		}
		n, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/bytes/"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "want GET /bytes/N", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, io.LimitReader(zeros{}, n))
	})
}

// zeros is an endless stream of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// redisServer is a redis-server process the test owns, on a port fixed at
// start so that it can be killed and started again where the gateways
// expect it.
type redisServer struct {
	bin  string
	addr string // 127.0.0.1:P
	dir  string

	cmd    *exec.Cmd
	output lockedBuffer
	exited chan struct{}
}

// startRedis starts a redis-server without persistence in a temporary
// directory, skipping the test when the machine has none.
func startRedis(t *testing.T) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skipf("redis-server is not installed, so the Redis quota backend is not exercised: %v", err)
	}
	r := &redisServer{bin: bin, addr: freeAddr(t), dir: t.TempDir()}
	r.start(t)
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("redis-server output:\n%s", tail(r.output.String(), 4000))
		}
	})
	return r
}

// start runs redis-server on r.addr and waits until it answers PING.
func (r *redisServer) start(t *testing.T) {
	t.Helper()
	r.cmd = exec.Command(r.bin, "--port", strconv.Itoa(portOf(t, r.addr)), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir)
	r.cmd.Env = childEnv()
	r.cmd.Stdout, r.cmd.Stderr = &r.output, &r.output
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	exited := make(chan struct{})
	r.exited = exited
	go func() {
		r.cmd.Wait()
		close(exited)
	}()
	eventually(t, 10*time.Second, func() error {
		select {
		case <-exited:
			t.Fatalf("redis-server exited at start; output:\n%s", r.output.String())
		default:
		}
		return redisPing(r.addr)
	})
}

// kill ends redis-server at once, as a crash would.
func (r *redisServer) kill(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Kill(); err != nil {
		t.Fatalf("killing redis-server: %v", err)
	}
	<-r.exited
}

// stop kills redis-server if it is running.
func (r *redisServer) stop() {
	select {
	case <-r.exited:
	default:
		r.cmd.Process.Kill()
		<-r.exited
	}
}

// redisPing sends PING in the Redis protocol and expects PONG.
func redisPing(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(conn, "PING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("redis answered PING with %q", line)
	}
	return nil
}

// TestReloadedBandwidthIsNotUndoneByOlderRequests: a request that began
// under the old bandwidth limit does not set the tenant's shared shaper
// back to it when its response arrives after a reload lowered the limit.
func TestReloadedBandwidthIsNotUndoneByOlderRequests(t *testing.T) {
	t.Parallel()
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	var releaseOnce sync.Once
	releaseSlow := func() { releaseOnce.Do(func() { close(release) }) }
	origin := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		io.WriteString(w, greeting(r.URL.Path))
	}))
	t.Cleanup(releaseSlow)
	tenant := func(ingressKiB int) string {
		return tenantYAML(shaped, yamlf(`
			quota:
			  bandwidth: { ingress: %dKiB }
		`, ingressKiB)+allowRule("api", []string{hostAPI}, origin.port))
	}
	g, dir := startReloadable(t, configFiles{"gateway.yaml": gatewayYAML(""), "tenants/shaped.yaml": tenant(1024)})
	ingressLimit := func() int64 {
		for _, b := range quotaUsageOf(t, g, shaped.tenant).Bandwidth {
			if b.Direction == "ingress" {
				return b.BytesPerSecond
			}
		}
		return 0
	}
	g.expectAllowedGET(t, shaped, origin.url(hostAPI, "/first")) // the shaper exists
	client := g.client(t, shaped)
	done := make(chan error, 1)
	go func() {
		resp, err := client.Get(origin.url(hostAPI, "/slow"))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		done <- err
	}()
	<-arrived
	writeFile(t, filepath.Join(dir, "tenants", "shaped.yaml"), tenant(64))
	eventually(t, scaled(reloadWindow+time.Second), func() error {
		if got := ingressLimit(); got != 64<<10 {
			return fmt.Errorf("ingress limit %d, want %d after the reload", got, 64<<10)
		}
		return nil
	})
	releaseSlow()
	if err := <-done; err != nil {
		t.Fatalf("the older request: %v", err)
	}
	if got := ingressLimit(); got != 64<<10 {
		t.Errorf("ingress limit %d after the older request finished, want the reloaded %d", got, 64<<10)
	}
}
