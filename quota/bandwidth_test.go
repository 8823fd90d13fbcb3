package quota

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// zeros is an endless source that fills whatever buffer it is given, so the
// shaper alone decides the pace.
type zeros struct{ maxRead atomic.Int64 }

func (z *zeros) Read(p []byte) (int, error) {
	for {
		m := z.maxRead.Load()
		if int64(len(p)) <= m || z.maxRead.CompareAndSwap(m, int64(len(p))) {
			break
		}
	}
	clear(p)
	return len(p), nil
}

// countingWriter counts what is written to it.
type countingWriter struct{ n atomic.Int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return len(p), nil
}

func within(got, want, tolerance float64) bool {
	return got >= want*(1-tolerance) && got <= want*(1+tolerance)
}

// The achieved-rate tests run in real time: x/time/rate waits on real
// timers. They use a small rate and a ±15% margin, enough on a busy 2-core
// machine, and the transfers end by themselves (no sleeping to synchronise).
const testRate = 256 << 10 // bytes per second

func TestShaperReaderAchievesRate(t *testing.T) {
	t.Parallel()
	bw := NewBandwidth(BandwidthOptions{})
	s := bw.Shaper("acme/ingress", testRate)
	const size = 2 * testRate // about two seconds
	src := &zeros{}
	start := time.Now()
	n, err := io.Copy(io.Discard, io.LimitReader(s.Reader(context.Background(), src), size))
	elapsed := time.Since(start)
	if err != nil || n != size {
		t.Fatalf("copied %d, %v; want %d", n, err, size)
	}
	got := float64(n) / elapsed.Seconds()
	t.Logf("reader achieved %.0f B/s over %v (limit %d)", got, elapsed, testRate)
	if !within(got, testRate, 0.15) {
		t.Errorf("achieved %.0f B/s over %v, want %d ±15%%", got, elapsed, testRate)
	}
	if step := int64(shaperBurst(testRate)); src.maxRead.Load() > step {
		t.Errorf("a single read asked for %d bytes, more than the step %d", src.maxRead.Load(), step)
	}
}

func TestShaperWriterAchievesRate(t *testing.T) {
	t.Parallel()
	bw := NewBandwidth(BandwidthOptions{})
	s := bw.Shaper("acme/egress", testRate)
	const size = 2 * testRate
	// One Write of the whole payload: the shaper must cut it into steps no
	// larger than its burst, or WaitN would fail.
	payload := make([]byte, size)
	var dst countingWriter
	start := time.Now()
	n, err := s.Writer(context.Background(), &dst).Write(payload)
	elapsed := time.Since(start)
	if err != nil || n != size || dst.n.Load() != size {
		t.Fatalf("wrote %d (%d arrived), %v; want %d", n, dst.n.Load(), err, size)
	}
	got := float64(n) / elapsed.Seconds()
	t.Logf("writer achieved %.0f B/s over %v (limit %d)", got, elapsed, testRate)
	if !within(got, testRate, 0.15) {
		t.Errorf("achieved %.0f B/s over %v, want %d ±15%%", got, elapsed, testRate)
	}
}

func TestShaperSharesFairly(t *testing.T) {
	t.Parallel()
	clock := newFakeClock() // frozen: the per-minute count cannot roll over
	bw := NewBandwidth(BandwidthOptions{Clock: clock.Now})
	ctx := context.Background()

	// Two connections of one tenant move the same amount at once, each
	// asking for the shaper as the proxy does per connection, one reading
	// in large pieces and one in small. Shared fairly, each gets half the
	// rate and both finish together after about two seconds; unfairly, one
	// finishes well before the other.
	const each = testRate
	var finished [2]time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for i, bufSize := range []int{32 << 10, 4 << 10} {
		s := bw.Shaper("acme/ingress", testRate)
		wg.Go(func() {
			src := s.Reader(ctx, io.LimitReader(&zeros{}, each))
			n, err := io.CopyBuffer(io.Discard, src, make([]byte, bufSize))
			finished[i] = time.Since(start)
			if err != nil || n != each {
				t.Errorf("connection %d: copied %d, %v; want %d", i, n, err, each)
			}
		})
	}
	wg.Wait()
	first, last := min(finished[0], finished[1]), max(finished[0], finished[1])
	t.Logf("32 KiB reader finished at %v, 4 KiB reader at %v", finished[0], finished[1])
	if rate := 2 * each / last.Seconds(); !within(rate, testRate, 0.15) {
		t.Errorf("two connections together achieved %.0f B/s, want %d ±15%%", rate, testRate)
	}
	if first < last*8/10 {
		t.Errorf("connections finished at %v and %v: one got much more than half the bandwidth", finished[0], finished[1])
	}
	if counted := bw.Lookup("acme/ingress").BytesThisMinute(); counted != 2*each {
		t.Errorf("BytesThisMinute = %d, want %d", counted, 2*each)
	}
}

