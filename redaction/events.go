package redaction

import (
	"bytes"
	"fmt"
)

// EventFormat is a media type whose body is a sequence of events that a
// client reads one at a time, so the gateway redacts and forwards it event
// by event (docs/reference.md, "Streamed bodies").
type EventFormat uint8

const (
	// NotEvents is any other body: it is redacted whole.
	NotEvents EventFormat = iota
	// ServerSentEvents is text/event-stream, read by the WHATWG
	// event-stream rules: lines end in CRLF, LF or CR; a blank line ends an
	// event.
	ServerSentEvents
	// JSONLines is application/x-ndjson or application/jsonl: one event
	// per line.
	JSONLines
)

// EventFormatOf returns the event format of a Content-Type value
// (parameters ignored), NotEvents for any other body.
func EventFormatOf(contentType string) EventFormat {
	switch mediaType(contentType) {
	case "text/event-stream":
		return ServerSentEvents
	case "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines", "application/jsonlines":
		return JSONLines
	}
	return NotEvents
}

// Field is one line of a server-sent event: a field and its value, or a
// comment (Name empty, Value the text after the colon).
type Field struct {
	Name  string
	Value []byte
}

// Event is one complete event of a stream: a server-sent event (its lines
// up to the blank line that ends it) or one line of line-delimited JSON.
type Event struct {
	// Data is what the event carries and what is written back: a
	// server-sent event's data lines joined with "\n" (one leading space
	// after each colon removed), a JSON line without its line end.
	Data []byte
	// Name and ID are a server-sent event's last event: and id: values as
	// parsed, for reading; writing changes only Data and Fields.
	Name string
	ID   string
	// Fields are a server-sent event's lines in order, data lines and
	// comments included. When the event is written, its data lines are
	// replaced, at the place of the first one, by Data split on line
	// ends; the other lines are written as they are.
	Fields []Field

	format EventFormat
	// hasData says the event had a data line, so an empty Data is still
	// written as one ("data:" differs from no data line).
	hasData bool
	// crlf says a JSON line ended in CRLF, written back the same way.
	crlf bool
	// unterminated is the rest of a stream that ended without finishing
	// its event: written back without the terminator it never had.
	unterminated bool
	// size is how many bytes the event took on the wire.
	size int
	// bom: the stream started with a byte order mark, written back
	// before this, its first event, so a second one stays a second one.
	bom bool
}

// Size is how many bytes the event took in the stream it was read from.
func (e *Event) Size() int { return e.size }

// EventTooLargeError ends a stream with an event longer than
// redaction.max_event_bytes, or with events held back longer than that
// while they might continue a secret.
type EventTooLargeError struct {
	Limit int
	Held  bool // the bytes held back, not one event, passed the limit
}

func (e *EventTooLargeError) Error() string {
	if e.Held {
		return fmt.Sprintf("events held back while they might continue an injected secret passed redaction.max_event_bytes (%d)", e.Limit)
	}
	return fmt.Sprintf("an event is longer than redaction.max_event_bytes (%d)", e.Limit)
}

// EventDecoder splits a stream into events as its bytes arrive. It holds
// at most one incomplete event, and refuses one longer than its limit.
type EventDecoder struct {
	format EventFormat
	limit  int
	buf    []byte // buf[off:] is not yet part of a returned event
	off    int
	pos    int // buf[off:pos] is already split into lines of cur
	// scanned: buf[pos:scanned] holds no line end, so a line that arrives
	// in many small writes is searched once, not once per write.
	scanned int
	cur     Event  // the event being read (server-sent events)
	data    []byte // its data lines joined
	// skipLF: the last line ended in CR, so a LF right after it belongs
	// to that line end, even when it arrives in the next write.
	skipLF  bool
	started bool // past a leading byte order mark
	bom     bool // one was there, for the first event
}

// NewEventDecoder returns a decoder of format (ServerSentEvents or
// JSONLines) refusing events longer than limit bytes.
func NewEventDecoder(format EventFormat, limit int) *EventDecoder {
	return &EventDecoder{format: format, limit: limit}
}

