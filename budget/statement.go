package budget

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"
)

// Cost is what u costs at p: cost is computed from what crossed the
// gateway, so a statement is reproducible from the audit log's lines.
func (p Price) Cost(u Usage) float64 {
	return float64(u.Requests)*p.PerRequest +
		float64(u.Egress)/(1<<30)*p.PerGiBEgress +
		float64(u.Ingress)/(1<<30)*p.PerGiBIngress
}

// Statement is the tenant's statement for the period p holding at: every
// connector version's traffic and cost, and the total. It flushes first,
// so that it includes what this process counted up to now.
func (l *Ledger) Statement(ctx context.Context, tenant string, p Period, at time.Time) (Statement, error) {
	if !p.Valid() {
		return Statement{}, errors.New("budget: period: want hour, day or month")
	}
	start, end := p.Bounds(at)
	st := Statement{Tenant: tenant, Period: p, Start: start, End: end, Currency: l.Currency(), Lines: []Line{}}
	if err := l.Flush(ctx); err != nil {
		return Statement{}, err
	}
	stored, err := l.backend.Lines(ctx, tenant, p, start)
	if err != nil {
		return Statement{}, errors.Join(ErrUnavailable, err)
	}
	for _, s := range stored {
		u := Usage{Requests: s.Counts[requests], Egress: s.Counts[egress], Ingress: s.Counts[ingress]}
		if u == (Usage{}) {
			continue
		}
		u.Cost = s.Price.Cost(u)
		st.Lines = append(st.Lines, Line{Connector: s.Connector, Version: s.Version, Usage: u})
		st.Total.Requests += u.Requests
		st.Total.Egress += u.Egress
		st.Total.Ingress += u.Ingress
		st.Total.Cost += u.Cost
	}
	slices.SortFunc(st.Lines, func(a, b Line) int {
		if (a.Connector == "") != (b.Connector == "") {
			if a.Connector == "" {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(a.Connector, b.Connector), cmp.Compare(a.Version, b.Version))
	})
	return st, nil
}

// Budgets is where the tenant's budgets of the live policy stand, in
// file order; none when it has none.
func (l *Ledger) Budgets(ctx context.Context, tenant string) ([]Status, error) {
	l.mu.Lock()
	list := slices.Clone(l.live[tenant])
	l.mu.Unlock()
	now := l.now()
	out := make([]Status, 0, len(list))
	for _, c := range list {
		p, err := l.period(ctx, c, now, now.UnixNano(), true)
		if err != nil {
			return nil, err
		}
		def := c.def.Load()
		st := Status{
			Name: def.Name, Period: def.Period, Limit: def.Limit, WarnAt: def.WarnAt, Reset: p.end,
			Connectors: slices.Clone(def.Connectors),
			Used: Usage{
				Requests: p.used(requests), Egress: p.used(egress), Ingress: p.used(ingress),
				Cost: float64(p.used(cost)) / picoUnits,
			},
		}
		lim := def.Limit
		st.Exhausted = (lim.Requests > 0 && st.Used.Requests >= lim.Requests) ||
			(lim.Egress > 0 && st.Used.Egress >= lim.Egress) ||
			(lim.Ingress > 0 && st.Used.Ingress >= lim.Ingress) ||
			(lim.Cost > 0 && p.used(cost) >= costUnits(lim.Cost))
		out = append(out, st)
	}
	return out, nil
}
