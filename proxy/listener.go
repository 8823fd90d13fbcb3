package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// limitListener holds at most max connections open. At the limit it first
// closes a connection doing no tenant's work, in this order: the one idle
// the longest between keep-alive requests, the oldest that has not yet
// authenticated, the one whose request body has stalled the longest; so
// that clients parking connections cannot lock others out. With none of
// those it closes the new one. Unlike a blocking limit it never lets a
// backlog of waiting clients build up: the client over the limit learns at
// once. It also bounds the connections that have not authenticated
// (max_unauthenticated), and how long a client may stall a request body
// or leave a response unread (docs/operators.md, "Timeouts").
type limitListener struct {
	net.Listener
	max       int
	log       *slog.Logger
	refused   atomic.Int64
	evicted   atomic.Int64
	malformed func(client net.Addr, status int, detail string) []byte

	// maxUnauthenticated bounds the connections that have not completed
	// an authenticated request; 0 leaves them unbounded.
	maxUnauthenticated int
	unauthenticated    atomic.Int64
	unauthEvicted      atomic.Int64
	limits             clientLimits
	// lingerUntil (unix nanoseconds) is set at shutdown: until then an
	// idle keep-alive connection stays open, so that a request its client
	// is writing just then is still served (with Connection: close).
	lingerUntil atomic.Int64

	closeOnce sync.Once
	closeErr  error

	mu    sync.Mutex
	conns map[*countedConn]struct{} // open: their number is what max bounds
}

// clientLimits bound what one client connection may hold the gateway for.
type clientLimits struct {
	bodyTimeout  time.Duration // longest pause while reading a request body; 0 = none
	writeTimeout time.Duration // longest a response write may wait for the client; 0 = none
}

// stalledAfter is how long a request body read must have waited before
// the connection counts as stalled, and so may be closed to make room at
// max_connections: a body arriving at any usable rate delivers bytes far
// more often.
const stalledAfter = time.Second

func newLimitListener(ln net.Listener, max int, log *slog.Logger, malformed func(net.Addr, int, string) []byte) *limitListener {
	return &limitListener{Listener: ln, max: max, log: log, malformed: malformed, conns: map[*countedConn]struct{}{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		// At the limit a connection doing no work makes room (its Close
		// runs forget); only this loop adds connections, so none can take
		// the room meanwhile.
		if l.openConns() >= l.max && !l.makeRoom() {
			_ = c.Close()
			if n := l.refused.Add(1); n == 1 || n%1000 == 0 {
				l.log.Warn("connection refused: max_connections reached", "max_connections", l.max, "refused_so_far", n)
			}
			continue
		}
		// At max_unauthenticated the oldest unauthenticated connection
		// goes, not the new one: a real client authenticates with its
		// first request, within milliseconds, so the oldest are the ones
		// parked; refusing newcomers instead would let parked connections
		// lock every new client out.
		if l.maxUnauthenticated > 0 && l.unauthenticated.Load() >= int64(l.maxUnauthenticated) {
			if l.closeOldest(spareUnauthenticated) {
				if n := l.unauthEvicted.Add(1); n == 1 || n%1000 == 0 {
					l.log.Warn("max_unauthenticated reached: closing the oldest connections that have not authenticated", "max_unauthenticated", l.maxUnauthenticated, "closed_so_far", n)
				}
			}
		}
		cc := &countedConn{meteredConn: meteredConn{Conn: c, writeBound: l.limits.writeTimeout}, malformed: l.malformed, ln: l, limits: l.limits, accepted: time.Now().UnixNano()}
		cc.release = func() { l.forget(cc) }
		l.unauthenticated.Add(1)
		l.mu.Lock()
		l.conns[cc] = struct{}{}
		l.mu.Unlock()
		return cc, nil
	}
}

// openConns counts the connections accepted and not yet closed.
func (l *limitListener) openConns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// openRequests counts the open connections, with or without those a
// tunnel holds.
func (l *limitListener) openRequests(tunnels bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if tunnels {
		return len(l.conns)
	}
	n := 0
	for cc := range l.conns {
		if !cc.hijacked.Load() {
			n++
		}
	}
	return n
}

// Close stops accepting; closing again (net/http does at shutdown, after
// the gateway) is no error.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.Listener.Close() })
	return l.closeErr
}

