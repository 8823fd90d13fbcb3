package proxy

import (
	"cmp"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/egressgw/egressgw/policy"
)

// auditRecord is one line of the audit log (docs/reference.md, "Audit line"). It never holds a
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
	// On an exchange only report mode let in: what enforce would have
	// answered, whatever the exchange ended with (Code, Reason).
	ReportCode   string `json:"report_code,omitempty"`
	ReportReason string `json:"report_reason,omitempty"`
}

// auditFlushInterval bounds how long a line may wait in memory: the log is
// written in blocks rather than a system call per request. It is also how
// often a failed write is tried again.
const auditFlushInterval = 100 * time.Millisecond

// auditFlushSize is how much waiting text makes the writer flush before
// its interval is up.
const auditFlushSize = 256 << 10

// auditBacklog bounds the text held for a slow or failing disk: lines not
// yet handed to the writer plus what a failed write left. Past it, a
// request waits for room, up to auditMaxWait.
const auditBacklog = 8 << 20

// auditMaxWait is the longest a request waits for room in a full backlog.
// A disk that is only slow frees room well within it; one that refuses
// writes (full, read-only, gone) would otherwise hold every request, and
// its connection, for as long as the disk stays broken. Past it the line
// is dropped, counted in egressgw_audit_dropped_lines_total and logged;
// until the writer makes room again, further lines that do not fit are
// dropped at once instead of each waiting (docs/operators.md).
const auditMaxWait = time.Second

// auditLineReuse is the largest line buffer kept for reuse: a rare line
// with a huge path is not worth pinning memory for.
const auditLineReuse = 16 << 10

// auditOptions are what an auditLog reports to besides its output.
type auditOptions struct {
	// onError hears of a failed write, once per run of failures.
	onError func(error)
	// onDrop hears when lines start being dropped (dropped 0) and, when
	// the writer has room again, how many were (ended).
	onDrop func(dropped int64, ended bool)
	// registry gets the audit metrics; nil leaves them unregistered.
	registry prometheus.Registerer
	// maxWait overrides auditMaxWait (tests).
	maxWait time.Duration
}

// auditLog collects whole lines in memory, so concurrent records never
// interleave, and one goroutine writes them out every auditFlushInterval
// (sooner past auditFlushSize) and on close. A request only appends under
// the lock: no request waits on the disk unless the backlog is full.
//
// What a failed write leaves (carry) is written first next time, resliced
// rather than copied; the backlog bound counts it, so a disk that refuses
// writes holds at most auditBacklog bytes of text, however long it lasts.
type auditLog struct {
	lines   sync.Pool // *[]byte: lines are encoded outside the lock
	opts    auditOptions
	maxWait time.Duration

	dropped     prometheus.Counter
	writeErrors prometheus.Counter

	// wmu serialises writing out (flush loop, close, output switches);
	// it is taken before mu, never after.
	wmu   sync.Mutex
	out   io.Writer
	batch []byte // the buffer being written, for reuse
	carry []byte // the part of batch a failed write left

	mu       sync.Mutex
	room     chan struct{} // closed, and replaced, when text leaves the backlog
	pending  []byte        // lines not yet handed to the writer
	spare    []byte        // the writer's last buffer, for reuse
	carried  int           // len(carry), for writers to read under mu
	shedding bool          // a line was dropped; no waiting until there is room
	nDropped int64         // lines dropped since shedding began
	closed   bool          // after close, every line is written at once
	kick     chan struct{}
	stop     chan struct{}
	done     chan struct{}
}

func newAuditLog(out io.Writer, opts auditOptions) *auditLog {
	a := &auditLog{
		out:     out,
		opts:    opts,
		maxWait: cmp.Or(opts.maxWait, auditMaxWait),
		room:    make(chan struct{}),
		pending: make([]byte, 0, 2*auditFlushSize),
		spare:   make([]byte, 0, 2*auditFlushSize),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	f := promauto.With(opts.registry)
	a.dropped = f.NewCounter(prometheus.CounterOpts{
		Name: "egressgw_audit_dropped_lines_total",
		Help: "Audit lines dropped because the backlog stayed full (the audit output refused or stalled writes).",
	})
	a.writeErrors = f.NewCounter(prometheus.CounterOpts{
		Name: "egressgw_audit_write_errors_total",
		Help: "Failed writes to the audit output; each is retried every 100 ms.",
	})
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "egressgw_audit_backlog_bytes",
		Help: "Audit text held in memory, not yet written out.",
	}, func() float64 { return float64(a.backlog()) })
	a.lines.New = func() any { b := make([]byte, 0, 1024); return &b }
	go a.flushLoop()
	return a
}

