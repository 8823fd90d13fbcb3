package proxy

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
)

// limitListener closes connections accepted past max open ones. Unlike a
// blocking limit it never lets a backlog of waiting clients build up: the
// client over the limit learns at once.
type limitListener struct {
	net.Listener
	max       int64
	open      atomic.Int64
	log       *slog.Logger
	refused   atomic.Int64
	malformed func(client net.Addr, status int, detail string) []byte
}

func newLimitListener(ln net.Listener, max int, log *slog.Logger, malformed func(net.Addr, int, string) []byte) *limitListener {
	return &limitListener{Listener: ln, max: int64(max), log: log, malformed: malformed}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			_ = c.Close()
			if n := l.refused.Add(1); n == 1 || n%1000 == 0 {
				l.log.Warn("connection refused: max_connections reached", "max_connections", l.max, "refused_so_far", n)
			}
			continue
		}
		return &countedConn{Conn: c, release: func() { l.open.Add(-1) }, malformed: l.malformed}, nil
	}
}

// countedConn gives its slot back once, on the first Close, and replaces
// net/http's own plain-text error replies with the gateway's (see
// malformed.go).
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()

	malformed func(client net.Addr, status int, detail string) []byte
	handling  atomic.Bool // a handler runs: writes are its response
	hijacked  atomic.Bool // a tunnel owns the connection
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
