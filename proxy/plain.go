package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// relayPlain is the forward step of a plain request: it injects the
// connector's credentials, forwards r and sends the response, or the
// gateway's error, back to the client. An outcome the client had its
// status before (outcome.replied) makes the caller abort the client's
// connection.
func (ex *exchange) relayPlain(w http.ResponseWriter, r *http.Request, t *tunnel) outcome {
	r.RequestURI = "" // a server's request, sent on as a client's
	ex.inject(r.Header)
	if r.Body != nil && r.Body != http.NoBody {
		egress, _ := ex.shapers()
		r.Body = &uploadBody{ReadCloser: egress.ReadCloser(r.Context(), r.Body), ex: ex}
	}
	resp, err := ex.forward(r)
	if err != nil {
		o := ex.forwardFailed(r, err)
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
			return outcome{} // servePlain records the revocation
		}
		return ex.relayUpgrade(w, resp)
	}
	removeHopByHop(resp.Header, false)
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	ex.setAllowedHeaders(h)
	announceTrailers(h, resp.Trailer)
	w.WriteHeader(resp.StatusCode)
	_, ingress := ex.shapers()
	body := ingress.Reader(r.Context(), resp.Body)
	if o := ex.copyResponse(r.Context(), w, body); !o.ok() {
		return o
	}
	for k, v := range resp.Trailer {
		h[http.TrailerPrefix+k] = v
	}
	return outcome{}
}

// forward sends an allowed plain request with the transport of the
// exchange's policy generation and applies the connector's response
// transforms.
func (ex *exchange) forward(r *http.Request) (*http.Response, error) {
	resp, err := ex.body.roundTrip(ex.rt.transport, r)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if !sameUpgrade(r.Header, resp.Header) {
			// Relayed, it would hand the sandbox raw bytes that no scrubbing,
			// redaction or hook ever sees.
			_ = resp.Body.Close()
			return nil, errUnsolicitedUpgrade
		}
	}
	if err := ex.transformResponse(resp); err != nil {
		_ = resp.Body.Close()
		return nil, err
	}
	return resp, nil
}

// copyResponse sends body to the client, counting what it delivers,
// through a pooled buffer. Each piece is flushed as soon as it is written
// (unless it is the last, which the end of the handler sends): whether a
// stream (server-sent events, a long poll) or a body that arrives slowly,
// nothing that has arrived waits in the gateway for the upstream's next
// bytes, or is lost with the connection if those never come. It reports
// whether the body went out whole; if not, why: the client went away
// (ctx, the request's, is done then), or the upstream broke off.
func (ex *exchange) copyResponse(ctx context.Context, w http.ResponseWriter, body io.Reader) outcome {
	buf := relayBuffers.Get().(*[]byte)
	defer relayBuffers.Put(buf)
	rc := http.NewResponseController(w)
	for {
		n, err := body.Read(*buf)
		if n > 0 {
			if _, werr := w.Write((*buf)[:n]); werr != nil {
				return ex.clientClosed()
			}
			if err != io.EOF {
				if ferr := rc.Flush(); ferr != nil && !errors.Is(ferr, http.ErrNotSupported) {
					return ex.clientClosed()
				}
			}
			ex.bytesDown.Add(int64(n))
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

// relayUpgrade completes a protocol switch (WebSocket): it takes over the
// client's connection, passes the upstream's 101 on and relays both ways,
// counting, until either side ends; the connection's own end is recorded
// by keepOpen.
func (ex *exchange) relayUpgrade(w http.ResponseWriter, resp *http.Response) outcome {
	upstream, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		o := failed(policy.CodeUpstreamUnreachable, "the upstream switched protocols on a connection the gateway cannot take over")
		ex.reply(w, o)
		return ex.out
	}
	client, buffered, err := http.NewResponseController(w).Hijack()
	if err != nil {
		o := failed(policy.CodeUpstreamUnreachable, "the client connection cannot be taken over for the protocol switch")
		ex.reply(w, o)
		return ex.out
	}
	t := &tunnel{ex: ex, client: client, upgraded: upstream}
	ex.gw.keepOpen(t, "upgraded connection", func() {
		removeHopByHop(resp.Header, true)
		ex.setAllowedHeaders(resp.Header)
		resp.Body = nil // Write sends the status line and headers only
		if err := resp.Write(buffered); err != nil || buffered.Flush() != nil {
			return
		}
		ex.relayUpgraded(t, buffered.Reader, upstream)
	})
	return outcome{}
}

// relayUpgraded relays an upgraded connection both ways until either side
// ends, or neither moved a byte for the idle timeout, paced by the
// tenant's shapers as a tunnel is, on a context of the relay's own: the
// request's ends with the handler. What the client sent right behind its
// request is in buffered. Neither end is half-closed: the protocols
// spoken after a 101 close both ways at once.
func (ex *exchange) relayUpgraded(t *tunnel, buffered *bufio.Reader, upstream io.ReadWriteCloser) {
	idle := ex.rt.dialer.idleTimeout
	egress, ingress := ex.shapers()
	ctx, cancel := context.WithCancel(ex.gw.baseCtx)
	defer cancel()
	t.lastActivity.touch(time.Now())
	clientConn := t.client
	if n := buffered.Buffered(); n > 0 {
		early, _ := buffered.Peek(n)
		clientConn = &earlyConn{Conn: t.client, early: early}
	}
	client := t.meter(ctx, clientConn, true, egress, &ex.bytesDown, idle)
	up := t.meter(ctx, upgradedStream{upstream}, false, ingress, &ex.bytesUp, idle)
	relay(client, up, false, func() {
		t.close()
		cancel() // a direction waiting on its shaper stops waiting
	}, nil)
}

// upgradedStream is the upstream of an upgraded connection as the
// transport hands it over: a stream, not a net.Conn. Its deadlines are
// kept by the connection underneath (the dialer's idleConn), so setting
// them here does nothing; a deadline that fires there still ends the
// relay only when neither direction is active.
type upgradedStream struct{ io.ReadWriteCloser }

func (upgradedStream) LocalAddr() net.Addr              { return nil }
func (upgradedStream) RemoteAddr() net.Addr             { return nil }
func (upgradedStream) SetDeadline(time.Time) error      { return nil }
func (upgradedStream) SetReadDeadline(time.Time) error  { return nil }
func (upgradedStream) SetWriteDeadline(time.Time) error { return nil }
