package redaction

import (
	"context"
	"encoding/json"
	"io"
	"slices"
)

// EventStreamConfig says how an EventReader treats a stream.
type EventStreamConfig struct {
	Format EventFormat
	// Redact is the connector's profile chain for this direction; nil
	// redacts nothing (a stream read only to scrub secrets).
	Redact Chain
	// Scrubber removes the connector's injected secrets; nil scrubs
	// nothing.
	Scrubber *SecretScrubber
	// MaxEventBytes bounds one event, and the events held back at once
	// while they might continue a secret.
	MaxEventBytes int
	// PerEvent, when set, runs on each event after redaction, on data
	// already scrubbed of whole secrets, and before the scrubbing across
	// events: it may edit ev.Data and ev.Fields, and drop the event by
	// returning false. An error ends the stream with that error. It is the
	// seam for per-event response hooks (hooks.response_per_event in
	// docs/reference.md); nil runs nothing.
	PerEvent func(ctx context.Context, ev *Event) (keep bool, err error)
	// OnRedacted, when set, receives each event's findings as it goes.
	OnRedacted func(Report)
}

// EventReader reads a stream of events from a source, redacts and scrubs
// each one, and returns them re-serialised, each as soon as it may go:
// a Read returns once at least one event is ready, never waiting for the
// next one, so a caller that flushes after each Read delivers every event
// as it arrives (docs/reference.md, "Streamed bodies").
//
// Secrets are kept whole across events. The scrubber runs over the bytes
// going out as one stream, and over the text a client puts together from
// successive events: the concatenation of the string values at one JSON
// path (an LLM streaming a token per event), or of the data that is not
// JSON. An event whose end might be the start of a secret in either is
// held back, with the events after it, until the next event settles it
// (or the stream ends); a secret found across events is replaced by
// SecretMask in the event where it starts and removed from the rest.
type EventReader struct {
	ctx context.Context
	src io.Reader
	cfg EventStreamConfig
	dec *EventDecoder

	queue   []*heldEvent         // events not yet released, oldest first
	paths   map[string]*heldText // open texts, by JSON path
	wire    []byte               // serialised, released, not yet scrubbed
	bounds  []int                // event ends in wire
	out     []byte               // scrubbed, not yet returned
	outPos  int
	held    int // bytes of the events in queue
	seq     int
	srcErr  error
	err     error // what Read returns once out is drained
	readBuf []byte
	report  Report
	// spareStrs and sparePaths are a released event's buffers, reused.
	spareStrs  []eventString
	sparePaths []byte
}

// heldEvent is an event waiting for release, with the strings that
// cross-event scrubbing looks at.
type heldEvent struct {
	seq   int
	ev    *Event
	strs  []eventString
	paths []byte // the buffer strs' paths are in
}

// eventString is one string of an event's data: a JSON string value (raw
// is its span in Data, quotes included) or the whole data when it is
// not JSON (raw is nil).
type eventString struct {
	path  []byte
	start int
	end   int
	json  bool
	text  []byte // decoded; scrubbing replaces it, never writes into it
	dirty bool
}

// heldText is the open end of the text at one path: the parts of
// successive events' strings that might still begin a secret.
type heldText struct {
	parts []textPart
}

type textPart struct {
	ev   *heldEvent
	str  int // index in ev.strs
	from int // where the open text starts in the string
}

// maxOpenPaths bounds the paths a stream may keep open at once; past it
// the stream ends as an event over the limit would.
const maxOpenPaths = 256

// NewEventReader returns a reader of src's events, treated as cfg says.
func NewEventReader(ctx context.Context, src io.Reader, cfg EventStreamConfig) *EventReader {
	if cfg.MaxEventBytes <= 0 {
		cfg.MaxEventBytes = 1 << 20
	}
	return &EventReader{ctx: ctx, src: src, cfg: cfg, dec: NewEventDecoder(cfg.Format, cfg.MaxEventBytes), paths: map[string]*heldText{}}
}

// Report is what the stream's events had redacted so far, merged.
func (r *EventReader) Report() Report { return r.report }

