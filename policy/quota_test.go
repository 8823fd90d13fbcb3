package policy

import (
	"errors"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/quota"
)

// tenant_defaults.quota fills in, field by field, what a tenant's own quota
// leaves out; max_concurrent is 256 unless gateway.yaml or the tenant says
// otherwise, and explain shows the quota in force.
func TestTenantDefaultsApplyFieldByField(t *testing.T) {
	const auth = "auth: { source_cidrs: [10.1.0.0/16] }\nrules: [{ hosts: [\"a.example\"] }]\n"
	cases := []struct {
		name, gateway, tenant string
		want                  TenantQuota
		explain               string
	}{
		{
			name: "no defaults, no quota", tenant: "",
			want: TenantQuota{MaxConcurrent: 256}, explain: "256 concurrent",
		},
		{
			name:    "defaults fill what the tenant leaves out",
			gateway: "tenant_defaults:\n  quota: { requests_per_second: 5, max_concurrent: 10, bandwidth: { egress: 1MiB } }\n",
			tenant:  "quota: { max_concurrent: 1000, bandwidth: { ingress: 2MiB } }\n",
			want:    TenantQuota{Rate: quota.Limit{Rate: 5, Burst: 5}, MaxConcurrent: 1000, EgressBytes: 1 << 20, IngressBytes: 2 << 20},
			explain: "5 requests/s, burst 5; 1000 concurrent; egress 1048576 B/s; ingress 2097152 B/s",
		},
		{
			name:    "the tenant's rate replaces the default's, burst included",
			gateway: "tenant_defaults:\n  quota: { requests_per_second: 5, burst: 50 }\n",
			tenant:  "quota: { requests_per_second: 2 }\n",
			want:    TenantQuota{Rate: quota.Limit{Rate: 2, Burst: 2}, MaxConcurrent: 256},
			explain: "2 requests/s, burst 2; 256 concurrent",
		},
		{
			name:    "a default without max_concurrent keeps 256",
			gateway: "tenant_defaults:\n  quota: { bandwidth: { ingress: 4KiB } }\n",
			want:    TenantQuota{MaxConcurrent: 256, IngressBytes: 4096},
			explain: "256 concurrent; ingress 4096 B/s",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			snap := mustLoad(t, map[string]string{"gateway.yaml": c.gateway, "tenants/a.yaml": "id: a\n" + auth + c.tenant})
			tenant, _ := snap.Tenant("a")
			got := tenant.Quota
			if got != c.want {
				t.Errorf("quota = %s, want %s", got, c.want)
			}
			if tr, err := tenant.ExplainURL("GET", "http://a.example/"); err != nil || tr.Quota != c.explain {
				t.Errorf("explain quota = %q, want %q", tr.Quota, c.explain)
			}
		})
	}
}

func TestTenantDefaultsAreValidatedWithTheirLines(t *testing.T) {
	fsys := fstest.MapFS{"gateway.yaml": {Data: []byte(`limits: { max_connections: 100 }
tenant_defaults:
  quota:
    max_concurrent: 0
    burst: 3
    bandwidth: { egress: 10B }
`)}}
	_, err := Load(fsys, time.Now())
	var le *LoadError
	if !errors.As(err, &le) {
		t.Fatalf("load: %v; want errors", err)
	}
	want := []string{
		"gateway.yaml:5: burst: set requests_per_second too",
		"gateway.yaml:4: max_concurrent: must be 1 or more",
		"gateway.yaml:6: bandwidth.egress: 10 bytes a second is below the 1KiB minimum",
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

// A tenant whose concurrency alone reaches limits.max_connections could
// take every connection: check warns.
func TestWarnsWhenOneTenantCanHoldEveryConnection(t *testing.T) {
	snap := mustLoad(t, map[string]string{
		"gateway.yaml":   "limits: { max_connections: 300 }\ntenant_defaults: { quota: { requests_per_second: 10, burst: 20 } }\n",
		"tenants/a.yaml": "id: a\nauth: { source_cidrs: [10.1.0.0/16] }\nrules: [{ hosts: [\"a.example\"] }]\n",
		"tenants/b.yaml": "id: b\nauth: { source_cidrs: [10.2.0.0/16] }\nrules: [{ hosts: [\"a.example\"] }]\nquota: { max_concurrent: 300 }\n",
	})
	var got []string
	for _, w := range snap.Warnings {
		got = append(got, w.Error())
	}
	want := `tenants/b.yaml:4: tenant "b" may hold 300 concurrent requests and tunnels, which is at least limits.max_connections (300): it alone could take every connection`
	if len(got) != 1 || got[0] != want {
		t.Errorf("warnings = %q, want only %q", got, want)
	}
}

// Quota keys and limits come compiled with the snapshot, so the request
// path builds none. The keys name state kept in the quota backend (Redis
// among them): they must not change from one version to the next, or an
// upgrade hands every tenant a fresh burst.
func TestQuotaKeysAndLimitsCompiled(t *testing.T) {
	const auth = "auth: { source_cidrs: [10.1.0.0/16] }\n"
	snap := mustLoad(t, map[string]string{
		"connectors/crm.yaml":  "name: crm\nhosts: [\"crm.example\"]\nquota: { requests_per_second: 3, burst: 7 }\n",
		"connectors/docs.yaml": "name: docs\nhosts: [\"docs.example\"]\n",
		"tenants/a.yaml": "id: a\n" + auth + "quota: { requests_per_second: 5 }\nconnectors: [crm, docs]\n" +
			"rules: [{ name: own, hosts: [\"own.example\"] }]\n",
		"tenants/b.yaml": "id: b\nmode: report\n" + "auth: { source_cidrs: [10.2.0.0/16] }\nconnectors: [crm]\n",
	})
	a, _ := snap.Tenant("a")
	b, _ := snap.Tenant("b")
	if a.QuotaKey != "t:a" || b.QuotaKey != "t:b" {
		t.Errorf("tenant quota keys %q, %q; want t:a, t:b", a.QuotaKey, b.QuotaKey)
	}
	if want := (quota.Limit{Rate: 5, Burst: 5}); a.Quota.Rate != want {
		t.Errorf("tenant a's rate %+v, want %+v", a.Quota.Rate, want)
	}
	crm := quota.Bucket{Key: "t:a|c:crm", Limit: quota.Limit{Rate: 3, Burst: 7}}
	cases := []struct {
		name   string
		tenant *Tenant
		req    Request
		want   quota.Bucket
	}{
		{"connector with a rate", a, Request{Host: "crm.example", Port: 443, Tunnel: true}, crm},
		{"connector without a rate", a, Request{Host: "docs.example", Port: 443, Tunnel: true}, quota.Bucket{Key: "t:a|c:docs"}},
		{"the tenant's own rule", a, Request{Host: "own.example", Port: 443, Tunnel: true}, quota.Bucket{}},
		{"report mode, allowed", b, Request{Host: "crm.example", Port: 443, Tunnel: true},
			quota.Bucket{Key: "t:b|c:crm", Limit: crm.Limit}},
		{"report mode, let through where no connector covers it", b, Request{Host: "elsewhere.example", Port: 443, Method: "GET", Path: "/"},
			quota.Bucket{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := c.tenant.Decide(c.req)
			if !d.Allow {
				t.Fatalf("refused: %s %s", d.Code, d.Reason)
			}
			if d.ConnectorBucket != c.want {
				t.Errorf("connector bucket %+v, want %+v", d.ConnectorBucket, c.want)
			}
		})
	}
}
