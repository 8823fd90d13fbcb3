package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressgw/egressgw/quota"
)

// A connection the gateway holds for a client or an upstream is wrapped
// once, in a meteredConn: it counts the bytes each way, keeps the time of
// the last one, paces them through the tenant's shapers and bounds how
// long a read may wait for a byte and a write for the peer to take it.
// Tunnels and upgraded connections are relayed between two of them
// (relay); an inspected tunnel's TLS is served over one; the listener's
// countedConn is one with the listener's limits on top
// (docs/design.md, "The connection wrapper").

// activity is when a connection, or the pair of them a relay joins, last
// moved a byte either way, in Unix nanoseconds. Idle bounds count from it:
// the two connections of a relay share one, so a one-way stream keeps
// both open.
type activity struct{ atomic.Int64 }

func (a *activity) touch(now time.Time) { a.Store(now.UnixNano()) }

// stillActive says whether err is a deadline that fired although a byte
// moved, either way, within idle: a one-way stream is not idle, so it
// must not end there.
func (a *activity) stillActive(err error, idle time.Duration) bool {
	return isTimeout(err) && time.Since(time.Unix(0, a.Load())) < idle
}

// deadlineRenewal keeps a deadline bound after the last progress at a
// fraction of the cost of setting it on every call: it is renewed on a
// read or write only once an eighth of the bound has passed since the last
// renewal, so the cut comes between 7/8 and all of the bound after the
// last progress.
type deadlineRenewal struct {
	last atomic.Int64 // unix nanoseconds of the last renewal; 0 forces the next
}

// due reports whether the deadline should be set again now, and if so
// counts it as renewed.
func (r *deadlineRenewal) due(bound time.Duration, now time.Time) bool {
	if now.UnixNano()-r.last.Load() < int64(bound/8) {
		return false
	}
	r.last.Store(now.UnixNano())
	return true
}

// renew sets the deadline bound from now, if it is due.
func (r *deadlineRenewal) renew(bound time.Duration, set func(time.Time) error) error {
	if now := time.Now(); r.due(bound, now) {
		return set(now.Add(bound))
	}
	return nil
}

// reset makes the next renewal set the deadline, after something else has
// changed it.
func (r *deadlineRenewal) reset() { r.last.Store(0) }

// meteredConn is a connection with its bytes counted, timed and paced.
// Every part is optional: a nil counter counts nothing, a nil shaper (an
// unlimited tenant) costs nothing, a zero bound sets no deadline. A read
// and a write may run at once (one relay direction each), but not two
// reads or two writes.
type meteredConn struct {
	net.Conn
	// tcp is the TCP connection under every wrapper, nil if there is none:
	// between two of them a relay splices.
	tcp *net.TCPConn

	// unread is what was read from the connection but not yet returned by
	// Read: what the HTTP server had read past a CONNECT head, and a
	// tunnel's first bytes, peeked at before the gateway decides what the
	// tunnel carries. Read returns it first and counts and pays for it
	// then, so bytes peeked at and never passed on cost nothing.
	unread []byte

	activity *activity     // the last byte either way; shared by a relay's pair
	received *atomic.Int64 // bytes read from the connection
	sent     *atomic.Int64 // bytes written to it

	// readShaper paces what is read from the connection, writeShaper what
	// is written to it; they wait on shaping, never on a request's
	// context, which may be over while the connection lives on.
	readShaper, writeShaper *quota.Shaper
	shaping                 context.Context

	// readIdle bounds a read: it fails only once activity shows no byte
	// either way for that long. writeBound bounds a write's wait for the
	// peer to take the bytes, after which it fails unless activity shows
	// a byte within it.
	readIdle, writeBound  time.Duration
	readRenew, writeRenew deadlineRenewal
	// readCleared is set while the connection has no read deadline, as
	// the last SetReadDeadline or SetDeadline left it.
	readCleared atomic.Bool

	// charge, when set, is called after every counted step: budgets are
	// charged as bytes move (proxy/budget.go).
	charge func()

	// head, on an upstream connection of the request transport, bounds
	// the wait for a byte back after a write (headwait.go).
	head *headAwait
}

// meter wraps c; the caller sets what it needs counted, timed or paced
// before the first read or write.
func meter(c net.Conn) *meteredConn {
	return &meteredConn{Conn: c, tcp: tcpConn(c)}
}

