package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"

	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/redaction"
)

// Streamed bodies (server-sent events, NDJSON, JSON Lines) are redacted
// and scrubbed event by event, each event handed on as soon as it is
// complete (docs/reference.md, "Streamed bodies"). The EventReader that
// does it replaces the body, and the forwarder's copy loop, which flushes
// after every read, sends each event the moment the reader returns it.

// responseEventFormat is the event format in which resp's body is
// transformed, NotEvents for a body transformed whole as before: one of
// no streaming media type, one that nothing needs to read (no scrubber,
// no profile that reads bodies), or one that the connector's response
// hook must see whole.
func (ex *exchange) responseEventFormat(resp *http.Response) redaction.EventFormat {
	c := ex.connector
	if c == nil {
		return redaction.NotEvents
	}
	if c.Hooks != nil && c.Hooks.Response != nil {
		if !ex.responseHookPerEvent() {
			// The hook sees the body whole, bounded by its max_body_bytes.
			return redaction.NotEvents
		}
		// The hook runs on each event (responseEventHook), with or
		// without redaction and scrubbing.
		return redaction.EventFormatOf(resp.Header.Get("Content-Type"))
	}
	redacts := c.Redact != nil && c.Redact.Response.InspectsBody()
	if c.Scrubber == nil && !redacts {
		return redaction.NotEvents
	}
	return redaction.EventFormatOf(resp.Header.Get("Content-Type"))
}

// streamResponseEvents is the response side of the transform step for a
// streamed body: headers scrubbed and redacted at once, the body replaced
// by a reader that redacts and scrubs it event by event, and runs the
// connector's per-event response hook on each (after redaction, before
// scrubbing); answered is the request as the hook sees it.
func (ex *exchange) streamResponseEvents(resp *http.Response, format redaction.EventFormat, answered *hooks.Request) error {
	c := ex.connector
	c.Scrubber.Headers(resp.Header)
	var chain redaction.Chain
	if c.Redact != nil {
		chain = c.Redact.Response
		ex.recordRedactions(chain.Headers(resp.Header))
	}
	if err := decodeBody(resp); err != nil {
		return err
	}
	resp.Header.Del("Content-Length")
	resp.ContentLength = -1
	// The body is read on the handler's goroutine (the forwarder's copy
	// loop): the audit list may be updated from the callback.
	base := len(ex.redactions)
	var seen redaction.Report
	events := redaction.NewEventReader(resp.Request.Context(), resp.Body, redaction.EventStreamConfig{
		Format:        format,
		Redact:        chain,
		Scrubber:      c.Scrubber,
		MaxEventBytes: int(ex.rt.live.Gateway.Redaction.MaxEventBytes),
		PerEvent:      ex.responseEventHook(resp, answered, format),
		OnRedacted: func(rep redaction.Report) {
			ex.countRedactions(rep)
			seen = mergeReport(seen, rep)
			ex.redactions = append(ex.redactions[:base], seen.Strings()...)
		},
	})
	resp.Body = struct {
		io.Reader
		io.Closer
	}{&trailerScrubber{body: events, resp: resp, scrubber: c.Scrubber}, resp.Body}
	return nil
}

// streamRequestEvents replaces an NDJSON or JSON Lines request body with
// one redacted line by line as it goes up, instead of holding it whole.
// A line over redaction.max_event_bytes ends the upload: the client is
// answered 413 body_too_large, and the upstream gets a request cut short.
func (ex *exchange) streamRequestEvents(r *http.Request, chain redaction.Chain) {
	limit := ex.rt.live.Gateway.Redaction.MaxEventBytes
	tally := &eventTally{}
	ex.uploadRedactions = tally
	events := redaction.NewEventReader(r.Context(), r.Body, redaction.EventStreamConfig{
		Format:        redaction.JSONLines,
		Redact:        chain,
		MaxEventBytes: int(limit),
		OnRedacted: func(rep redaction.Report) {
			// On the transport's goroutine, which may still be sending
			// as the response comes back.
			ex.countRedactions(rep)
			tally.add(rep)
		},
	})
	r.Body = struct {
		io.Reader
		io.Closer
	}{uploadEvents{events, limit}, r.Body}
	r.ContentLength = -1
	r.Header.Del("Content-Length")
}

// uploadEvents turns the end of an upload that had a line too long into
// the refusal the client is answered with.
type uploadEvents struct {
	events *redaction.EventReader
	limit  int64
}

func (u uploadEvents) Read(p []byte) (int, error) {
	n, err := u.events.Read(p)
	var tooLarge *redaction.EventTooLargeError
	if errors.As(err, &tooLarge) {
		err = refusedErr(policy.CodeBodyTooLarge, fmt.Sprintf(
			"a line of the request body is longer than redaction.max_event_bytes (%d) and is never sent unredacted", u.limit))
	}
	return n, err
}

// eventTally is what an upload's lines had redacted, merged, for the
// audit line.
type eventTally struct {
	mu  sync.Mutex
	rep redaction.Report
}

func (t *eventTally) add(rep redaction.Report) {
	t.mu.Lock()
	t.rep = mergeReport(t.rep, rep)
	t.mu.Unlock()
}

func (t *eventTally) strings() []string {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rep.Strings()
}

// auditRedactions is the audit line's redactions: what the exchange
// recorded, and what a streamed upload's lines had redacted.
func (ex *exchange) auditRedactions() []string {
	up := ex.uploadRedactions.strings()
	if len(up) == 0 {
		return ex.redactions
	}
	return append(slices.Clip(ex.redactions), up...)
}

func (ex *exchange) countRedactions(rep redaction.Report) {
	for _, f := range rep {
		ex.gw.metrics.redactions.WithLabelValues(f.Profile, f.Detector).Add(float64(f.Count))
	}
}

func mergeReport(into, rep redaction.Report) redaction.Report {
	for _, f := range rep {
		if k := slices.IndexFunc(into, func(g redaction.Finding) bool { return g.Profile == f.Profile && g.Detector == f.Detector }); k >= 0 {
			into[k].Count += f.Count
		} else {
			into = append(into, f)
		}
	}
	return into
}

// eventStreamEnded is the outcome of a streamed response that its event
// reader ended (an event over redaction.max_event_bytes), false for any
// other failure.
func eventStreamEnded(err error) (outcome, bool) {
	if o, ok := eventHookEnded(err); ok {
		return o, true
	}
	var tooLarge *redaction.EventTooLargeError
	if errors.As(err, &tooLarge) {
		return refused(policy.CodeEventTooLarge, tooLarge.Error()+"; the stream was cut off"), true
	}
	var unsupported *redaction.UnsupportedBodyError
	if errors.As(err, &unsupported) {
		// An event the profile cannot read and must not pass (on_unsupported_body:
		// block): refused as such a whole body is, after the status went out.
		o := refused(policy.CodeBodyTooLarge, unsupported.Error()+"; the stream was cut off")
		o.cut = true
		return o, true
	}
	return outcome{}, false
}
