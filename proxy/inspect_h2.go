package proxy

import (
	"context"
	"net/http"
)

// innerH2 is HTTP/2's ALPN name, which an inspected tunnel offers the
// sandbox before http/1.1.
const innerH2 = "h2"

// innerMaxStreams is how many streams one HTTP/2 connection inside an
// inspected tunnel may have open at once: as many as a browser or a gRPC
// channel uses, and few enough that one tunnel cannot hold hundreds of
// upstream requests (docs/reference.md, "HTTP/2 inside inspected
// tunnels"). The tunnel holds one concurrency slot whatever it carries.
const innerMaxStreams = 100

// serveH2Only makes inner, the server of one inspected connection whose
// client chose h2 by ALPN, speak HTTP/2 alone on the connection the
// gateway has already taken TLS off: hence net/http's unencrypted HTTP/2,
// which here runs inside the tunnel's TLS. Its header list is bounded by
// inner's MaxHeaderBytes (limits.max_header_bytes), its idleness by
// IdleTimeout (limits.idle_timeout), as for HTTP/1.1. Extended CONNECT
// (WebSockets over HTTP/2) is not announced, so clients open WebSockets
// over HTTP/1.1.
func serveH2Only(inner *http.Server) {
	inner.Protocols = new(http.Protocols)
	inner.Protocols.SetUnencryptedHTTP2(true)
	inner.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: innerMaxStreams}
}

// streamCancelKey finds, in an HTTP/2 stream's context, what ends that
// stream alone (holdStream): revoking one response must not close the
// connection its sibling streams share.
type streamCancelKey struct{}

// serveStream is the path of one HTTP/2 stream inside the inspected
// tunnel t: the path of any inner request (serveInner), with the body's
// pauses bounded on the stream rather than on the shared connection.
func (g *Gateway) serveStream(t *tunnel, scheme string, w http.ResponseWriter, r *http.Request) {
	if cc := connOf(r); cc != nil && cc.limits.bodyTimeout > 0 && r.Body != nil && r.Body != http.NoBody {
		body := &requestBody{ReadCloser: r.Body, conn: cc, stream: http.NewResponseController(w)}
		// The upstream's transport can go on reading the body after the
		// response is over; the stream is net/http's again by then.
		defer body.endStream()
		r.Body = body
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	r = r.WithContext(context.WithValue(ctx, streamCancelKey{}, cancel))
	g.serveInner(t, scheme, w, r)
}

// streamCancel is what ends r's HTTP/2 stream (serveStream), if r came on
// one; HTTP/1 requests skip the context lookup.
func streamCancel(r *http.Request) (context.CancelFunc, bool) {
	if r.ProtoMajor != 2 {
		return nil, false
	}
	cancel, ok := r.Context().Value(streamCancelKey{}).(context.CancelFunc)
	return cancel, ok
}
