package proxy

import (
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// auditRecord is one line of the audit log (SPEC §8). It never holds a
// body, a credential or a query string: Path is the path alone. The tags
// document the line; appendJSON writes what json.Marshal would.
type auditRecord struct {
	Time       time.Time `json:"time"`
	RequestID  string    `json:"request_id"`
	Tenant     string    `json:"tenant"`
	Client     string    `json:"client"`
	Method     string    `json:"method"`
	Scheme     string    `json:"scheme"`
	Host       string    `json:"host"`
	Port       uint16    `json:"port"`
	Path       string    `json:"path"`
	Decision   string    `json:"decision"`
	Code       string    `json:"code"`
	Rule       string    `json:"rule"`
	Status     int       `json:"status"`
	BytesUp    int64     `json:"bytes_up"`
	BytesDown  int64     `json:"bytes_down"`
	DurationMS float64   `json:"duration_ms"`
	Hooks      []string  `json:"hooks"`
	Redactions []string  `json:"redactions"`
	Reason     string    `json:"reason,omitempty"`
}

// auditFlushInterval bounds how long a line may wait in memory: the log is
// written in blocks rather than a system call per request.
const auditFlushInterval = 100 * time.Millisecond

// auditFlushSize is how much waiting text makes the writer flush before
// its interval is up.
const auditFlushSize = 256 << 10

// auditBacklog bounds the text waiting for a slow disk: past it, requests
// wait for the writer rather than the gateway's memory growing or lines
// being dropped.
const auditBacklog = 8 << 20

// auditLineReuse is the largest line buffer kept for reuse: a rare line
// with a huge path is not worth pinning memory for.
const auditLineReuse = 16 << 10

// auditLog collects whole lines in memory, so concurrent records never
// interleave, and one goroutine writes them out every auditFlushInterval
// (sooner past auditFlushSize) and on close. A request only appends under
// the lock: no request waits on the disk unless the backlog is full.
type auditLog struct {
	lines sync.Pool // *[]byte: lines are encoded outside the lock
	out   io.Writer
	// onError hears of a failed write, once per run of failures.
	onError func(error)

	mu      sync.Mutex
	room    *sync.Cond // signalled when the writer has taken the backlog
	pending []byte     // lines not yet handed to the writer
	spare   []byte     // the writer's last buffer, for reuse
	closed  bool       // after close, every line is written at once
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newAuditLog(out io.Writer, onError func(error)) *auditLog {
	a := &auditLog{
		out:     out,
		onError: onError,
		pending: make([]byte, 0, 2*auditFlushSize),
		spare:   make([]byte, 0, 2*auditFlushSize),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	a.room = sync.NewCond(&a.mu)
	a.lines.New = func() any { b := make([]byte, 0, 1024); return &b }
	go a.flushLoop()
	return a
}

func (a *auditLog) write(rec *auditRecord) error {
	buf := a.lines.Get().(*[]byte)
	line := append(rec.appendJSON((*buf)[:0]), '\n')
	err := a.writeLine(line)
	if cap(line) <= auditLineReuse {
		*buf = line
		a.lines.Put(buf)
	}
	return err
}

// writeLine appends one whole line; the caller may reuse line once it
// returns.
func (a *auditLog) writeLine(line []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		// No writer any more: write through, behind anything a failed
		// last flush left.
		a.pending = append(a.pending, line...)
		n, err := a.out.Write(a.pending)
		a.pending = a.pending[:copy(a.pending, a.pending[n:])]
		return err
	}
	for len(a.pending) >= auditBacklog && !a.closed {
		a.room.Wait()
	}
	a.pending = append(a.pending, line...)
	if len(a.pending) >= auditFlushSize {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// flush writes out what is pending, outside the lock.
func (a *auditLog) flush() error {
	a.mu.Lock()
	batch := a.pending
	a.pending, a.spare = a.spare[:0], nil
	a.room.Broadcast()
	a.mu.Unlock()
	if len(batch) == 0 {
		a.giveBack(batch)
		return nil
	}
	n, err := a.out.Write(batch)
	if err != nil {
		// Keep what was not written, ahead of newer lines, for the next
		// try: a full disk that recovers loses nothing.
		a.mu.Lock()
		a.pending = append(append(make([]byte, 0, len(batch)-n+len(a.pending)), batch[n:]...), a.pending...)
		a.mu.Unlock()
		return err
	}
	a.giveBack(batch)
	return nil
}

// giveBack keeps the written buffer for the next swap, unless a burst
// made it large.
func (a *auditLog) giveBack(batch []byte) {
	if cap(batch) > 4*auditFlushSize {
		batch = make([]byte, 0, 2*auditFlushSize)
	}
	a.mu.Lock()
	a.spare = batch[:0]
	a.mu.Unlock()
}

func (a *auditLog) flushLoop() {
	defer close(a.done)
	tick := time.NewTicker(auditFlushInterval)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-tick.C:
		case <-a.kick:
		case <-a.stop:
			return
		}
		err := a.flush()
		if err != nil && !failing && a.onError != nil {
			a.onError(err)
		}
		failing = err != nil
	}
}

// close stops the writer and writes out what is pending; lines recorded
// after it are written at once.
func (a *auditLog) close() error {
	close(a.stop)
	<-a.done
	err := a.flush()
	a.mu.Lock()
	a.closed = true
	a.room.Broadcast()
	a.mu.Unlock()
	return err
}

// record closes the books on an exchange: audit line, then metrics.
func (g *Gateway) record(ex *exchange, elapsed time.Duration) {
	decision := ex.decisionLabel()
	rec := auditRecord{
		Time:       ex.start.UTC(),
		RequestID:  ex.id,
		Tenant:     ex.tenantID(),
		Client:     ex.client,
		Method:     ex.method,
		Scheme:     ex.scheme,
		Host:       ex.host,
		Port:       ex.port,
		Path:       ex.path,
		Decision:   decision,
		Code:       string(ex.code),
		Rule:       ex.decision.Rule,
		Status:     ex.status,
		BytesUp:    ex.bytesUp.Load(),
		BytesDown:  ex.bytesDown.Load(),
		DurationMS: float64(elapsed.Microseconds()) / 1000,
		// Not copied: rec is encoded before write returns, and an
		// exchange runs no hook or redaction once it is finished.
		Hooks:      orEmpty(ex.hooks),
		Redactions: orEmpty(ex.redactions),
	}
	switch {
	case ex.decision.Report && ex.code == policy.CodeOK:
		// Report mode: say what enforce would have answered.
		rec.Code, rec.Reason = string(ex.decision.Code), ex.decision.Reason
	case ex.denied:
		rec.Reason = ex.message
	}
	if err := g.audit.write(&rec); err != nil {
		g.log.Error("audit log write failed", "error", err)
	}
	g.metrics.observeDuration(decision, elapsed)
	if ex.ts == nil { // refused before the tenant was known
		g.metrics.requests.WithLabelValues(g.metrics.tenantLabel(rec.Tenant), decision, rec.Code).Inc()
		return
	}
	series := ex.ts.seriesFor(g.metrics, rec.Tenant)
	if decision == "allow" && rec.Code == string(policy.CodeOK) {
		series.allowedOK.Inc()
	} else {
		g.metrics.requests.WithLabelValues(series.label, decision, rec.Code).Inc()
	}
	if ex.inner {
		return // counted by the tunnel, as the bytes that crossed it
	}
	if rec.BytesUp > 0 {
		series.egress.Add(float64(rec.BytesUp))
	}
	if rec.BytesDown > 0 {
		series.ingress.Add(float64(rec.BytesDown))
	}
}

// orEmpty keeps an empty list [] rather than null in the audit line.
func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }
