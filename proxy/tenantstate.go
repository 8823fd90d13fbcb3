package proxy

import (
	"sync/atomic"

	"github.com/egressgw/egressgw/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// bandwidthKey names a tenant's shaper in the gateway's bandwidth
// registry; request-rate and concurrency keys come compiled with the
// policy (policy.Tenant.QuotaKey, policy.Rule.Bucket).
func bandwidthKey(tenant, direction string) string { return "t:" + tenant + "|bw:" + direction }

// tenantState is what the request path derives from a tenant once per
// policy generation rather than once per request: its bandwidth keys and
// its metric series. The series are looked up on first use, so tenant labels
// are still handed out in the order tenants are seen.
type tenantState struct {
	egressKey  string // its bandwidth shapers
	ingressKey string
	series     atomic.Pointer[tenantSeries]
	// usage is the tenant's bytes this minute, the same value in every
	// generation the tenant is part of.
	usage *tenantUsage
	// budget holds the tenant's budget meters in this generation
	// (applyBudgets).
	budget *tenantMeters
}

// tenantSeries are the metric children every allowed exchange of a tenant
// touches, resolved once instead of hashing label values per request.
type tenantSeries struct {
	label           string
	allowedOK       prometheus.Counter // requests_total{decision=allow,code=ok}
	egress, ingress prometheus.Counter // bytes_total by direction
}

func newTenantState(id string, usage *tenantUsage) *tenantState {
	if usage == nil {
		usage = &tenantUsage{}
	}
	return &tenantState{egressKey: bandwidthKey(id, "egress"), ingressKey: bandwidthKey(id, "ingress"), usage: usage}
}

// newTenantStates derives the state of every tenant of snap. A tenant of
// prev, the generation it replaces (nil for the first), keeps its usage
// counts; a removed tenant's go with prev.
func newTenantStates(snap *policy.Snapshot, prev *runtimeState) map[*policy.Tenant]*tenantState {
	states := make(map[*policy.Tenant]*tenantState, len(snap.TenantIDs()))
	for _, id := range snap.TenantIDs() {
		t, _ := snap.Tenant(id)
		var usage *tenantUsage
		if prev != nil {
			if before, ok := prev.live.Tenant(id); ok && prev.tenants[before] != nil {
				usage = prev.tenants[before].usage
			}
		}
		states[t] = newTenantState(id, usage)
	}
	return states
}

// tenantState returns the state of t, which must be a tenant of this
// generation's snapshot.
func (rt *runtimeState) tenantState(t *policy.Tenant) *tenantState {
	if s := rt.tenants[t]; s != nil {
		return s
	}
	// Not of this snapshot (cannot happen on the request path): derive it
	// on the spot rather than fail.
	return newTenantState(t.ID, nil)
}

// seriesFor returns the tenant's metric children, resolving them on first
// use. A reload that removes the tenant deletes its series from the
// registry; exchanges of the old generation that finish later then count
// into children no longer exported, rather than bringing the series back.
func (s *tenantState) seriesFor(m *metrics, id string) *tenantSeries {
	if ts := s.series.Load(); ts != nil {
		return ts
	}
	label := m.tenantLabel(id)
	ts := &tenantSeries{
		label:     label,
		allowedOK: m.requests.WithLabelValues(label, "allow", string(policy.CodeOK)),
		egress:    m.bytes.WithLabelValues(label, "egress"),
		ingress:   m.bytes.WithLabelValues(label, "ingress"),
	}
	if !s.series.CompareAndSwap(nil, ts) {
		return s.series.Load()
	}
	return ts
}
