package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// network.response_header_timeout bounds the wait for an upstream's
// response head once the request is sent (docs/reference.md). For the
// transport of ordinary requests it is kept on the connection rather than
// by the transport's own timer, which would cost a timer per request
// (about 3,700 instructions on a small request, docs/design.md, "The
// forwarder"): a connection that the gateway wrote to must send a
// byte back within the bound of its last write. On HTTP/1.1 that is the
// response head after the request's last byte; while a response streams,
// nothing is written and nothing is awaited. A body streamed from the
// client may pause for as long as request_body_timeout allows, so while
// one is sent the wait is suspended, and it starts when the transport has
// written the request whole (awaitAfterUpload). Tunnels, protocol
// upgrades and gRPC, where a silent peer after a write is normal, are not
// watched.

// headAwait is what a watched connection keeps for its watch.
type headAwait struct {
	watch *headWatch
	wait  time.Duration
	// since is when the gateway last wrote with nothing read since, in
	// Unix nanoseconds; 0 while nothing is awaited.
	since   atomic.Int64
	expired atomic.Bool // the wait ran out: the connection is done
	// uploads counts the requests on the connection still sending a
	// streamed body (more than one on HTTP/2): no wait starts meanwhile.
	uploads atomic.Int32
	// reads counts the reads that returned bytes, so that a write that
	// completes after the answer to it was read starts no wait;
	// readsAtWrite is what it was before the last write began.
	reads, readsAtWrite atomic.Uint64
}

// reading is what a write takes before it writes, to pass to wrote.
func (a *headAwait) reading() uint64 { return a.reads.Load() }

// wrote and read are called as bytes move: a write starts (or restarts)
// the wait, a byte read ends it. readsBefore is what reading said before
// the write: on loopback the answer can be read before the write's own
// call returns, and a wait started then would never end.
func (a *headAwait) wrote(now int64, readsBefore uint64) {
	a.readsAtWrite.Store(readsBefore)
	if a.uploads.Load() == 0 {
		a.startIfUnanswered(now, readsBefore)
	}
}

// startIfUnanswered starts the wait at now unless a read came in since
// reads was readsBefore, checked again once it is set.
func (a *headAwait) startIfUnanswered(now int64, readsBefore uint64) {
	if a.reads.Load() != readsBefore {
		return
	}
	a.since.Store(now)
	if a.reads.Load() != readsBefore {
		a.since.CompareAndSwap(now, 0) // a read came in between: it ended the wait
	}
}

func (a *headAwait) read() {
	a.reads.Add(1)
	a.since.Store(0)
}

// uploadStarted and uploadEnded bracket the sending of a streamed body:
// the wait for the head starts at its end.
func (a *headAwait) uploadStarted() {
	a.uploads.Add(1)
	a.since.Store(0)
}

func (a *headAwait) uploadEnded(now int64) {
	if a.uploads.Add(-1) == 0 {
		// An answer read since the upload's last write (an upstream that
		// answered before the body ended) leaves nothing to wait for.
		a.startIfUnanswered(now, a.readsAtWrite.Load())
	}
}

// awaitAfterUpload is r sent with its streamed body suspending the head
// wait of the connection it goes on, until the transport has written it
// whole; a request whose body the client sends slowly is not the
// upstream's silence. Requests with no body, or a body held in memory,
// are written at once and need nothing of this.
func awaitAfterUpload(r *http.Request) *http.Request {
	var await *headAwait
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if await = headAwaitOf(info.Conn); await != nil {
				await.uploadStarted()
			}
		},
		WroteRequest: func(httptrace.WroteRequestInfo) {
			if await != nil {
				await.uploadEnded(time.Now().UnixNano())
				await = nil
			}
		},
	}
	return r.WithContext(httptrace.WithClientTrace(r.Context(), trace))
}

// headAwaitOf is the head wait of c, a connection the transport holds
// (its own TLS over the dialer's), or nil if it is not watched.
func headAwaitOf(c net.Conn) *headAwait {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if m, ok := c.(*meteredConn); ok {
		return m.head
	}
	return nil
}

// errHeadTimeout ends a read on a connection whose upstream sent nothing
// within network.response_header_timeout of the gateway's last write. It
// is a timeout, so the client gets 504 upstream_timeout.
var errHeadTimeout error = headTimeoutError{}

type headTimeoutError struct{}

func (headTimeoutError) Error() string {
	return "the upstream sent nothing within network.response_header_timeout of the request"
}
func (headTimeoutError) Timeout() bool   { return true }
func (headTimeoutError) Temporary() bool { return false }
func (headTimeoutError) Is(target error) bool {
	return target == os.ErrDeadlineExceeded
}

// headWatch checks the watched connections every headWatchEvery and ends
// the reads of those whose wait ran out. One per gateway; a connection
// is watched from its dial to its Close.
type headWatch struct {
	mu    sync.Mutex
	conns map[*meteredConn]struct{}
}

// headWatchEvery is how often the watch looks: a wait ends up to this
// much after its bound.
const headWatchEvery = 250 * time.Millisecond

func newHeadWatch() *headWatch { return &headWatch{conns: make(map[*meteredConn]struct{})} }

// watch makes c's writes await a byte back within wait, until c closes.
func (w *headWatch) watch(c *meteredConn, wait time.Duration) {
	c.head = &headAwait{watch: w, wait: wait}
	w.mu.Lock()
	w.conns[c] = struct{}{}
	w.mu.Unlock()
}

func (w *headWatch) forget(c *meteredConn) {
	w.mu.Lock()
	delete(w.conns, c)
	w.mu.Unlock()
}

// run checks the connections until ctx ends.
func (w *headWatch) run(ctx context.Context) {
	tick := time.NewTicker(headWatchEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			w.check(now.UnixNano())
		}
	}
}

// check ends the reads of the connections whose wait ran out by now. The
// deadline is set again on every check while the connection stays open,
// in case a read re-armed its own after the first.
func (w *headWatch) check(now int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c := range w.conns {
		a := c.head
		if !a.expired.Load() && a.uploads.Load() == 0 {
			since := a.since.Load()
			if since == 0 || now-since <= int64(a.wait) {
				continue
			}
			a.expired.Store(true)
		}
		if a.expired.Load() {
			_ = c.Conn.SetReadDeadline(aLongTimeAgo)
		}
	}
}

// aLongTimeAgo is a deadline that has passed: it ends a blocked read now.
var aLongTimeAgo = time.Unix(1, 0)