func TestShaperUnlimitedAddsNothing(t *testing.T) {
	bw := NewBandwidth(BandwidthOptions{})
	ctx := context.Background()
	s := bw.Shaper("acme/egress", 0)
	if s != nil {
		t.Fatalf("Shaper with no limit = %p, want nil", s)
	}
	r := bytes.NewReader([]byte("x"))
	if got := s.Reader(ctx, r); got != io.Reader(r) {
		t.Error("Reader wrapped a reader of an unlimited tenant")
	}
	rc := io.NopCloser(r)
	if got := s.ReadCloser(ctx, rc); got != rc {
		t.Error("ReadCloser wrapped a body of an unlimited tenant")
	}
	var w bytes.Buffer
	if got := s.Writer(ctx, &w); got != io.Writer(&w) {
		t.Error("Writer wrapped a writer of an unlimited tenant")
	}
	if s.Rate() != 0 || s.BytesThisMinute() != 0 {
		t.Error("a nil shaper reports a rate or bytes")
	}
	if n := bw.shapers.Len(); n != 0 {
		t.Errorf("an unlimited tenant left %d shapers", n)
	}
	if bw.Lookup("acme/egress") != nil {
		t.Error("Lookup found a shaper for an unlimited tenant")
	}
}

func TestShaperLimitChangesInPlace(t *testing.T) {
	clock := newFakeClock()
	bw := NewBandwidth(BandwidthOptions{Clock: clock.Now, Replicas: 4})
	s := bw.Shaper("acme/egress", 4<<20)
	if got := s.Rate(); got != 1<<20 {
		t.Fatalf("Rate with 4 replicas = %d, want a quarter of 4 MiB/s", got)
	}
	tests := []struct {
		name     string
		limit    int64
		wantRate int64
	}{
		{"same limit, same shaper", 4 << 20, 1 << 20},
		{"new limit applies to the open shaper", 8 << 20, 2 << 20},
		{"limit removed: open connections stop being slowed", 0, 0},
		{"limit back", 1 << 20, 256 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := bw.Shaper("acme/egress", tt.limit)
			if tt.limit > 0 && got != s {
				t.Fatal("a reload made a new shaper: open connections would stop sharing with new ones")
			}
			if s.Rate() != tt.wantRate {
				t.Errorf("Rate = %d, want %d", s.Rate(), tt.wantRate)
			}
			if tt.wantRate > 0 && s.limiter.Burst() != shaperBurst(tt.wantRate) {
				t.Errorf("burst = %d, want %d", s.limiter.Burst(), shaperBurst(tt.wantRate))
			}
		})
	}
}

func TestShaperStepsNeverExceedBurst(t *testing.T) {
	bw := NewBandwidth(BandwidthOptions{})
	s := bw.Shaper("acme/ingress", 100<<20) // fast, so the test is quick
	ctx := context.Background()
	src := &zeros{}
	buf := make([]byte, 1<<20)
	for range 16 {
		n, err := s.Reader(ctx, src).Read(buf)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if n > maxShaperStep {
			t.Fatalf("one read moved %d bytes, more than a step of %d", n, maxShaperStep)
		}
	}
	var dst countingWriter
	if n, err := s.Writer(ctx, &dst).Write(buf); err != nil || n != len(buf) {
		t.Fatalf("a 1 MiB write: %d, %v", n, err)
	}
}

