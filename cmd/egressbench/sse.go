package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server-sent events through the gateway: a TLS upstream sends 1 KiB JSON
// events, each flushed on its own, either as fast as the client reads
// them (events per second) or one every pacedEventInterval (time to
// event: from the upstream writing an event to the client reading it).
// Every event carries an e-mail address and a phone number, which the pii
// profile masks, so the redacted scenarios show what redacting a stream
// costs, and whether events still arrive one by one or only when the
// stream ends (a response redacted whole).

const (
	pathEvents = "/events" // ?events=N[&every=DURATION][&stream=ID]: N server-sent events

	sseEventSize     = 1 << 10 // bytes of one event, "data: " to the blank line
	maxEventsPerSSE  = 100_000
	maxEventInterval = time.Second

	// floodEventsPerStream is the length of one stream in the events/s
	// scenarios (1 MiB): a client reads stream after stream.
	floodEventsPerStream = 1000
	// A paced stream: an event every pacedEventInterval, pacedEventsPerStream
	// of them (one second). Redacted whole, its events arrive at its end:
	// half a second late at the median.
	pacedEventInterval   = 10 * time.Millisecond
	pacedEventsPerStream = 100
)

// sseEvent is the event every stream repeats: a JSON message with
// personal data in it, padded to sseEventSize.
var sseEvent = func() []byte {
	head := `data: {"type":"message","user":{"name":"Ada","email":"` + sampleEmail + `"},"note":"call me on 555-010-4477","text":"`
	tail := "\"}\n\n"
	filler := strings.Repeat("the quick brown fox jumps over the lazy dog ", sseEventSize/40)
	return []byte(head + filler[:sseEventSize-len(head)-len(tail)] + tail)
}()

var sampleEmailBytes = []byte(sampleEmail)

// eventLog records when the upstream wrote each event of the streams a
// client registered, so that the client, in the same process, can tell
// how long each took to reach it. Times are nanoseconds since the log was
// made, on the monotonic clock.
type eventLog struct {
	epoch   time.Time
	mu      sync.Mutex
	nextID  uint64
	streams map[uint64][]atomic.Int64
}

func newEventLog() *eventLog {
	return &eventLog{epoch: time.Now(), streams: map[uint64][]atomic.Int64{}}
}

// now is the log's clock.
func (l *eventLog) now() int64 { return int64(time.Since(l.epoch)) }

// at is t on the log's clock.
func (l *eventLog) at(t time.Time) int64 { return int64(t.Sub(l.epoch)) }

// open registers a stream of n events and returns its id and the slots
// the upstream fills with each event's write time (0 until written).
func (l *eventLog) open(n int) (uint64, []atomic.Int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nextID++
	times := make([]atomic.Int64, n)
	l.streams[l.nextID] = times
	return l.nextID, times
}

// close forgets stream id.
func (l *eventLog) close(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.streams, id)
}

// slots are stream id's write times, or nil for a stream nobody registered.
func (l *eventLog) slots(id uint64) []atomic.Int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streams[id]
}

// serveEvents answers pathEvents: N events, each written and flushed on
// its own, every DURATION apart (or as fast as the client takes them),
// their write times recorded in log when the stream is registered there.
func serveEvents(log *eventLog) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		n, err := strconv.Atoi(q.Get("events"))
		if err != nil || n <= 0 || n > maxEventsPerSSE {
			http.Error(w, fmt.Sprintf("want ?events=N with 0 < N <= %d", maxEventsPerSSE), http.StatusBadRequest)
			return
		}
		var every time.Duration
		if s := q.Get("every"); s != "" {
			if every, err = time.ParseDuration(s); err != nil || every < 0 || every > maxEventInterval {
				http.Error(w, "want &every=DURATION of at most "+maxEventInterval.String(), http.StatusBadRequest)
				return
			}
		}
		var times []atomic.Int64
		if s := q.Get("stream"); s != "" {
			id, err := strconv.ParseUint(s, 10, 64)
			if times = log.slots(id); err != nil || len(times) != n {
				http.Error(w, "unknown &stream=ID, or not of N events", http.StatusBadRequest)
				return
			}
		}
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		rc := http.NewResponseController(w)
		start := time.Now()
		var pause *time.Timer
		for k := range n {
			if every > 0 {
				wait := time.Until(start.Add(time.Duration(k) * every))
				if pause == nil {
					pause = time.NewTimer(wait)
					defer pause.Stop()
				} else {
					pause.Reset(wait)
				}
				select {
				case <-pause.C:
				case <-r.Context().Done():
					return
				}
			}
			if times != nil {
				times[k].Store(log.now())
			}
			if _, err := w.Write(sseEvent); err != nil || rc.Flush() != nil {
				return // the client stopped reading: the window ended
			}
		}
	}
}

