package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// tunnel dials the destination through the safe dialer and relays bytes
// until either side is done or the tunnel has been idle for idle_timeout;
// early is what the client sent behind its CONNECT head. The gateway owns
// the relay so that every tunnel is counted, bounded in idleness and
// closable on shutdown.
func (g *Gateway) tunnel(ex *exchange, client net.Conn, early []byte) {
	defer ex.finish()
	if c := ex.connector; ex.plainTunnel || c != nil && c.Inspect {
		g.runTunnel(&tunnel{ex: ex, client: client, early: early}, g.readTunnel)
		return
	}
	ctx, cancel := context.WithTimeout(g.baseCtx, ex.rt.dialer.dialTimeout+ex.rt.dialer.dnsTimeout)
	upstream, err := ex.rt.dialer.DialContext(ctx, "tcp", net.JoinHostPort(ex.host, itoa(ex.port)))
	cancel()
	if err != nil {
		g.replyHijacked(ex, ex.upstreamFailed(err), client)
		return
	}
	t := &tunnel{ex: ex, client: client, upstream: upstream, early: early}
	if addr, ok := upstream.RemoteAddr().(*net.TCPAddr); ok {
		t.dialled = addr.AddrPort()
	}
	g.runTunnel(t, func(t *tunnel) {
		t.relay(g.baseCtx, ex.rt.dialer.idleTimeout)
	})
}

// runTunnel counts an open tunnel, answers 200 and runs serve until the
// tunnel ends, held open by keepOpen.
func (g *Gateway) runTunnel(t *tunnel, serve func(*tunnel)) {
	g.keepOpen(t, "tunnel", func() {
		ex := t.ex
		// Hold the gauge itself: if a reload removes the tenant and its
		// series, the decrement must not bring the series back.
		open := g.metrics.activeTunnels.WithLabelValues(g.metrics.tenantLabel(ex.tenantID()))
		open.Inc()
		defer open.Dec()

		ex.status = http.StatusOK
		if _, err := io.WriteString(t.client, connectEstablished(ex)); err != nil {
			return
		}
		serve(t)
	})
}

// keepOpen holds a tunnel or upgraded connection open while serve runs:
// registered, so that a reload can revoke it and shutdown close it;
// refused with the gateway's error if a reload came between its decision
// and its registration; closed afterwards, with a revocation recorded in
// its audit line. what names it in those messages.
func (g *Gateway) keepOpen(t *tunnel, what string, serve func()) {
	ex := t.ex
	if !g.tunnels.add(t) {
		t.close()
		return
	}
	defer func() {
		// Its audit line is written before shutdown, which waits for the
		// set to empty, can close the audit log.
		ex.finish()
		g.tunnels.remove(t)
	}()
	if reason := g.reloadedMeanwhile(t); reason != "" {
		g.replyHijacked(ex, refused(policy.CodeDestinationNotAllowed, "the policy changed while the "+what+" was opening: "+reason), t.client)
		t.close()
		return
	}
	serve()
	t.close()
	// The client had its 200 (or 101) already: what it gets is the close,
	// and the audit line says why.
	if t.cut.Load() {
		ex.end(refused(policy.CodeRevoked, what+" closed by the gateway shutdown: it was still open when limits.shutdown_grace ran out"))
	} else if reason := t.revoked.Load(); reason != nil && ex.budget.name.Load() != nil {
		ex.end(refused(policy.CodeRevoked, what+" closed: "+*reason))
	} else if reason := t.revoked.Load(); reason != nil {
		cause := "a policy reload"
		if t.grantEnded.Load() {
			cause = "the end of its grant"
		}
		ex.end(refused(policy.CodeRevoked, what+" closed by "+cause+": "+*reason))
	}
}

// reloadedMeanwhile rechecks a tunnel just registered when a reload or a
// new grant set came between its decision and its registration, which
// revokeTunnels and grantsChanged could not see; it returns why the
// tunnel may no longer open, or "".
func (g *Gateway) reloadedMeanwhile(t *tunnel) string {
	current := g.runtime.Load()
	if current == t.ex.rt && g.grants.current.Load() == t.ex.grants {
		return ""
	}
	return t.recheck(current)
}

