package policy

import (
	"errors"
	"strings"
	"testing"
	"testing/fstest"
	"time"
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
			want:    TenantQuota{Rate: &Rate{PerSecond: 5, Burst: 5}, MaxConcurrent: 1000, EgressBytes: 1 << 20, IngressBytes: 2 << 20},
			explain: "5 requests/s, burst 5; 1000 concurrent; egress 1048576 B/s; ingress 2097152 B/s",
		},
		{
			name:    "the tenant's rate replaces the default's, burst included",
			gateway: "tenant_defaults:\n  quota: { requests_per_second: 5, burst: 50 }\n",
			tenant:  "quota: { requests_per_second: 2 }\n",
			want:    TenantQuota{Rate: &Rate{PerSecond: 2, Burst: 2}, MaxConcurrent: 256},
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
			if got.String() != c.want.String() || (got.Rate == nil) != (c.want.Rate == nil) {
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
