package hooks

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// The gateway and its workers talk over two pipes in frames: a 4-byte
// big-endian length, then the payload. Payloads are flat: integers are 8
// bytes, strings and byte slices a 4-byte length and the bytes. The format
// is private to one binary (a worker is the gateway's own executable), so
// it has no versioning beyond the hello string, whose number changes with
// the format.

// workerHello is the first frame a worker sends; it also names the
// protocol, so a stale or foreign binary is refused.
const workerHello = "egressgw-hooks-worker/2"

// Flags of a run frame.
const (
	flagSource      = 1 << iota // the script's source follows its key: compile and keep it
	flagResetCache              // forget every kept script first
	flagResponse                // a response hook: a response follows the request
	flagEventScript             // the script has the event variable (CompileEventHook)
	flagEvent                   // a run on one event: with flagResponse, an event follows the response
)

// Statuses of a reply frame.
const (
	replyOK     = iota + 1
	replyDenied // the script set deny
	replyFailed // the run failed; kind, position and message follow
	// replyRetire: the worker's address space grew past what this run's
	// max_memory allows (an earlier run had a larger one); it exits, and
	// the gateway starts a fresh worker and sends the run again.
	replyRetire
	replyEvent // a per-event run went through: the event, or that it was dropped
)

// runFrame is one run as the worker receives it.
type runFrame struct {
	flags  byte
	key    scriptKey
	name   string
	source []byte
	limits Limits
	meta   Meta
	req    Request
	resp   Response
	format EventFormat // flagEvent
	event  Event       // flagEvent
}

// replyFrame is a worker's answer to one run.
type replyFrame struct {
	status byte
	// retiring: the worker exits after this reply, because the run left
	// it too little room below its memory limit for the next one.
	retiring bool

	// replyFailed
	kind    FailureKind
	line    int
	column  int
	message string

	// replyDenied
	reason string

	// replyOK: the request's editable fields, or the response's.
	method, path, query string
	code                int // response status
	headers             map[string][]string
	bodyChanged         bool
	body                []byte
	dropped             []string

	// replyEvent: the script set event to undefined; else bodyChanged,
	// body (the event's data) and dropped as for replyOK.
	eventDropped bool
}

type wireWriter struct{ buf []byte }

func newFrame(buf []byte) wireWriter { return wireWriter{buf: append(buf[:0], 0, 0, 0, 0)} }

// finish fills in the length prefix and returns the frame.
func (w *wireWriter) finish() []byte {
	binary.BigEndian.PutUint32(w.buf, uint32(len(w.buf)-4))
	return w.buf
}

func (w *wireWriter) u8(v byte)   { w.buf = append(w.buf, v) }
func (w *wireWriter) i64(v int64) { w.buf = binary.BigEndian.AppendUint64(w.buf, uint64(v)) }
func (w *wireWriter) str(s string) {
	w.buf = append(binary.BigEndian.AppendUint32(w.buf, uint32(len(s))), s...)
}
func (w *wireWriter) bytes(b []byte) {
	w.buf = append(binary.BigEndian.AppendUint32(w.buf, uint32(len(b))), b...)
}

func (w *wireWriter) bool(v bool) {
	if v {
		w.u8(1)
	} else {
		w.u8(0)
	}
}

func (w *wireWriter) strs(list []string) {
	w.i64(int64(len(list)))
	for _, s := range list {
		w.str(s)
	}
}

func (w *wireWriter) headers(h map[string][]string) {
	w.i64(int64(len(h)))
	for name, values := range h {
		w.str(name)
		w.strs(values)
	}
}

// wireReader reads a payload; the first short read sets err and every
// later read returns zero values, so callers check err once at the end.
type wireReader struct {
	buf []byte
	err error
}

var errShortFrame = errors.New("hooks: truncated frame")

func (r *wireReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.buf) {
		r.err = errShortFrame
		return nil
	}
	b := r.buf[:n:n]
	r.buf = r.buf[n:]
	return b
}