// recheck asks whether rt's policy, with the grants live now, still
// allows the tunnel: its tenant, destination and, once dialled, the
// address it reached.
func (t *tunnel) recheck(rt *runtimeState) string {
	g := t.ex.gw
	if reason := t.ex.recheck(rt.live.Snapshot, g.grants.at(g.now())); reason != "" {
		return reason
	}
	if t.dialled.IsValid() {
		if err := rt.dialer.addresses.Check(t.dialled); err != nil {
			return "the network policy no longer allows the address it reached"
		}
	}
	return ""
}

// tunnel is one open CONNECT relay, or a plain request's upgraded
// (WebSocket) connection, or, with stream set, a response in flight.
type tunnel struct {
	ex       *exchange
	client   net.Conn
	upstream net.Conn
	// early is what the client sent that no wrapper of client holds yet:
	// what came behind the CONNECT head, then what the gateway peeked at
	// to tell what the tunnel carries. The wrapper that serves the tunnel
	// takes it as its unread bytes (meteredConn.unread).
	early        []byte
	upgraded     io.Closer      // the upstream of an upgraded plain request
	dialled      netip.AddrPort // the address reached, when the gateway dialled it
	lastActivity activity       // the last byte in either direction
	turn         firstTurn      // relayed or served as plain HTTP (firstbytes.go)
	closeOnce    sync.Once
	revoked      atomic.Pointer[string] // why a policy reload or the end of its grant closed it
	grantEnded   atomic.Bool            // the end of the grant that allowed it closed it (grants.go)
	cut          atomic.Bool            // the end of the shutdown grace closed it
	// inner serves the requests of an inspected tunnel; shutdown asks it to
	// finish, which closes an idle keep-alive connection at once.
	inner atomic.Pointer[http.Server]
	// stream marks a response in flight, plain or inside an inspected
	// tunnel (see stream.go): client is the connection it is answered on,
	// which stays the HTTP server's, and revoking it closes that.
	stream bool
	// endStream ends a response on an HTTP/2 stream instead (serveStream):
	// the upstream request is cancelled and the stream reset, and the
	// connection goes on with its other streams.
	endStream context.CancelFunc
}

// revoke closes a tunnel the live policy no longer allows, and reports
// whether it did: one that has already closed, or a stream already over,
// is left as it is, not revoked.
func (t *tunnel) revoke(reason string) bool { return t.revokeAs(reason, false) }

// revokeAs is revoke, saying whether the end of the grant that allowed
// the tunnel is the cause, rather than a reload.
func (t *tunnel) revokeAs(reason string, grantEnded bool) bool {
	revoked := false
	t.closeOnce.Do(func() {
		t.grantEnded.Store(grantEnded)
		t.revoked.Store(&reason)
		t.closeConns()
		revoked = true
	})
	return revoked
}

func (t *tunnel) close() { t.closeOnce.Do(t.closeConns) }

func (t *tunnel) closeConns() {
	if t.client != nil { // nil for a stream on a connection not of the gateway's listeners
		_ = t.client.Close()
	}
	if t.upstream != nil { // nil for an inspected tunnel
		_ = t.upstream.Close()
	}
	if t.upgraded != nil {
		_ = t.upgraded.Close()
	}
	if t.endStream != nil {
		t.endStream()
	}
}

// relay relays the tunnel both ways until either side is done or it has
// been idle for idle, each direction paced by the tenant's shaper for it
// (nil, and so nothing, when unlimited); the shapers wait on a context of
// the tunnel's own, since the CONNECT request's is done. The client's first
// bytes are checked and sent on before the relay takes over that direction
// (sendFirstBytes).
func (t *tunnel) relay(parent context.Context, idle time.Duration) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	egress, ingress := t.ex.shapers()
	t.lastActivity.touch(time.Now())
	client := t.meter(ctx, t.client, true, egress, &t.ex.bytesDown, idle)
	upstream := t.meter(ctx, t.upstream, false, ingress, &t.ex.bytesUp, idle)
	stop := func() {
		t.close()
		cancel() // a direction waiting on its shaper stops waiting
	}
	client.unread, t.early = t.early, nil
	relay(client, upstream, true, stop, func() bool {
		return t.decideFirstBytes(client)
	}, func() bool {
		return t.receiveFirstBytes(upstream, client)
	})
}

