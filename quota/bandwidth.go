package quota

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// maxShaperStep caps the bytes a shaper lets through in one step. Small
// steps keep the flow smooth and make concurrent connections of one tenant
// take turns of equal size, which is what makes sharing fair. It equals
// io.Copy's buffer, so an ordinary copy reads whole steps directly.
const maxShaperStep = 32 << 10

// BandwidthOptions configures a Bandwidth. The zero value is ready to use.
type BandwidthOptions struct {
	// Replicas is the number of gateway replicas sharing each limit; every
	// replica shapes to limit/Replicas (quota.replicas). Below 1 means 1.
	Replicas int
	// MaxKeys bounds the number of shapers kept; 0 means DefaultMaxKeys.
	MaxKeys int
	// IdleTTL is how long a shaper that moved no byte is kept; 0 means
	// DefaultIdleTTL. Keep it above the gateway's idle timeout: a quiet
	// tunnel that outlived its shaper would be shaped apart from the
	// tenant's new connections.
	IdleTTL time.Duration
	// Clock returns the current time; nil means time.Now. It drives idle
	// expiry and the per-minute byte counts; waiting itself is real time.
	Clock func() time.Time
}

// Bandwidth holds the byte shapers of one gateway process, one per key (the
// caller uses one key per tenant and direction). It starts no goroutine.
type Bandwidth struct {
	replicas int64
	idle     time.Duration
	clock    func() time.Time

	// mu guards shapers; it is taken once per connection or request (when
	// the caller asks for a shaper), never per byte.
	mu        sync.Mutex
	shapers   *simplelru.LRU[string, *Shaper]
	lastSweep time.Time
}

// sweepEvery spaces the sweeps for idle shapers: once per call would cost
// every request two LRU probes, for shapers that expire in minutes.
const sweepEvery = 100 * time.Millisecond

// NewBandwidth returns an empty Bandwidth.
func NewBandwidth(opts BandwidthOptions) *Bandwidth {
	maxKeys, idle, clock := stateDefaults(opts.MaxKeys, opts.IdleTTL, opts.Clock)
	shapers := newLRU[*Shaper](maxKeys)
	return &Bandwidth{
		replicas: int64(max(opts.Replicas, 1)),
		idle:     idle,
		clock:    clock,
		shapers:  shapers,
	}
}

// Shaper returns key's shaper, set to bytesPerSecond divided by Replicas.
// Every call with the same key returns the same shaper, so all connections
// of a tenant share one budget; a changed limit is applied in place and so
// reaches connections already open.
//
// A bytesPerSecond of 0 or less means no limit and returns nil, whose
// wrappers return their argument unchanged: an unlimited tenant has nothing
// on its path. A shaper that existed for key is set to unlimited, so open
// connections stop being slowed too.
func (bw *Bandwidth) Shaper(key string, bytesPerSecond int64) *Shaper {
	now := bw.clock()
	bw.mu.Lock()
	defer bw.mu.Unlock()
	if now.Sub(bw.lastSweep) >= sweepEvery {
		bw.lastSweep = now
		bw.sweep(now)
	}
	s, ok := bw.shapers.Get(key)
	if bytesPerSecond <= 0 {
		if ok {
			s.setRate(0)
		}
		return nil
	}
	perReplica := max(bytesPerSecond/bw.replicas, 1)
	if !ok {
		s = newShaper(perReplica, bw.clock)
		bw.shapers.Add(key, s)
	} else {
		s.setRate(perReplica)
	}
	s.lastUsed.Store(now.UnixNano())
	return s
}

// Lookup returns key's shaper if there is one, else nil (whose methods
// report zero). It creates nothing; it is for reporting usage.
func (bw *Bandwidth) Lookup(key string) *Shaper {
	bw.mu.Lock()
	defer bw.mu.Unlock()
	s, _ := bw.shapers.Peek(key)
	return s
}

// sweep looks at up to four least recently used shapers and drops those
// that moved no byte for the idle TTL. A shaper in use keeps moving bytes
// without touching the LRU (that would take bw.mu per byte), so an oldest
// shaper that turns out to be busy is moved to the front instead. The
// caller holds bw.mu.
func (bw *Bandwidth) sweep(now time.Time) {
	for range min(4, bw.shapers.Len()) {
		key, s, _ := bw.shapers.GetOldest()
		if now.Sub(time.Unix(0, s.lastUsed.Load())) < bw.idle {
			bw.shapers.Get(key)
			continue
		}
		bw.shapers.Remove(key)
	}
}