// readSize is how much one read may ask for: with a shaper, no more than
// its step, so that what the read returns is paid for at once.
func (c *meteredConn) readSize(n int) int {
	if c.readShaper != nil {
		return min(n, c.readShaper.Step())
	}
	return n
}

// Read reads, counts and pays for what it read, unread bytes first.
func (c *meteredConn) Read(p []byte) (int, error) {
	p = p[:c.readSize(len(p))]
	if len(c.unread) > 0 && len(p) > 0 {
		chunk, err := c.takeUnread(len(p))
		return copy(p, chunk), err
	}
	n, err := c.readConn(p)
	if n > 0 {
		if c.head != nil {
			c.head.read()
		}
		c.moved(n, c.received)
		if perr := c.readShaper.Pass(c.shaping, n); perr != nil {
			return n, perr
		}
	}
	return n, err
}

// readConn reads from the connection itself. With readIdle, a deadline
// that fires while the connection (or its pair) is still active is not an
// error: the read waits on.
func (c *meteredConn) readConn(p []byte) (int, error) {
	for {
		if c.head != nil && c.head.expired.Load() {
			return 0, errHeadTimeout
		}
		if c.readIdle > 0 {
			if err := c.armRead(); err != nil {
				return 0, err
			}
		}
		n, err := c.Conn.Read(p)
		if n == 0 && c.head != nil && c.head.expired.Load() {
			return 0, errHeadTimeout
		}
		if n == 0 && c.readIdle > 0 && c.activity.stillActive(err, c.readIdle) {
			c.readRenew.reset()
			continue
		}
		return n, err
	}
}

// takeUnread returns up to n unread bytes, counted and paid for as read
// now.
func (c *meteredConn) takeUnread(n int) ([]byte, error) {
	chunk := c.unread[:min(n, len(c.unread))]
	c.unread = c.unread[len(chunk):]
	if len(c.unread) == 0 {
		c.unread = nil // a peek's buffer is not kept for the connection's life
	}
	c.moved(len(chunk), c.received)
	return chunk, c.readShaper.Pass(c.shaping, len(chunk))
}

// peek reads at most limit more bytes from the connection, under the read
// bound, behind those unread, and returns all that is unread now: what
// Read returns next. It stamps the activity clock but counts and pays for
// nothing; Read does, when it returns the bytes.
func (c *meteredConn) peek(limit int) ([]byte, error) {
	have := len(c.unread)
	limit = min(limit, idleReadBuffer)
	c.unread = slices.Grow(c.unread, limit)
	n, err := c.readConn(c.unread[have : have+limit])
	c.unread = c.unread[:have+n]
	if n > 0 && c.activity != nil {
		c.activity.touch(time.Now())
	}
	return c.unread, err
}

