package hooks

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/d5/tengo/v2"
)

// EventFormat is how a streamed body frames its events.
type EventFormat uint8

const (
	// EventFormatSSE: server-sent events (text/event-stream). An event's
	// data may span lines ("\n"), but holds no carriage return, which a
	// client would read as a line break too.
	EventFormatSSE EventFormat = iota + 1
	// EventFormatNDJSON: one event per line (application/x-ndjson,
	// application/jsonl); an event's data holds no line break.
	EventFormatNDJSON
)

func (f EventFormat) String() string {
	switch f {
	case EventFormatSSE:
		return "sse"
	case EventFormatNDJSON:
		return "ndjson"
	}
	return fmt.Sprintf("EventFormat(%d)", uint8(f))
}

// Event is one event of a streamed body as a per-event hook sees it: the
// script's event {data, json, event, id}.
type Event struct {
	// Data is the event's data: the data: lines joined with "\n" (SSE),
	// or the line without its line break (NDJSON).
	Data []byte
	// Type and ID are the SSE event: and id: fields, "" when absent and
	// for NDJSON. Scripts may read them, not change them.
	Type string
	ID   string
}

// EventHook runs one response script on each event of one streamed
// response. Build it with Runtime.NewEventHook when the response head
// arrives; Run it once per event, one event at a time.
type EventHook struct {
	rt     *Runtime
	script *Script
	tenant string
	format EventFormat
	lim    Limits
	// prefix is the part of every run frame that stays the same along the
	// stream (limits, meta, request, response head), encoded once.
	prefix []byte
}

var errNotEventScript = errors.New("hooks: script was not compiled for per-event runs (CompileEventHook)")

// NewEventHook prepares per-event runs of s on the response whose head is
// resp (its Body is ignored), answering req (whose Body is not passed
// either: the script sees request.body and response.body empty). Each
// run's lim is lim completed with the runtime's defaults; max_body_bytes
// applies to the event's data. s must come from CompileEventHook.
func (rt *Runtime) NewEventHook(s *Script, meta Meta, req Request, resp Response, format EventFormat, lim Limits) (*EventHook, error) {
	if !s.events {
		return nil, &RunError{Script: s.name, Kind: FailUnavailable, Message: errNotEventScript.Error(), Err: errNotEventScript}
	}
	if format != EventFormatSSE && format != EventFormatNDJSON {
		return nil, &RunError{Script: s.name, Kind: FailUnavailable, Message: fmt.Sprintf("unknown event format %d", format)}
	}
	lim, err := rt.limitsFor(s, lim, 0)
	if err != nil {
		return nil, err
	}
	req.Body, resp.Body = nil, nil
	frame := runFrame{flags: flagResponse | flagEvent, meta: meta, req: req, resp: resp, limits: lim}
	// The frame's event part is appended per run (appendEvent).
	frame.flags &^= flagEvent
	prefix := encodeRunBody(nil, &frame)
	return &EventHook{rt: rt, script: s, tenant: meta.Tenant, format: format, lim: lim, prefix: prefix}, nil
}

// Run runs the script on ev and returns the event to pass on.
//
// Results, in the order the caller should check them:
//   - *BodyTooLargeError: ev.Data is over max_body_bytes; the script did
//     not run.
//   - *RunError: the run failed closed (runtime error, a limit, invalid
//     output such as a line break in NDJSON data, ctx ended first).
//   - Outcome.Denied: the script set deny; the stream ends
//     (docs/connector-authors.md, "Hooks on streamed responses").
//   - Outcome.EventDropped: the script set event to undefined; pass
//     nothing on for this event.
//   - otherwise pass on the returned event: Data changed when
//     Outcome.BodyChanged, Type and ID always as they came in.
//
// Each run takes a worker slot in the tenant's turn, as every hook run
// does, so one tenant's fast stream cannot starve another tenant's hooks.
func (h *EventHook) Run(ctx context.Context, ev Event) (Event, Outcome, error) {
	if int64(len(ev.Data)) > h.lim.MaxBodyBytes {
		return ev, Outcome{}, &BodyTooLargeError{Script: h.script.name, Size: int64(len(ev.Data)), Limit: h.lim.MaxBodyBytes}
	}
	// A fresh buffer per run: the run holds it past ctx's end.
	body := make([]byte, len(h.prefix), len(h.prefix)+len(ev.Data)+len(ev.Type)+len(ev.ID)+16)
	copy(body, h.prefix)
	body = appendEvent(body, h.format, ev)
	reply, err := h.rt.runEncoded(ctx, h.script, flagResponse|flagEvent, h.tenant, body, h.lim)
	if err != nil {
		return ev, Outcome{}, err
	}
	switch reply.status {
	case replyDenied:
		return ev, Outcome{Denied: true, DenyReason: reply.reason}, nil
	case replyEvent:
	default:
		return ev, Outcome{}, &RunError{Script: h.script.name, Kind: FailUnavailable, Message: fmt.Sprintf("hook worker answered a per-event run with status %d", reply.status)}
	}
	if reply.eventDropped {
		return ev, Outcome{EventDropped: true}, nil
	}
	out := ev
	if reply.bodyChanged {
		out.Data = reply.body
	}
	return out, Outcome{BodyChanged: reply.bodyChanged, DroppedEdits: reply.dropped}, nil
}