// Shaper delays the bytes of one tenant in one direction so that, summed over
// all the connections it wraps, they flow at its rate. It never refuses
// bytes. A nil *Shaper is valid and means no limit.
type Shaper struct {
	limiter  *rate.Limiter
	rate     atomic.Int64 // bytes per second on this replica; 0 means no limit
	burst    atomic.Int64 // the limiter's burst, readable without its lock
	clock    func() time.Time
	lastUsed atomic.Int64 // clock time of the last byte, in Unix nanoseconds
	minute   MinuteBytes  // bytes moved in the current minute of the clock
}

func newShaper(bytesPerSecond int64, clock func() time.Time) *Shaper {
	s := &Shaper{
		limiter: rate.NewLimiter(rate.Limit(bytesPerSecond), shaperBurst(bytesPerSecond)),
		clock:   clock,
	}
	s.rate.Store(bytesPerSecond)
	s.burst.Store(int64(shaperBurst(bytesPerSecond)))
	return s
}

// MinuteBytes counts the bytes moved in the current minute, lock-free:
// the Unix minute modulo 2^20 (two years, and only compared with the
// current minute) above 44 bits of bytes (16 TiB, far above what a minute
// can move), in one word. The zero value is an empty count.
type MinuteBytes struct{ v atomic.Uint64 }

const minuteBytesBits = 44

func unixMinute(t time.Time) uint64 { return uint64(t.Unix()/60) % (1 << 20) }

// Add counts n bytes moved at now; n of zero or less counts nothing.
func (m *MinuteBytes) Add(now time.Time, n int64) {
	if n <= 0 {
		return
	}
	current := unixMinute(now)
	for {
		old := m.v.Load()
		bytes := old & (1<<minuteBytesBits - 1)
		if old>>minuteBytesBits != current {
			bytes = 0 // a new minute starts from nothing
		}
		if m.v.CompareAndSwap(old, current<<minuteBytesBits|(bytes+uint64(n))&(1<<minuteBytesBits-1)) {
			return
		}
	}
}

// ThisMinute returns the bytes counted in the minute of now.
func (m *MinuteBytes) ThisMinute(now time.Time) int64 {
	v := m.v.Load()
	if v>>minuteBytesBits != unixMinute(now) {
		return 0
	}
	return int64(v & (1<<minuteBytesBits - 1))
}

// shaperBurst returns the bucket size for a rate: a tenth of a second's
// worth. That is what an idle tenant may send at once, small against the
// rate over a few seconds; and it is what a connection can catch up after
// the process stalls (a busy machine, a GC pause) — a bucket of only one
// step (32 KiB is 31 ms at 1 MiB/s) would lose every stall longer than
// that for good. Steps stay at most maxShaperStep (see step), which keeps
// turns between connections short.
func shaperBurst(bytesPerSecond int64) int {
	return int(max(bytesPerSecond/10, 1))
}

func (s *Shaper) setRate(bytesPerSecond int64) {
	if s.rate.Swap(bytesPerSecond) == bytesPerSecond {
		return
	}
	if bytesPerSecond <= 0 {
		s.limiter.SetLimit(rate.Inf)
		s.burst.Store(MaxSpliceStep) // steps are bounded by nothing but a pipe now
		return
	}
	s.limiter.SetLimit(rate.Limit(bytesPerSecond))
	s.limiter.SetBurst(shaperBurst(bytesPerSecond))
	s.burst.Store(int64(shaperBurst(bytesPerSecond)))
}

// Rate returns the bytes per second this replica lets through, 0 for no
// limit.
func (s *Shaper) Rate() int64 {
	if s == nil {
		return 0
	}
	return s.rate.Load()
}

// BytesThisMinute returns the bytes moved through the shaper since the start
// of the current minute of its clock.
func (s *Shaper) BytesThisMinute() int64 {
	if s == nil {
		return 0
	}
	return s.minute.ThisMinute(s.clock())
}

// Reader returns r with its reads shaped: each read of r asks for at most one
// step (the limiter's burst) and then waits until the bytes it returned may
// pass. Give it a buffer of 32 KiB (io.Copy's) or more, or it keeps one step
// of its own to stay fair to the tenant's other connections. ctx bounds
// the waiting; for a tunnel it must be the tunnel's own context, not the
// CONNECT request's, which is already cancelled once the tunnel runs.
//
// On a nil Shaper it returns r itself, so io.Copy keeps r's fast paths.
func (s *Shaper) Reader(ctx context.Context, r io.Reader) io.Reader {
	if s == nil {
		return r
	}
	return &shapedReader{shaper: s, ctx: ctx, r: r}
}

// ReadCloser is Reader for a body: the result's Close closes rc. On a nil
// Shaper it returns rc itself.
func (s *Shaper) ReadCloser(ctx context.Context, rc io.ReadCloser) io.ReadCloser {
	if s == nil {
		return rc
	}
	return shapedReadCloser{shapedReader: &shapedReader{shaper: s, ctx: ctx, r: rc}, Closer: rc}
}