func (r *wireReader) u8() byte {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *wireReader) i64() int64 {
	if b := r.take(8); b != nil {
		return int64(binary.BigEndian.Uint64(b))
	}
	return 0
}

func (r *wireReader) length() int {
	b := r.take(4)
	if b == nil {
		return 0
	}
	return int(binary.BigEndian.Uint32(b))
}

func (r *wireReader) str() string { return string(r.take(r.length())) }

// bytes returns a slice of the payload, which is a fresh buffer per frame
// that nothing else writes to.
func (r *wireReader) bytes() []byte { return r.take(r.length()) }
func (r *wireReader) bool() bool    { return r.u8() != 0 }

// count reads a list length and checks it against what is left, so a
// corrupt count cannot make the reader allocate.
func (r *wireReader) count(minItemBytes int) int {
	n := r.i64()
	if r.err == nil && (n < 0 || n > int64(len(r.buf)/minItemBytes)) {
		r.err = errShortFrame
	}
	if r.err != nil {
		return 0
	}
	return int(n)
}

func (r *wireReader) strs() []string {
	n := r.count(4)
	if n == 0 {
		return nil
	}
	list := make([]string, n)
	for i := range list {
		list[i] = r.str()
	}
	return list
}

func (r *wireReader) headers() map[string][]string {
	n := r.count(12)
	h := make(map[string][]string, n)
	for range n {
		name := r.str()
		h[name] = r.strs()
	}
	return h
}

func (r *wireReader) done() error {
	if r.err == nil && len(r.buf) != 0 {
		r.err = fmt.Errorf("hooks: %d unexpected bytes at the end of a frame", len(r.buf))
	}
	return r.err
}

// A run frame goes out in two parts: the body (limits, meta, request,
// response), encoded once by the caller's goroutine so the run keeps no
// reference to the caller's request; and a head per attempt, which says
// whether the script's source comes along (a fresh worker needs it).

// encodeRunBody encodes f's limits, meta, request and response.
func encodeRunBody(buf []byte, f *runFrame) []byte {
	w := wireWriter{buf: buf[:0]}
	w.i64(f.limits.MaxAllocs)
	w.i64(f.limits.MaxMemory)
	w.i64(int64(f.limits.Timeout))
	w.i64(f.limits.MaxBodyBytes)
	w.str(f.meta.Tenant)
	w.str(f.meta.Connector)
	w.i64(int64(f.meta.ConnectorVersion))
	w.str(f.req.Method)
	w.str(f.req.URL)
	w.str(f.req.Scheme)
	w.str(f.req.Host)
	w.i64(int64(f.req.Port))
	w.str(f.req.Path)
	w.str(f.req.Query)
	w.headers(f.req.Headers)
	w.bytes(f.req.Body)
	if f.flags&flagResponse != 0 {
		w.i64(int64(f.resp.Status))
		w.headers(f.resp.Headers)
		w.bytes(f.resp.Body)
	}
	if f.flags&flagEvent != 0 {
		w.buf = appendEvent(w.buf, f.format, f.event)
	}
	return w.buf
}

// appendEvent encodes the part of a per-event run frame that changes from
// event to event; what comes before it is encoded once per stream.
func appendEvent(buf []byte, format EventFormat, ev Event) []byte {
	w := wireWriter{buf: buf}
	w.u8(byte(format))
	w.bytes(ev.Data)
	w.str(ev.Type)
	w.str(ev.ID)
	return w.buf
}

// encodeRunHead encodes the length prefix, flags, key and (with
// flagSource) the script of a frame whose body is bodyLen bytes.
func encodeRunHead(buf []byte, f *runFrame, bodyLen int) []byte {
	w := newFrame(buf)
	w.u8(f.flags)
	w.buf = append(w.buf, f.key[:]...)
	if f.flags&flagSource != 0 {
		w.str(f.name)
		w.bytes(f.source)
	}
	binary.BigEndian.PutUint32(w.buf, uint32(len(w.buf)-4+bodyLen))
	return w.buf
}