// forget gives a closed connection's slot back.
func (l *limitListener) forget(cc *countedConn) {
	l.mu.Lock()
	delete(l.conns, cc)
	l.mu.Unlock()
}

// makeRoom closes one connection that does no tenant's work, in the order
// of the type comment, and reports whether there was one. A connection
// with an authenticated request or tunnel in progress is never closed,
// unless its request body has stalled.
func (l *limitListener) makeRoom() bool {
	for _, kind := range []spareKind{spareIdle, spareUnauthenticated, spareStalled} {
		if l.closeOldest(kind) {
			if n := l.evicted.Add(1); n == 1 || n%1000 == 0 {
				l.log.Warn("max_connections reached: closing idle, unauthenticated or stalled connections to make room", "max_connections", l.max, "closed_so_far", n)
			}
			return true
		}
	}
	return false
}

// spareKind is a kind of connection that may be closed to make room.
type spareKind int

const (
	spareIdle            spareKind = iota // waiting for its next keep-alive request
	spareUnauthenticated                  // no authenticated request yet, no request running
	spareStalled                          // a request body read waiting stalledAfter or longer
)

// since is when c became a spare connection of kind, 0 if it is none.
func (c *countedConn) since(kind spareKind, now int64) int64 {
	switch kind {
	case spareIdle:
		return c.idleSince.Load()
	case spareUnauthenticated:
		if c.authenticated.Load() || c.hijacked.Load() || c.handling.Load() {
			return 0
		}
		return c.accepted
	default:
		if since := c.bodyWait.Load(); since != 0 && now-since >= int64(stalledAfter) {
			return since
		}
		return 0
	}
}

// closeOldest closes the connection that has been a spare of kind the
// longest, and reports whether there was one.
func (l *limitListener) closeOldest(kind spareKind) bool {
	now := time.Now().UnixNano()
	l.mu.Lock()
	var oldest *countedConn
	var oldestSince int64
	for cc := range l.conns {
		if since := cc.since(kind, now); since != 0 && (oldest == nil || since < oldestSince) {
			oldest, oldestSince = cc, since
		}
	}
	l.mu.Unlock()
	if oldest == nil {
		return false
	}
	// One whose next request began, or that authenticated, meanwhile is
	// left alone.
	if kind == spareIdle && !oldest.idleSince.CompareAndSwap(oldestSince, 0) {
		return false
	}
	if kind != spareIdle && oldest.since(kind, time.Now().UnixNano()) == 0 {
		return false
	}
	_ = oldest.closeNow()
	return true
}

// closeLingering ends the shutdown window: the idle connections kept open
// for it are closed now, except those whose next request has arrived but
// not yet been read (a loaded machine may take a while to get to it):
// closing those would reset a request already sent. They are served, with
// Connection: close, within shutdown_grace.
func (l *limitListener) closeLingering() {
	l.lingerUntil.Store(0)
	l.mu.Lock()
	var idle []*countedConn
	for cc := range l.conns {
		if cc.lingering.Load() && cc.idleSince.Load() != 0 && !hasUnreadInput(tcpConn(cc.Conn)) {
			idle = append(idle, cc)
		}
	}
	l.mu.Unlock()
	for _, cc := range idle {
		_ = cc.closeNow()
	}
}

// closeAll closes every connection still open, when shutdown_grace has
// run out.
func (l *limitListener) closeAll() {
	l.mu.Lock()
	all := make([]*countedConn, 0, len(l.conns))
	for cc := range l.conns {
		all = append(all, cc)
	}
	l.mu.Unlock()
	for _, cc := range all {
		_ = cc.closeNow()
	}
}

