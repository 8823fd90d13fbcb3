package proxy

import (
	"bytes"
	"net"
	"net/http"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// The request path (docs/design.md): every request, tunnel and request
// inside an inspected tunnel goes through the same steps in the same
// order, each a call that returns values and at most one outcome:
//
//	identify  the tenant (identify, or identifyAs for an inner request)
//	decide    the destination under the tenant's rules (decide)
//	admit     take its quota (admit)
//	transform hooks and redaction on what leaves (transform)
//	forward   through the checked dialer, with credentials injected
//	account   the audit line and metrics, once (the deferred finish)
//
// The first outcome that is not ok ends the exchange: the client gets the
// gateway's reply for it (reply), or, when it already had its status, its
// connection is cut (outcome.replied). Whatever happens, finish records
// the exchange's outcome in the audit line and the metrics.

// ServeHTTP is the gateway's front door. CONNECT opens a tunnel
// (serveConnect). A request with an absolute URL is a plain proxy request,
// which the gateway forwards itself (servePlain), from the decision to the
// last byte. Anything else was meant for a web server.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conn := markHandling(r)
	switch {
	case r.Method == http.MethodConnect:
		g.serveConnect(w, r, conn)
	case r.URL.IsAbs():
		g.servePlain(w, r, conn)
	default:
		g.nonProxyHandler(w, r)
	}
}

// servePlain is the path of a plain HTTP request. While it is forwarded
// the exchange is held for revocation (stream.go). A response that cannot
// be sent whole aborts the client's connection, so that the client sees
// it cut short rather than ended as if complete.
func (g *Gateway) servePlain(w http.ResponseWriter, r *http.Request, conn *countedConn) {
	ex := g.begin(r, conn, false)
	ex.scheme = r.URL.Scheme
	defer ex.finish()

	o := ex.identify(r)
	tg, targetOutcome := plainTarget(r)
	if o.ok() && ex.selfServiceHost(r, tg, targetOutcome) {
		ex.answerSelf(w, r) // never forwarded (selfservice.go)
		return
	}
	if o.ok() {
		o = ex.decide(tg, targetOutcome)
	}
	var rate quota.Result
	if o.ok() {
		rate, o = ex.admit(r.Context(), true)
	}
	var out transformed
	if o.ok() {
		out, o = ex.transform(r)
	}
	if !o.ok() {
		ex.reply(w, o)
		return
	}

	t := g.holdStream(ex, r)
	o = ex.forward(w, r, out, rate, t)
	if reason := g.releaseStream(t); reason != "" {
		o = refused(policy.CodeRevoked, "response ended by "+t.revokedBy()+": "+reason)
	}
	ex.end(o)
	if o.replied() {
		panic(http.ErrAbortHandler) // after the deferred finish has recorded why
	}
}

// serveInner is the path of one request inside a tunnel, outer, that is
// inspected (scheme https) or carries plain HTTP (scheme http): a request
// of its own, decided under the policy live now, for the tenant the
// tunnel was opened as, and forwarded as a plain request is, to the
// tunnel's own host and port.
func (g *Gateway) serveInner(outer *tunnel, scheme string, w http.ResponseWriter, r *http.Request) {
	ex := g.begin(r, markHandling(r), false)
	ex.scheme, ex.inner = scheme, true
	defer ex.finish()

	o := ex.identifyAs(outer.ex)
	if o.ok() {
		o = ex.decide(innerTarget(r, outer.ex, scheme))
	}
	var rate quota.Result
	if o.ok() {
		rate, o = ex.admit(r.Context(), false) // the tunnel holds the concurrency slot
	}
	var out transformed
	if o.ok() {
		out, o = ex.transform(r)
	}
	if !o.ok() {
		ex.reply(w, o)
		return
	}

	authority := net.JoinHostPort(ex.host, itoa(ex.port))
	r.URL.Scheme, r.URL.Host, r.Host = ex.scheme, authority, authority
	t := g.holdStream(ex, r)
	o = ex.forward(w, r, out, rate, t)
	switch reason := g.releaseStream(t); {
	case reason != "":
		o = refused(policy.CodeRevoked, "response ended by "+t.revokedBy()+": "+reason)
	case outer.revoked.Load() != nil && o.replied():
		// Cut short because a reload closed the tunnel it came through.
		o = refused(policy.CodeRevoked, "the tunnel it came through was closed by "+outer.revokedBy()+": "+*outer.revoked.Load())
	}
	ex.end(o)
	if o.replied() {
		panic(http.ErrAbortHandler)
	}
}

// serveConnect is the path of a CONNECT: identify, decide and admit, then
// either refuse with the JSON error or take the connection over as a
// tunnel. The gateway takes the connection from the HTTP server itself:
// what the client sent right behind its CONNECT head is already in the
// server's read buffer, and goes first into the tunnel, never dropped.
// What a tunnel carries is transformed only when it is inspected, request
// by request (serveInner).
func (g *Gateway) serveConnect(w http.ResponseWriter, r *http.Request, conn *countedConn) {
	ex := g.begin(r, conn, true)
	ex.scheme = "tunnel"

	o := ex.identify(r)
	if o.ok() {
		o = ex.connectsToSelfService(r.URL.Host)
	}
	if o.ok() {
		o = ex.decide(connectTarget(r.URL.Host))
	}
	if o.ok() {
		// The tunnel's 200 carries the RateLimit headers of the token it
		// took (connectEstablished).
		ex.rate, o = ex.admit(r.Context(), true)
	}

	client, buffered, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not on the gateway's HTTP/1 listener; nothing to tunnel with.
		if o.ok() {
			o = refused(policy.CodeBadRequest, "a tunnel needs an HTTP/1.1 CONNECT")
		}
		ex.reply(w, o)
		ex.finish()
		return
	}
	if !o.ok() {
		g.replyHijacked(ex, o, client)
		ex.finish()
		return
	}
	var early []byte
	if n := buffered.Reader.Buffered(); n > 0 {
		peeked, _ := buffered.Reader.Peek(n)
		early = bytes.Clone(peeked) // the server's buffer is not kept
	}
	// The tunnel runs in a goroutine of its own so that the HTTP server's
	// connection goroutine returns at once, and with it its deep stack: an
	// idle tunnel then costs little more than its two relay goroutines.
	// It finishes the exchange when it ends.
	go g.tunnel(ex, client, early)
}

// nonProxyHandler answers requests sent to the gateway as if it were a web
// server, which is what a client that mistook it for its upstream does.
func (g *Gateway) nonProxyHandler(w http.ResponseWriter, r *http.Request) {
	ex := g.begin(r, nil, false)
	ex.reply(w, refused(policy.CodeBadRequest, "this is an egress gateway: send requests through it as a proxy (HTTP_PROXY / HTTPS_PROXY), with an absolute URL"))
}

// transform is the transform step on a request: the headers the client
// named hop-by-hop go first, so that none a hook adds can be named away,
// then the connector's request hook and redaction (transformRequest).
// Credentials are injected as the request is forwarded, after everything
// that could see them.
func (ex *exchange) transform(r *http.Request) (transformed, outcome) {
	removeHopByHop(r.Header, ex.upgrade)
	// Whether it is gRPC is settled on what the client sent, before any
	// hook could relabel it (to escape the other response transforms).
	ex.grpc = isGRPC(r.Header)
	if ex.grpc {
		return ex.transformGRPCRequest(r) // grpc.go: streams, never held whole
	}
	return ex.transformRequest(r)
}
