package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// bandwidthPolicy lets tenant acme reach api.example.com:443 with
// bandwidth (YAML for quota.bandwidth, "" for none).
func bandwidthPolicy(t *testing.T, bandwidth string) *policy.Snapshot {
	t.Helper()
	sum := sha256.Sum256([]byte(benchToken))
	quotaYAML := ""
	if bandwidth != "" {
		quotaYAML = "quota: { bandwidth: " + bandwidth + " }\n"
	}
	fsys := fstest.MapFS{
		"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\n")},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) + "\" }\n" + quotaYAML +
			"rules:\n  - { name: api, hosts: [\"api.example.com\"], ports: [443] }\n")},
	}
	snap, err := policy.Load(fsys, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// An exchange shapes its bytes under the policy generation it began in,
// not one a reload brought in since; and it never sets a shaper it shares
// with newer exchanges back to its own older limit.
func TestShapersFollowTheExchangesGeneration(t *testing.T) {
	for _, tc := range []struct {
		name             string
		began, reloaded  string // quota.bandwidth before and after the reload
		newerFirst       bool   // an exchange of the new generation shaped first
		wantEgress       int64  // the stale exchange's egress rate; -1 for none
		wantSharedEgress int64  // the shared shaper's rate afterwards; -1 for none
	}{
		{"no reload", "{ egress: 2048 }", "", false, 2048, 2048},
		{"limit lifted since: still its own", "{ egress: 2048 }", "-", false, 2048, 2048},
		{"limit set since: still its own", "", "{ egress: 2048 }", false, -1, -1},
		{"limit raised since, shared shaper kept", "{ egress: 2048 }", "{ egress: 8192 }", true, 8192, 8192},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := testGateway(t, bandwidthPolicy(t, tc.began), io.Discard)
			ex := &exchange{gw: g, rt: g.runtime.Load()}
			tenant, ok := ex.rt.live.Tenant("acme")
			if !ok {
				t.Fatal("no tenant acme")
			}
			ex.setTenant(tenant)
			if tc.reloaded != "" {
				next := tc.reloaded
				if next == "-" {
					next = ""
				}
				g.Apply(bandwidthPolicy(t, next))
				if tc.newerFirst {
					newer := &exchange{gw: g, rt: g.runtime.Load()}
					t2, _ := newer.rt.live.Tenant("acme")
					newer.setTenant(t2)
					newer.shapers()
				}
			}
			egress, ingress := ex.shapers()
			if got := rateOf(egress); got != tc.wantEgress {
				t.Errorf("egress shaped at %d, want %d", got, tc.wantEgress)
			}
			if ingress != nil {
				t.Errorf("ingress shaped at %d, want none", ingress.Rate())
			}
			if got := rateOf(g.bandwidth.Lookup(ex.ts.egressKey)); got != tc.wantSharedEgress {
				t.Errorf("the tenant's egress shaper is at %d afterwards, want %d", got, tc.wantSharedEgress)
			}
		})
	}
}

func rateOf(s *quota.Shaper) int64 {
	if s == nil {
		return -1
	}
	return s.Rate()
}