// Read implements io.Reader.
func (r *EventReader) Read(p []byte) (int, error) {
	for r.outPos == len(r.out) {
		if r.err != nil {
			return 0, r.err
		}
		r.out, r.outPos = r.out[:0], 0
		if err := r.step(); err != nil {
			r.err = err
		}
	}
	n := copy(p, r.out[r.outPos:])
	r.outPos += n
	return n, nil
}

// step reads once from the source and moves what it completes along.
func (r *EventReader) step() error {
	if r.srcErr == nil {
		if r.readBuf == nil {
			r.readBuf = make([]byte, 32<<10)
		}
		n, err := r.src.Read(r.readBuf)
		r.dec.Write(r.readBuf[:n])
		r.srcErr = err
	}
	if r.srcErr != nil && r.srcErr != io.EOF {
		return r.srcErr // broken off: what is held back is not let go
	}
	end := r.srcErr == io.EOF
	for {
		ev, err := r.dec.Next(end)
		if err == nil && ev != nil {
			err = r.take(ev)
		}
		if err != nil {
			// The events before the one that ends the stream still go.
			r.scrubWire(false)
			return err
		}
		if ev == nil {
			break
		}
	}
	if end {
		r.release(len(r.queue))
		r.scrubWire(true)
		return io.EOF
	}
	r.scrubWire(false)
	return nil
}

// take redacts one event, runs the per-event function and queues it.
func (r *EventReader) take(ev *Event) error {
	if len(r.cfg.Redact) > 0 && len(ev.Data) > 0 {
		ct := "text/plain"
		if json.Valid(ev.Data) {
			ct = "application/json"
		}
		out, rep, err := r.cfg.Redact.Body(ct, ev.Data)
		if err != nil {
			return err
		}
		if len(rep) > 0 {
			ev.Data = out
			r.addReport(rep)
		}
	}
	if r.cfg.PerEvent != nil {
		// The function (a connector's hook) never sees an injected secret
		// whole, as a whole-body response hook does not: a script that
		// re-encoded one would otherwise get it past the scrubbing below.
		// A secret split across events reaches it in pieces, one run
		// each, with nothing kept between runs.
		if s := r.cfg.Scrubber; s != nil {
			ev.Data, _ = s.Scrub(ev.Data)
			ev.Name, _ = s.ScrubString(ev.Name)
			ev.ID, _ = s.ScrubString(ev.ID)
		}
		keep, err := r.cfg.PerEvent(r.ctx, ev)
		if err != nil {
			return err
		}
		if !keep {
			return nil
		}
	}
	h := &heldEvent{seq: r.seq, ev: ev}
	r.seq++
	r.queue = append(r.queue, h)
	r.held += ev.size
	if r.cfg.Scrubber != nil && len(r.cfg.Scrubber.needles) > 0 {
		h.strs, h.paths = appendEventStrings(r.spareStrs[:0], r.sparePaths[:0], ev.Data)
		r.spareStrs, r.sparePaths = nil, nil
		for i := range h.strs {
			if err := r.scrubAcross(h, i); err != nil {
				return err
			}
		}
	}
	oldest := r.seq
	for _, t := range r.paths {
		oldest = min(oldest, t.parts[0].ev.seq)
	}
	n := 0
	for n < len(r.queue) && r.queue[n].seq < oldest {
		n++
	}
	r.release(n)
	if r.held > r.cfg.MaxEventBytes {
		return &EventTooLargeError{Limit: r.cfg.MaxEventBytes, Held: true}
	}
	return nil
}

func (r *EventReader) addReport(rep Report) {
	if r.cfg.OnRedacted != nil {
		r.cfg.OnRedacted(rep)
	}
	for _, f := range rep {
		if k := slices.IndexFunc(r.report, func(g Finding) bool { return g.Profile == f.Profile && g.Detector == f.Detector }); k >= 0 {
			r.report[k].Count += f.Count
		} else {
			r.report = append(r.report, f)
		}
	}
}