// Write appends bytes read from the stream.
func (d *EventDecoder) Write(p []byte) {
	if d.off > 0 {
		// Compacted once per write, not once per event.
		d.buf = d.buf[:copy(d.buf, d.buf[d.off:])]
		d.pos -= d.off
		d.scanned -= d.off
		d.off = 0
	}
	d.buf = append(d.buf, p...)
}

// Next returns the next complete event, nil when more bytes are needed,
// or an *EventTooLargeError. At the end of the stream (end set) it
// returns the incomplete rest as a last, unterminated event.
func (d *EventDecoder) Next(end bool) (*Event, error) {
	if !d.started {
		const bom = "\xef\xbb\xbf"
		if len(d.buf) < len(bom) && bytes.HasPrefix([]byte(bom), d.buf) && !end {
			return nil, nil
		}
		d.started = true
		if d.format == ServerSentEvents && bytes.HasPrefix(d.buf, []byte(bom)) {
			// The event-stream decoder drops it, as the clients do; it
			// is written back with the first event.
			d.off, d.pos = len(bom), len(bom)
			d.bom = true
		}
	}
	if d.format == JSONLines {
		return d.nextLine(end)
	}
	return d.nextSSE(end)
}

func (d *EventDecoder) nextLine(end bool) (*Event, error) {
	rest := d.buf[d.off:]
	from := max(d.scanned-d.off, 0)
	i := bytes.IndexByte(rest[from:], '\n')
	if i >= 0 {
		i += from
	}
	if i < 0 {
		d.scanned = len(d.buf)
		if len(rest) > d.limit {
			return nil, &EventTooLargeError{Limit: d.limit}
		}
		if !end || len(rest) == 0 {
			return nil, nil
		}
		ev := &Event{format: JSONLines, Data: bytes.Clone(rest), unterminated: true, size: len(rest)}
		d.off = len(d.buf)
		return ev, nil
	}
	if i+1 > d.limit {
		return nil, &EventTooLargeError{Limit: d.limit}
	}
	line := rest[:i]
	ev := &Event{format: JSONLines, size: i + 1}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line, ev.crlf = line[:n-1], true
	}
	ev.Data = bytes.Clone(line)
	d.off += i + 1
	return ev, nil
}

func (d *EventDecoder) nextSSE(end bool) (*Event, error) {
	for {
		if d.skipLF && d.pos < len(d.buf) {
			if d.buf[d.pos] == '\n' {
				if d.off == d.pos {
					d.off++ // the line end of the event before: not this one's
				}
				d.pos++
			}
			d.skipLF = false
		}
		from := max(d.pos, d.scanned)
		k := bytes.IndexAny(d.buf[from:], "\r\n")
		if k >= 0 {
			k += from - d.pos
		}
		if k < 0 {
			d.scanned = len(d.buf)
			if len(d.buf)-d.off > d.limit {
				return nil, &EventTooLargeError{Limit: d.limit}
			}
			if !end {
				return nil, nil
			}
			if d.pos < len(d.buf) {
				d.field(d.buf[d.pos:])
			}
			if len(d.cur.Fields) == 0 {
				return nil, nil
			}
			ev := d.finish(len(d.buf))
			ev.unterminated = true
			return ev, nil
		}
		line := d.buf[d.pos : d.pos+k]
		next := d.pos + k + 1
		// The limit counts a CRLF's LF out, whether or not it has
		// arrived yet, so how the stream is cut into reads cannot matter.
		if next-d.off > d.limit {
			return nil, &EventTooLargeError{Limit: d.limit}
		}
		if d.buf[d.pos+k] == '\r' {
			if next < len(d.buf) {
				if d.buf[next] == '\n' {
					next++
				}
			} else {
				d.skipLF = true
			}
		}
		d.pos = next
		if len(line) == 0 {
			return d.finish(next), nil
		}
		d.field(line)
	}
}

