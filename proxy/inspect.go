package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// inspect terminates the sandbox's TLS with a leaf signed by the gateway's
// CA and serves the requests inside as if they had come as plain proxy
// requests: each is identified as the tunnel's tenant, must name the
// tunnel's host, and is decided on its own method and path. The gateway's
// own http.Server reads them, so the header size cap and the timeouts of
// the proxy listener apply inside tunnels too.
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
	egress, ingress := ex.shapers()
	// The raw side is counted and paced by the tenant's shapers; its
	// idleness is the inner server's to bound (IdleTimeout below).
	counted := meter(t.client)
	counted.received, counted.sent = &ex.bytesUp, &ex.bytesDown
	counted.readShaper, counted.writeShaper, counted.shaping = egress, ingress, ctx
	tlsConn := tls.Server(counted, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
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

	// Requests inside that net/http cannot parse get the gateway's reply,
	// as on the listener (malformed.go).
	// Writes inside reach the client through the tenant's shaper and the
	// tunnel's own connection, whose writes response_write_timeout bounds
	// after shaping; only the body bound applies here.
	ln := newOneConnListener(&countedConn{meteredConn: meteredConn{Conn: tlsConn}, malformed: g.malformedReply,
		limits: clientLimits{bodyTimeout: g.settings.RequestBodyTimeout}})
	// ReverseProxy hijacks the connection for an upgrade (WebSocket, h2c)
	// and relays it in the handler: the tunnel ends when that handler
	// does, not when the connection changes hands.
	var hijacked atomic.Bool
	serveInner := g.innerProxy(t)
	inner := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if hijacked.Load() {
					ln.Close()
				}
			}()
			serveInner.ServeHTTP(w, r)
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
	t.inner.Store(inner)
	if g.draining.Load() {
		return // shutdown began during the handshake
	}
	_ = inner.Serve(ln)
}

// innerProxy serves the requests of one inspected tunnel (serveInner),
// forwarding them with a ReverseProxy whose hooks are those of the
// exchange in the request's context.
func (g *Gateway) innerProxy(outer *tunnel) http.Handler {
	tunnelEx := outer.ex
	authority := net.JoinHostPort(tunnelEx.host, strconv.Itoa(int(tunnelEx.port)))
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			ex := pr.In.Context().Value(exchangeKey{}).(*exchange)
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = authority
			pr.Out.Host = authority
			switch {
			case ex.bodyHeld:
				// ReverseProxy wraps the body so that a failed dial cannot
				// close the client's. A held body has nothing to close, and
				// unwrapped the transport sees it is in memory and sends it
				// with the head in one write instead of flushing the head
				// first; exchangeTransport counts it.
				pr.Out.Body = pr.In.Body
			case pr.Out.Body != nil && pr.Out.Body != http.NoBody:
				pr.Out.Body = &uploadBody{ReadCloser: pr.Out.Body, ex: ex}
			}
			ex.inject(pr.Out.Header)
		},
		Transport: exchangeTransport{},
		ModifyResponse: func(resp *http.Response) error {
			ex := resp.Request.Context().Value(exchangeKey{}).(*exchange)
			ex.setAllowedHeaders(resp.Header)
			return ex.transformResponse(resp)
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			ex := r.Context().Value(exchangeKey{}).(*exchange)
			var o outcome
			var unscrubbable *encodingError
			if errors.As(err, &unscrubbable) {
				o = failed(policy.CodeUpstreamUnreachable, fmt.Sprintf("%s answered with %s encoding, which the gateway cannot scrub of injected credentials", authority, unscrubbable.encoding))
			} else {
				o = ex.forwardFailed(r, err)
			}
			if o.code == policy.CodeClientClosed {
				ex.end(o)
				panic(http.ErrAbortHandler) // nobody left to answer
			}
			ex.reply(w, o)
		},
		// A body copy that fails mid-way is logged here and then aborts
		// the handler; relayInner records why.
		ErrorLog: slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.serveInner(outer, rp, w, r)
	})
}

// relayInner is the forward step of a request inside the inspected tunnel
// outer: rp forwards it and copies the response to cw, the client's
// writer. t holds it for revocation until the response is over.
func (ex *exchange) relayInner(rp *httputil.ReverseProxy, cw *countingWriter, r *http.Request, outer *tunnel, t *tunnel) outcome {
	whole := serveWhole(rp, cw, withExchange(r, ex))
	if ex.status == 0 {
		ex.status = cw.status
	}
	// The client's connection ending (its context is done then) cuts
	// the response short even when the copy ended: the upstream may
	// have finished as its side was closed, but the end never reached
	// the client.
	clientGone := cw.failed || r.Context().Err() != nil
	switch reason := ex.gw.releaseStream(t); {
	case reason != "":
		return refused(policy.CodeRevoked, "response ended by a policy reload: "+reason)
	case outer.revoked.Load() != nil && (!whole || clientGone):
		return refused(policy.CodeRevoked, "the tunnel it came through was closed by a policy reload: "+*outer.revoked.Load())
	case !ex.out.ok(): // the error handler's
		return ex.out
	case clientGone:
		return ex.clientClosed()
	case !whole:
		return ex.upstreamBrokeOff(errors.New("the response body could not be read to its end"))
	}
	return outcome{}
}

// serveWhole runs rp and reports whether it ended the response normally:
// ReverseProxy aborts the handler (http.ErrAbortHandler) when it cannot
// copy the whole body, which the caller records before passing it on.
func serveWhole(rp *httputil.ReverseProxy, w http.ResponseWriter, r *http.Request) (whole bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				panic(p)
			}
			whole = false
		}
	}()
	rp.ServeHTTP(w, r)
	return true
}

type exchangeKey struct{}

// exchangeTransport forwards with the transport of the exchange's own
// policy generation, found in the request context.
type exchangeTransport struct{}

func (exchangeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ex := r.Context().Value(exchangeKey{}).(*exchange)
	resp, err := ex.body.roundTrip(ex.rt.transport, r)
	if err == nil && ex.bodyHeld {
		ex.bytesUp.Add(r.ContentLength) // sent: the upstream answered it
	}
	return resp, err
}

// countingWriter counts the body bytes sent to the client and remembers
// the status; Unwrap lets http.ResponseController reach Flush and Hijack
// (streaming and WebSocket upgrades).
type countingWriter struct {
	http.ResponseWriter
	n      interface{ Add(int64) int64 }
	status int
	failed bool // a write to the client failed: it went away
}

func (w *countingWriter) WriteHeader(status int) {
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		// An informational response (103 Early Hints) that ReverseProxy
		// would pass on as it arrives, before any scrubbing: dropped.
		return
	}
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	if err != nil {
		w.failed = true
	}
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

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
