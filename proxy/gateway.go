package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/budget"
	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/state"
)

// Options are what a Gateway is built from; everything it touches outside
// itself is passed in, so tests can run several gateways in one process.
type Options struct {
	Logger   *slog.Logger         // operational log; never gets credentials, bodies or query values
	Audit    io.Writer            // audit log, one JSON line per request or tunnel
	Registry *prometheus.Registry // metrics registry of this gateway alone
	// Listeners are the addresses the gateway itself listens on; they are
	// never a valid destination.
	Listeners []netip.AddrPort
	// Settings fixes what needs a restart to change: limits of the listener.
	Settings policy.Gateway
	// Quota admits requests (rate, concurrency); Bandwidth shapes bytes.
	// One of each per process: their state outlives policy reloads.
	Quota     quota.Limiter
	Bandwidth *quota.Bandwidth
	// Hooks runs hook scripts; one per process, built before the gateway
	// so that a runtime that cannot start fails start-up, and closed by
	// its builder after Shutdown (docs/design.md). Without one, every
	// hooked request fails closed with hook_failed.
	Hooks *hooks.Runtime
	// Profiling serves /debug/pprof/ on the admin listener; nil: not
	// served. The program builds it, as net/http/pprof registers itself
	// process-wide on import (docs/design.md).
	Profiling http.Handler
	// State keeps access requests and grants (docs/reference.md, "Access
	// requests and grants"); the program opens it and closes it after
	// Shutdown. Nil: no grant applies, refusals are not recorded and the
	// admin API's access-request and grant endpoints answer 503
	// state_unavailable.
	State state.Store
	// Ledger counts traffic per connector version and period and holds
	// the tenants' budgets (docs/reference.md, "Budgets and cost"); the
	// program builds it on the quota backend's Redis or the state store
	// and closes it after Shutdown. Nil: the gateway keeps one in memory.
	Ledger *budget.Ledger
	Now    func() time.Time
}

// Gateway is the egress proxy: an HTTP proxy server whose every step
// (identify, decide, dial, relay, account) is its own, CONNECT included.
type Gateway struct {
	log       *slog.Logger
	heads     *headWatch // upstream connections awaiting a response head
	audit     *auditLog
	quota     quota.Limiter
	bandwidth *quota.Bandwidth
	hooks     *hooks.Runtime
	profiling http.Handler // admin /debug/pprof/, or nil
	state     state.Store  // access requests and grants, or nil
	ledger    *budget.Ledger
	registry  *prometheus.Registry
	metrics   *metrics
	now       func() time.Time

	listeners []netip.AddrPort
	hostAddrs *allowlist.HostAddrs // refreshed until Shutdown
	settings  policy.Gateway

	// runtime is the one live policy: requests, the admin API and
	// reloads all read it here (docs/design.md). applyMu orders Apply
	// calls, so generations count up without gaps.
	runtime atomic.Pointer[runtimeState]
	applyMu sync.Mutex
	leaves  atomic.Pointer[leafCache] // nil without an inspection CA
	tunnels *tunnelSet
	server  *http.Server
	// grants is the grant set decisions read beside the live policy, kept
	// fresh from the state store (grants.go).
	grants *grantSource

	baseCtx    context.Context
	cancelBase context.CancelFunc
	draining   atomic.Bool
	servedMu   sync.Mutex
	served     []*limitListener // the listeners Serve runs on, for Shutdown
	// failOpen paces the warning that requests pass a quota unchecked.
	failOpen failOpenWarning
	// resolverWarning paces the warning that the DNS resolver fails.
	resolverWarning resolverWarning
}

// runtimeState is everything derived from one policy generation that the
// request path needs: the snapshot itself, and the dialer and transport
// built from its network settings.
type runtimeState struct {
	live      *policy.Live
	dialer    *dialer
	transport *http.Transport
	// grpcTransport sends gRPC requests, HTTP/2 or nothing, and
	// upgradeTransport protocol upgrades, HTTP/1.1 only (transportFor).
	grpcTransport, upgradeTransport *http.Transport
	tenants                         map[*policy.Tenant]*tenantState
}

