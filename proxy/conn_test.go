package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressgw/egressgw/quota"
)

// What goes through a meteredConn is counted each way, paid to the shaper
// of its direction and stamped on the activity clock.
func TestMeteredConnCountsPacesAndTimes(t *testing.T) {
	near, far := tcpPair(t)
	bw := quota.NewBandwidth(quota.BandwidthOptions{})
	readShaper, writeShaper := bw.Shaper("t:a|bw:in", 1<<40), bw.Shaper("t:a|bw:out", 1<<40)
	var received, sent atomic.Int64
	var clock activity
	m := meter(wrapped{near})
	if m.tcp != near {
		t.Fatal("meter did not find the TCP connection under the wrapper")
	}
	m.activity, m.received, m.sent = &clock, &received, &sent
	m.readShaper, m.writeShaper, m.shaping = readShaper, writeShaper, context.Background()
	_ = far.SetDeadline(time.Now().Add(30 * time.Second))

	out := bytes.Repeat([]byte("gateway "), 100_000) // 800,000 bytes: many shaper steps
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = m.Write(out)
	}()
	got := make([]byte, len(out))
	if _, err := io.ReadFull(far, got); err != nil || !bytes.Equal(got, out) {
		t.Fatalf("far end read %d bytes intact %v (%v)", len(got), bytes.Equal(got, out), err)
	}
	<-wrote // the far end can read the last bytes before Write has counted them
	in := []byte("and back")
	if _, err := far.Write(in); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(in))
	if _, err := io.ReadFull(m, back); err != nil || !bytes.Equal(back, in) {
		t.Fatalf("read %q (%v), want %q", back, err, in)
	}
	if sent.Load() != int64(len(out)) || received.Load() != int64(len(in)) {
		t.Errorf("counted %d sent and %d received, want %d and %d", sent.Load(), received.Load(), len(out), len(in))
	}
	if readShaper.BytesThisMinute() != int64(len(in)) || writeShaper.BytesThisMinute() != int64(len(out)) {
		t.Errorf("shapers were paid %d for reads and %d for writes, want %d and %d",
			readShaper.BytesThisMinute(), writeShaper.BytesThisMinute(), len(in), len(out))
	}
	if clock.Load() == 0 {
		t.Error("the activity clock was never stamped")
	}
}

// A read bounded by readIdle outlasts its deadline while the activity
// clock shows traffic (the other direction of a relay), and fails as a
// timeout once the clock has stood still for readIdle.
func TestMeteredConnReadIdleFollowsTheSharedClock(t *testing.T) {
	near, _ := tcpPair(t)
	var clock activity
	clock.touch(time.Now())
	m := meter(near)
	m.activity, m.readIdle = &clock, 300*time.Millisecond
	stop := make(chan struct{})
	ticking := make(chan struct{})
	var ticks atomic.Int64
	go func() {
		defer close(ticking)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				clock.touch(now)
				ticks.Add(1)
			}
		}
	}()
	readDone := make(chan error, 1)
	go func() {
		_, err := m.Read(make([]byte, 1))
		readDone <- err
	}()
	// While the clock ticks the read waits, well past its bound: 50
	// ticks are at least three times readIdle.
	for ticks.Load() < 50 {
		select {
		case err := <-readDone:
			t.Fatalf("the read ended (%v) while the clock showed traffic", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	select {
	case err := <-readDone:
		t.Fatalf("the read ended (%v) while the clock showed traffic", err)
	default:
	}
	close(stop)
	<-ticking
	select {
	case err := <-readDone:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the read ended with %v, want a deadline error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the read never ended after the clock stopped")
	}
}

// A relay whose traffic all goes one way stays open past its idle timeout
// while bytes keep coming, and closes once they stop, on every path.
func TestTunnelOneWayStreamIsNotIdle(t *testing.T) {
	for _, path := range relayPaths {
		t.Run(path.name, func(t *testing.T) {
			t.Parallel()
			const idle = time.Second
			r := startRelayIdle(t, testShaper(path.shaped), path.wrap, idle)
			_ = r.client.SetReadDeadline(time.Now().Add(60 * time.Second))
			one := make([]byte, 1)
			for i := range 30 { // 3 s of bytes 100 ms apart, all toward the client
				if _, err := r.upstream.Write([]byte{byte(i)}); err != nil {
					t.Fatalf("upstream write %d: %v", i, err)
				}
				if _, err := io.ReadFull(r.client, one); err != nil || one[0] != byte(i) {
					t.Fatalf("client read %d: %v %v", i, one, err)
				}
				time.Sleep(100 * time.Millisecond) // the pace of the stream
			}
			select {
			case <-r.done:
				t.Fatal("the relay closed while bytes kept coming one way")
			default:
			}
			select {
			case <-r.done:
			case <-time.After(30 * time.Second):
				t.Fatal("the relay stayed open after its traffic stopped")
			}
			if _, err := r.client.Read(one); err == nil {
				t.Error("the client's end was left open after the relay closed idle")
			}
		})
	}
}

// An upgraded connection's upstream is a stream with no deadlines of its
// own: the relay copies it through a buffer and closes both ends when
// either ends, without half-closing.
func TestRelayWithoutHalfCloseClosesBoth(t *testing.T) {
	clientFar, clientNear := tcpPair(t)
	upstreamNear, upstreamFar := tcpPair(t)
	var clock activity
	clock.touch(time.Now())
	client, upstream := meter(clientNear), meter(upgradedStream{upstreamNear})
	for _, m := range []*meteredConn{client, upstream} {
		m.activity, m.readIdle, m.writeBound = &clock, time.Minute, time.Minute
	}
	if upstream.tcp != nil {
		t.Fatal("an upgraded stream must not be spliced")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		relay(client, upstream, false, func() { clientNear.Close(); upstreamNear.Close() }, nil, nil)
	}()
	_ = clientFar.SetDeadline(time.Now().Add(30 * time.Second))
	_ = upstreamFar.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := upstreamFar.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(clientFar, got); err != nil || string(got) != "hello" {
		t.Fatalf("client read %q, %v", got, err)
	}
	_ = upstreamFar.CloseWrite()
	<-done
	if n, err := clientFar.Read(got); err == nil {
		t.Fatalf("client read %d more bytes after the upstream ended", n)
	}
	if _, err := upstreamFar.Read(got); err == nil {
		t.Fatal("the upstream's end was left open")
	}
}

var _ net.Conn = upgradedStream{}

// An empty write reaches the connection, as it does without the wrapper:
// it is how a caller learns that the connection is closed or its write
// deadline passed (net/http's server relies on it at shutdown).
func TestMeteredConnEmptyWriteReportsTheConnection(t *testing.T) {
	near, _ := tcpPair(t)
	m := meter(near)
	if _, err := m.Write(nil); err != nil {
		t.Fatalf("empty write on an open connection: %v", err)
	}
	_ = near.SetWriteDeadline(time.Unix(1, 0))
	if _, err := m.Write(nil); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("empty write past the deadline returned %v, want the deadline error", err)
	}
	_ = near.Close()
	if _, err := m.Write(nil); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("empty write on a closed connection returned %v, want net.ErrClosed", err)
	}
}

