package proxy

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
)

// limitListener holds at most max connections open. At the limit it first
// closes the connection idle the longest between keep-alive requests, so
// that clients parking idle connections cannot lock others out; with none
// idle it closes the new one. Unlike a blocking limit it never lets a
// backlog of waiting clients build up: the client over the limit learns at
// once.
type limitListener struct {
	net.Listener
	max       int
	log       *slog.Logger
	refused   atomic.Int64
	evicted   atomic.Int64
	malformed func(client net.Addr, status int, detail string) []byte

	mu    sync.Mutex
	conns map[*countedConn]struct{} // open: their number is what max bounds
}

func newLimitListener(ln net.Listener, max int, log *slog.Logger, malformed func(net.Addr, int, string) []byte) *limitListener {
	return &limitListener{Listener: ln, max: max, log: log, malformed: malformed, conns: map[*countedConn]struct{}{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		// At the limit the longest-idle connection makes room (its Close
		// runs forget); only this loop adds connections, so none can take
		// the room meanwhile.
		if l.openConns() >= l.max && !l.closeLongestIdle() {
			_ = c.Close()
			if n := l.refused.Add(1); n == 1 || n%1000 == 0 {
				l.log.Warn("connection refused: max_connections reached", "max_connections", l.max, "refused_so_far", n)
			}
			continue
		}
		cc := &countedConn{Conn: c, malformed: l.malformed}
		cc.release = func() { l.forget(cc) }
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

// forget gives a closed connection's slot back.
func (l *limitListener) forget(cc *countedConn) {
	l.mu.Lock()
	delete(l.conns, cc)
	l.mu.Unlock()
}

// closeLongestIdle closes the connection that has waited longest for its
// next request, and reports whether there was one.
func (l *limitListener) closeLongestIdle() bool {
	l.mu.Lock()
	var oldest *countedConn
	var oldestSince int64
	for cc := range l.conns {
		if since := cc.idleSince.Load(); since != 0 && (oldest == nil || since < oldestSince) {
			oldest, oldestSince = cc, since
		}
	}
	l.mu.Unlock()
	// A connection whose next request began meanwhile is left alone.
	if oldest == nil || !oldest.idleSince.CompareAndSwap(oldestSince, 0) {
		return false
	}
	_ = oldest.Close()
	if n := l.evicted.Add(1); n == 1 || n%1000 == 0 {
		l.log.Warn("max_connections reached: closing idle keep-alive connections to make room", "max_connections", l.max, "closed_so_far", n)
	}
	return true
}

// countedConn gives its slot back once, on the first Close, and replaces
// net/http's own plain-text error replies with the gateway's (see
// malformed.go).
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()

	malformed func(client net.Addr, status int, detail string) []byte
	handling  atomic.Bool  // a handler runs: writes are its response
	hijacked  atomic.Bool  // a tunnel owns the connection
	idleSince atomic.Int64 // unix nanoseconds it began waiting for a request; 0 when busy
}

func (c *countedConn) Write(p []byte) (int, error) {
	if c.malformed != nil && !c.handling.Load() && !c.hijacked.Load() {
		if status, detail, ok := parseServerError(p); ok {
			if _, err := c.Conn.Write(c.malformed(c.RemoteAddr(), status, detail)); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	if c.release != nil { // nil where no listener slot is held (inspected tunnels)
		c.once.Do(c.release)
	}
	return err
}

// NetConn returns the connection underneath, for the tunnel's splice.
func (c *countedConn) NetConn() net.Conn { return c.Conn }

// CloseWrite keeps half-close working through the wrapper, which tunnels
// need to finish one direction while the other still flows.
func (c *countedConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return nil
}
