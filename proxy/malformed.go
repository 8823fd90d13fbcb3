package proxy

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// net/http answers a request it cannot parse (a header over
// MaxHeaderBytes, an unknown Transfer-Encoding, conflicting Content-Length
// values, a missing Host) itself, in plain text, before the gateway sees
// it. docs/reference.md, "What clients see" wants every reply the gateway makes in its JSON shape, with
// an audit line, so the client connection recognises such a reply as it is
// written and sends the gateway's own bad_request instead.
//
// A reply is taken for net/http's only when it is written while no handler
// runs on the connection (between requests, see connState) and has
// net/http's exact error head: a status line followed directly by
// "Content-Type: text/plain; charset=utf-8" and "Connection: close". A
// handler's response always carries a Date header and sorts its headers,
// so it cannot take that shape; a hijacked connection (a tunnel) is never
// looked at.
const serverErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// parseServerError recognises net/http's error reply in p, returning its
// status and the detail it gives ("missing required Host header"), if any.
func parseServerError(p []byte) (status int, detail string, ok bool) {
	const prefix = "HTTP/1.1 "
	if len(p) < len(prefix)+4 || string(p[:len(prefix)]) != prefix || p[len(prefix)+3] != ' ' {
		return 0, "", false
	}
	status, err := strconv.Atoi(string(p[len(prefix) : len(prefix)+3]))
	if err != nil || status < 400 || status > 599 {
		return 0, "", false
	}
	statusLine, _, found := bytes.Cut(p, []byte(serverErrorHeaders))
	if !found || bytes.ContainsAny(statusLine, "\r\n") {
		return 0, "", false
	}
	// "HTTP/1.1 400 Bad Request: missing required Host header"
	if _, after, cut := bytes.Cut(statusLine[len(prefix)+4:], []byte(": ")); cut {
		detail = string(after)
	}
	return status, detail, true
}

// malformedMessage says what was wrong, in terms a client can act on.
func (g *Gateway) malformedMessage(status int, detail string) string {
	switch {
	case status == http.StatusRequestHeaderFieldsTooLarge:
		return "the request header is larger than limits.max_header_bytes (" + strconv.Itoa(g.settings.MaxHeaderBytes) + " bytes)"
	case status == http.StatusNotImplemented:
		return "the request uses a Transfer-Encoding other than chunked, which the gateway does not forward"
	case detail != "":
		return "the request is malformed: " + detail
	default:
		return "the request is malformed and cannot be parsed as HTTP/1.1"
	}
}

// malformedReply is the gateway's reply, and audit line, for a request
// net/http refused to parse on the connection from client.
func (g *Gateway) malformedReply(client net.Addr, status int, detail string) []byte {
	r := &http.Request{RemoteAddr: client.String(), URL: &url.URL{}, Header: http.Header{}}
	ex := g.begin(r, nil, false)
	defer ex.finish()
	ex.end(refused(policy.CodeBadRequest, g.malformedMessage(status, detail)))
	resp := errorResponse(ex, nil)
	var b bytes.Buffer
	_ = resp.Write(&b)
	return b.Bytes()
}

// connKey finds the client connection in a request's context.
type connKey struct{}

// connContext is the server's ConnContext: the auth memo, and the
// connection itself so that ServeHTTP can mark it as handling a request.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if cc, ok := c.(*countedConn); ok {
		return context.WithValue(ctx, connKey{}, cc) // which holds its memo
	}
	return withAuthMemo(ctx, c)
}

// markHandling notes that a handler runs on r's connection: until it goes
// idle again, what is written on it is the handler's response. It bounds
// each pause in reading r's body by request_body_timeout (requestBody).
// It returns the connection, nil where r did not come through the
// gateway's listener or an inspected tunnel.
func markHandling(r *http.Request) *countedConn {
	cc := connOf(r)
	if cc == nil {
		return nil
	}
	cc.handling.Store(true)
	if _, bounded := r.Body.(*requestBody); bounded {
		return cc // an HTTP/2 stream's, bounded on the stream (serveStream)
	}
	if cc.limits.bodyTimeout > 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body = &requestBody{ReadCloser: r.Body, conn: cc}
	}
	return cc
}

// connState is the server's ConnState hook: an idle connection waits for
// its next request, so a reply written before a handler runs again is
// net/http's, and it may be closed to make room (limitListener); a
// hijacked one carries a tunnel's bytes from now on.
func connState(c net.Conn, state http.ConnState) {
	cc, ok := c.(*countedConn)
	if !ok {
		return
	}
	switch state {
	case http.StateIdle:
		cc.head.reset()
		cc.handling.Store(false)
		cc.idleSince.Store(time.Now().UnixNano())
	case http.StateActive:
		cc.idleSince.Store(0)
	case http.StateHijacked:
		cc.hijacked.Store(true)
		cc.idleSince.Store(0)
	case http.StateClosed:
		if cc.lingering.Load() {
			_ = cc.closeNow() // the server is done with it: no window keeps it
		}
	}
}
