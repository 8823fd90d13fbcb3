package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/egressgw/egressgw/policy"
)

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
	client := t.meter(ctx, t.client, true, egress, &ex.bytesDown, idle)
	if n := buffered.Buffered(); n > 0 {
		// Relayed first, then the connection itself, whether copied or
		// spliced (relayDirection).
		client.unread, _ = buffered.Peek(n)
	}
	up := t.meter(ctx, upgradedStream{upstream}, false, ingress, &ex.bytesUp, idle)
	relay(client, up, false, func() {
		t.close()
		cancel() // a direction waiting on its shaper stops waiting
	}, nil, nil)
}

// upgradedStream is the upstream of an upgraded connection as the
// transport hands it over: a stream, not a net.Conn. Its deadlines are
// kept by the connection underneath (the dialer's upstreamConn), so setting
// them here does nothing; a deadline that fires there still ends the
// relay only when neither direction is active.
type upgradedStream struct{ io.ReadWriteCloser }

func (upgradedStream) LocalAddr() net.Addr              { return nil }
func (upgradedStream) RemoteAddr() net.Addr             { return nil }
func (upgradedStream) SetDeadline(time.Time) error      { return nil }
func (upgradedStream) SetReadDeadline(time.Time) error  { return nil }
func (upgradedStream) SetWriteDeadline(time.Time) error { return nil }