// Writer returns w with its writes shaped: each Write is cut into steps of at
// most the limiter's burst, and each step waits before it is written. ctx
// bounds the waiting, as for Reader. Turns between connections are per
// step, so writers share fairly when they write alike (io.Copy does); for a
// relay prefer Reader on the source. On a nil Shaper it returns w itself.
func (s *Shaper) Writer(ctx context.Context, w io.Writer) io.Writer {
	if s == nil {
		return w
	}
	return &shapedWriter{shaper: s, ctx: ctx, w: w}
}

// step returns the most bytes one wait may cover. WaitN refuses an n above
// the burst outright, so no caller may ask for more.
func (s *Shaper) step() int {
	return int(min(s.burst.Load(), maxShaperStep))
}

// MaxSpliceStep caps Step: what one splice(2) into a kernel pipe moves at
// most. Callers that splice size their pipes to hold it.
const MaxSpliceStep = 1 << 20

// Step returns the most bytes a caller that moves bytes itself (a kernel
// splice, with no reader to wrap) should move before it calls Pass: about
// a millisecond of the rate, at least one turn (maxShaperStep) and at most
// MaxSpliceStep, never above the burst. Pass pays for what was moved in
// turns of maxShaperStep, so connections still take turns of equal size;
// a fast tenant's tunnels just make fewer system calls per byte. On a nil
// Shaper it returns 0: no limit.
func (s *Shaper) Step() int {
	if s == nil {
		return 0
	}
	perMillisecond := int64(MaxSpliceStep) // no limit now: a reload lifted it
	if rate := s.rate.Load(); rate > 0 {
		perMillisecond = rate / 1000
	}
	return int(min(max(perMillisecond, maxShaperStep), MaxSpliceStep, s.burst.Load()))
}

// Pass records n bytes just moved and waits until they may pass; the
// caller holds them back until it returns. ctx bounds the waiting, as for
// Reader. On a nil Shaper it returns at once.
func (s *Shaper) Pass(ctx context.Context, n int) error {
	if s == nil || n <= 0 {
		return nil
	}
	s.count(n)
	return s.wait(ctx, n)
}

// wait blocks until n bytes may pass.
func (s *Shaper) wait(ctx context.Context, n int) error {
	for n > 0 {
		step := min(n, s.step())
		if err := s.limiter.WaitN(ctx, step); err != nil {
			if ctx.Err() == nil && step > s.step() {
				// A reload lowered the burst between step() and WaitN:
				// retry with the new step.
				continue
			}
			return fmt.Errorf("quota: shaping %d bytes: %w", step, err)
		}
		n -= step
	}
	return nil
}

// count records n bytes moved now.
func (s *Shaper) count(n int) {
	now := s.clock()
	s.lastUsed.Store(now.UnixNano())
	s.minute.Add(now, int64(n))
}

// shapedReader pays for each step before returning it. Every step is as
// large as the source allows, up to the limiter's burst, whatever the
// caller's buffer: connections then take turns of equal size, so a caller
// reading in small pieces is not starved by one reading in large ones.
type shapedReader struct {
	shaper *Shaper
	ctx    context.Context
	r      io.Reader

	// buf holds one step for a caller whose buffer is smaller than a step;
	// pending is its part read and paid for but not returned yet, and err
	// the error that came with it. A caller reading whole steps (io.Copy's
	// 32 KiB buffer) never needs buf.
	buf     []byte
	pending []byte
	err     error
}

func (sr *shapedReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(sr.pending) == 0 && sr.err == nil {
		step := sr.shaper.step()
		if len(p) >= step {
			return sr.readStep(p[:step])
		}
		if cap(sr.buf) < step {
			sr.buf = make([]byte, step)
		}
		n, err := sr.readStep(sr.buf[:step])
		sr.pending, sr.err = sr.buf[:n], err
	}
	n := copy(p, sr.pending)
	sr.pending = sr.pending[n:]
	if len(sr.pending) > 0 {
		return n, nil
	}
	err := sr.err
	sr.err = nil
	return n, err
}

// readStep makes one Read of the source and waits until what it returned
// may pass. It charges what was read, not what was asked for: a short read
// must not cost a whole step.
func (sr *shapedReader) readStep(p []byte) (int, error) {
	n, err := sr.r.Read(p)
	if perr := sr.shaper.Pass(sr.ctx, n); perr != nil {
		return n, perr
	}
	return n, err
}

type shapedReadCloser struct {
	*shapedReader
	io.Closer
}

type shapedWriter struct {
	shaper *Shaper
	ctx    context.Context
	w      io.Writer
}

func (sw *shapedWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), sw.shaper.step())]
		if err := sw.shaper.wait(sw.ctx, len(chunk)); err != nil {
			return written, err
		}
		n, err := sw.w.Write(chunk)
		written += n
		sw.shaper.count(n)
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}