func decodeRunFrame(payload []byte) (*runFrame, error) {
	r := wireReader{buf: payload}
	f := &runFrame{flags: r.u8()}
	copy(f.key[:], r.take(len(f.key)))
	if f.flags&flagSource != 0 {
		f.name = r.str()
		f.source = r.bytes()
	}
	f.limits.MaxAllocs = r.i64()
	f.limits.MaxMemory = r.i64()
	f.limits.Timeout = time.Duration(r.i64())
	f.limits.MaxBodyBytes = r.i64()
	f.meta.Tenant = r.str()
	f.meta.Connector = r.str()
	f.meta.ConnectorVersion = int(r.i64())
	f.req.Method = r.str()
	f.req.URL = r.str()
	f.req.Scheme = r.str()
	f.req.Host = r.str()
	f.req.Port = int(r.i64())
	f.req.Path = r.str()
	f.req.Query = r.str()
	f.req.Headers = r.headers()
	f.req.Body = r.bytes()
	if f.flags&flagResponse != 0 {
		f.resp.Status = int(r.i64())
		f.resp.Headers = r.headers()
		f.resp.Body = r.bytes()
	}
	if f.flags&flagEvent != 0 {
		f.format = EventFormat(r.u8())
		f.event.Data = r.bytes()
		f.event.Type = r.str()
		f.event.ID = r.str()
	}
	return f, r.done()
}

func encodeReplyFrame(buf []byte, f *replyFrame) []byte {
	w := newFrame(buf)
	w.u8(f.status)
	w.bool(f.retiring)
	switch f.status {
	case replyFailed:
		w.i64(int64(f.kind))
		w.i64(int64(f.line))
		w.i64(int64(f.column))
		w.str(f.message)
	case replyDenied:
		w.str(f.reason)
	case replyOK:
		w.str(f.method)
		w.str(f.path)
		w.str(f.query)
		w.i64(int64(f.code))
		w.headers(f.headers)
		w.bool(f.bodyChanged)
		if f.bodyChanged {
			w.bytes(f.body)
		}
		w.strs(f.dropped)
	case replyEvent:
		w.bool(f.eventDropped)
		w.bool(f.bodyChanged)
		if f.bodyChanged {
			w.bytes(f.body)
		}
		w.strs(f.dropped)
	}
	return w.finish()
}

func decodeReplyFrame(payload []byte) (*replyFrame, error) {
	r := wireReader{buf: payload}
	f := &replyFrame{status: r.u8(), retiring: r.bool()}
	switch f.status {
	case replyFailed:
		f.kind = FailureKind(r.i64())
		f.line = int(r.i64())
		f.column = int(r.i64())
		f.message = r.str()
	case replyDenied:
		f.reason = r.str()
	case replyOK:
		f.method = r.str()
		f.path = r.str()
		f.query = r.str()
		f.code = int(r.i64())
		f.headers = r.headers()
		f.bodyChanged = r.bool()
		if f.bodyChanged {
			f.body = r.bytes()
		}
		f.dropped = r.strs()
	case replyEvent:
		f.eventDropped = r.bool()
		f.bodyChanged = r.bool()
		if f.bodyChanged {
			f.body = r.bytes()
		}
		f.dropped = r.strs()
	case replyRetire:
	default:
		if r.err == nil {
			return nil, fmt.Errorf("hooks: unknown reply status %d", f.status)
		}
	}
	return f, r.done()
}

// readFrame reads one frame's payload, refusing one longer than max.
func readFrame(r *bufio.Reader, max int) ([]byte, error) {
	var prefix [4]byte
	if _, err := io.ReadFull(r, prefix[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(prefix[:])
	if int64(n) > int64(max) {
		return nil, fmt.Errorf("hooks: frame of %d bytes exceeds %d", n, max)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return payload, nil
}
