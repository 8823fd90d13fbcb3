package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// meterServed wraps the client side of a tunnel whose requests the
// gateway serves itself (inspected, or carrying plain HTTP): counted and
// paced by the tenant's shapers both ways; its idleness is the inner
// server's to bound. What the tunnel's client sent that was read already
// (tunnel.early) is read first.
func (t *tunnel) meterServed(ctx context.Context, c net.Conn) *meteredConn {
	egress, ingress := t.ex.shapers()
	m := meter(c)
	m.unread, t.early = t.early, nil
	m.received, m.sent = &t.ex.bytesUp, &t.ex.bytesDown
	m.readShaper, m.writeShaper, m.shaping = egress, ingress, ctx
	t.meterRelay(m)
	return m
}

// inspect terminates the sandbox's TLS with a leaf signed by the gateway's
// CA and serves the requests inside as if they had come as plain proxy
// requests: each is identified as the tunnel's tenant, must name the
// tunnel's host, and is decided on its own method and path. The gateway's
// own http.Server reads them, over HTTP/2 or HTTP/1.1 as the client chose
// by ALPN, so the header size cap and the timeouts of the proxy listener
// apply inside tunnels too.
func (g *Gateway) inspect(ex *exchange, t *tunnel) {
	leaves := g.leaves.Load()
	if leaves == nil || ex.rt.live.Gateway.CA == nil {
		ex.end(refused(policy.CodeDestinationNotAllowed, "inspection is configured for this connector but the gateway has no CA loaded"))
		t.close()
		return
	}
	idle := ex.rt.dialer.idleTimeout
	ctx, cancel := context.WithCancel(g.baseCtx)
	defer cancel()
	tlsConn := tls.Server(t.meterServed(ctx, t.client), &tls.Config{
		MinVersion: tls.VersionTLS12,
		// HTTP/2 for the clients that offer it (gRPC needs it), HTTP/1.1
		// for the rest (docs/design.md, "CONNECT, inspected").
		NextProtos: []string{innerH2, "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return leaves.get(ex.host) // always the CONNECT host, whatever the SNI says
		},
	})
	_ = tlsConn.SetDeadline(g.now().Add(idle))
	if err := tlsConn.HandshakeContext(g.baseCtx); err != nil {
		g.log.Debug("inspected tunnel: TLS handshake with the client failed", "request_id", ex.id, "error", err)
		t.close()
		return
	}
	_ = tlsConn.SetDeadline(time.Time{})
	g.serveTunnelRequests(t, tlsConn, "https", tlsConn.ConnectionState().NegotiatedProtocol == innerH2)
}

// serveTunnelRequests serves the requests on conn, the connection inside
// the tunnel t, with the gateway's own http.Server, each on the path of
// serveInner, read as scheme: https for an inspected tunnel, http for one
// that carries plain HTTP; over HTTP/2 when h2 (the client chose it by
// ALPN), each stream a request of its own (serveStream). It returns when
// the connection ends.
func (g *Gateway) serveTunnelRequests(t *tunnel, conn net.Conn, scheme string, h2 bool) {
	idle := t.ex.rt.dialer.idleTimeout
	// Requests inside that net/http cannot parse get the gateway's reply,
	// as on the listener (malformed.go); HTTP/2 frames are no HTTP/1 head
	// to scan, and its server answers errors in frames of its own.
	// Writes inside reach the client through the tenant's shaper and the
	// tunnel's own connection, whose writes response_write_timeout bounds
	// after shaping; only the body bound applies here.
	cc := &countedConn{meteredConn: meteredConn{Conn: conn}, limits: clientLimits{bodyTimeout: g.settings.RequestBodyTimeout}}
	if !h2 {
		cc.malformed = g.malformedReply
	}
	ln := newOneConnListener(cc)
	// An upgrade (WebSocket, h2c) takes the connection over and relays
	// it in the handler (relayUpgrade): the tunnel ends when that handler
	// does, not when the connection changes hands.
	var hijacked atomic.Bool
	inner := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if hijacked.Load() {
					ln.Close()
				}
			}()
			if h2 {
				g.serveStream(t, scheme, w, r)
				return
			}
			g.serveInner(t, scheme, w, r)
		}),
		MaxHeaderBytes:    g.settings.MaxHeaderBytes,
		ReadHeaderTimeout: min(idle, 30*time.Second),
		IdleTimeout:       idle,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return g.baseCtx },
		ConnContext:       connContext,
		ConnState: func(c net.Conn, state http.ConnState) {
			connState(c, state)
			switch state {
			case http.StateClosed:
				ln.Close()
			case http.StateHijacked:
				hijacked.Store(true)
			}
		},
	}
	if h2 {
		serveH2Only(inner)
	}
	t.inner.Store(inner)
	if g.draining.Load() {
		return // shutdown began during the handshake
	}
	_ = inner.Serve(ln)
}

// oneConnListener hands out one connection, then waits until closed, so
// that http.Server can serve a single hijacked connection.
type oneConnListener struct {
	conn   net.Conn
	once   sync.Once
	closed chan struct{}
	mu     sync.Mutex
	given  bool
}

func newOneConnListener(c net.Conn) *oneConnListener {
	return &oneConnListener{conn: c, closed: make(chan struct{})}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if !l.given {
		l.given = true
		l.mu.Unlock()
		return l.conn, nil
	}
	l.mu.Unlock()
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