// executeEvent is execute for one event of a stream: request and response
// (head only) are read-only, event is what the script may change or drop.
func (w *workerState) executeEvent(p *program, run *runFrame) *replyFrame {
	if !p.events {
		return failed(&RunError{Kind: FailUnavailable, Message: "hook worker has no event variable for the script (protocol error)"})
	}
	globals := make([]tengo.Object, p.numGlobals)
	globals[globalRequest] = requestObject(&run.req, tengo.UndefinedValue, true)
	globals[globalResponse] = &tengo.ImmutableMap{Value: map[string]tengo.Object{
		"status":  &tengo.Int{Value: int64(run.resp.Status)},
		"headers": headersObject(run.resp.Headers, true),
	}}
	setMetaGlobals(globals, run.meta)
	globals[globalDeny] = tengo.UndefinedValue
	view := newEventJSONView(run.event.Data, w.hasher)
	globals[globalEvent] = &tengo.Map{Value: map[string]tengo.Object{
		"data":  &tengo.String{Value: string(run.event.Data)},
		"json":  view.value,
		"event": &tengo.String{Value: run.event.Type},
		"id":    &tengo.String{Value: run.event.ID},
	}}

	if reply := runToDecision(p, globals, run.limits); reply != nil {
		return reply
	}
	o := globals[globalEvent]
	if o == nil || o == tengo.UndefinedValue {
		return &replyFrame{status: replyEvent, eventDropped: true}
	}
	if _, isMap := mapValue(o); !isMap {
		return failed(&RunError{Kind: FailInvalidOutput, Message: fmt.Sprintf("event must stay a map, or be set to undefined to drop the event, not %s", o.TypeName())})
	}
	reply, err := w.readEvent(o, run, view)
	if err != nil {
		return failed(&RunError{Kind: FailInvalidOutput, Message: err.Error()})
	}
	return reply
}

func (w *workerState) readEvent(o tengo.Object, run *runFrame, view jsonView) (*replyFrame, error) {
	rb, err := newReadBack("event", o)
	if err != nil {
		return nil, err
	}
	rb.readOnlyStr("event", run.event.Type)
	rb.readOnlyStr("id", run.event.ID)
	data, changed, _, err := rb.body("data", run.event.Data, view, w.hasher, run.limits.MaxBodyBytes)
	if err != nil {
		return nil, err
	}
	if changed {
		if err := checkEventData(run.format, data); err != nil {
			return nil, err
		}
	}
	return &replyFrame{status: replyEvent, bodyChanged: changed, body: data, dropped: rb.dropped}, nil
}

// checkEventData refuses data that would not stay one event on the wire:
// a line break would end an NDJSON event, a carriage return would start a
// new SSE field (an id: or event: of the script's making).
func checkEventData(format EventFormat, data []byte) error {
	s := string(data)
	switch format {
	case EventFormatNDJSON:
		if i := strings.IndexAny(s, "\r\n"); i >= 0 {
			return fmt.Errorf("event.data holds a line break (at byte %d), which would split the NDJSON event", i)
		}
	case EventFormatSSE:
		if i := strings.IndexByte(s, '\r'); i >= 0 {
			return fmt.Errorf("event.data holds a carriage return (at byte %d); separate the lines of an SSE event with \"\\n\"", i)
		}
	}
	return nil
}

// newEventJSONView decodes an event's data when it is JSON, whatever the
// stream's content type says: SSE events often carry JSON in text.
func newEventJSONView(data []byte, hasher valueHasher) jsonView {
	if len(data) == 0 {
		return jsonView{value: tengo.UndefinedValue}
	}
	v, err := decodeJSON(data)
	if err != nil {
		return jsonView{value: tengo.UndefinedValue}
	}
	h, ok := hasher.hash(v, 0)
	return jsonView{value: v, hash: h, hashOK: ok}
}