// A relay splices between the sockets under its two ends only when no
// wrapper in between has work of its own: the listener's connection and
// a dialled one may be spliced around; a tunnel's wrapper that counts and
// paces what its inner server reads and writes, or TLS, may not, or an
// upgrade inside a tunnel would move bytes past the tunnel's counters and
// shapers, or past its encryption.
func TestSpliceReachesOnlyAroundWrappersWithoutWorkOfTheirOwn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialled, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dialled.Close()
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer accepted.Close()
	socket := accepted.(*net.TCPConn)

	var counted atomic.Int64
	served := meter(accepted)
	served.received, served.sent = &counted, &counted
	for _, tc := range []struct {
		name  string
		conn  net.Conn
		wants *net.TCPConn
	}{
		{"listener's connection", &countedConn{meteredConn: meteredConn{Conn: accepted}}, socket},
		{"dialled connection", newUpstreamConn(accepted, time.Minute), socket},
		{"inside a counted tunnel", &countedConn{meteredConn: meteredConn{Conn: served}}, nil},
		{"under TLS", &countedConn{meteredConn: meteredConn{Conn: tls.Server(accepted, &tls.Config{})}}, nil},
	} {
		if got := tcpConn(tc.conn); got != tc.wants {
			t.Errorf("%s: tcpConn = %v, want %v", tc.name, got, tc.wants)
		}
	}
}

// deadlineRecorder is a stream's response writer that fails the test
// when its read deadline is set after its handler returned.
type deadlineRecorder struct {
	http.ResponseWriter
	t        *testing.T
	released atomic.Bool
	sets     atomic.Int32
}

func (d *deadlineRecorder) SetReadDeadline(time.Time) error {
	if d.released.Load() {
		d.t.Error("the stream's read deadline was set after its handler returned")
	}
	d.sets.Add(1)
	return nil
}

// The upstream's transport can go on reading an HTTP/2 request's body
// after the stream's handler returned (an upstream that answered before
// the body ended); net/http's response writer is released by then, and
// setting its deadline crashed the gateway. After endStream the body's
// reads leave the stream alone.
func TestRequestBodyLeavesAFinishedStreamAlone(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	rec := &deadlineRecorder{t: t}
	body := &requestBody{
		ReadCloser: io.NopCloser(strings.NewReader("before, and after the handler")),
		conn:       &countedConn{meteredConn: meteredConn{Conn: server}, limits: clientLimits{bodyTimeout: time.Minute}},
		stream:     http.NewResponseController(rec),
	}
	if _, err := body.Read(make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	if rec.sets.Load() == 0 {
		t.Fatal("a read while the handler runs did not bound itself on the stream")
	}
	body.endStream()
	rec.released.Store(true) // what net/http does once the handler returned
	if _, err := io.ReadAll(body); err != nil {
		t.Fatal(err)
	}
}