// eventsURL is the URL of a stream of n events, every apart (0: as fast
// as the client reads), registered in the event log as id (0: not).
func (u *upstreams) eventsURL(n int, every time.Duration, id uint64) string {
	url := u.tlsURL(pathEvents + "?events=" + strconv.Itoa(n))
	if every > 0 {
		url += "&every=" + every.String()
	}
	if id != 0 {
		url += "&stream=" + strconv.FormatUint(id, 10)
	}
	return url
}

// eventStream is a server-sent event stream a client is reading.
type eventStream struct {
	resp      *http.Response
	reader    *bufio.Reader
	events    int  // read so far
	want      int  // the upstream sends this many
	wantEmail bool // events arrive with the e-mail address (not redacted)
}

// openEventStream GETs url with client and checks the answer: a 200
// event stream that check (if set) accepts.
func openEventStream(ctx context.Context, client *http.Client, url string, want int, wantEmail bool, check func(*http.Response) error) (*eventStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	s := &eventStream{resp: resp, reader: bufio.NewReaderSize(resp.Body, 8<<10), want: want, wantEmail: wantEmail}
	if resp.StatusCode != http.StatusOK {
		s.close()
		return nil, fmt.Errorf("status %d (%s)", resp.StatusCode, resp.Header.Get("X-Egressgw-Error"))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		s.close()
		return nil, fmt.Errorf("content type %q, want text/event-stream", ct)
	}
	if check != nil {
		if err := check(resp); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

// next reads one event and returns its size; io.EOF when the stream has
// ended whole after the events the upstream sends. An event that is not
// redacted as the target says, a stream cut short and one with more
// events than sent are errors.
func (s *eventStream) next() (int, error) {
	size, email := 0, false
	for {
		line, err := s.reader.ReadSlice('\n')
		size += len(line)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue // a line longer than the buffer: the rest follows
		case errors.Is(err, io.EOF) && size == 0:
			if s.events != s.want {
				return 0, fmt.Errorf("the stream ended after %d of %d events", s.events, s.want)
			}
			return 0, io.EOF
		case errors.Is(err, io.EOF):
			return size, fmt.Errorf("the stream ended inside event %d: %w", s.events+1, io.ErrUnexpectedEOF)
		case err != nil:
			return size, fmt.Errorf("after %d events: %w", s.events, err)
		}
		if len(bytes.TrimRight(line, "\r\n")) > 0 {
			email = email || bytes.Contains(line, sampleEmailBytes)
			continue
		}
		if size == len(line) {
			size = 0 // a blank line between events
			continue
		}
		s.events++
		if s.events > s.want {
			return size, fmt.Errorf("event %d of a stream of %d", s.events, s.want)
		}
		if email != s.wantEmail {
			return size, fmt.Errorf("event %d arrived with the e-mail address %s; the connector redacts: %v", s.events, map[bool]string{true: "in clear", false: "masked"}[email], !s.wantEmail)
		}
		return size, nil
	}
}

func (s *eventStream) close() { s.resp.Body.Close() }

// sseSide is one way of reading the upstream's streams: as which tenant
// through which target, whether events arrive redacted, and what each
// response must show (check; nil for none).
type sseSide struct {
	target   *runningTarget
	tenant   credentials
	redacted bool
	check    func(*http.Response) error
}

// sseSideOf is how target t reads streams as tenant: through the
// gateway's interception when t is egressgw, directly otherwise.
func sseSideOf(t *runningTarget, tenant credentials, redacted bool) sseSide {
	side := sseSide{target: t, tenant: tenant, redacted: redacted}
	if t.proxied() {
		side.check = intercepted
	}
	return side
}

// intercepted fails unless the response came through the gateway's
// interception: the certificate the client saw was made by its CA.
func intercepted(resp *http.Response) error {
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 || resp.TLS.PeerCertificates[0].Issuer.CommonName != interceptCAName {
		return errors.New("the response did not come through the gateway's interception (certificate not issued by its CA)")
	}
	return nil
}

// eventFlood is a load of event streams read as fast as they come:
// workers read streams of floodEventsPerStream events one after another,
// each through side. One operation is one event.
type eventFlood struct {
	clients *clientGroup
	open    []*eventStream // each worker's stream, touched by that worker alone
	op      operation
}

func newEventFlood(env *benchEnv, side sseSide, workers int) *eventFlood {
	f := &eventFlood{
		clients: newClientGroup(side.target, []credentials{side.tenant}, env.clientTLS, workers, keepAlive),
		open:    make([]*eventStream, workers),
	}
	url := env.up.eventsURL(floodEventsPerStream, 0, 0)
	// A stream redacted whole arrives at once at its end, so its first
	// event takes the whole stream's time and the rest none.
	f.op = func(ctx context.Context, worker int, m *meter) error {
		for {
			st := f.open[worker]
			if st == nil {
				var err error
				if st, err = openEventStream(ctx, f.clients.client(worker), url, floodEventsPerStream, !side.redacted, side.check); err != nil {
					return err
				}
				f.open[worker] = st
			}
			n, err := st.next()
			if errors.Is(err, io.EOF) {
				st.close()
				f.open[worker] = nil
				continue
			}
			m.bytes.Add(int64(n))
			if err != nil {
				st.close()
				f.open[worker] = nil
				return err
			}
			return nil
		}
	}
	return f
}

// close ends the streams still open and drops the pooled connections;
// the workers must have stopped.
func (f *eventFlood) close() {
	for _, st := range f.open {
		if st != nil {
			st.close()
		}
	}
	f.clients.close()
}

// runEventFlood reads event streams through side on opts.streams
// connections for a window and reports events per second as figure. The
// window is stretched until an event came: one stream redacted whole may
// take all of it.
func runEventFlood(ctx context.Context, s *session, side sseSide, figure string) (outcome, error) {
	f := newEventFlood(s.env, side, s.env.opts.streams)
	defer f.close()
	w := s.window()
	w.minOps = 1
	r := runClosedLoop(ctx, s.env.opts.streams, w, processCPU(side.target), f.op)
	return outcome{values: map[string]float64{figure: r.opsPerSecond()}, problems: problemsOf(r)}, nil
}

// runEventFloodPaired reads event streams through egressgw t's redacting
// connector and its plain inspecting one in alternating slices of the
// same window (pairedSlice, each side going first in every other pair),
// and reports the redacted side's events per second and the median over
// pairs of the ratio between the two: a burst of load from elsewhere on
// the machine then spoils a pair rather than one side.
func runEventFloodPaired(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
	env, workers := s.env, s.env.opts.streams
	type side struct {
		name   string
		flood  *eventFlood
		rates  []float64
		events int64
		failed int64
		first  string
	}
	sides := [2]*side{
		{name: "pii-redacted", flood: newEventFlood(env, sseSideOf(t, sseRedactedTenant, true), workers)},
		{name: "inspected", flood: newEventFlood(env, sseSideOf(t, inspectPlainTenant, false), workers)},
	}
	defer func() {
		for _, sd := range sides {
			sd.flood.close()
		}
	}()
	for _, sd := range sides { // streams open before anything counts
		runSlice(ctx, workers, s.window().warmup, sd.flood.op)
	}
	pairs := max(2, int(s.window().measure/pairedSlice))
	slice := s.window().measure / time.Duration(pairs)
	for i := range pairs {
		for k := range 2 {
			sd := sides[(i+k)%2]
			r := runSlice(ctx, workers, slice, sd.flood.op)
			if err := ctx.Err(); err != nil {
				return outcome{}, err
			}
			sd.rates = append(sd.rates, float64(r.ops)/r.elapsed.Seconds())
			sd.events += r.ops
			if r.errors > 0 && sd.failed == 0 {
				sd.first = r.firstErr
			}
			sd.failed += r.errors
		}
	}
	redacted, inspected := sides[0], sides[1]
	ratios := make([]float64, pairs)
	for i := range ratios {
		if inspected.rates[i] <= 0 {
			return outcome{}, fmt.Errorf("the inspected side read no event in slice %d of %v", i+1, slice)
		}
		ratios[i] = redacted.rates[i] / inspected.rates[i]
	}
	out := outcome{values: map[string]float64{
		figSSERedacted:      float64(redacted.events) / (slice * time.Duration(pairs)).Seconds(),
		figSSERedactedRatio: median(ratios),
	}}
	for _, sd := range sides {
		if sd.failed > 0 {
			out.problems = append(out.problems, fmt.Sprintf("%s: %d failed (first: %s)", sd.name, sd.failed, sd.first))
		}
	}
	return out, nil
}

// measureTimeToEvent reads paced streams on opts.streams connections for
// one window and returns, for every event the upstream wrote inside the
// measured part, the time from its write to the client's read. A stream
// redacted whole delivers its events only when it ends: the reads go on
// past the window until the streams started in it have ended, or for at
// most a stream's length and stopGrace more.
func measureTimeToEvent(ctx context.Context, s *session, side sseSide) loadResult {
	env, workers, w := s.env, s.env.opts.streams, s.window()
	events := env.up.events
	clients := newClientGroup(side.target, []credentials{side.tenant}, env.clientTLS, workers, keepAlive)
	defer clients.close()
	streamLength := pacedEventsPerStream * pacedEventInterval
	start := time.Now()
	measureStart, measureEnd := start.Add(w.warmup), start.Add(w.total())
	ctx, cancel := context.WithDeadline(ctx, measureEnd.Add(streamLength+stopGrace))
	defer cancel()
	from, until := events.at(measureStart), events.at(measureEnd)
	m := &meter{}
	samples := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(measureEnd) && ctx.Err() == nil {
				if err := readPacedStream(ctx, clients.client(i), env.up, side, func(written, read int64) {
					if written >= from && written < until && len(samples[i]) < maxSamplesPerLoad/workers {
						samples[i] = append(samples[i], time.Duration(read-written))
					}
				}); err != nil {
					m.fail(err)
					sleepCtx(ctx, errorBackoff)
				}
			}
		}()
	}
	wg.Wait()
	return loadResult{ops: m.ops.Load(), errors: m.errors.Load(), firstErr: m.firstErr, elapsed: w.measure, latencies: merge(samples)}
}