// countedConn gives its slot back once, on the first Close, and replaces
// net/http's own plain-text error replies with the gateway's (see
// malformed.go). It enforces the client's time bounds: a pause in reading
// a request body (requestBody) and a response write the client does not
// take (the meteredConn's write bound, response_write_timeout).
type countedConn struct {
	meteredConn
	once    sync.Once
	release func()
	ln      *limitListener // nil for the connections inside inspected tunnels
	limits  clientLimits

	malformed     func(client net.Addr, status int, detail string) []byte
	handling      atomic.Bool  // a handler runs: writes are its response
	hijacked      atomic.Bool  // a tunnel owns the connection
	idleSince     atomic.Int64 // unix nanoseconds it began waiting for a request; 0 when busy
	accepted      int64        // unix nanoseconds it was accepted
	authenticated atomic.Bool  // a request on it authenticated (or it was closed)
	bodyWait      atomic.Int64 // unix nanoseconds a body read began waiting; 0 when none waits
	lingering     atomic.Bool  // shutdown asked to close it while idle, in its window
	// head follows each request head as net/http reads it (headscan.go);
	// smuggling is set when one carried a smuggling sign.
	head      headScan
	smuggling atomic.Bool
	// memo is the credentials its requests last proved (authmemo.go),
	// touched only by the goroutine serving its requests one at a time.
	memo authMemo
}