// meter wraps one end of the relay: what is read from c is paced by
// shaper, what is written to it counted in sent, and both are bounded by
// the tunnel's idle timeout (and writes to the client by
// response_write_timeout, the most a client may leave what it is sent
// unread).
func (t *tunnel) meter(ctx context.Context, c net.Conn, toClient bool, shaper *quota.Shaper, sent *atomic.Int64, idle time.Duration) *meteredConn {
	m := meter(c)
	m.activity, m.sent = &t.lastActivity, sent
	m.readShaper, m.shaping = shaper, ctx
	m.readIdle, m.writeBound = idle, idle
	if toClient && t.ex != nil {
		if rwt := t.ex.gw.settings.ResponseWriteTimeout; rwt > 0 {
			m.writeBound = min(idle, rwt)
		}
	}
	if t.ex != nil {
		t.meterRelay(m)
	}
	return m
}

// tunnelSet tracks open tunnels so shutdown can wait for and then close
// them, which http.Server does not do for hijacked connections, and so a
// reload can revoke them; and responses in flight, so a reload can revoke
// them too (stream.go).
type tunnelSet struct {
	mu      sync.Mutex
	open    map[*tunnel]struct{}
	closing bool
	idle    chan struct{} // closed when empty while closing
}

func newTunnelSet() *tunnelSet {
	return &tunnelSet{open: map[*tunnel]struct{}{}}
}

// add registers t. Once shutdown has begun it refuses a new tunnel, but
// takes a response: the HTTP server lets it finish.
func (s *tunnelSet) add(t *tunnel) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing && !t.stream {
		return false
	}
	s.open[t] = struct{}{}
	return true
}

func (s *tunnelSet) remove(t *tunnel) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.open, t)
	if s.closing && len(s.open) == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
}

// snapshot lists the open tunnels.
func (s *tunnelSet) snapshot() []*tunnel {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*tunnel, 0, len(s.open))
	for t := range s.open {
		out = append(out, t)
	}
	return out
}

// drain refuses new tunnels and waits until the open ones end or ctx is
// done; then it closes whatever is left, and reports whether there was any.
func (s *tunnelSet) drain(ctx context.Context) (cut bool) {
	s.mu.Lock()
	s.closing = true
	var wait chan struct{}
	if len(s.open) > 0 {
		wait = make(chan struct{})
		s.idle = wait
	}
	s.mu.Unlock()
	for _, t := range s.snapshot() {
		if inner := t.inner.Load(); inner != nil {
			go func() { _ = inner.Shutdown(ctx) }()
		}
	}
	if wait != nil {
		select {
		case <-wait:
			return false
		case <-ctx.Done():
		}
	}
	for _, t := range s.snapshot() {
		t.cut.Store(true)
		t.close()
		cut = true
	}
	// Let the closed ones write their audit lines (keepOpen), briefly.
	s.mu.Lock()
	if len(s.open) == 0 {
		wait = nil
	}
	s.mu.Unlock()
	if wait != nil {
		select {
		case <-wait:
		case <-time.After(time.Second):
		}
	}
	return cut
}

// connectEstablished is the reply that opens a tunnel, with the RateLimit
// headers of the token the CONNECT took.
func connectEstablished(ex *exchange) string {
	h := http.Header{}
	ex.setAllowedHeaders(h)
	var b strings.Builder
	b.WriteString("HTTP/1.1 200 Connection established\r\n")
	_ = h.Write(&b)
	b.WriteString("\r\n")
	return b.String()
}
