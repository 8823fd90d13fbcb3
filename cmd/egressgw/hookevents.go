package main

import (
	"bytes"
	"io"
	"mime"
	"path/filepath"
	"strings"

	"github.com/egressgw/egressgw/hooks"
)

// The event fixtures of `egressgw hook test --events`: a streamed body as
// a file, read into the events a per-event hook runs on, and the events
// it leaves written back in the same format (docs/connector-authors.md,
// "Hooks on streamed responses").

// eventFormatOf is the format of an events fixture: the response
// fixture's Content-Type when it names a streamed type, else the file's
// extension (.ndjson, .jsonl: NDJSON; anything else: server-sent events).
func eventFormatOf(path, contentType string) hooks.EventFormat {
	if mediaType, _, err := mime.ParseMediaType(contentType); err == nil {
		switch mediaType {
		case "text/event-stream":
			return hooks.EventFormatSSE
		case "application/x-ndjson", "application/jsonl":
			return hooks.EventFormatNDJSON
		}
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".ndjson", ".jsonl":
		return hooks.EventFormatNDJSON
	}
	return hooks.EventFormatSSE
}

// contentTypeOf is the Content-Type a fixture of format f is served with
// when the response fixture names none.
func contentTypeOf(f hooks.EventFormat) string {
	if f == hooks.EventFormatNDJSON {
		return "application/x-ndjson"
	}
	return "text/event-stream"
}

// readEvents splits a fixture into events. NDJSON: one event per
// non-blank line. Server-sent events as a browser reads them: lines end
// with CRLF, LF or CR; a blank line ends an event; data: lines are joined
// with "\n"; event: and id: set the event's fields; comments (":") and
// other fields are skipped; an event without data: lines is none. A last
// event without its blank line still counts, as a fixture often ends so.
func readEvents(format hooks.EventFormat, data []byte) []hooks.Event {
	var events []hooks.Event
	if format == hooks.EventFormatNDJSON {
		for _, line := range splitLines(data) {
			if len(bytes.TrimSpace(line)) > 0 {
				events = append(events, hooks.Event{Data: line})
			}
		}
		return events
	}
	var ev hooks.Event
	var lines [][]byte
	dispatch := func() {
		if lines != nil {
			ev.Data = append([]byte{}, bytes.Join(lines, []byte("\n"))...)
			events = append(events, ev)
		}
		ev, lines = hooks.Event{}, nil
	}
	for _, line := range splitLines(data) {
		if len(line) == 0 {
			dispatch()
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "data":
			lines = append(lines, value)
		case "event":
			ev.Type = string(value)
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				ev.ID = string(value)
			}
		}
	}
	dispatch()
	return events
}

// splitLines splits at CRLF, LF and CR; a last line without an end
// counts, an empty remainder does not.
func splitLines(data []byte) [][]byte {
	var lines [][]byte
	for len(data) > 0 {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			lines = append(lines, data)
			break
		}
		lines = append(lines, data[:i])
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	return lines
}

// writeEvent writes ev as format frames it.
func writeEvent(w io.Writer, format hooks.EventFormat, ev hooks.Event) {
	var b bytes.Buffer
	if format == hooks.EventFormatNDJSON {
		b.Write(ev.Data)
		b.WriteByte('\n')
		_, _ = w.Write(b.Bytes())
		return
	}
	if ev.Type != "" {
		b.WriteString("event: " + ev.Type + "\n")
	}
	if ev.ID != "" {
		b.WriteString("id: " + ev.ID + "\n")
	}
	for _, line := range bytes.Split(ev.Data, []byte("\n")) {
		b.WriteString("data: ")
		b.Write(line)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	_, _ = w.Write(b.Bytes())
}