// field adds one non-blank line to the event being read.
func (d *EventDecoder) field(line []byte) {
	if line[0] == ':' {
		d.cur.Fields = append(d.cur.Fields, Field{Value: bytes.Clone(line[1:])})
		return
	}
	name, value, _ := bytes.Cut(line, []byte{':'})
	if len(value) > 0 && value[0] == ' ' {
		value = value[1:]
	}
	f := Field{Name: string(name), Value: bytes.Clone(value)}
	d.cur.Fields = append(d.cur.Fields, f)
	switch f.Name {
	case "data":
		if d.cur.hasData {
			d.data = append(d.data, '\n')
		}
		d.data = append(d.data, value...)
		d.cur.hasData = true
	case "event":
		d.cur.Name = string(value)
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			d.cur.ID = string(value)
		}
	}
}

// finish returns the event read so far, which ends at buf[n].
func (d *EventDecoder) finish(n int) *Event {
	ev := d.cur
	ev.format, ev.size = ServerSentEvents, n-d.off
	ev.bom, d.bom = d.bom, false
	ev.Data = bytes.Clone(d.data)
	d.cur, d.data = Event{}, d.data[:0]
	d.off, d.pos = n, n
	return &ev
}

// AppendEvent appends e as it goes back on the wire: a server-sent event's
// lines ending in "\n" and the blank line, its data lines rebuilt from
// Data; a JSON line with its line end. A line end inside Data starts a new
// data line (a JSON line has none: a redacted JSON document stays on one
// line); a line end in another field's value, which only an edit can put
// there, is dropped, since it would start a field of its own.
func AppendEvent(dst []byte, e *Event) []byte {
	if e.format == JSONLines {
		// Only LF ends a line there; a CR inside one is its data.
		dst = append(dst, bytes.ReplaceAll(e.Data, []byte{'\n'}, nil)...)
		if e.unterminated {
			return dst
		}
		if e.crlf {
			dst = append(dst, '\r')
		}
		return append(dst, '\n')
	}
	if e.bom {
		dst = append(dst, "\xef\xbb\xbf"...)
	}
	wroteData := false
	writeData := func() {
		wroteData = true
		rest := e.Data
		for {
			k := bytes.IndexAny(rest, "\r\n")
			dst = append(dst, "data:"...)
			if k < 0 {
				dst = appendFieldValue(dst, rest)
				dst = append(dst, '\n')
				return
			}
			dst = appendFieldValue(dst, rest[:k])
			dst = append(dst, '\n')
			if rest[k] == '\r' && k+1 < len(rest) && rest[k+1] == '\n' {
				k++
			}
			rest = rest[k+1:]
		}
	}
	for _, f := range e.Fields {
		switch {
		case f.Name == "data":
			if !wroteData {
				writeData()
			}
		case f.Name == "":
			dst = append(dst, ':')
			dst = append(dst, dropLineEnds(f.Value)...)
			dst = append(dst, '\n')
		default:
			for i := 0; i < len(f.Name); i++ {
				if c := f.Name[i]; c != '\r' && c != '\n' && c != ':' {
					dst = append(dst, c)
				}
			}
			dst = append(dst, ':')
			dst = appendFieldValue(dst, dropLineEnds(f.Value))
			dst = append(dst, '\n')
		}
	}
	if !wroteData && (e.hasData || len(e.Data) > 0) {
		writeData()
	}
	if e.unterminated {
		return dst
	}
	return append(dst, '\n')
}

// appendFieldValue writes a value after its colon: with a space when it
// is not empty, so a value that starts with a space keeps it when read
// back (one space after the colon is removed).
func appendFieldValue(dst, v []byte) []byte {
	if len(v) == 0 {
		return dst
	}
	dst = append(dst, ' ')
	return append(dst, v...)
}

func dropLineEnds(v []byte) []byte {
	if bytes.IndexAny(v, "\r\n") < 0 {
		return v
	}
	out := make([]byte, 0, len(v))
	for _, c := range v {
		if c != '\r' && c != '\n' {
			out = append(out, c)
		}
	}
	return out
}
