package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// forward is the forward step of a plain request and of a request inside
// an inspected tunnel alike: it injects the connector's credentials, sends
// r with the transport of the exchange's policy generation, transforms the
// response and copies it to the client, or answers with the gateway's
// error. out is what the transform step left, rate what admit took (for
// the RateLimit headers). The caller holds the response for revocation in
// t; a protocol switch hands the connection to an upgraded relay, held and
// revoked as a tunnel is. An outcome the client had its status before
// (outcome.replied) makes the caller abort the client's connection.
//
// The gateway forwards by hand rather than through httputil.ReverseProxy:
// per request the latter clones the request, traces 1xx responses and
// arms a flush timer, which cost more than the small-request budget allows
// (docs/design.md, "The forwarder").
func (ex *exchange) forward(w http.ResponseWriter, r *http.Request, out transformed, rate quota.Result, t *tunnel) outcome {
	r.RequestURI = "" // a server's request, sent on as a client's
	// The client's Connection header was its own connection's: the
	// gateway's connection to the upstream stays in its pool.
	r.Close = false
	if _, ok := r.Header["User-Agent"]; !ok {
		// The transport would otherwise send its own; the gateway adds
		// none of its own to what the sandbox sent.
		r.Header["User-Agent"] = noUserAgent
	}
	ex.inject(r.Header)
	// The body is counted and shaped on its way, except a held one with
	// no shaper: left unwrapped, the transport sees it is in memory and
	// sends it with the head in one write; it is counted once answered.
	// No body at all is sent as none, not copied through a reader.
	var upload *uploadBody
	if r.Body == nil || r.Body == http.NoBody {
		r.Body = nil
	} else if egress := ex.egressShaper(); egress != nil || !out.bodyHeld {
		upload = &uploadBody{ReadCloser: egress.ReadCloser(r.Context(), r.Body), ex: ex}
		r.Body = upload
		if ex.rt.dialer.heads != nil {
			r = awaitAfterUpload(r) // headwait.go
		}
		if !out.bodyHeld {
			// The upload goes on while the response comes back. Otherwise
			// the server, as the response starts, reads and discards
			// what is left of the body and closes it under the transport,
			// which then drops the upstream connection mid-response (or
			// the upstream gets the upload cut short).
			_ = http.NewResponseController(w).EnableFullDuplex()
		}
	}
	resp, err := ex.body.roundTrip(ex.rt.transportFor(ex.grpc, ex.upgrade), r)
	if err == nil && upload == nil {
		ex.bytesUp.Add(max(r.ContentLength, 0)) // sent: the upstream answered it
	}
	if err == nil {
		err = ex.checkResponse(r, resp, out)
	}
	if err != nil {
		o := ex.forwardFailed(r, err, upload.failed())
		if o.code == policy.CodeClientClosed {
			return o // nobody left to answer
		}
		ex.reply(w, o)
		return ex.out
	}
	defer resp.Body.Close()
	ex.status = resp.StatusCode
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection changes hands: from now on it is held, and
		// revoked, as a tunnel is.
		if reason := ex.gw.releaseStream(t); reason != "" {
			return outcome{} // the caller records the revocation
		}
		ex.setRateLimitHeaders(resp.Header, rate)
		return ex.relayUpgrade(w, resp)
	}
	removeHopByHop(resp.Header, false)
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	ex.setAllowedHeaders(h)
	ex.setRateLimitHeaders(h, rate)
	announceTrailers(h, resp.Trailer)
	w.WriteHeader(resp.StatusCode)
	if o := ex.copyResponse(r.Context(), w, resp.Body, ex.ingressShaper()); !o.ok() {
		return o
	}
	for k, v := range resp.Trailer {
		h[http.TrailerPrefix+k] = v
	}
	return outcome{}
}

// noUserAgent is the header value that keeps the transport from sending
// a User-Agent of its own; shared, as the transport only reads it.
var noUserAgent = []string{""}

// checkResponse refuses a 101 the request did not ask for and applies
// the connector's response transforms.
func (ex *exchange) checkResponse(r *http.Request, resp *http.Response, out transformed) error {
	if resp.StatusCode == http.StatusSwitchingProtocols && !sameUpgrade(r.Header, resp.Header) {
		// Relayed, it would hand the sandbox raw bytes that no scrubbing,
		// redaction or hook ever sees.
		_ = resp.Body.Close()
		return errUnsolicitedUpgrade
	}
	transform := ex.transformResponse
	if ex.grpc {
		transform = ex.transformGRPCResponse // grpc.go
	}
	if err := transform(resp, out.answered); err != nil {
		_ = resp.Body.Close()
		return err
	}
	return nil
}