// readPacedStream reads one paced stream to its end, calling sample with
// each event's write and read times on the event log's clock.
func readPacedStream(ctx context.Context, client *http.Client, up *upstreams, side sseSide, sample func(written, read int64)) error {
	events := up.events
	id, written := events.open(pacedEventsPerStream)
	defer events.close(id)
	st, err := openEventStream(ctx, client, up.eventsURL(pacedEventsPerStream, pacedEventInterval, id), pacedEventsPerStream, !side.redacted, side.check)
	if err != nil {
		return err
	}
	defer st.close()
	for {
		_, err := st.next()
		read := events.now()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if at := written[st.events-1].Load(); at != 0 {
			sample(at, read)
		}
	}
}

// timeToEventFigures name the four figures of a paced scenario.
type timeToEventFigures struct{ p50, p99, addedP50, addedP99 string }

// runTimeToEvent measures time to event through side, and, when side goes
// through a proxy, directly in the same run right before, reporting the
// difference as the time the proxy adds.
func runTimeToEvent(ctx context.Context, s *session, side sseSide, figs timeToEventFigures) (outcome, error) {
	var baseline loadResult
	if side.target.proxied() {
		baseline = measureTimeToEvent(ctx, s, sseSideOf(&runningTarget{name: targetDirect}, side.tenant, false))
		if err := ctx.Err(); err != nil {
			return outcome{}, err
		}
	}
	r := measureTimeToEvent(ctx, s, side)
	out := outcome{
		values:   map[string]float64{figs.p50: r.percentileMS(50), figs.p99: r.percentileMS(99)},
		problems: problemsOf(r),
	}
	if !side.target.proxied() {
		out.without = map[string]string{figs.addedP50: "baseline", figs.addedP99: "baseline"}
		return out, nil
	}
	out.values[figs.addedP50] = r.percentileMS(50) - baseline.percentileMS(50)
	out.values[figs.addedP99] = r.percentileMS(99) - baseline.percentileMS(99)
	if p := problemsOf(baseline); p != nil {
		out.problems = append(out.problems, "direct baseline: "+p[0])
	}
	return out, nil
}
