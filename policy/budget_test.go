package policy

import (
	"reflect"
	"testing"

	"github.com/egressgw/egressgw/budget"
)

func TestBudgetsAndPricesCompiled(t *testing.T) {
	tests := []struct {
		name     string
		gateway  string
		currency string
	}{
		{"default currency", "# nothing set\n", DefaultCurrency},
		{"set currency", "budgets: { currency: EUR }\n", "EUR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := mustLoad(t, map[string]string{
				"gateway.yaml":       tc.gateway,
				"connectors/ai.yaml": "name: openai\nversion: 3\nhosts: [api.openai.com]\nprice: { per_request: 0.002, per_gib_egress: 0.09, per_gib_ingress: 0.01 }\n",
				"connectors/gh.yaml": "name: github\nhosts: [api.github.com]\n",
				"tenants/acme.yaml": `id: acme
auth: { source_cidrs: ["10.1.0.0/16"] }
connectors: [openai, github]
budgets:
  - name: daily
    period: day
    requests: 100000
    egress: 1GiB
    ingress: 20GiB
    cost: 25.00
    connectors: [openai]
    warn_at: 0.8
  - name: hourly
    period: hour
    requests: 100
`,
			})
			if snap.Gateway.Budgets.Currency != tc.currency {
				t.Errorf("currency %q, want %q", snap.Gateway.Budgets.Currency, tc.currency)
			}
			acme, _ := snap.Tenant("acme")
			want := []budget.Budget{
				{Name: "daily", Period: budget.Day, Limit: budget.Usage{Requests: 100000, Egress: 1 << 30, Ingress: 20 << 30, Cost: 25}, WarnAt: 0.8, Connectors: []string{"openai"}},
				{Name: "hourly", Period: budget.Hour, Limit: budget.Usage{Requests: 100}},
			}
			if !reflect.DeepEqual(acme.Budgets, want) {
				t.Errorf("budgets %+v\nwant %+v", acme.Budgets, want)
			}
			for _, r := range acme.rules {
				wantPrice := budget.Price{}
				if r.Connector.Name == "openai" {
					wantPrice = budget.Price{PerRequest: 0.002, PerGiBEgress: 0.09, PerGiBIngress: 0.01}
				}
				if r.Connector.Price != wantPrice {
					t.Errorf("%s price %+v, want %+v", r.Name, r.Connector.Price, wantPrice)
				}
			}
		})
	}
}