// Write pays for p, a step at a time, and writes it, counting what the
// peer took. An empty p is written too: it reports a closed connection or
// a deadline that passed, as the connection's own Write does.
func (c *meteredConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return c.writeOnce(p)
	}
	written := 0
	for len(p) > 0 {
		chunk := p
		if c.writeShaper != nil {
			chunk = p[:min(len(p), c.writeShaper.Step())]
			if err := c.writeShaper.Pass(c.shaping, len(chunk)); err != nil {
				return written, err
			}
		}
		n, err := c.writeOnce(chunk)
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// writeOnce writes p under the write bound.
func (c *meteredConn) writeOnce(p []byte) (int, error) {
	written := 0
	for {
		if c.writeBound > 0 {
			if err := c.writeRenew.renew(c.writeBound, c.Conn.SetWriteDeadline); err != nil {
				return written, err
			}
		}
		var readsBefore uint64
		if c.head != nil {
			readsBefore = c.head.reading()
		}
		n, err := c.Conn.Write(p[written:])
		if n > 0 {
			c.moved(n, c.sent)
			if c.head != nil {
				c.head.wrote(c.activity.Load(), readsBefore)
			}
			written += n
		}
		if err != nil && c.activity != nil && c.activity.stillActive(err, c.writeBound) {
			c.writeRenew.reset()
			continue
		}
		return written, err
	}
}

// moved records n bytes just read or written.
func (c *meteredConn) moved(n int, counter *atomic.Int64) {
	if c.activity != nil {
		c.activity.touch(time.Now())
	}
	if counter != nil {
		counter.Add(int64(n))
	}
	if c.charge != nil {
		c.charge()
	}
}

// armRead sets the read deadline to when the connection will have been
// idle for readIdle, if the last activity has moved an eighth of the
// bound since the deadline was last set. Counted from the last byte
// either way, not from now, so a read re-armed after the other
// direction's traffic kept it open still ends idle after the last byte,
// not up to twice that; and a read costs no clock reading of its own.
func (c *meteredConn) armRead() error {
	last := time.Unix(0, c.activity.Load())
	if c.readRenew.due(c.readIdle, last) {
		c.readCleared.Store(false)
		return c.Conn.SetReadDeadline(last.Add(c.readIdle))
	}
	return nil
}

// armWrite sets the write deadline from now, if it is due.
func (c *meteredConn) armWrite(now time.Time) error {
	if c.writeBound > 0 && c.writeRenew.due(c.writeBound, now) {
		return c.Conn.SetWriteDeadline(now.Add(c.writeBound))
	}
	return nil
}

// SetDeadline, SetReadDeadline and SetWriteDeadline pass through, and make
// the next read or write set its bound afresh (net/http clears all
// deadlines on Hijack).
func (c *meteredConn) SetDeadline(t time.Time) error {
	c.readRenew.reset()
	c.writeRenew.reset()
	c.readCleared.Store(t.IsZero())
	return c.Conn.SetDeadline(t)
}

func (c *meteredConn) SetReadDeadline(t time.Time) error {
	c.readRenew.reset()
	if t.IsZero() {
		// net/http clears the read deadline twice in a row on every
		// request; the second would only cost a trip into the runtime.
		if c.readCleared.Swap(true) {
			return nil
		}
	} else {
		c.readCleared.Store(false)
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *meteredConn) SetWriteDeadline(t time.Time) error {
	if t.IsZero() && c.writeBound > 0 {
		// Clearing (as net/http does before every response) would leave
		// the next write unbounded until it re-armed; the connection's
		// own bound stays instead, renewed by every write as it falls due.
		return nil
	}
	c.writeRenew.reset()
	return c.Conn.SetWriteDeadline(t)
}

// Close closes the connection, which a watch then forgets.
func (c *meteredConn) Close() error {
	if c.head != nil {
		c.head.watch.forget(c)
	}
	return c.Conn.Close()
}

// NetConn returns the connection underneath.
func (c *meteredConn) NetConn() net.Conn { return c.Conn }

// CloseWrite passes half-close through, which a relay needs to finish one
// direction while the other still flows: to the connection's own, or to
// the TCP connection underneath it.
func (c *meteredConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	if c.tcp != nil {
		return c.tcp.CloseWrite()
	}
	return errors.ErrUnsupported
}

// tcpConn finds the TCP connection under the gateway's wrappers, nil if
// there is none, or if a wrapper in between has work of its own that a
// splice around it would skip: TLS, or a meteredConn that counts or paces
// (a tunnel whose requests the gateway serves, whose inner connections
// may be upgraded and relayed).
func tcpConn(c net.Conn) *net.TCPConn {
	for {
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case *tls.Conn:
			return nil
		case *meteredConn:
			if v.received != nil || v.sent != nil || v.readShaper != nil || v.writeShaper != nil {
				return nil
			}
			c = v.Conn
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
}

// relay copies a's bytes to b and b's to a until both directions are
// done. A direction whose source ends cleanly half-closes its destination
// when halfClose is set, and the other direction goes on; any other end
// (an error, a bound that ran out, a source ending without halfClose)
// calls closeAll, which must close both. first, if not nil, runs before
// the a→b direction and ends it when it returns false. One direction runs
// in a goroutine of its own, the other in the caller's: an idle relay
// costs two goroutine stacks, not three.
func relay(a, b *meteredConn, halfClose bool, closeAll func(), firstAToB, firstBToA func() bool) {
	aToB := make(chan struct{})
	go func() {
		defer close(aToB)
		if firstAToB == nil || firstAToB() {
			relayDirection(b, a, halfClose, closeAll)
		}
	}()
	if firstBToA == nil || firstBToA() {
		relayDirection(a, b, halfClose, closeAll)
	}
	<-aToB
	closeAll()
}

// relayDirection moves src to dst: in the kernel (splice) between two TCP
// connections, otherwise through a buffer.
func relayDirection(dst, src *meteredConn, halfClose bool, closeAll func()) {
	err := passUnread(dst, src)
	switch {
	case err != nil:
	// A budget is charged per step: a copy's 32 KiB, not a splice's 1 MiB,
	// is what may pass its limit.
	case canSplice && dst.tcp != nil && src.tcp != nil && dst.charge == nil && src.charge == nil:
		err = spliceInto(dst, src)
	default:
		err = copyInto(dst, src)
	}
	if errors.Is(err, io.EOF) && halfClose && dst.CloseWrite() == nil {
		return
	}
	closeAll()
}

// passUnread writes what src holds unread to dst, paid for and counted as
// any read, before a splice reads the connection around it.
func passUnread(dst, src *meteredConn) error {
	for len(src.unread) > 0 {
		chunk, err := src.takeUnread(src.readSize(len(src.unread)))
		if err != nil {
			return err
		}
		if _, err := dst.Write(chunk); err != nil {
			return err
		}
	}
	return nil
}

// relayBuffers hold the 32 KiB buffers of copies in progress: plain
// response bodies, and relay directions that cannot splice (an idle one
// gives its buffer back, see copyInto).
var relayBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// idleReadBuffer is what a waiting direction holds: small, since a
// thousand idle tunnels must cost little memory.
const idleReadBuffer = 2 << 10

// copyInto copies src to dst through a buffer until src ends (io.EOF) or
// a read or write fails. While waiting it holds only a small buffer, and
// a full one only while reads keep filling it. "Full" is judged against
// what one read may return (the shaper's step when shaped), so a shaped
// copy does not flip between the two buffers on every read.
func copyInto(dst, src *meteredConn) error {
	small := make([]byte, idleReadBuffer)
	var big *[]byte
	defer func() {
		if big != nil {
			relayBuffers.Put(big)
		}
	}()
	for {
		buf := small
		if big != nil {
			buf = *big
		}
		buf = buf[:src.readSize(len(buf))]
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		switch full := n == len(buf); {
		case full && big == nil:
			big = relayBuffers.Get().(*[]byte)
		case !full && big != nil:
			relayBuffers.Put(big)
			big = nil
		}
		if err != nil {
			return err
		}
	}
}

// unshapedSpliceStep is the most one splice call may move for an unlimited
// tenant: as much as a shaped one at most, which the gateway's kernel
// pipes are asked to hold.
const unshapedSpliceStep = quota.MaxSpliceStep

// spliceInto relays src to dst with splice(2) until src ends (io.EOF) or
// a step fails: each step waits for src to be readable, moves what has
// arrived (at most one shaper step) into a kernel pipe, pays src's shaper
// for it and writes it out. Deadlines are renewed as the copy renews them
// (at most every eighth of their bound); one that fires ends the relay
// only if neither direction moved a byte for that bound.
func spliceInto(dst, src *meteredConn) error {
	rawSrc, err := src.tcp.SyscallConn()
	if err != nil {
		return err
	}
	rawDst, err := dst.tcp.SyscallConn()
	if err != nil {
		return err
	}
	shaper := src.readShaper
	step := unshapedSpliceStep
	sp := newSplicer(rawSrc, rawDst)
	defer sp.release()
	for {
		now := time.Now()
		if src.readIdle > 0 {
			if err := src.armRead(); err != nil {
				return err
			}
		}
		if err := dst.armWrite(now); err != nil {
			return err
		}
		if !sp.holding() {
			if shaper != nil {
				step = shaper.Step()
			}
			n, err := sp.in(step)
			switch {
			case err != nil:
				if src.readIdle > 0 && src.activity.stillActive(err, src.readIdle) {
					src.readRenew.reset() // re-arm from the last byte now
					continue
				}
				return err
			case n == 0:
				return io.EOF
			}
			if src.received != nil {
				src.received.Add(int64(n))
			}
			if shaper != nil {
				if err := shaper.Pass(src.shaping, n); err != nil {
					return err
				}
				// The wait for the shaper is not the peer's.
				dst.writeRenew.reset()
				if err := dst.armWrite(time.Now()); err != nil {
					return err
				}
			}
		}
		n, err := sp.out()
		if n > 0 {
			dst.moved(n, dst.sent)
		}
		if err != nil {
			if dst.activity == nil || !dst.activity.stillActive(err, dst.writeBound) {
				return err
			}
			dst.writeRenew.reset() // re-arm the write deadline now
		}
	}
}