// Read passes the connection's bytes on, except the read that completes
// a request head with a smuggling sign, which fails (headscan.go). Only
// heads are scanned: never while a handler runs or a tunnel owns the
// connection.
func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.meteredConn.Read(p)
	if n > 0 && c.malformed != nil && !c.handling.Load() && !c.hijacked.Load() && c.head.scan(p[:n]) {
		c.smuggling.Store(true)
		return 0, errSmuggling
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	if c.malformed != nil && !c.handling.Load() && !c.hijacked.Load() {
		if status, detail, ok := parseServerError(p); ok {
			if detail == "" && c.smuggling.Load() {
				detail = smugglingDetail
			}
			if _, err := c.meteredConn.Write(c.malformed(c.RemoteAddr(), status, detail)); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return c.meteredConn.Write(p)
}

// Close closes the connection, except in the shutdown window, where a
// connection the HTTP server still has stays open until the window ends
// (closeLingering), so that a request already on its way to an idle
// keep-alive connection is served. That includes a connection not yet
// marked idle: the server makes a connection idle, where its shutdown can
// see and close it, a moment before telling connState. One the server is
// done with is closed when it says so (StateClosed).
func (c *countedConn) Close() error {
	if l := c.ln; l != nil && !c.hijacked.Load() {
		if until := l.lingerUntil.Load(); until != 0 && time.Now().UnixNano() < until {
			c.lingering.Store(true)
			return nil
		}
	}
	return c.closeNow()
}

func (c *countedConn) closeNow() error {
	err := c.Conn.Close()
	if c.release != nil { // nil where no listener slot is held (inspected tunnels)
		c.once.Do(c.release)
	}
	c.markAuthenticated() // no longer counted as unauthenticated
	return err
}

// markAuthenticated notes that the connection is no longer one without an
// authenticated request.
func (c *countedConn) markAuthenticated() {
	if c.authenticated.CompareAndSwap(false, true) && c.ln != nil {
		c.ln.unauthenticated.Add(-1)
	}
}

// connOf is the client connection r came on, nil where it did not come
// through the gateway's listener or an inspected tunnel.
func connOf(r *http.Request) *countedConn {
	cc, _ := r.Context().Value(connKey{}).(*countedConn)
	return cc
}

// authenticated notes that the exchange authenticated, so that its
// connection no longer counts against max_unauthenticated.
func (ex *exchange) authenticated() {
	if ex.conn != nil {
		ex.conn.markAuthenticated()
	}
}

// requestBody bounds each pause in reading a request body to
// request_body_timeout: a client that sends a head and then stalls frees
// its connection, and whatever it held, when the bound runs out.
type requestBody struct {
	io.ReadCloser
	conn *countedConn
	// stream is the HTTP/2 stream the body comes on, nil over HTTP/1: its
	// own read deadline bounds the body, since the connection's would cut
	// every stream it carries.
	stream *http.ResponseController
	// streamGone is set, under streamMu, once the stream's handler has
	// returned: the transport may go on reading the body after that, and
	// the stream's deadlines are then net/http's no longer to set.
	streamMu   sync.Mutex
	streamGone bool
	// Read by the handler while the transport's goroutine reads the body.
	done      atomic.Bool // read to its end
	stalled   atomic.Bool // a read ran out of time
	abandoned atomic.Bool // a refusal gave up on it
}

// errBodyStalled is a request body read cut by request_body_timeout.
var errBodyStalled = errors.New("the client sent no request body bytes for limits.request_body_timeout")

func (b *requestBody) Read(p []byte) (int, error) {
	if b.stalled.Load() || b.abandoned.Load() {
		return 0, errBodyStalled
	}
	now := time.Now()
	_ = b.setReadDeadline(now.Add(b.conn.limits.bodyTimeout))
	b.conn.bodyWait.Store(now.UnixNano())
	n, err := b.ReadCloser.Read(p)
	b.conn.bodyWait.Store(0)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The deadline stays in the past: net/http's discard of the rest
		// of the body fails at once too, and the connection closes.
		b.stalled.Store(true)
		return n, errBodyStalled
	case err == io.EOF:
		b.done.Store(true)
	}
	// Done with the body: net/http's own read for the next request must
	// not inherit the body's deadline.
	_ = b.setReadDeadline(time.Time{})
	return n, err
}

// pending says whether the body has not been read to its end.
func (b *requestBody) pending() bool { return b != nil && !b.done.Load() }

// timedOut says whether a read of the body ran out of request_body_timeout.
func (b *requestBody) timedOut() bool { return b != nil && b.stalled.Load() }

// abandon makes the server give up the rest of the body at once instead
// of reading, and waiting for, up to 256 KiB of it before closing.
func (b *requestBody) abandon() {
	b.abandoned.Store(true)
	_ = b.setReadDeadline(time.Unix(1, 0))
}

// setReadDeadline bounds the body's next read: on its stream, or on the
// connection.
func (b *requestBody) setReadDeadline(t time.Time) error {
	if b.stream != nil {
		b.streamMu.Lock()
		defer b.streamMu.Unlock()
		if b.streamGone {
			return nil
		}
		return b.stream.SetReadDeadline(t)
	}
	return b.conn.SetReadDeadline(t)
}

// endStream notes that the stream's handler returns: its response writer,
// which sets the stream's deadlines, is no longer to be used.
func (b *requestBody) endStream() {
	b.streamMu.Lock()
	b.streamGone = true
	b.streamMu.Unlock()
}

// onStream says whether the body comes on an HTTP/2 stream, whose
// connection other requests share.
func (b *requestBody) onStream() bool { return b != nil && b.stream != nil }

// roundTrip sends r with transport unless its body stalled, and fails the
// exchange if the body stalls while it runs, even when the upstream
// answered. A body a hook or redaction read whole has stalled before the
// request leaves: sending what arrived would hand the upstream a request
// cut short as if it were complete. And an upstream can answer a cut-short
// request (as Go's server does once its body read fails) faster than the
// transport closes the connection; the client must not take that answer
// for the answer to the request it sent.
func (b *requestBody) roundTrip(transport http.RoundTripper, r *http.Request) (*http.Response, error) {
	if b.timedOut() {
		return nil, errBodyStalled
	}
	resp, err := transport.RoundTrip(r)
	if err != nil || !b.timedOut() {
		return resp, err
	}
	_ = resp.Body.Close()
	return nil, errBodyStalled
}

// blameStalledBody makes o, a refusal that came after the request body
// stalled, say so: the stall cancels the request, so whatever step failed
// next (the transport, a hook, a quota check) failed because of it.
func (ex *exchange) blameStalledBody(o outcome) outcome {
	if !ex.body.timedOut() || o.code == policy.CodeBadRequest {
		return o
	}
	return classify(errBodyStalled, ex.tenantID(), net.JoinHostPort(ex.host, strconv.Itoa(int(ex.port))))
}
