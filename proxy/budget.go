package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressgw/egressgw/budget"
	"github.com/egressgw/egressgw/policy"
)

// tenantMeters are a tenant's budget meters in one policy generation:
// one per connector version it lists and one for its own rules and
// grants (docs/reference.md, "Budgets and cost"), built at Apply so the
// request path only looks them up.
type tenantMeters struct {
	rules      *budget.Meter
	connectors map[*policy.Connector]*budget.Meter
}

// meterFor is the meter of traffic connector allowed; nil: the tenant's
// rules and grants.
func (m *tenantMeters) meterFor(connector *policy.Connector) *budget.Meter {
	if connector != nil {
		if cm := m.connectors[connector]; cm != nil {
			return cm
		}
	}
	return m.rules
}

// applyBudgets hands the ledger snap's budgets and gives each tenant state
// its meters. Counts live in the ledger, keyed by tenant, connector
// version and period, so the new generation's meters go on counting
// where the old ones stopped.
func (g *Gateway) applyBudgets(snap *policy.Snapshot, states map[*policy.Tenant]*tenantState) {
	all := make(map[string][]budget.Budget, len(states))
	for t := range states {
		if len(t.Budgets) > 0 {
			all[t.ID] = t.Budgets
		}
	}
	g.ledger.SetBudgets(all)
	for t, s := range states {
		m := &tenantMeters{
			rules:      g.ledger.Meter(budget.Source{Tenant: t.ID}),
			connectors: map[*policy.Connector]*budget.Meter{},
		}
		for _, r := range t.Rules() {
			if c := r.Connector; c != nil {
				m.connectors[c] = g.ledger.Meter(budget.Source{Tenant: t.ID, Connector: c.Name, Version: c.Version, Price: c.Price})
			}
		}
		s.budget = m
	}
	g.ledger.SetCurrency(snap.Gateway.Budgets.Currency)
}

// exchangeBudget is what an exchange keeps of its budgets: the meter it
// is counted on, the bytes already charged, and the budget that refused
// or closed it, for its audit line.
type exchangeBudget struct {
	meter       *budget.Meter
	chargedUp   atomic.Int64
	chargedDown atomic.Int64
	name        atomic.Pointer[string]

	// The X-Egressgw-Budget lines, set once (setBudgetHeaders); nil for a
	// tenant without budgets, whose exchanges carry no room for them.
	headers *budgetHeaders
}

// budgetHeaders holds the X-Egressgw-Budget lines of an exchange: one
// buffer for up to four of them, which the header values point into.
type budgetHeaders struct {
	header [384]byte
	values [4]string
}

// admitBudget is the budget step of admit: the request is counted on its
// meter, or refused with 429 budget_exhausted when a budget that applies
// has no room left. Counters that cannot be read fail closed as the
// quota backend does (quota.redis.on_error).
func (ex *exchange) admitBudget(ctx context.Context) outcome {
	if ex.ts == nil || ex.ts.budget == nil || ex.out.rule == selfServiceRule {
		return outcome{}
	}
	m := ex.ts.budget.meterFor(ex.connector)
	ex.budget.meter = m
	now := ex.gw.now()
	refusal, err := m.Admit(ctx, now)
	if err != nil {
		if errors.Is(err, budget.ErrUnavailable) && ex.gw.settings.Quota.FailOpen {
			m.Count(now)
			ex.gw.metrics.quotaFailedOpen(ex.tenant.ID)
			ex.gw.failOpen.note(ex.gw, ex.id)
			return outcome{}
		}
		ex.budget.meter = nil // counted nothing
		ex.gw.metrics.quotaRejection(ex.tenant.ID, "unavailable")
		ex.gw.log.Warn("budget counters unavailable", "request_id", ex.id, "tenant", ex.tenant.ID, "error", err)
		return refused(policy.CodeQuotaUnavailable, "the budget counters cannot be read or kept and the gateway fails closed; retry shortly")
	}
	if refusal.Refused() {
		ex.budget.meter = nil
		name := refusal.Budget
		ex.budget.name.Store(&name)
		ex.gw.metrics.quotaRejection(ex.tenant.ID, "budget")
		retryAfter := max(int(refusal.Reset.Sub(now).Round(time.Second)/time.Second), 1)
		o := refused(policy.CodeBudgetExhausted, fmt.Sprintf(
			"tenant %q has spent its %s budget %q; it resets at %s, in %d s",
			ex.tenant.ID, refusal.Period, refusal.Budget, refusal.Reset.UTC().Format(time.RFC3339), retryAfter))
		o.retryAfter = retryAfter
		return o
	}
	return outcome{}
}

