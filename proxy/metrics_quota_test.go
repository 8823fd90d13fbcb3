package proxy

import (
	"fmt"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// egressgw_quota_requests_per_second exports each tenant's request rate
// limit, so an alert can compare the request rate with it before any
// request is refused; a tenant without a limit has no series, and a
// reload that changes or removes the limit changes or removes the series.
func TestQuotaRequestsPerSecondMetric(t *testing.T) {
	t.Parallel()
	bystander := pathTenant{"bystander", "bystander-token-8e4f0b1d36"}
	rule := pathRule("api", []string{zoneAPI}, 80)
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml":      pathAcme.yaml(rule + "quota: { requests_per_second: 7.5, burst: 20 }\n"),
		"tenants/bystander.yaml": bystander.yaml(rule),
	})
	limits := func() string {
		got := map[string]float64{}
		for _, tenant := range []string{pathAcme.id, bystander.id} {
			if v, found := g.metric(t, "egressgw_quota_requests_per_second", map[string]string{"tenant": tenant}); found {
				got[tenant] = v
			}
		}
		return fmt.Sprint(got)
	}
	if got, want := limits(), fmt.Sprint(map[string]float64{pathAcme.id: 7.5}); got != want {
		t.Errorf("egressgw_quota_requests_per_second by tenant: %s, want %s", got, want)
	}

	reload := func(files map[string]string) {
		t.Helper()
		fsys := fstest.MapFS{"gateway.yaml": {Data: []byte(fmt.Sprintf("network:\n  allow_cidrs: [\"127.0.0.1/32\"]\n  dns_servers: [%q]\n", g.dns))}}
		for name, content := range files {
			fsys[name] = &fstest.MapFile{Data: []byte(content)}
		}
		snap, err := policy.Load(fsys, time.Now())
		if err != nil {
			t.Fatalf("loading the policy: %v", err)
		}
		g.Apply(snap)
	}
	reload(map[string]string{
		"tenants/acme.yaml":      pathAcme.yaml(rule),
		"tenants/bystander.yaml": bystander.yaml(rule + "quota: { requests_per_second: 3 }\n"),
	})
	if got, want := limits(), fmt.Sprint(map[string]float64{bystander.id: 3}); got != want {
		t.Errorf("after a reload that moved the limit: %s, want %s", got, want)
	}
	reload(map[string]string{"tenants/acme.yaml": pathAcme.yaml(rule)})
	if got, want := limits(), fmt.Sprint(map[string]float64{}); got != want {
		t.Errorf("after a reload that removed the tenant: %s, want %s", got, want)
	}
}