// scrubAcross adds string i of h to the text open at its path, replaces
// the secrets that are now whole in that text, and keeps open what might
// still begin one.
func (r *EventReader) scrubAcross(h *heldEvent, i int) error {
	s := r.cfg.Scrubber
	str := &h.strs[i]
	t := r.paths[string(str.path)]
	if t == nil {
		// Nothing open at this path: most strings hold nothing like a
		// secret and are done with here.
		limit := s.HoldFrom(str.text)
		if a, _ := s.nextMatch(str.text, 0); limit == len(str.text) && (a < 0 || a >= limit) {
			return nil
		}
		t = &heldText{}
	}
	t.parts = append(t.parts, textPart{ev: h, str: i})
	var text []byte
	starts := make([]int, len(t.parts)) // where each part begins in text
	for k, p := range t.parts {
		starts[k] = len(text)
		text = append(text, p.ev.strs[p.str].text[p.from:]...)
	}
	limit := s.HoldFrom(text)
	// edits per part, in part-local offsets of the open text
	type edit struct {
		a, b int
		mask bool
	}
	edits := make([][]edit, len(t.parts))
	open := limit
	for from := 0; ; {
		a, b := s.nextMatch(text, from)
		if a < 0 || a >= limit {
			break
		}
		for k := range t.parts {
			ps, pe := starts[k], len(text)
			if k+1 < len(t.parts) {
				pe = starts[k+1]
			}
			if lo, hi := max(a, ps), min(b, pe); lo < hi {
				// The part where the secret starts shows the mask; the
				// parts it continues into lose their share.
				edits[k] = append(edits[k], edit{lo - ps, hi - ps, a >= ps})
			}
		}
		from, open = b, max(b, limit)
	}
	// The open text starts in part k at local offset off (before edits).
	k, off := len(t.parts), 0
	for j := range t.parts {
		pe := len(text)
		if j+1 < len(t.parts) {
			pe = starts[j+1]
		}
		if open < pe {
			k, off = j, open-starts[j]
			break
		}
	}
	for j, es := range edits {
		if len(es) == 0 {
			continue
		}
		p := &t.parts[j]
		full := p.ev.strs[p.str].text
		var out []byte
		out = append(out, full[:p.from]...)
		prev := 0
		shift := 0
		for _, e := range es {
			out = append(out, full[p.from+prev:p.from+e.a]...)
			if e.mask {
				out = append(out, SecretMask...)
				shift += len(SecretMask) - (e.b - e.a)
			} else {
				shift -= e.b - e.a
			}
			prev = e.b
		}
		out = append(out, full[p.from+prev:]...)
		p.ev.strs[p.str].text = out
		p.ev.strs[p.str].dirty = true
		if j == k {
			off += shift
		}
	}
	if k == len(t.parts) {
		delete(r.paths, string(str.path))
		return nil
	}
	t.parts = slices.Clone(t.parts[k:])
	t.parts[0].from += off
	r.paths[string(str.path)] = t
	if len(r.paths) > maxOpenPaths {
		return &EventTooLargeError{Limit: r.cfg.MaxEventBytes, Held: true}
	}
	return nil
}

// release lets the first n queued events go: their scrubbed strings
// written back into their data, then serialised onto the wire.
func (r *EventReader) release(n int) {
	for _, h := range r.queue[:n] {
		applyStrings(h)
		r.wire = AppendEvent(r.wire, h.ev)
		r.bounds = append(r.bounds, len(r.wire))
		r.held -= h.ev.size
		// No open text refers to a released event: its buffers serve
		// the next one.
		if cap(h.strs) > cap(r.spareStrs) {
			r.spareStrs, r.sparePaths = h.strs[:0], h.paths[:0]
		}
	}
	r.queue = r.queue[:copy(r.queue, r.queue[n:])]
}

// scrubWire scrubs the released bytes as one stream and moves to out
// what may go: whole events, up to where a secret might be starting.
func (r *EventReader) scrubWire(end bool) {
	s := r.cfg.Scrubber
	if s == nil || len(s.needles) == 0 {
		r.out = append(r.out, r.wire...)
		r.wire, r.bounds = r.wire[:0], r.bounds[:0]
		return
	}
	limit := len(r.wire)
	if !end {
		limit = s.HoldFrom(r.wire)
		// Keep events whole: stop at the last event end before it.
		cut := 0
		for _, b := range r.bounds {
			if b <= limit {
				cut = b
			}
		}
		limit = cut
	}
	if limit == 0 {
		return
	}
	var consumed int
	r.out, consumed, _ = s.scrubPrefix(r.out, r.wire, limit, false)
	r.wire = r.wire[:copy(r.wire, r.wire[consumed:])]
	k := 0
	for _, b := range r.bounds {
		if b > consumed {
			r.bounds[k] = b - consumed
			k++
		}
	}
	r.bounds = r.bounds[:k]
}