// copyResponse sends body to the client, counting what it delivers,
// through a pooled buffer, each piece paced by ingress (nil: unlimited).
// A piece is flushed as soon as it is written unless the read filled the
// buffer, which says the body had more ready than the buffer held: the
// next read then returns at once and the flush waits for it. So whether
// a stream (server-sent events, a long poll) or a body that arrives
// slowly, nothing that has arrived waits in the gateway for the
// upstream's next bytes, or is lost with the connection if those never
// come; a body that streams in fast is written without a flush per
// piece. The last piece is sent by the end of the handler. The buffer is
// 32 KiB, and largeBodyBuffer while reads keep filling that: fewer reads
// and writes per MiB for a large body, little memory held by a slow
// stream. It reports whether the body went out whole; if not, why: the
// client went away (ctx, the request's, is done then), or the upstream
// broke off.
func (ex *exchange) copyResponse(ctx context.Context, w http.ResponseWriter, body io.Reader, ingress *quota.Shaper) outcome {
	small := relayBuffers.Get().(*[]byte)
	defer relayBuffers.Put(small)
	var large *[]byte
	defer func() {
		if large != nil {
			largeBodyBuffers.Put(large)
		}
	}()
	// Reads of one step at most, each paid for before it is written, as
	// the shaper's own reader would, without a reader per response.
	step := ingress.Step()
	rc := http.NewResponseController(w)
	for {
		piece := *small
		if large != nil {
			piece = *large
		}
		if step > 0 && step < len(piece) {
			piece = piece[:step]
		}
		n, err := body.Read(piece)
		if n > 0 {
			if perr := ingress.Pass(ctx, n); perr != nil && err == nil {
				err = perr
			}
			if _, werr := w.Write(piece[:n]); werr != nil {
				return ex.clientClosed()
			}
			// A piece smaller than the small buffer may wait in the
			// server's own buffers (4 KiB) until flushed, full or not.
			if err != io.EOF && (n < len(piece) || n < len(*small)) {
				if ferr := rc.Flush(); ferr != nil && !errors.Is(ferr, http.ErrNotSupported) {
					return ex.clientClosed()
				}
			}
			ex.bytesDown.Add(int64(n))
		}
		// "Filled" is judged against the small buffer (or the step), so
		// that a large one is kept while reads return more than that.
		switch filled := n >= min(len(*small), len(piece)); {
		case filled && large == nil && (step == 0 || step > len(*small)):
			large = largeBodyBuffers.Get().(*[]byte)
		case !filled && large != nil:
			largeBodyBuffers.Put(large)
			large = nil
		}
		switch {
		case err == io.EOF && ctx.Err() == nil:
			return outcome{}
		case err != nil && ctx.Err() != nil:
			// Gone before the end reached it, even if the upstream
			// finished as the gateway let go of it.
			return ex.clientClosed()
		case err != nil:
			return ex.upstreamBrokeOff(err)
		}
	}
}

// largeBodyBuffers hold the buffers of response bodies that keep filling
// the 32 KiB one (copyResponse).
var largeBodyBuffers = sync.Pool{New: func() any { b := make([]byte, largeBodyBuffer); return &b }}

// largeBodyBuffer is the buffer of a body that streams in fast: pieces
// larger than 32 KiB lowered the gateway's CPU time per MiB of plain
// 1 MiB bodies (BENCHMARKS.md, "One request path").
const largeBodyBuffer = 256 << 10

// announceTrailers declares the trailers the upstream announced, so that
// the server sends the body chunked and the trailers after it.
func announceTrailers(h http.Header, trailer http.Header) {
	if len(trailer) == 0 {
		return
	}
	keys := make([]string, 0, len(trailer))
	for k := range trailer {
		keys = append(keys, k)
	}
	h["Trailer"] = []string{strings.Join(keys, ", ")}
}

// uploadBody is a request body on its way to the upstream: it counts the
// bytes that pass and notes a read that fails, which is the client
// breaking off its upload (or its connection going away) mid-body, unless
// the connection's requestBody says the client stalled.
type uploadBody struct {
	io.ReadCloser
	ex         *exchange
	readFailed atomic.Bool // read by the handler, set by the transport's writer
}

func (b *uploadBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.ex.bytesUp.Add(int64(n))
	if err != nil && err != io.EOF {
		b.readFailed.Store(true)
	}
	return n, err
}

// failed reports whether reading the client's body failed; false for no
// body at all.
func (b *uploadBody) failed() bool { return b != nil && b.readFailed.Load() }