// setBudgetHeaders adds one X-Egressgw-Budget line per budget that
// applies to an allowed response (docs/reference.md, "Budgets and
// cost"). The lines are written into the exchange's own buffer and
// values, so a request under budgets allocates no more than one without:
// the header is set once per exchange and the buffer never written again.
func (ex *exchange) setBudgetHeaders(h map[string][]string) {
	m := ex.budget.meter
	if m == nil || m.Budgets() == 0 || ex.budget.headers != nil {
		return
	}
	lines := new(budgetHeaders)
	ex.budget.headers = lines
	now := ex.gw.now()
	n := m.Budgets()
	if n > len(lines.values) {
		// More budgets than the buffer has room for: every one still gets
		// its line, at the cost of allocating them.
		values := make([]string, n)
		for i := range n {
			values[i] = string(m.AppendHeader(lines.header[:0], i, now))
		}
		h["X-Egressgw-Budget"] = values
		return
	}
	b := lines.header[:0]
	var ends [len(budgetHeaders{}.values)]int
	for i := range n {
		b = m.AppendHeader(b, i, now)
		ends[i] = len(b)
	}
	var all string
	if &b[0] == &lines.header[0] {
		all = unsafe.String(&b[0], len(b)) // the buffer is not written again
	} else {
		all = string(b) // outgrew the buffer
	}
	start := 0
	for i := range n {
		lines.values[i] = all[start:ends[i]]
		start = ends[i]
	}
	h["X-Egressgw-Budget"] = lines.values[:n:n]
}

// chargeBudget charges the exchange's meter with the bytes it moved since
// it last did, and reports whether a byte or cost budget is now spent.
// Any goroutine may call it: each byte is charged once. A request inside
// a tunnel charges nothing: the tunnel's own bytes count.
func (ex *exchange) chargeBudget() (spent bool) {
	m := ex.budget.meter
	if m == nil || ex.inner {
		return false
	}
	up := unaccounted(&ex.bytesUp, &ex.budget.chargedUp)
	down := unaccounted(&ex.bytesDown, &ex.budget.chargedDown)
	if up == 0 && down == 0 {
		return false
	}
	return m.Charge(up, down)
}

// chargeTunnel is the per-step hook of a relayed connection whose tenant
// has a budget on it: a tunnel, upgrade or stream that spends a byte or
// cost budget is closed after the step that spent it.
func (t *tunnel) chargeTunnel() {
	if t.ex.chargeBudget() {
		t.budgetSpent()
	}
}

// budgetSpent closes t because a budget of its tenant is spent; its
// audit line says revoked, with the budget.
func (t *tunnel) budgetSpent() {
	ex := t.ex
	name := "a budget"
	if m := ex.budget.meter; m != nil {
		if s := m.Spent(ex.gw.now()); s != "" {
			name = s
		}
	}
	ex.budget.name.Store(&name)
	if t.revoke(fmt.Sprintf("budget %q of tenant %q is spent", name, ex.tenantID())) {
		ex.gw.metrics.quotaRejection(ex.tenantID(), "budget")
		ex.gw.log.Info("closed by a spent budget", "request_id", ex.id, "tenant", ex.tenantID(), "budget", name)
	}
}

// meterRelay makes a relayed connection charge the exchange's budgets
// each step, when any applies: without one, its bytes are charged each
// second and at its end, as a plain request's are.
func (t *tunnel) meterRelay(c *meteredConn) {
	if m := t.ex.budget.meter; m != nil && m.Budgets() > 0 {
		c.charge = t.chargeTunnel
	}
}