// New builds a gateway; it serves nothing until Apply has given it a policy
// and Serve a listener.
func New(opts Options) (*Gateway, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	hostAddrs, err := allowlist.NewHostAddrs(allowlist.LocalAddrs)
	if err != nil {
		return nil, fmt.Errorf("list the host's addresses: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// Interfaces gain addresses while the gateway runs; Shutdown's
	// cancelBase ends the refresh (docs/admins.md, network safety).
	go hostAddrs.Run(ctx, allowlist.HostAddrsRefresh, func(err error) {
		opts.Logger.Warn("refreshing the host's addresses failed; the last list stays denied", "error", err)
	})
	heads := newHeadWatch()
	go heads.run(ctx) // until Shutdown's cancelBase
	if opts.Ledger == nil {
		// In memory, nothing to flush to: no flusher to stop.
		opts.Ledger = budget.New(budget.Options{Now: opts.Now, FlushEvery: -1, Currency: opts.Settings.Budgets.Currency})
	}
	g := &Gateway{
		log:   opts.Logger,
		heads: heads,
		audit: newAuditLog(opts.Audit,
			auditReports(opts.Logger, opts.Registry)),
		quota:      opts.Quota,
		hooks:      opts.Hooks,
		profiling:  opts.Profiling,
		state:      opts.State,
		ledger:     opts.Ledger,
		bandwidth:  opts.Bandwidth,
		registry:   opts.Registry,
		metrics:    newMetrics(opts.Registry),
		now:        opts.Now,
		listeners:  opts.Listeners,
		hostAddrs:  hostAddrs,
		settings:   opts.Settings,
		tunnels:    newTunnelSet(),
		grants:     newGrantSource(opts.State, opts.Logger, opts.Registry, opts.Now),
		baseCtx:    ctx,
		cancelBase: cancel,
	}
	g.ledger.Notify(g.budgetWarning, g.budgetFlushFailed)
	if opts.Registry != nil {
		opts.Registry.MustRegister(newBudgetCollector(g))
	}
	g.grants.start(ctx, g.grantsChanged)
	g.metrics.setMaxTenants(opts.Settings.MaxTenantLabels)
	go g.accountOpenExchanges(ctx) // ends with cancelBase, at Shutdown
	g.server = &http.Server{
		Handler: g,
		// OPTIONS * is no proxy request: it gets the gateway's JSON
		// refusal like any other, not net/http's empty 200.
		DisableGeneralOptionsHandler: true,
		MaxHeaderBytes:               opts.Settings.MaxHeaderBytes,
		ReadHeaderTimeout:            min(opts.Settings.IdleTimeout, 30*time.Second),
		IdleTimeout:                  opts.Settings.IdleTimeout,
		ErrorLog:                     slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug),
		BaseContext:                  func(net.Listener) context.Context { return ctx },
		ConnContext:                  connContext,
		ConnState:                    connState,
	}
	return g, nil
}

// Apply publishes snap as the live policy. Requests already running keep
// the generation they started with.
func (g *Gateway) Apply(snap *policy.Snapshot) *policy.Live {
	g.applyMu.Lock()
	defer g.applyMu.Unlock()
	addresses := snap.Gateway.AddressPolicy(g.hostAddrs, g.listeners) // as explain builds it
	g.updateLeafCache(snap.Gateway)
	d := newDialer(snap.Gateway, addresses, g.heads)
	rt := &runtimeState{dialer: d, transport: newRequestTransport(d, snap.Gateway),
		grpcTransport: newGRPCTransport(d, snap.Gateway), upgradeTransport: newUpgradeTransport(d, snap.Gateway),
		tenants: newTenantStates(snap, g.runtime.Load())}
	g.applyBudgets(snap, rt.tenants)
	rt.live = &policy.Live{Snapshot: snap, Generation: 1}
	prev := g.runtime.Load()
	if prev != nil {
		rt.live.Generation = prev.live.Generation + 1
	}
	g.runtime.Store(rt)
	if prev != nil {
		// Idle pooled connections were checked under the old network
		// policy; new requests use the new transport, so retire them.
		prev.closeIdleConnections()
		g.metrics.forgetRemovedTenants(prev.live.Snapshot, snap)
		g.revokeTunnels(rt)
		g.updateBandwidth(prev.live.Snapshot, snap)
	}
	g.metrics.setQuotaRates(snap)
	g.metrics.generation.Set(float64(rt.live.Generation))
	g.metrics.lastReloadTime.Set(float64(snap.LoadedAt.Unix()))
	return rt.live
}

// updateLeafCache keeps the leaf certificates across reloads while the CA
// stays the same, and drops them all when it changes.
func (g *Gateway) updateLeafCache(gw policy.Gateway) {
	current := g.leaves.Load()
	switch {
	case gw.CA == nil:
		g.leaves.Store(nil)
	case current == nil || current.fingerprint != gw.CAFingerprint:
		g.leaves.Store(newLeafCache(gw.CA, gw.CAFingerprint, g.now))
	}
}

// updateBandwidth applies changed bandwidth limits to the connections
// already open; request rates and concurrency take the new limits on the
// next call by themselves.
func (g *Gateway) updateBandwidth(prev, next *policy.Snapshot) {
	for _, id := range prev.TenantIDs() {
		q := policy.TenantQuota{}
		if t, ok := next.Tenant(id); ok {
			q = t.Quota
		}
		for direction, limit := range map[string]int64{"egress": q.EgressBytes, "ingress": q.IngressBytes} {
			key := bandwidthKey(id, direction)
			if g.bandwidth.Lookup(key) != nil {
				g.bandwidth.Shaper(key, limit)
			}
		}
	}
}

// revokeTunnels closes the open tunnels and upgraded connections that rt's
// policy no longer allows, each with an audit line saying so, and ends the
// responses in flight that it no longer allows once their grace is up
// (stream.go). New requests need no such pass: each one is identified and
// decided afresh under the policy of its arrival.
func (g *Gateway) revokeTunnels(rt *runtimeState) {
	for _, t := range g.tunnels.snapshot() {
		reason := t.recheck(rt)
		switch {
		case reason == "":
		case t.stream:
			g.revokeStreamLater(t)
		default:
			g.log.Info("tunnel revoked by policy reload", "request_id", t.ex.id, "tenant", t.ex.tenantID(),
				"generation", rt.live.Generation, "reason", reason)
			t.revoke(reason)
		}
	}
}

// RecordReload counts a config load attempt for metrics.
func (g *Gateway) RecordReload(ok bool) {
	result := "success"
	if !ok {
		result = "error"
	}
	g.metrics.reloads.WithLabelValues(result).Inc()
}

// Live returns the policy being served, nil before the first Apply.
func (g *Gateway) Live() *policy.Live {
	if rt := g.runtime.Load(); rt != nil {
		return rt.live
	}
	return nil
}

// newRequestTransport is the transport of ordinary requests: its
// connections bound the wait for a response head themselves (headwait.go),
// instead of a timer per request.
func newRequestTransport(d *dialer, gw policy.Gateway) *http.Transport {
	t := newTransport(d, gw)
	if d.heads != nil && d.headWait > 0 {
		t.DialContext = d.dialRequests
		t.ResponseHeaderTimeout = 0
	}
	return t
}

func newTransport(d *dialer, gw policy.Gateway) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         d.DialContext,
		TLSClientConfig:     upstreamTLS(gw.UpstreamRoots),
		TLSHandshakeTimeout: gw.DialTimeout,
		// A silent upstream gets its 504 after response_header_timeout,
		// counted from the end of the request (docs/operators.md,
		// "Timeouts"); upstreamConn's idle bound, idle_timeout, bounds the body.
		ResponseHeaderTimeout: gw.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		// Retire a pooled connection well before its own idle bound
		// (upstreamConn) closes it under the pool.
		IdleConnTimeout:        min(90*time.Second, gw.IdleTimeout/2),
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    64,
		DisableCompression:     true, // the client's Accept-Encoding goes through; bodies pass as they are
		MaxResponseHeaderBytes: int64(gw.MaxHeaderBytes),
		// HTTP/2 with an upstream that offers it by ALPN, HTTP/1.1
		// otherwise, whatever the client spoke (docs/design.md, "The
		// forwarder"); protocol upgrades go over HTTP/1.1 (transportFor).
		ForceAttemptHTTP2: true,
	}
}

