package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/state"
)

// Grants and access requests (docs/reference.md, "Access requests and
// grants"): the gateway polls the state store for the active grants and
// publishes them, compiled, through one atomic pointer that every decision
// reads beside the live policy; when the set changes, what a grant allowed
// and no longer does is closed. Refusals go the other way: each
// destination_not_allowed refusal is recorded in the store as an access
// request, whose id the refusal carries.

// grantPollInterval is how often the store's version is read: with the
// time a read takes, a new or revoked grant applies within 2 s.
const grantPollInterval = time.Second

// stateCallTimeout bounds one call to the store: a store slower than this
// is failing, and applies no grant (docs/operators.md).
const stateCallTimeout = time.Second

// refusalRecordTimeout bounds what recording a refusal may add to it.
const refusalRecordTimeout = 500 * time.Millisecond

// grantSource keeps the grant set the gateway decides with.
type grantSource struct {
	store state.Store // nil: no store, no grants
	log   *slog.Logger
	now   func() time.Time
	// current is the set decisions read; nil holds no grant, which is
	// what a gateway without a store, or whose store cannot be read, has.
	current atomic.Pointer[policy.Grants]
	// errors counts failed store calls by operation (read_grants,
	// record_refusal).
	errors *prometheus.CounterVec
	// readFailing and recordFailing make one log line per failure streak.
	readFailing   atomic.Bool
	recordFailing atomic.Bool
	done          chan struct{} // closed when run returns; nil when never started

	// Kept by run alone: the ids the current set was compiled from (a
	// grant never changes once made, so the same ids are the same set),
	// and the grants already logged as dropped, to log each once.
	compiledIDs []string
	loggedDrops map[string]bool
}

func newGrantSource(store state.Store, log *slog.Logger, reg prometheus.Registerer, now func() time.Time) *grantSource {
	return &grantSource{
		store: store,
		log:   log,
		now:   now,
		errors: promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
			Name: "egressgw_state_errors_total",
			Help: "Failed calls to the state store, by operation: read_grants (no grant applies until a read succeeds) or record_refusal.",
		}, []string{"operation"}),
	}
}

// at is the grant set as a decision at now sees it.
func (s *grantSource) at(now time.Time) policy.GrantsAt { return s.current.Load().At(now) }

// start runs the refresher until ctx is done; changed is called after
// each new set is published, with the one it replaced.
func (s *grantSource) start(ctx context.Context, changed func(prev, next *policy.Grants)) {
	if s.store == nil {
		return
	}
	s.done = make(chan struct{})
	go s.run(ctx, changed)
}

// wait returns once the refresher has stopped.
func (s *grantSource) wait() {
	if s.done != nil {
		<-s.done
	}
}

// run polls the store's version every grantPollInterval and re-reads the
// grants when it changes, when the earliest grant expires, and after a
// failed read.
func (s *grantSource) run(ctx context.Context, changed func(prev, next *policy.Grants)) {
	defer close(s.done)
	var version uint64
	fresh := false // the set matches version
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		prev := s.current.Load()
		next, v, err := s.read(ctx, version, fresh)
		switch {
		case err != nil && ctx.Err() != nil:
			return // stopping, not failing
		case err != nil:
			s.readFailed(err)
			fresh = false
			s.current.Store(nil)
		default:
			s.readRecovered()
			version, fresh = v, true
			s.current.Store(next)
		}
		if cur := s.current.Load(); cur != prev {
			changed(prev, cur)
		}
		timer.Reset(s.untilNextRead())
	}
}

// read returns the set to publish: the current one when the store's
// version is still version and no grant of it has expired, else a new
// one compiled from the store.
func (s *grantSource) read(ctx context.Context, version uint64, fresh bool) (*policy.Grants, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, stateCallTimeout)
	defer cancel()
	v, err := s.store.Version(ctx)
	if err != nil {
		return nil, 0, err
	}
	now := s.now()
	cur := s.current.Load()
	if fresh && v == version && (cur.NextExpiry().IsZero() || now.Before(cur.NextExpiry())) {
		return cur, v, nil
	}
	gs, err := s.store.Grants(ctx, now)
	if err != nil {
		return nil, 0, err
	}
	ids := make([]string, 0, len(gs))
	for _, g := range gs {
		if g.Active(now) {
			ids = append(ids, g.ID)
		}
	}
	if cur != nil && slices.Equal(ids, s.compiledIDs) {
		// Another write (an access request) changed the version: the
		// grants are the same, and so is what they allow.
		return cur, v, nil
	}
	set, dropped := policy.CompileGrants(gs, now)
	logged := make(map[string]bool, len(dropped))
	for _, err := range dropped {
		// The store validated it, the gateway cannot apply it: it is
		// left out rather than guessed at.
		if !s.loggedDrops[err.Error()] {
			s.log.Warn("grant not applied", "error", err)
		}
		logged[err.Error()] = true
	}
	s.compiledIDs, s.loggedDrops = ids, logged
	return set, v, nil
}

