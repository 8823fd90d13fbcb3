package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressgw/egressgw/quota"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	dialled, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	other := <-accepted
	if other == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { dialled.Close(); other.Close() })
	return dialled.(*net.TCPConn), other.(*net.TCPConn)
}

// wrapped hides the TCP connection the way the gateway's wrappers do, so
// the relay must find it through NetConn (or copy when it cannot).
type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }

// opaque hides the TCP connection for good: the relay must copy.
type opaque struct{ net.Conn }

func (o opaque) CloseWrite() error { return o.Conn.(*net.TCPConn).CloseWrite() }

// relayUnderTest is a tunnel between a client and an upstream, both seen
// from the far ends: the test writes at client, reads at upstream, and
// the other way round.
type relayUnderTest struct {
	client, upstream *net.TCPConn // the far ends
	up, down         atomic.Int64
	done             chan struct{}
}

func startRelay(t testing.TB, shaper *quota.Shaper, wrap func(net.Conn) net.Conn) *relayUnderTest {
	t.Helper()
	return startRelayIdle(t, shaper, wrap, time.Minute)
}

// startRelayIdle is startRelay with the tunnel's idle timeout.
func startRelayIdle(t testing.TB, shaper *quota.Shaper, wrap func(net.Conn) net.Conn, idle time.Duration) *relayUnderTest {
	t.Helper()
	clientFar, clientNear := tcpPair(t)
	upstreamNear, upstreamFar := tcpPair(t)
	r := &relayUnderTest{client: clientFar, upstream: upstreamFar, done: make(chan struct{})}
	tun := &tunnel{client: wrap(clientNear), upstream: wrap(upstreamNear)}
	tun.lastActivity.touch(time.Now())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	client := tun.meter(ctx, tun.client, true, shaper, &r.down, idle)
	upstream := tun.meter(ctx, tun.upstream, false, shaper, &r.up, idle)
	go func() {
		defer close(r.done)
		relay(client, upstream, true, tun.close, nil, nil)
	}()
	return r
}

var relayPaths = []struct {
	name   string
	wrap   func(net.Conn) net.Conn
	shaped bool
}{
	{"splice", func(c net.Conn) net.Conn { return wrapped{c} }, false},
	{"splice shaped", func(c net.Conn) net.Conn { return wrapped{c} }, true},
	{"copy", func(c net.Conn) net.Conn { return opaque{c} }, false},
	{"copy shaped", func(c net.Conn) net.Conn { return opaque{c} }, true},
}

func testShaper(shaped bool) *quota.Shaper {
	if !shaped {
		return nil
	}
	// Far above what the tests move: paid for, never binding.
	return quota.NewBandwidth(quota.BandwidthOptions{}).Shaper("t:test|bw:both", 1<<40)
}

// Small messages must cross at once, not wait for a step's worth: a TLS
// handshake or a request/response inside the tunnel is a conversation.
func TestTunnelRelaysConversations(t *testing.T) {
	for _, path := range relayPaths {
		t.Run(path.name, func(t *testing.T) {
			r := startRelay(t, testShaper(path.shaped), path.wrap)
			deadline := time.Now().Add(30 * time.Second) // a hang, not a speed
			_ = r.client.SetDeadline(deadline)
			_ = r.upstream.SetDeadline(deadline)
			var sent int64
			for i := range 50 {
				ping := bytes.Repeat([]byte{byte('a' + i%26)}, 1+i*7)
				if _, err := r.client.Write(ping); err != nil {
					t.Fatalf("round %d: client write: %v", i, err)
				}
				got := make([]byte, len(ping))
				if _, err := io.ReadFull(r.upstream, got); err != nil || !bytes.Equal(got, ping) {
					t.Fatalf("round %d: upstream read %q, %v; want %q", i, got, err, ping)
				}
				pong := append([]byte("re:"), ping...)
				if _, err := r.upstream.Write(pong); err != nil {
					t.Fatalf("round %d: upstream write: %v", i, err)
				}
				got = make([]byte, len(pong))
				if _, err := io.ReadFull(r.client, got); err != nil || !bytes.Equal(got, pong) {
					t.Fatalf("round %d: client read %q, %v; want %q", i, got, err, pong)
				}
				sent += int64(len(ping))
			}
			// A direction counts what it wrote after the write returns:
			// read the counters once the relay is over.
			_ = r.client.CloseWrite()
			_ = r.upstream.CloseWrite()
			<-r.done
			if r.up.Load() != sent {
				t.Errorf("counted %d bytes up, want %d", r.up.Load(), sent)
			}
		})
	}
}

