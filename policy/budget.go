package policy

import (
	"math"
	"regexp"
	"slices"

	"github.com/egressgw/egressgw/budget"
)

// BudgetSettings is gateway.yaml's budgets section with defaults applied
// (docs/reference.md, "Budgets and cost").
type BudgetSettings struct {
	// Currency names the unit of connectors' prices and budgets' cost.
	Currency string
}

// DefaultCurrency is budgets.currency when gateway.yaml does not set it.
const DefaultCurrency = "USD"

var currencyPattern = regexp.MustCompile(`^[A-Za-z]{1,16}$`)

// The bounds of a price and a cost limit: costs are counted in
// millionths of a millionth (budget package), and a month of traffic at
// the highest price must still fit.
const (
	maxPrice = 1_000_000
	maxCost  = 1_000_000
)

func (b *builder) budgetSettings(doc *yamlDoc, f budgetsFile) BudgetSettings {
	s := BudgetSettings{Currency: orDefault(f.Currency, DefaultCurrency)}
	if !currencyPattern.MatchString(s.Currency) {
		b.errorf(doc, doc.line("budgets", "currency"), "budgets.currency: want a currency's name in letters (at most 16), such as USD, got %q", s.Currency)
	}
	return s
}

// price validates a connector's price: each part a finite amount from 0
// to maxPrice.
func (b *builder) price(doc *yamlDoc, f *priceFile) budget.Price {
	if f == nil {
		return budget.Price{}
	}
	amount := func(v *float64, key string) float64 {
		if v == nil {
			return 0
		}
		if !(*v >= 0 && *v <= maxPrice) { // NaN too
			b.errorf(doc, doc.line("price", key), "price.%s: want an amount from 0 to %d, got %v", key, maxPrice, *v)
			return 0
		}
		return *v
	}
	return budget.Price{
		PerRequest:    amount(f.PerRequest, "per_request"),
		PerGiBEgress:  amount(f.PerGiBEgress, "per_gib_egress"),
		PerGiBIngress: amount(f.PerGiBIngress, "per_gib_ingress"),
	}
}

// budgets validates a tenant's budgets; connectors are the names of the
// connectors the tenant lists, the only ones a budget may count alone.
func (b *builder) budgets(doc *yamlDoc, list []budgetFile, connectors map[string]bool) []budget.Budget {
	var out []budget.Budget
	names := map[string]bool{}
	for i, f := range list {
		at := func(steps ...any) int { return doc.line(append([]any{"budgets", i}, steps...)...) }
		before := len(b.errs)
		if !idPattern.MatchString(f.Name) {
			b.errorf(doc, at("name"), "budgets[%d].name: want letters, digits, '.', '_' or '-' (at most 64), got %q", i, f.Name)
		} else if names[f.Name] {
			b.errorf(doc, at("name"), "budget %q is defined twice", f.Name)
		}
		names[f.Name] = true
		bud := budget.Budget{Name: f.Name, Period: budget.Period(f.Period)}
		if !bud.Period.Valid() {
			b.errorf(doc, at("period"), "budget %q: period: want hour, day or month, got %q", f.Name, f.Period)
		}
		if f.Requests == nil && f.Egress == nil && f.Ingress == nil && f.Cost == nil {
			b.errorf(doc, at(), "budget %q limits nothing: set requests, egress, ingress or cost", f.Name)
		}
		if f.Requests != nil {
			if *f.Requests < 1 {
				b.errorf(doc, at("requests"), "budget %q: requests: must be 1 or more", f.Name)
			}
			bud.Limit.Requests = *f.Requests
		}
		for _, bytes := range []struct {
			key   string
			v     *Size
			limit *int64
		}{{"egress", f.Egress, &bud.Limit.Egress}, {"ingress", f.Ingress, &bud.Limit.Ingress}} {
			if bytes.v == nil {
				continue
			}
			if *bytes.v < 1 {
				b.errorf(doc, at(bytes.key), "budget %q: %s: must be 1 byte or more", f.Name, bytes.key)
			}
			*bytes.limit = int64(*bytes.v)
		}
		if f.Cost != nil {
			if !(*f.Cost > 0 && *f.Cost <= maxCost) {
				b.errorf(doc, at("cost"), "budget %q: cost: want an amount above 0, at most %d, got %v", f.Name, maxCost, *f.Cost)
			}
			bud.Limit.Cost = *f.Cost
		}
		if f.WarnAt != nil {
			if !(*f.WarnAt > 0 && *f.WarnAt < 1) {
				b.errorf(doc, at("warn_at"), "budget %q: warn_at: want a fraction between 0 and 1 such as 0.8, got %v", f.Name, *f.WarnAt)
			}
			bud.WarnAt = *f.WarnAt
		}
		for j, c := range f.Connectors {
			switch {
			case !connectors[c]:
				b.errorf(doc, at("connectors", j), "budget %q: connector %q is not one of this tenant's connectors", f.Name, c)
			case slices.Contains(f.Connectors[:j], c):
				b.errorf(doc, at("connectors", j), "budget %q: connector %q is listed twice", f.Name, c)
			}
		}
		bud.Connectors = slices.Clone(f.Connectors)
		if len(b.errs) == before && !math.IsNaN(bud.Limit.Cost) {
			out = append(out, bud)
		}
	}
	return out
}