// budgetWarning writes the audit line and counts the metric of a budget
// crossing its warn_at.
func (g *Gateway) budgetWarning(w budget.Warning) {
	rec := budgetWarningRecord{
		Time: g.now().UTC(), Kind: "budget_warning", Tenant: w.Tenant, Budget: w.Budget,
		BudgetKind: w.Kind, Used: w.Used, Limit: w.Limit, Reset: w.Reset.UTC(),
	}
	line, err := json.Marshal(rec)
	if err == nil {
		err = g.audit.writeLine(append(line, '\n'))
	}
	if err != nil {
		g.log.Error("audit log write failed", "error", err)
	}
	g.metrics.budgetWarnings.WithLabelValues(g.metrics.tenantLabel(w.Tenant), w.Budget).Inc()
	g.log.Warn("budget warning", "tenant", w.Tenant, "budget", w.Budget, "kind", w.Kind, "used", w.Used, "limit", w.Limit)
}

// budgetFlushFailed logs and counts a flush of the budget counters that
// failed; until one succeeds, tenants with budgets are refused (or let
// through, with on_error: allow).
func (g *Gateway) budgetFlushFailed(err error) {
	g.metrics.budgetFlushErrors.Inc()
	g.log.Warn("budget counters could not be flushed; tenants with budgets fail closed until they are", "error", err)
}

// budgetCollector exports where every budget of the live policy stands,
// read from the ledger at scrape time rather than updated per request.
type budgetCollector struct {
	g           *Gateway
	used, limit *prometheus.Desc
}

func newBudgetCollector(g *Gateway) *budgetCollector {
	labels := []string{"tenant", "budget", "kind"}
	return &budgetCollector{
		g:     g,
		used:  prometheus.NewDesc("egressgw_budget_used", "What a budget has used this period, by kind (requests, egress and ingress bytes, cost).", labels, nil),
		limit: prometheus.NewDesc("egressgw_budget_limit", "A budget's limit, by kind; only kinds it limits.", labels, nil),
	}
}

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.used
	ch <- c.limit
}

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	rt := c.g.runtime.Load()
	if rt == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Tenants past max_tenant_labels share one label: sum them.
	type series struct{ tenant, budget, kind string }
	used, limits := map[series]float64{}, map[series]float64{}
	for _, id := range rt.live.TenantIDs() {
		t, _ := rt.live.Tenant(id)
		if len(t.Budgets) == 0 {
			continue
		}
		statuses, err := c.g.ledger.Budgets(ctx, id)
		if err != nil {
			continue // the counters are unreadable: no figures rather than zeros
		}
		label := c.g.metrics.tenantLabel(id)
		for _, st := range statuses {
			kinds := [4]struct {
				limit, used float64
			}{
				{float64(st.Limit.Requests), float64(st.Used.Requests)},
				{float64(st.Limit.Egress), float64(st.Used.Egress)},
				{float64(st.Limit.Ingress), float64(st.Used.Ingress)},
				{st.Limit.Cost, st.Used.Cost},
			}
			for i, k := range kinds {
				if k.limit <= 0 {
					continue
				}
				s := series{label, st.Name, budget.KindNames[i]}
				used[s] += k.used
				limits[s] += k.limit
			}
		}
	}
	for s, v := range used {
		ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, v, s.tenant, s.budget, s.kind)
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, limits[s], s.tenant, s.budget, s.kind)
	}
}

// budgetWarningRecord is the audit line of a budget crossing its warn_at
// (docs/reference.md, "Audit line").
type budgetWarningRecord struct {
	Time       time.Time `json:"time"`
	Kind       string    `json:"kind"` // always "budget_warning"
	Tenant     string    `json:"tenant"`
	Budget     string    `json:"budget"`
	BudgetKind string    `json:"budget_kind"`
	Used       float64   `json:"used"`
	Limit      float64   `json:"limit"`
	Reset      time.Time `json:"reset"`
}
