package proxy

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// AdminHandler serves the admin listener (docs/operators.md, "The admin listener"): health, readiness,
// metrics, explain, config state, access requests and grants, behind
// admin authentication (requireAdmin). It is never reachable through the
// proxy: the gateway's own listeners are denied destinations.
func (g *Gateway) AdminHandler(config *ConfigStatus) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case g.draining.Load():
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "shutting down"})
		case g.Live() == nil:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "no policy loaded"})
		default:
			writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/explain", g.explainHandler)
	mux.HandleFunc("GET /v1/tenants/{id}/usage", g.usageHandler)
	mux.HandleFunc("GET /v1/tenants/{id}/statement", g.statementHandler)
	mux.HandleFunc("GET /v1/config", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, config.view(g.Live()))
	})
	if g.profiling != nil {
		// Profiling for operators and the load harness; the admin listener
		// is loopback by default and never reachable through the proxy.
		mux.Handle("GET /debug/pprof/", g.profiling)
	}
	mux.HandleFunc("GET /v1/access-requests", g.listAccessRequests)
	mux.HandleFunc("POST /v1/access-requests/{id}/approve", g.approveAccessRequest)
	mux.HandleFunc("POST /v1/access-requests/{id}/deny", g.denyAccessRequest)
	mux.HandleFunc("GET /v1/grants", g.listGrants)
	mux.HandleFunc("POST /v1/grants", g.addGrant)
	mux.HandleFunc("DELETE /v1/grants/{id}", g.revokeGrant)
	mux.HandleFunc("GET /v1/grants/{id}/rule", g.grantRule)
	return g.requireAdmin(mux)
}