// Serve accepts proxy connections on ln until Shutdown. Connections past
// max_connections are closed at once rather than queued, so a flood cannot
// grow the gateway's memory or hide behind slow accepts.
func (g *Gateway) Serve(ln net.Listener) error {
	limited := newLimitListener(ln, g.settings.MaxConnections, g.log, g.malformedReply)
	limited.maxUnauthenticated = g.settings.MaxUnauthenticated
	limited.limits = g.clientLimits()
	g.servedMu.Lock()
	g.served = append(g.served, limited)
	g.servedMu.Unlock()
	err := g.server.Serve(limited)
	if errors.Is(err, http.ErrServerClosed) || (g.draining.Load() && errors.Is(err, net.ErrClosed)) {
		return nil // Shutdown closed the listener
	}
	return err
}

// clientLimits are the time bounds of every client connection, the
// listener's and those inside inspected tunnels alike.
func (g *Gateway) clientLimits() clientLimits {
	return clientLimits{bodyTimeout: g.settings.RequestBodyTimeout, writeTimeout: g.settings.ResponseWriteTimeout}
}

// lingerWindow is how long, at most, an idle keep-alive connection stays
// open at shutdown: a request its client writes meanwhile is still served,
// with Connection: close, instead of meeting a closed connection (which
// most clients other than Go's do not retry).
const lingerWindow = time.Second

