package proxy

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/egressgw/egressgw/budget"
	"github.com/egressgw/egressgw/policy"
)

// The statement endpoint of the admin API (docs/reference.md, "Admin
// API"; docs/admins.md, "Budgets"): what a tenant's traffic amounted to
// over one UTC calendar period, per connector version.

// statementDateLayout is the date form of ?at=, a UTC calendar day.
const statementDateLayout = "2006-01-02"

// Years outside these bounds are a typo, never a period with traffic;
// refusing them keeps the period arithmetic far from time.Time's limits.
const (
	minStatementYear = 2000
	maxStatementYear = 9999
)

// parseStatementQuery reads ?period= (hour, day or month; default day)
// and ?at= (a date such as 2026-12-06, or an RFC 3339 time; default now).
func parseStatementQuery(period, at string, now time.Time) (budget.Period, time.Time, error) {
	p := budget.Day
	if period != "" {
		p = budget.Period(period)
		if !p.Valid() {
			return "", time.Time{}, fmt.Errorf("period %q: want hour, day or month", period)
		}
	}
	if at == "" {
		return p, now.UTC(), nil
	}
	t, err := time.Parse(statementDateLayout, at)
	if err != nil {
		if t, err = time.Parse(time.RFC3339, at); err != nil {
			return "", time.Time{}, fmt.Errorf("at %q: want a date such as 2026-12-06 or an RFC 3339 time such as 2026-12-06T15:04:05Z", at)
		}
	}
	if y := t.UTC().Year(); y < minStatementYear || y > maxStatementYear {
		return "", time.Time{}, fmt.Errorf("at %q: want a year from %d to %d", at, minStatementYear, maxStatementYear)
	}
	return p, t.UTC(), nil
}

// GET /v1/tenants/ID/statement?period=hour|day|month&at=DATE
func (g *Gateway) statementHandler(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	live := g.Live()
	if live == nil {
		adminError(w, http.StatusServiceUnavailable, codeStateUnavailable, "no policy loaded")
		return
	}
	if _, ok := live.Tenant(id); !ok {
		adminError(w, http.StatusNotFound, codeNotFound, fmt.Sprintf("tenant %q is not defined in the live policy", id))
		return
	}
	q := r.URL.Query()
	period, at, err := parseStatementQuery(q.Get("period"), q.Get("at"), g.now())
	if err != nil {
		adminError(w, http.StatusBadRequest, policy.CodeBadRequest, err.Error())
		return
	}
	st, err := g.ledger.Statement(r.Context(), id, period, at)
	if err != nil {
		g.log.Error("budget counters could not be read", "what", "statement", "tenant", id, "error", err)
		adminError(w, http.StatusServiceUnavailable, codeStateUnavailable, "the budget counters could not be read; try again")
		return
	}
	if st.Lines == nil {
		st.Lines = []budget.Line{} // a period without traffic lists none, never null
	}
	writeJSON(w, http.StatusOK, st)
}

// budgetView is one budget as the admin API's usage and the tenant's own
// endpoint show it: where it stands, and what remains of each limit.
type budgetView struct {
	budget.Status
	Remaining budgetRemaining `json:"remaining"`
}

// budgetRemaining is what remains of each limit of a budget; a
// dimension the budget does not limit is absent. Never below zero.
type budgetRemaining struct {
	Requests *int64   `json:"requests,omitempty"`
	Egress   *int64   `json:"egress_bytes,omitempty"`
	Ingress  *int64   `json:"ingress_bytes,omitempty"`
	Cost     *float64 `json:"cost,omitempty"`
}

// viewBudgets adds what remains to each status.
func viewBudgets(statuses []budget.Status) []budgetView {
	out := make([]budgetView, 0, len(statuses))
	for _, s := range statuses {
		out = append(out, budgetView{Status: s, Remaining: remainingOf(s.Limit, s.Used)})
	}
	return out
}

func remainingOf(limit, used budget.Usage) budgetRemaining {
	var r budgetRemaining
	left := func(limit, used int64) *int64 {
		v := max(limit-used, 0)
		return &v
	}
	if limit.Requests > 0 {
		r.Requests = left(limit.Requests, used.Requests)
	}
	if limit.Egress > 0 {
		r.Egress = left(limit.Egress, used.Egress)
	}
	if limit.Ingress > 0 {
		r.Ingress = left(limit.Ingress, used.Ingress)
	}
	if limit.Cost > 0 {
		v := max(limit.Cost-used.Cost, 0)
		r.Cost = &v
	}
	return r
}

// tenantBudgets reads where the tenant's budgets stand, or says why they
// cannot be shown: never zeros for counters that could not be read.
func (g *Gateway) tenantBudgets(ctx context.Context, tenant, requestID string) ([]budgetView, string) {
	statuses, err := g.ledger.Budgets(ctx, tenant)
	if err != nil {
		g.log.Error("budget counters could not be read", "what", "budgets", "tenant", tenant, "request_id", requestID, "error", err)
		return nil, "the budget counters could not be read; try again"
	}
	return viewBudgets(statuses), ""
}