// untilNextRead is the poll interval, or less when a grant expires
// sooner, so that what it allowed ends at its expiry.
func (s *grantSource) untilNextRead() time.Duration {
	wait := grantPollInterval
	if next := s.current.Load().NextExpiry(); !next.IsZero() {
		wait = min(wait, max(next.Sub(s.now()), 0))
	}
	return wait
}

func (s *grantSource) readFailed(err error) {
	s.errors.WithLabelValues("read_grants").Inc()
	if !s.readFailing.Swap(true) {
		s.log.Error("state store unreadable: no grant applies until it can be read again", "error", err)
	}
}

func (s *grantSource) readRecovered() {
	if s.readFailing.Swap(false) {
		s.log.Info("state store readable again: grants apply")
	}
}

// recordRefusal files ex's refusal, or, in report mode, its would-be
// refusal, as an access request, and keeps the reference the reply shows.
// A store that fails changes nothing of the refusal: it is logged and
// counted, and the reply names no request.
func (ex *exchange) recordRefusal(reportMode bool) {
	s := ex.gw.grants
	if s.store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ex.gw.baseCtx, refusalRecordTimeout)
	defer cancel()
	ref, err := s.store.RecordRefusal(ctx, state.Sighting{
		Tenant: ex.tenant.ID, Host: ex.host, Port: int(ex.port),
		Method: ex.method, Path: ex.path, ReportMode: reportMode,
	})
	if err != nil {
		s.errors.WithLabelValues("record_refusal").Inc()
		if !s.recordFailing.Swap(true) {
			s.log.Warn("recording a refusal as an access request failed; refusals carry no access_request until it works again",
				"request_id", ex.id, "error", err)
		}
		return
	}
	if s.recordFailing.Swap(false) {
		s.log.Info("refusals are recorded as access requests again")
	}
	if !reportMode {
		ex.accessRequest = &ref
	}
}

// grantsChanged closes what the previous grant set allowed and next no
// longer does: tunnels, upgraded connections and responses in flight, at
// once, since the grant is over (docs/reference.md).
func (g *Gateway) grantsChanged(prev, next *policy.Grants) {
	rt := g.runtime.Load()
	if rt == nil || prev.Len() == 0 {
		return // nothing was allowed by a grant
	}
	now := g.now()
	for _, t := range g.tunnels.snapshot() {
		reason := t.recheck(rt)
		if reason == "" {
			continue
		}
		// Only what a grant allowed: the rest is the reloads' to revoke,
		// with their grace for responses in flight.
		ended := grantEnded(t.ex, rt, prev, next, now)
		if ended == "" {
			continue
		}
		reason = ended
		if t.revokeAs(reason, true) {
			g.log.Info("connection closed: its grant ended", "request_id", t.ex.id, "tenant", t.ex.tenantID(), "reason", reason)
		}
	}
}

// grantEnded says which grant of prev allowed ex and why it no longer
// does, or "" when no grant allowed it.
func grantEnded(ex *exchange, rt *runtimeState, prev, next *policy.Grants, now time.Time) string {
	tenant, ok := rt.live.Snapshot.Tenant(ex.tenant.ID)
	if !ok {
		return ""
	}
	d := tenant.DecideGranted(ex.policyRequest(), prev.AnyTime())
	if !d.Allow {
		return ""
	}
	for _, r := range prev.Rules(ex.tenant.ID) {
		if r.Name != d.Rule {
			continue
		}
		switch {
		case next == nil:
			return fmt.Sprintf("%s no longer applies: the state store could not be read, and no grant applies until it can", r.Name)
		case !now.Before(r.ExpiresAt):
			return fmt.Sprintf("%s expired at %s", r.Name, r.ExpiresAt.UTC().Format(time.RFC3339))
		default:
			return fmt.Sprintf("%s was revoked", r.Name)
		}
	}
	return ""
}