func TestShaperWaitEndsWithContext(t *testing.T) {
	bw := NewBandwidth(BandwidthOptions{})
	s := bw.Shaper("acme/egress", 100) // 10-byte steps, 10 steps a second
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := io.Copy(io.Discard, s.Reader(ctx, &zeros{}))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("read with a cancelled context: %v, want context.Canceled", err)
	}
	_, err = s.Writer(ctx, io.Discard).Write(make([]byte, 1000))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("write with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestShaperReadCloserCloses(t *testing.T) {
	bw := NewBandwidth(BandwidthOptions{})
	s := bw.Shaper("acme/ingress", 1<<20)
	body := &closeRecorder{Reader: bytes.NewReader([]byte("hello"))}
	rc := s.ReadCloser(context.Background(), body)
	got, err := io.ReadAll(rc)
	if err != nil || string(got) != "hello" {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
	if err := rc.Close(); err != nil || !body.closed {
		t.Errorf("Close = %v, closed %v", err, body.closed)
	}
}

type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error {
	c.closed = true
	return nil
}

func TestBandwidthBoundedAndIdle(t *testing.T) {
	clock := newFakeClock()
	bw := NewBandwidth(BandwidthOptions{Clock: clock.Now, MaxKeys: 10, IdleTTL: time.Minute})
	for i := range 1000 {
		bw.Shaper(fmt.Sprintf("tenant-%d/egress", i), 1<<20)
	}
	if n := bw.shapers.Len(); n > 10 {
		t.Fatalf("%d shapers kept, want at most MaxKeys=10", n)
	}

	bw = NewBandwidth(BandwidthOptions{Clock: clock.Now, IdleTTL: time.Minute})
	ctx := context.Background()
	busy := bw.Shaper("busy/egress", 100<<20)
	bw.Shaper("idle/egress", 100<<20)
	clock.Advance(45 * time.Second)
	// The busy tenant's open connection moves bytes without asking the
	// Bandwidth for its shaper again.
	if _, err := busy.Reader(ctx, &zeros{}).Read(make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(30 * time.Second)
	bw.Shaper("other/egress", 100<<20)
	bw.Shaper("other/egress", 100<<20)
	if bw.Lookup("idle/egress") != nil {
		t.Error("a shaper idle for longer than IdleTTL was kept")
	}
	if bw.Lookup("busy/egress") != busy {
		t.Error("a shaper that moved bytes within IdleTTL was dropped: new connections would not share with the open one")
	}
}

func TestShaperReaderSmallBuffersKeepData(t *testing.T) {
	bw := NewBandwidth(BandwidthOptions{})
	s := bw.Shaper("acme/ingress", 10<<20)
	want := make([]byte, 100_000)
	for i := range want {
		want[i] = byte(i * 7)
	}
	for _, bufSize := range []int{1, 7, 4096, 40_000} {
		t.Run(fmt.Sprintf("buffer %d", bufSize), func(t *testing.T) {
			r := s.Reader(context.Background(), bytes.NewReader(want))
			var got []byte
			buf := make([]byte, bufSize)
			for {
				n, err := r.Read(buf)
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("read %d bytes, not the %d written", len(got), len(want))
			}
		})
	}
}

// A caller moving bytes itself (the tunnel's splice) asks for a step,
// moves at most that, and pays with Pass: the rate holds as for a Reader.
func TestShaperStepAndPassAchieveRate(t *testing.T) {
	t.Parallel()
	var unlimited *Shaper
	if unlimited.Step() != 0 || unlimited.Pass(context.Background(), 1<<20) != nil {
		t.Fatal("a nil shaper must have no step and never wait")
	}
	minute := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC) // a fixed clock: one minute's count
	bw := NewBandwidth(BandwidthOptions{Clock: func() time.Time { return minute }})
	s := bw.Shaper("acme/egress", testRate)
	if step := s.Step(); step <= 0 || step > shaperBurst(testRate) || step > maxShaperStep {
		t.Fatalf("Step() = %d, want within (0, min(burst %d, %d)]", step, shaperBurst(testRate), maxShaperStep)
	}
	for _, tc := range []struct {
		rate int64
		want int
	}{
		{100 << 10, shaperBurst(100 << 10)}, // the burst (10 KiB) bounds it
		{1 << 20, maxShaperStep},            // at least one turn
		{100 << 20, 100 << 20 / 1000},       // a millisecond of the rate
		{64 << 30, MaxSpliceStep},           // at most a pipe's worth
	} {
		if got := bw.Shaper(fmt.Sprintf("step/%d", tc.rate), tc.rate).Step(); got != tc.want {
			t.Errorf("Step() at %d B/s = %d, want %d", tc.rate, got, tc.want)
		}
	}
	lifted := bw.Shaper("step/lifted", 100<<10)
	bw.Shaper("step/lifted", 0) // a reload removes the limit; tunnels keep the shaper
	if got := lifted.Step(); got != MaxSpliceStep {
		t.Errorf("Step() once the limit is lifted = %d, want %d", got, MaxSpliceStep)
	}
	const size = 2 * testRate
	start := time.Now()
	for moved := 0; moved < size; {
		n := min(s.Step(), size-moved)
		if err := s.Pass(context.Background(), n); err != nil {
			t.Fatalf("pass: %v", err)
		}
		moved += n
	}
	got := float64(size) / time.Since(start).Seconds()
	if !within(got, testRate, 0.15) {
		t.Errorf("achieved %.0f B/s, want %d ±15%%", got, testRate)
	}
	if counted := s.BytesThisMinute(); counted != size {
		t.Errorf("counted %d bytes this minute, want %d", counted, size)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for s.Pass(ctx, s.Step()) == nil { // spend what the bucket holds
	}
	if err := s.Pass(ctx, s.Step()); !errors.Is(err, context.Canceled) {
		t.Errorf("pass with a cancelled context: %v, want context.Canceled", err)
	}
}

// The per-minute count takes no lock: concurrent steps all count, and a
// new minute of the clock starts from nothing.
func TestShaperCountsBytesPerMinute(t *testing.T) {
	clock := newFakeClock()
	bw := NewBandwidth(BandwidthOptions{Clock: clock.Now})
	s := bw.Shaper("acme/egress", 1<<40)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				s.count(1500)
			}
		})
	}
	wg.Wait()
	if got, want := s.BytesThisMinute(), int64(8*1000*1500); got != want {
		t.Fatalf("BytesThisMinute = %d, want %d", got, want)
	}
	clock.Advance(time.Minute)
	if got := s.BytesThisMinute(); got != 0 {
		t.Fatalf("a minute later BytesThisMinute = %d, want 0", got)
	}
	s.count(7)
	if got := s.BytesThisMinute(); got != 7 {
		t.Fatalf("after counting 7 in the new minute: %d", got)
	}
}

// A minute's count starts from nothing when the minute turns, and reads
// as nothing once it is over.
func TestMinuteBytes(t *testing.T) {
	var m MinuteBytes
	start := time.Date(2026, 12, 6, 19, 0, 59, 0, time.UTC)
	m.Add(start, 5)
	m.Add(start, 0)
	m.Add(start, -3) // never subtracts
	if got := m.ThisMinute(start); got != 5 {
		t.Errorf("ThisMinute = %d, want 5", got)
	}
	next := start.Add(time.Second)
	if got := m.ThisMinute(next); got != 0 {
		t.Errorf("the next minute reads %d before any byte, want 0", got)
	}
	m.Add(next, 7)
	if got := m.ThisMinute(next); got != 7 {
		t.Errorf("the next minute reads %d, want 7", got)
	}
	if got := m.ThisMinute(start); got != 0 {
		t.Errorf("the minute before reads %d once over, want 0", got)
	}
}
