package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
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
	ex.gw.keepOpen(&tunnel{ex: ex, client: client, upgraded: upstream}, "upgraded connection", func() {
		removeHopByHop(resp.Header, true)
		ex.setAllowedHeaders(resp.Header)
		resp.Body = nil // Write sends the status line and headers only
		if err := resp.Write(buffered); err != nil || buffered.Flush() != nil {
			return
		}
		ex.relayUpgraded(client, buffered, upstream)
	})
	return outcome{}
}

// relayUpgraded relays an upgraded connection both ways until either side
// ends, paced by the tenant's shapers as a tunnel is, on a context of the
// relay's own: the request's ends with the handler. What the client sent
// right behind its request is in buffered.
func (ex *exchange) relayUpgraded(client net.Conn, buffered io.Reader, upstream io.ReadWriteCloser) {
	var lastActivity atomic.Int64 // unix nanoseconds of the last byte either way
	lastActivity.Store(time.Now().UnixNano())
	idle := ex.rt.dialer.idleTimeout
	egress, ingress := ex.shapers()
	ctx, cancel := context.WithCancel(ex.gw.baseCtx)
	toUpstream := make(chan struct{})
	go func() {
		defer close(toUpstream)
		copyUpgraded(upstream, egress.Reader(ctx, buffered), &ex.bytesUp, &lastActivity, idle)
		_ = upstream.Close()
	}()
	copyUpgraded(client, ingress.Reader(ctx, upstream), &ex.bytesDown, &lastActivity, idle)
	_ = client.Close()
	_ = upstream.Close()
	cancel() // a direction waiting on its shaper stops waiting
	<-toUpstream
}

// copyUpgraded copies one direction of an upgraded connection. The
// upstream's side carries the idle read deadline of every upstream
// connection; a read it cuts short ends the relay only if neither
// direction moved a byte for idle, so a stream where one side does all
// the talking stays open.
func copyUpgraded(dst io.Writer, src io.Reader, counter, lastActivity *atomic.Int64, idle time.Duration) {
	buf := relayBuffers.Get().(*[]byte)
	defer relayBuffers.Put(buf)
	for {
		n, err := src.Read(*buf)
		if n > 0 {
			lastActivity.Store(time.Now().UnixNano())
			if _, werr := dst.Write((*buf)[:n]); werr != nil {
				return
			}
			counter.Add(int64(n))
		}
		if err != nil && !deadlineWhileActive(err, lastActivity, idle) {
			return
		}
	}
}