// applyStrings writes h's scrubbed strings back into its data.
func applyStrings(h *heldEvent) {
	ev := h.ev
	dirty := false
	for _, s := range h.strs {
		dirty = dirty || s.dirty
	}
	if !dirty {
		return
	}
	if len(h.strs) == 1 && !h.strs[0].json {
		ev.Data = h.strs[0].text
		return
	}
	var out []byte
	prev := 0
	for _, s := range h.strs {
		if !s.dirty {
			continue
		}
		out = append(out, ev.Data[prev:s.start]...)
		out = append(out, '"')
		out = appendEscaped(out, s.text)
		out = append(out, '"')
		prev = s.end
	}
	ev.Data = append(out, ev.Data[prev:]...)
}

// eventStrings lists the strings of data a client may put together
// across events: every JSON string value with its path, or the data
// itself when it is not JSON.
func eventStrings(data []byte) []eventString {
	strs, _ := appendEventStrings(nil, nil, data)
	return strs
}

// appendEventStrings is eventStrings appending to strs, with the paths
// appended to paths; it returns both, for reuse once the event is gone.
func appendEventStrings(strs []eventString, paths, data []byte) ([]eventString, []byte) {
	if len(data) == 0 {
		return strs, paths
	}
	if i := skipWS(data, 0); i < len(data) && (data[i] == '{' || data[i] == '[' || data[i] == '"') {
		// The walker checks strings and structure; anything it cannot
		// read whole is taken as text.
		w := stringWalker{in: data, out: strs, paths: paths}
		if end, ok := w.value(i, 0); ok && skipWS(data, end) == len(data) {
			return w.out, w.paths
		}
	}
	return append(strs[:0], eventString{path: []byte("\x00data"), text: data}), paths
}

// stringWalker collects the string values of valid JSON with their paths.
type stringWalker struct {
	in    []byte
	path  []byte
	paths []byte
	out   []eventString
}

func (w *stringWalker) value(i, depth int) (int, bool) {
	if depth > maxJSONDepth || i >= len(w.in) {
		return i, false
	}
	switch c := w.in[i]; c {
	case '"':
		end, escaped, ok := scanString(w.in, i)
		if !ok {
			return i, false
		}
		text := w.in[i+1 : end-1] // read only: scrubbing replaces, never writes into it
		if escaped {
			text = appendUnescaped(nil, text)
		}
		// The paths of one event share one buffer.
		at := len(w.paths)
		w.paths = append(w.paths, w.path...)
		w.out = append(w.out, eventString{path: w.paths[at:len(w.paths):len(w.paths)], start: i, end: end, json: true, text: text})
		return end, true
	case '{', '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		base := len(w.path)
		i = skipWS(w.in, i+1)
		for n := 0; i < len(w.in) && w.in[i] != closer; n++ {
			w.path = w.path[:base]
			w.path = append(w.path, '/')
			if c == '{' {
				end, _, ok := scanString(w.in, i)
				if !ok {
					return i, false
				}
				w.path = append(w.path, w.in[i+1:end-1]...)
				i = skipWS(w.in, end)
				if i >= len(w.in) || w.in[i] != ':' {
					return i, false
				}
				i = skipWS(w.in, i+1)
			} else {
				w.path = appendInt(w.path, n)
			}
			var ok bool
			if i, ok = w.value(i, depth+1); !ok {
				return i, false
			}
			i = skipWS(w.in, i)
			if i < len(w.in) && w.in[i] == ',' {
				i = skipWS(w.in, i+1)
			}
		}
		w.path = w.path[:base]
		return i + 1, i < len(w.in)
	default:
		// A number, true, false or null: no string to look at.
		for i < len(w.in) && w.in[i] != ',' && w.in[i] != '}' && w.in[i] != ']' && w.in[i] > ' ' {
			i++
		}
		return i, true
	}
}

func appendInt(b []byte, n int) []byte {
	if n >= 10 {
		b = appendInt(b, n/10)
	}
	return append(b, byte('0'+n%10))
}