// Shutdown stops accepting, serves for a short window (lingerWindow,
// within the grace) the next request of idle keep-alive connections, lets
// in-flight requests and tunnels finish for up to the context's deadline
// (shutdown_grace), then closes what is left. It returns the context's
// error when the grace ran out with work still open.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.draining.Store(true)
	window := lingerWindow
	if deadline, ok := ctx.Deadline(); ok {
		window = min(window, time.Until(deadline))
	}
	g.servedMu.Lock()
	served := g.served
	g.servedMu.Unlock()
	lingerEnd := time.Now().Add(window)
	for _, l := range served {
		l.lingerUntil.Store(lingerEnd.UnixNano())
		_ = l.Close() // accept no more
	}
	// net/http drops a request it reads once Shutdown has begun, so the
	// window comes first: with keep-alives off, each response says
	// Connection: close and ends its connection, and the idle connections
	// it asks to close stay open until the window ends (countedConn.Close).
	g.server.SetKeepAlivesEnabled(false)
	windowCtx, cancel := context.WithDeadline(ctx, lingerEnd)
	waitClosed(windowCtx, served, false)
	cancel()
	for _, l := range served {
		l.closeLingering()
	}

	done := make(chan error, 1)
	go func() { done <- g.server.Shutdown(ctx) }()
	cut := g.tunnels.drain(ctx)
	err := <-done
	if err != nil {
		_ = g.server.Close()
	}
	// The server stops tracking a connection once it has asked it to
	// close; a request such a connection took in the window ends here.
	if !waitClosed(ctx, served, true) {
		for _, l := range served {
			l.closeAll()
		}
		cut = true
	}
	if err == nil && cut {
		err = ctx.Err()
	}
	g.cancelBase()
	g.grants.wait()
	if ferr := g.audit.close(); ferr != nil {
		g.log.Error("audit log flush failed", "error", ferr)
	}
	if rt := g.runtime.Load(); rt != nil {
		rt.closeIdleConnections()
	}
	return err
}

// waitClosed waits until the listeners have no connection open (counting
// tunnels only with tunnels set), and reports whether that happened before
// ctx was done.
func waitClosed(ctx context.Context, served []*limitListener, tunnels bool) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		open := 0
		for _, l := range served {
			open += l.openRequests(tunnels)
		}
		if open == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}
