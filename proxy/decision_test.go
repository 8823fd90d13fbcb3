package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
	"github.com/prometheus/client_golang/prometheus"
)

// decisionRules is the size of the policy the decision is measured
// against: half exact hosts, half wildcards, in one tenant.
const decisionRules = 10_000

// benchToken is the token of the tenant "acme" in benchGateway's policies.
const benchToken = "bench-token"

// benchGateway is a gateway serving one tenant, acme (token benchToken),
// whose quota and rules follow in tenantYAML; gatewayYAML is gateway.yaml.
func benchGateway(tb testing.TB, gatewayYAML, tenantYAML string) *Gateway {
	tb.Helper()
	sum := sha256.Sum256([]byte(benchToken))
	fsys := fstest.MapFS{
		"gateway.yaml":      {Data: []byte(gatewayYAML)},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) + "\" }\n" + tenantYAML)},
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	return testGateway(tb, snap, io.Discard)
}

// testGateway is a gateway serving snap, with memory quotas, writing its
// audit lines to audit and its logs nowhere.
func testGateway(tb testing.TB, snap *policy.Snapshot, audit io.Writer) *Gateway {
	tb.Helper()
	g, err := New(Options{
		Logger:    slog.New(slog.DiscardHandler),
		Audit:     audit,
		Registry:  prometheus.NewRegistry(),
		Quota:     quota.NewMemory(quota.MemoryOptions{}),
		Bandwidth: quota.NewBandwidth(quota.BandwidthOptions{}),
		Settings:  snap.Gateway,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if g.draining.Load() {
			return // the test shut it down itself
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx) // stops the audit flusher and hook workers
	})
	g.Apply(snap)
	return g
}

// decisionGateway is a gateway with one tenant of decisionRules rules and
// quotas on but far from binding, as a production tenant would have.
func decisionGateway(tb testing.TB) *Gateway {
	tb.Helper()
	var rules strings.Builder
	for i := range decisionRules / 2 {
		fmt.Fprintf(&rules, "  - { name: exact%d, hosts: [\"host%d.example.com\"], ports: [443] }\n", i, i)
		fmt.Fprintf(&rules, "  - { name: wild%d, hosts: [\"*.zone%d.example.net\"], ports: [443] }\n", i, i)
	}
	return benchGateway(tb, "listen: \"127.0.0.1:3128\"\n",
		"quota: { requests_per_second: 1000000000, burst: 1000000000, max_concurrent: 1000000 }\nrules:\n"+rules.String())
}

// admitConnect runs the steps of serveConnect that come before the tunnel:
// identify, decide and admit.
func admitConnect(ctx context.Context, ex *exchange, r *http.Request, authority string) outcome {
	o := ex.identify(r)
	if o.ok() {
		o = ex.decide(connectTarget(authority))
	}
	if o.ok() {
		ex.rate, o = ex.admit(ctx, true)
	}
	return o
}

// BenchmarkPolicyDecision is the gateway's decision for one CONNECT:
// identify the tenant from its Basic credentials (decode, SHA-256,
// constant-time compare), match the target against 10,000 rules, and
// admit it (a token from the tenant's bucket and a concurrency slot,
// released again).
func BenchmarkPolicyDecision(b *testing.B) {
	g := decisionGateway(b)
	r, _ := http.NewRequest(http.MethodConnect, "", nil)
	r.RemoteAddr = "10.0.0.7:40000"
	r.Header.Set("Proxy-Authorization", "Basic "+basicEncode("acme", benchToken))
	ctx := context.Background()
	rt := g.runtime.Load()
	for _, target := range []struct{ name, authority string }{
		{"exact", fmt.Sprintf("host%d.example.com:443", decisionRules/2-1)},
		{"wildcard", fmt.Sprintf("api.zone%d.example.net:443", decisionRules/2-1)},
	} {
		b.Run(target.name, func(b *testing.B) {
			ex := &exchange{}
			b.ReportAllocs()
			for b.Loop() {
				*ex = exchange{gw: g, rt: rt, method: http.MethodConnect, tunnel: true}
				if o := admitConnect(ctx, ex, r, target.authority); !o.ok() {
					b.Fatalf("refused: %s %s", o.code, o.reason)
				}
				ex.slot.Release()
			}
		})
	}
}

// The decision the benchmark measures is right, refuses what it should,
// and allocates nothing (outside the race detector, whose sync.Pool drops
// items at random).
func TestPolicyDecisionAtScale(t *testing.T) {
	g := decisionGateway(t)
	rt := g.runtime.Load()
	ctx := context.Background()
	decide := func(credentials, authority string) outcome {
		r, _ := http.NewRequest(http.MethodConnect, "", nil)
		r.RemoteAddr = "10.0.0.7:40000"
		r.Header.Set("Proxy-Authorization", "Basic "+credentials)
		ex := &exchange{gw: g, rt: rt, method: http.MethodConnect, tunnel: true}
		o := admitConnect(ctx, ex, r, authority)
		if o.ok() {
			ex.slot.Release()
		}
		return o
	}
	good := basicEncode("acme", benchToken)
	for _, tc := range []struct {
		name, credentials, authority string
		want                         policy.Code
	}{
		{"exact, last rule", good, "host4999.example.com:443", policy.CodeOK},
		{"wildcard, last rule", good, "api.zone4999.example.net:443", policy.CodeOK},
		{"wildcard apex is not covered", good, "zone4999.example.net:443", policy.CodeDestinationNotAllowed},
		{"no rule", good, "host5000.example.com:443", policy.CodeDestinationNotAllowed},
		{"wrong port", good, "host1.example.com:8443", policy.CodeDestinationNotAllowed},
		{"wrong token", basicEncode("acme", "bench-tokem"), "host1.example.com:443", policy.CodeProxyAuthRequired},
		{"unknown tenant", basicEncode("globex", "bench-token"), "host1.example.com:443", policy.CodeProxyAuthRequired},
	} {
		if o := decide(tc.credentials, tc.authority); o.Code() != tc.want {
			t.Errorf("%s: code %s (%s), want %s", tc.name, o.Code(), o.reason, tc.want)
		}
	}
	if raceEnabled {
		return
	}
	r, _ := http.NewRequest(http.MethodConnect, "", nil)
	r.RemoteAddr = "10.0.0.7:40000"
	r.Header.Set("Proxy-Authorization", "Basic "+good)
	ex := &exchange{}
	allocs := testing.AllocsPerRun(200, func() {
		*ex = exchange{gw: g, rt: rt, method: http.MethodConnect, tunnel: true}
		if o := admitConnect(ctx, ex, r, "api.zone17.example.net:443"); !o.ok() {
			t.Fatalf("refused: %s", o.reason)
		}
		ex.slot.Release()
	})
	if allocs != 0 {
		t.Errorf("an allowed decision allocated %.1f times, want 0", allocs)
	}
}
