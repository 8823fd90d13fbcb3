package proxy

import (
	"bufio"
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

// auditFlushInterval bounds how long a line may wait in the buffer: the
// log is written in blocks rather than a system call per request, which
// was the largest single cost on the request path.
const auditFlushInterval = 100 * time.Millisecond

// auditLineReuse is the largest line buffer kept for reuse: a rare line
// with a huge path is not worth pinning memory for.
const auditLineReuse = 16 << 10

// auditLog writes whole lines into a buffer, so concurrent records never
// interleave, and flushes it every auditFlushInterval and on close.
type auditLog struct {
	lines   sync.Pool // *[]byte: lines are encoded outside the lock
	mu      sync.Mutex
	w       *bufio.Writer
	pending bool
	closed  bool // after close, every line is flushed at once
	stop    chan struct{}
	done    chan struct{}
}

func newAuditLog(w io.Writer) *auditLog {
	a := &auditLog{w: bufio.NewWriterSize(w, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
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

// writeLine copies one whole line into the buffer; the caller may reuse
// line once it returns.
func (a *auditLog) writeLine(line []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pending = true
	if _, err := a.w.Write(line); err != nil || !a.closed {
		return err
	}
	a.pending = false
	return a.w.Flush()
}

func (a *auditLog) flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.pending {
		return nil
	}
	a.pending = false
	return a.w.Flush()
}

func (a *auditLog) flushLoop() {
	defer close(a.done)
	tick := time.NewTicker(auditFlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			_ = a.flush()
		case <-a.stop:
			return
		}
	}
}

// close stops the flusher and writes out what is buffered.
func (a *auditLog) close() error {
	close(a.stop)
	<-a.done
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	return a.flush()
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
