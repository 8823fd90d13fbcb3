package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/redaction"
)

// gRPC through an inspected connector (docs/reference.md, "gRPC"): its
// messages stream both ways at once, so nothing that needs a body whole
// applies to them. Headers, trailers and the injected credentials are
// handled as for any request; bodies are not parsed by redaction
// profiles, and a connector's hooks refuse the call.

// isGRPC says whether h, a request's or a response's header, is gRPC's:
// Content-Type application/grpc, with or without a +codec suffix or
// parameters. gRPC-Web (application/grpc-web*) is not: it is made for
// HTTP/1.1 and carries its trailers in the body.
func isGRPC(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct[0])
	if err != nil {
		return false
	}
	return mt == "application/grpc" || strings.HasPrefix(mt, "application/grpc+")
}

// transformGRPCRequest is the transform step of a gRPC request. A
// connector with a hook refuses it (hook_failed): a script would see
// neither the messages nor the end of a stream, and the gateway does not
// send unhooked what a connector means to hook. Redaction applies to the
// headers and query; the messages pass unparsed where every profile, for
// either direction, says on_unsupported_body: pass, and the call is
// refused before a byte leaves (body_too_large) where one says block:
// the response cannot be refused once its stream has begun. With
// credentials injected, the upstream is not asked for compressed
// messages, which could not be scrubbed (transformGRPCResponse).
func (ex *exchange) transformGRPCRequest(r *http.Request) (transformed, outcome) {
	c := ex.connector
	if c == nil {
		return transformed{}, outcome{}
	}
	if h := c.Hooks; h != nil && (h.Request != nil || h.Response != nil) {
		return transformed{}, refused(policy.CodeHookFailed, fmt.Sprintf(
			"connector %q runs hooks, which cannot run on gRPC calls (application/grpc): the call is refused rather than sent unhooked", c.Name))
	}
	if rd := c.Redact; rd != nil {
		contentType := r.Header.Get("Content-Type")
		for _, chain := range []redaction.Chain{rd.Request, rd.Response} {
			if err := chain.Opaque(contentType); err != nil {
				return transformed{}, refused(policy.CodeBodyTooLarge, err.Error())
			}
		}
		ex.recordRedactions(rd.Request.Headers(r.Header))
		query, rep := rd.Request.Query(r.URL.RawQuery)
		r.URL.RawQuery = query
		ex.recordRedactions(rep)
	}
	if c.Scrubber != nil {
		r.Header.Del("Grpc-Accept-Encoding")
	}
	return transformed{}, outcome{}
}

// transformGRPCResponse is the transform step of the response to a gRPC
// request: the injected secrets scrubbed from its headers, its messages
// one by one as each arrives whole (grpcScrubber) and its trailers, then
// the connector's response redaction on the headers. A response that is
// not gRPC (an error page on the way) is transformed as any other.
func (ex *exchange) transformGRPCResponse(resp *http.Response, answered *hooks.Request) error {
	if !isGRPC(resp.Header) {
		return ex.transformResponse(resp, answered)
	}
	c := ex.connector
	if c == nil {
		return nil
	}
	if c.Scrubber != nil {
		c.Scrubber.Headers(resp.Header)
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
		resp.Body = struct {
			io.Reader
			io.Closer
		}{&grpcScrubber{src: resp.Body, resp: resp, scrubber: c.Scrubber, limit: ex.rt.live.Gateway.Redaction.MaxBodyBytes}, resp.Body}
	}
	if rd := c.Redact; rd != nil {
		ex.recordRedactions(rd.Response.Headers(resp.Header))
	}
	return nil
}

// grpcMessageHead is the length-prefixed message's head: a compression
// flag and the message's length, big-endian.
const grpcMessageHead = 5

var (
	errGRPCCompressed = errors.New("a compressed gRPC message cannot be scrubbed of injected secrets")
	errGRPCTooLarge   = errors.New("a gRPC message is larger than redaction.max_body_bytes and cannot be scrubbed of injected secrets")
	errGRPCTruncated  = errors.New("the gRPC response ended inside a message")
)

// grpcScrubber reads a stream of gRPC messages and gives each on, whole,
// with the injected secrets replaced and its length prefix set to the
// result: a message is passed on as soon as it has arrived, so a
// streaming call flows, and never before, so a secret split across reads
// is still found. Compressed messages, messages over limit bytes and a
// stream cut inside a message fail closed. The trailers are scrubbed once
// the body has ended, when the HTTP client has filled them in.
type grpcScrubber struct {
	src      io.Reader
	resp     *http.Response // nil: no trailers to scrub
	scrubber *redaction.SecretScrubber
	limit    int64

	msg  []byte // the message being read, reused
	out  []byte // scrubbed, with its head, not yet returned
	pos  int
	err  error
	head [grpcMessageHead]byte
}

func (g *grpcScrubber) Read(p []byte) (int, error) {
	for g.pos == len(g.out) {
		if g.err != nil {
			return 0, g.err
		}
		g.err = g.next()
		if g.err == io.EOF && g.resp != nil {
			g.scrubber.Headers(g.resp.Trailer)
		}
	}
	n := copy(p, g.out[g.pos:])
	g.pos += n
	return n, nil
}

// next reads one message and leaves it, scrubbed, in out.
func (g *grpcScrubber) next() error {
	g.out, g.pos = g.out[:0], 0
	if _, err := io.ReadFull(g.src, g.head[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return errGRPCTruncated
		}
		return err // io.EOF: the stream ended between messages
	}
	switch g.head[0] {
	case 0:
	case 1:
		return errGRPCCompressed
	default:
		return fmt.Errorf("a gRPC message has an unknown flag %#x", g.head[0])
	}
	size := int64(binary.BigEndian.Uint32(g.head[1:]))
	if size > g.limit {
		return errGRPCTooLarge
	}
	if int64(cap(g.msg)) < size {
		g.msg = make([]byte, size)
	}
	g.msg = g.msg[:size]
	if _, err := io.ReadFull(g.src, g.msg); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return errGRPCTruncated
		}
		return err
	}
	scrubbed, _ := g.scrubber.Scrub(g.msg)
	g.out = append(g.out, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(g.out[1:], uint32(len(scrubbed)))
	g.out = append(g.out, scrubbed...)
	return nil
}