// backlog is the text held: pending and what a failed write left.
func (a *auditLog) backlog() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending) + a.carried
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
// returns. A line the backlog has no room for within maxWait is dropped
// and counted, not returned as an error: the log says so once per run.
func (a *auditLog) writeLine(line []byte) error {
	a.mu.Lock()
	var timeout <-chan time.Time
	for !a.closed && a.full(len(line)) {
		if a.shedding {
			a.dropLocked()
			return nil
		}
		if timeout == nil {
			t := time.NewTimer(a.maxWait)
			defer t.Stop()
			timeout = t.C
		}
		room := a.room
		a.mu.Unlock()
		select {
		case <-room:
			a.mu.Lock()
		case <-timeout:
			a.mu.Lock()
			if a.full(len(line)) && !a.closed {
				a.shedding = true
				if a.opts.onDrop != nil {
					a.opts.onDrop(0, false)
				}
				a.dropLocked()
				return nil
			}
		}
	}
	if a.closed {
		// No writer any more: write through, behind anything a failed
		// last flush left.
		if a.full(len(line)) {
			a.dropLocked()
			return nil
		}
		a.pending = append(a.pending, line...)
		a.mu.Unlock()
		for {
			if err := a.flush(); err != nil || a.backlog() == 0 {
				return err
			}
		}
	}
	a.pending = append(a.pending, line...)
	if len(a.pending) >= auditFlushSize {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
	a.mu.Unlock()
	return nil
}

// full reports whether a line of n bytes finds no room; an empty backlog
// always has room, so a line longer than the bound is written, not lost.
func (a *auditLog) full(n int) bool {
	held := len(a.pending) + a.carried
	return held > 0 && held+n > auditBacklog
}

// dropLocked counts a dropped line and unlocks.
func (a *auditLog) dropLocked() {
	a.nDropped++
	a.mu.Unlock()
	a.dropped.Inc()
}

// flush writes out what a failed write left, then what is pending.
func (a *auditLog) flush() error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	if len(a.carry) > 0 {
		if err := a.writeCarry(); err != nil {
			return err
		}
	}
	a.mu.Lock()
	if len(a.pending) == 0 {
		a.mu.Unlock()
		return nil
	}
	// The text stays counted in the backlog (carried) until it is written:
	// requests waiting for room wait for the disk, not for this swap.
	a.batch, a.pending, a.spare = a.pending, a.spare[:0], nil
	a.carried = len(a.batch)
	a.mu.Unlock()
	a.carry = a.batch
	return a.writeCarry()
}

// writeCarry writes a.carry out once; a.wmu is held.
func (a *auditLog) writeCarry() error {
	n, err := a.out.Write(a.carry)
	// Keep what was not written, ahead of newer lines, for the next try:
	// a full disk that recovers loses nothing.
	a.carry = a.carry[n:]
	a.mu.Lock()
	a.carried = len(a.carry)
	if n > 0 || err == nil {
		close(a.room)
		a.room = make(chan struct{})
	}
	var dropped int64
	ended := false
	// Shedding ends once a write worked and half the backlog is free, so
	// that a disk that is only behind does not flip it (and the log) on
	// every write.
	if err == nil && a.shedding && len(a.pending)+a.carried <= auditBacklog/2 {
		a.shedding, ended = false, true
		dropped, a.nDropped = a.nDropped, 0
	}
	if err == nil {
		a.spare = a.batch[:0]
		if cap(a.spare) > 4*auditFlushSize {
			a.spare = make([]byte, 0, 2*auditFlushSize)
		}
		a.batch = nil
	}
	a.mu.Unlock()
	if ended && a.opts.onDrop != nil {
		a.opts.onDrop(dropped, true)
	}
	if err != nil {
		a.writeErrors.Inc()
	}
	return err
}

// setOutput sends every line not yet written to w from now on; once it
// returns, the previous output gets no more writes and may be closed.
func (a *auditLog) setOutput(w io.Writer) {
	a.wmu.Lock()
	a.out = w
	a.wmu.Unlock()
	select { // lines waiting behind a failed output may go now
	case a.kick <- struct{}{}:
	default:
	}
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
		if err != nil && !failing && a.opts.onError != nil {
			a.opts.onError(err)
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
	close(a.room)
	a.room = make(chan struct{})
	a.mu.Unlock()
	return err
}

// record closes the books on an exchange: audit line, then metrics.
func (g *Gateway) record(ex *exchange, elapsed time.Duration) {
	decision, code, reason := ex.out.audited()
	reportCode, reportReason := ex.out.reported()
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
		Code:       string(code),
		Rule:       ex.out.rule,
		Status:     ex.status,
		BytesUp:    ex.bytesUp.Load(),
		BytesDown:  ex.bytesDown.Load(),
		DurationMS: float64(elapsed.Microseconds()) / 1000,
		// Not copied: rec is encoded before write returns, and an
		// exchange runs no hook or redaction once it is finished.
		Hooks:        orEmpty(ex.hooks),
		Redactions:   orEmpty(ex.auditRedactions()),
		Reason:       reason,
		ReportCode:   string(reportCode),
		ReportReason: reportReason,
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
	ex.accountUsage(ex.start.Add(elapsed)) // the time record was called at
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
