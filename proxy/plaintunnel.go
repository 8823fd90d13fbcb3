package proxy

import (
	"bytes"
	"context"
	"strings"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// A tunnel that carries plain HTTP (Node's undici sends http:// URLs
// through CONNECT) is served on the plain HTTP path: the gateway reads
// the requests inside with its own HTTP server, and each is identified as
// the tunnel's tenant, must name the tunnel's host and port, and is
// decided, admitted, transformed, forwarded and audited on its own, as
// scheme http (docs/design.md). A refusal is the gateway's JSON reply on
// the tunnel, which the client reads as the response to its request.

// plainHTTPPort is where a CONNECT may be let in only to carry plain
// HTTP when the rules must read what it carries (methods, paths, hooks,
// redaction, injection): a port that speaks TLS would see its CONNECT
// accepted, then closed, where a refusal it can read is better.
const plainHTTPPort = 80

// readTunnel serves a tunnel the gateway must read, by its first bytes:
// plain HTTP on the plain HTTP path; for a connector that inspects,
// anything else as the TLS it terminates. A tunnel let in only to carry
// plain HTTP (exchange.plainTunnel) that carries anything else is closed
// before a byte reaches the upstream, which it never dialled.
func (g *Gateway) readTunnel(t *tunnel) {
	ex := t.ex
	// The peek only waits, bounded by the idle timeout: the path that
	// serves the tunnel reads the bytes again, and counts and paces them.
	peek := meter(t.client)
	peek.activity, peek.readIdle = &t.lastActivity, ex.rt.dialer.idleTimeout
	peek.unread, t.early = t.early, nil
	t.lastActivity.touch(time.Now())
	first, ok := t.readFirstBytes(peek, true)
	switch {
	case !ok:
		return
	case classifyRequestLine(first) == isRequestLine:
		g.servePlainTunnel(t, first)
	case len(first) == 0:
		t.close() // the client ended without a word
	case ex.plainTunnel:
		ex.end(refused(policy.CodeDestinationNotAllowed, "the tunnel was let in only to carry plain HTTP, which the rules for "+
			ex.host+" must read, and carried something else; it was closed before anything reached the upstream"))
		t.close()
	default:
		t.early = first // the handshake, read again by TLS
		g.inspect(ex, t)
	}
}

// servePlainTunnel serves the requests of tunnel t as plain HTTP; first
// is what the client has sent so far, read again before the connection.
// The tunnel's own line counts the bytes that cross it, through the
// tenant's shapers, as for an inspected tunnel.
func (g *Gateway) servePlainTunnel(t *tunnel, first []byte) {
	ctx, cancel := context.WithCancel(g.baseCtx)
	defer cancel()
	t.early = first
	g.serveTunnelRequests(t, t.meterServed(ctx, t.client), "http", false)
}

// requestLine is what the first bytes of a tunnel say about whether it
// carries plain HTTP.
type requestLine int

const (
	mayBeRequestLine requestLine = iota // too few bytes yet to tell
	isRequestLine                       // a method, a target and HTTP/1.
	notRequestLine                      // anything else
)

// httpVersionPrefix ends the start of a request line that the gateway
// recognises: HTTP/1.0 and HTTP/1.1, which its HTTP server reads.
var httpVersionPrefix = []byte("HTTP/1.")

// classifyRequestLine reads the start of an HTTP/1.x request line in
// first: a method token, one space, a request target of visible ASCII or
// other non-control bytes, one space and "HTTP/1.". It looks no further:
// the HTTP server that then reads the requests judges the rest, and
// answers what it cannot parse with the gateway's 400.
func classifyRequestLine(first []byte) requestLine {
	i := 0
	for i < len(first) && isTokenByte(first[i]) {
		i++
	}
	switch {
	case i == len(first):
		return mayBeRequestLine
	case i == 0 || first[i] != ' ':
		return notRequestLine
	}
	i++
	start := i
	for i < len(first) && first[i] > ' ' && first[i] != 0x7f {
		i++
	}
	switch {
	case i == len(first):
		return mayBeRequestLine
	case i == start || first[i] != ' ':
		return notRequestLine
	}
	version := first[i+1:]
	n := min(len(version), len(httpVersionPrefix))
	switch {
	case !bytes.Equal(version[:n], httpVersionPrefix[:n]):
		return notRequestLine
	case n < len(httpVersionPrefix):
		return mayBeRequestLine
	}
	return isRequestLine
}

// isTokenByte reports whether c may be part of an HTTP token, such as a
// method (RFC 9110 §5.6.2).
func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