func (g *Gateway) explainHandler(w http.ResponseWriter, r *http.Request) {
	live := g.Live()
	if live == nil {
		adminError(w, http.StatusServiceUnavailable, codeStateUnavailable, "no policy loaded")
		return
	}
	q := r.URL.Query()
	tenant, ok := live.Tenant(q.Get("tenant"))
	if !ok {
		adminError(w, http.StatusNotFound, codeNotFound, "unknown tenant "+q.Get("tenant"))
		return
	}
	// The same address policy the dialer applies (network safety,
	// docs/admins.md), so explain never allows what the gateway refuses;
	// names are looked up only when asked, as the CLI's --resolve.
	gw := live.Snapshot.Gateway
	network := policy.Network{Addresses: gw.AddressPolicy(g.hostAddrs, g.listeners)}
	if q.Get("resolve") == "1" || q.Get("resolve") == "true" {
		network.Resolver = gw.Resolver()
	}
	trace, err := tenant.ExplainRequestGranted(r.Context(), q.Get("method"), q.Get("url"), gw, network, g.grants.at(g.now()))
	if err != nil {
		adminError(w, http.StatusBadRequest, policy.CodeBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, trace)
}

// usage is a tenant's quota state (/v1/tenants/ID/usage).
type usage struct {
	Tenant        string           `json:"tenant"`
	Requests      *bucketUsage     `json:"requests,omitempty"`
	Connectors    []bucketUsage    `json:"connectors,omitempty"`
	MaxConcurrent int              `json:"max_concurrent,omitempty"`
	Open          int              `json:"open"`
	Bandwidth     []bandwidthUsage `json:"bandwidth"`
	// Budgets is nil, and BudgetsUnavailable says why, when the budget
	// counters could not be read; the quota state is shown all the same.
	Budgets            []budgetView `json:"budgets"`
	BudgetsUnavailable string       `json:"budgets_unavailable,omitempty"`
}

type bucketUsage struct {
	Connector         string  `json:"connector,omitempty"`
	RequestsPerSecond float64 `json:"requests_per_second"`
	Burst             int     `json:"burst"`
	Tokens            int     `json:"tokens"`
}

// bandwidthUsage is one direction of a tenant's bandwidth. Both directions
// are always listed (docs/operators.md): BytesPerSecond is the tenant's
// configured limit, 0 for none; BytesThisMinute what this replica moved
// that way since the minute began, limit or not; Counted is always true,
// kept for readers of the time when only limited directions were counted.
type bandwidthUsage struct {
	Direction       string `json:"direction"`
	BytesPerSecond  int64  `json:"bytes_per_second"`
	BytesThisMinute int64  `json:"bytes_this_minute"`
	Counted         bool   `json:"counted"`
}

func (g *Gateway) usageHandler(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	rt := g.runtime.Load()
	if rt == nil {
		adminError(w, http.StatusServiceUnavailable, codeStateUnavailable, "no policy loaded")
		return
	}
	live := rt.live
	tenant, ok := live.Tenant(id)
	if !ok {
		adminError(w, http.StatusNotFound, codeNotFound, "unknown tenant "+id)
		return
	}
	quotaFailed := func(err error) {
		// The backend's own error can name its addresses: logged, not sent.
		g.log.Warn("usage: the quota backend could not be read", "tenant", id, "error", err)
		adminError(w, http.StatusServiceUnavailable, policy.CodeQuotaUnavailable, "the quota backend could not be read; try again")
	}
	ctx := r.Context()
	u := usage{Tenant: id, MaxConcurrent: tenant.Quota.MaxConcurrent}
	peek := func(b quota.Bucket) (*bucketUsage, error) {
		res, err := g.quota.Peek(ctx, b.Key, b.Limit)
		return &bucketUsage{RequestsPerSecond: b.Limit.Rate, Burst: b.Limit.Burst, Tokens: res.Remaining}, err
	}
	var err error
	if !tenant.Quota.Rate.Unlimited() {
		if u.Requests, err = peek(quota.Bucket{Key: tenant.QuotaKey, Limit: tenant.Quota.Rate}); err != nil {
			quotaFailed(err)
			return
		}
	}
	for _, rule := range tenant.Rules() {
		if rule.Connector != nil && !rule.Bucket.Limit.Unlimited() {
			b, err := peek(rule.Bucket)
			if err != nil {
				quotaFailed(err)
				return
			}
			b.Connector = rule.Name
			u.Connectors = append(u.Connectors, *b)
		}
	}
	if u.Open, err = g.quota.InUse(ctx, tenant.QuotaKey); err != nil {
		quotaFailed(err)
		return
	}
	// Counted per tenant whatever its limit (tenantUsage), so that an
	// unlimited tenant needs no shaper for it.
	counts, now := rt.tenantState(tenant).usage, g.now()
	u.Bandwidth = []bandwidthUsage{
		{Direction: "egress", BytesPerSecond: tenant.Quota.EgressBytes, BytesThisMinute: counts.egress.ThisMinute(now), Counted: true},
		{Direction: "ingress", BytesPerSecond: tenant.Quota.IngressBytes, BytesThisMinute: counts.ingress.ThisMinute(now), Counted: true},
	}
	u.Budgets, u.BudgetsUnavailable = g.tenantBudgets(ctx, id, "")
	writeJSON(w, http.StatusOK, u)
}

// ConfigStatus is what /v1/config reports besides the live snapshot: the
// outcome of the last load attempt, which may have failed while the last
// good policy kept serving.
type ConfigStatus struct {
	LastError func() (string, time.Time) // message and time of the last failed load, "" if none since the last success
	Source    string
}

type configView struct {
	Generation  uint64    `json:"generation"`
	Hash        string    `json:"hash"`
	LoadedAt    time.Time `json:"loaded_at"`
	Source      string    `json:"source"`
	Tenants     int       `json:"tenants"`
	Connectors  int       `json:"connectors"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

func (c *ConfigStatus) view(live *policy.Live) configView {
	v := configView{Source: c.Source}
	if live != nil {
		v.Generation, v.Hash, v.LoadedAt = live.Generation, live.Hash, live.LoadedAt
		v.Tenants, v.Connectors = len(live.TenantIDs()), live.Connectors()
	}
	if c.LastError != nil {
		v.LastError, v.LastErrorAt = c.LastError()
	}
	if v.LastError == "" {
		// A time without its error would describe nothing: both go once
		// the files load again.
		v.LastErrorAt = time.Time{}
	}
	return v
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