// A bulk transfer arrives whole and counted, and a half-close at one end
// reaches the other while the reverse direction still flows.
func TestTunnelRelaysStreamsAndHalfClose(t *testing.T) {
	const size = 8 << 20
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 7 >> 3)
	}
	want := sha256.Sum256(payload)
	for _, path := range relayPaths {
		t.Run(path.name, func(t *testing.T) {
			r := startRelay(t, testShaper(path.shaped), path.wrap)
			deadline := time.Now().Add(60 * time.Second)
			_ = r.client.SetDeadline(deadline)
			_ = r.upstream.SetDeadline(deadline)
			writeErr := make(chan error, 1)
			go func() {
				_, err := r.upstream.Write(payload)
				if err == nil {
					err = r.upstream.CloseWrite()
				}
				writeErr <- err
			}()
			h := sha256.New()
			n, err := io.Copy(h, r.client) // ends at the upstream's half-close
			if err != nil || n != size || !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatalf("client received %d bytes (%v), intact %v; want %d intact", n, err, bytes.Equal(h.Sum(nil), want[:]), size)
			}
			if err := <-writeErr; err != nil {
				t.Fatalf("upstream write: %v", err)
			}
			// The other direction is still open after the half-close.
			if _, err := r.client.Write([]byte("last words")); err != nil {
				t.Fatalf("client write after the upstream's half-close: %v", err)
			}
			_ = r.client.CloseWrite()
			rest, err := io.ReadAll(r.upstream)
			if err != nil || string(rest) != "last words" {
				t.Fatalf("upstream read %q, %v; want %q", rest, err, "last words")
			}
			<-r.done
			if r.down.Load() != size {
				t.Errorf("counted %d bytes down, want %d", r.down.Load(), size)
			}
		})
	}
}

// BenchmarkTunnelRelay moves bytes upstream to client through each relay
// path; compare the paths within one run.
func BenchmarkTunnelRelay(b *testing.B) {
	chunk := make([]byte, 256<<10)
	for _, path := range relayPaths {
		b.Run(path.name, func(b *testing.B) {
			r := startRelay(b, testShaper(path.shaped), path.wrap)
			b.SetBytes(int64(len(chunk)))
			go func() {
				for range b.N {
					if _, err := r.upstream.Write(chunk); err != nil {
						return
					}
				}
				_ = r.upstream.CloseWrite()
			}()
			b.ResetTimer()
			if n, err := io.Copy(io.Discard, r.client); err != nil || n != int64(b.N*len(chunk)) {
				b.Fatalf("received %d, %v; want %d", n, err, b.N*len(chunk))
			}
		})
	}
}

// deadlineCounting hides the TCP connection, as opaque does, and counts
// the deadlines set on it.
type deadlineCounting struct {
	opaque
	reads, writes *atomic.Int64
}

func (d deadlineCounting) SetReadDeadline(t time.Time) error {
	d.reads.Add(1)
	return d.opaque.SetReadDeadline(t)
}

func (d deadlineCounting) SetWriteDeadline(t time.Time) error {
	d.writes.Add(1)
	return d.opaque.SetWriteDeadline(t)
}

// The copy relay renews its deadlines at most every eighth of the bound,
// not on every read and write: a system call each, for nothing, on a busy
// tunnel.
func TestTunnelCopyRenewsDeadlinesSparingly(t *testing.T) {
	var reads, writes atomic.Int64
	r := startRelay(t, nil, func(c net.Conn) net.Conn {
		return deadlineCounting{opaque: opaque{c}, reads: &reads, writes: &writes}
	})
	deadline := time.Now().Add(60 * time.Second)
	_ = r.client.SetDeadline(deadline)
	_ = r.upstream.SetDeadline(deadline)
	const size = 8 << 20
	go func() {
		_, _ = r.upstream.Write(make([]byte, size))
		_ = r.upstream.CloseWrite()
	}()
	n, err := io.Copy(io.Discard, r.client)
	if err != nil || n != size {
		t.Fatalf("client received %d bytes (%v), want %d", n, err, size)
	}
	_ = r.client.CloseWrite()
	<-r.done
	// 8 MiB is at least 256 reads and writes of 32 KiB; a minute's idle
	// bound renews its deadlines a handful of times at most.
	if reads.Load() > 16 || writes.Load() > 16 {
		t.Errorf("%d read and %d write deadlines set while relaying %d bytes; want a few", reads.Load(), writes.Load(), size)
	}
}
