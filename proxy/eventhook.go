package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/redaction"
)

// Per-event response hooks (hooks.response_per_event): the connector's
// response script runs once on each event of a streamed response, as the
// event loop hands it on, instead of once on the whole body
// (docs/connector-authors.md, "Hooks on streamed responses"). The client
// has its status before the first event, so a run that denies or fails
// cannot be answered: it ends the stream, the client's connection is
// aborted, and the audit line says why.

// responseHookPerEvent reports whether the connector's response script
// runs per event on a streamed body (a format other than NotEvents), so
// the body is not held whole for it.
func (ex *exchange) responseHookPerEvent() bool {
	c := ex.connector
	return c != nil && c.Hooks != nil && c.Hooks.Response != nil && c.Hooks.ResponsePerEvent
}

// responseEventHook returns the function the event loop runs on each
// event of resp's streamed body (redaction.EventStreamConfig.PerEvent),
// or nil where the connector has no per-event response hook. resp's head
// must be as the client gets it (scrubbed, redacted): the script sees its
// status and headers. answered is the request as it left
// (transformed.answered). The function keeps an event (edited in place)
// or drops it; its error ends the stream, with the outcome that
// eventHookEnded reads back.
func (ex *exchange) responseEventHook(resp *http.Response, answered *hooks.Request, format redaction.EventFormat) func(context.Context, *redaction.Event) (bool, error) {
	if !ex.responseHookPerEvent() {
		return nil
	}
	c := ex.connector
	script, limits := c.Hooks.Response, c.Hooks.Limits
	// Named once however many events run it: the audit line lists
	// scripts, not runs.
	ex.hooks = append(ex.hooks, script.Name())
	rt := ex.gw.hooks
	if rt == nil {
		return func(context.Context, *redaction.Event) (bool, error) {
			ex.gw.log.Error("hook runtime unavailable: the gateway was built without one")
			ex.gw.metrics.hookRun(c.Name, "unavailable", 0)
			return false, endStream(refused(policy.CodeHookFailed, "the gateway cannot run hooks right now"))
		}
	}
	req := hooks.Request{Method: ex.method, Scheme: ex.scheme, Host: ex.host, Port: int(ex.port), Path: ex.path}
	if answered != nil {
		req = *answered
	}
	meta := hooks.Meta{Tenant: ex.tenant.ID, Connector: c.Name, ConnectorVersion: c.Version}
	hook, err := rt.NewEventHook(script, meta, req, hooks.Response{Status: resp.StatusCode, Headers: resp.Header}, hookEventFormat(format), limits)
	if err != nil {
		return func(context.Context, *redaction.Event) (bool, error) {
			label, o := ex.hookRunOutcome(script, hooks.Outcome{}, err, true)
			ex.gw.metrics.hookRun(c.Name, label, 0)
			return false, endStream(o)
		}
	}
	return func(ctx context.Context, ev *redaction.Event) (bool, error) {
		start := ex.gw.now()
		out, result, err := hook.Run(ctx, hooks.Event{Data: ev.Data, Type: ev.Name, ID: ev.ID})
		label, o := ex.hookRunOutcome(script, result, err, true)
		ex.gw.metrics.hookRun(c.Name, label, ex.gw.now().Sub(start))
		switch {
		case !o.ok():
			return false, endStream(o)
		case result.Denied:
			return false, endStream(refused(policy.CodeHookDenied, ex.scrubbed(result.DenyReason)))
		case result.EventDropped:
			return false, nil
		}
		if result.BodyChanged {
			ev.Data = out.Data
		}
		return true, nil
	}
}

// hookRunOutcome is the metric label and the outcome of one hook run,
// whole-body (runHook) or per event: a body or event over the hook's
// max_body_bytes, a failed run (its message scrubbed), or a denial, which
// the caller acts on.
func (ex *exchange) hookRunOutcome(script *hooks.Script, result hooks.Outcome, err error, perEvent bool) (string, outcome) {
	var tooLarge *hooks.BodyTooLargeError
	var failed *hooks.RunError
	switch {
	case errors.As(err, &tooLarge) && perEvent:
		return "body_too_large", refused(policy.CodeBodyTooLarge, fmt.Sprintf(
			"an event of %d bytes is larger than the %d bytes hook %s may read", tooLarge.Size, tooLarge.Limit, script.Name()))
	case errors.As(err, &tooLarge):
		return "body_too_large", refused(policy.CodeBodyTooLarge, tooLarge.Error())
	case errors.As(err, &failed):
		return failed.Kind.String(), refused(policy.CodeHookFailed, ex.scrubbed(failed.Error()))
	case err != nil:
		return "error", refused(policy.CodeHookFailed, "hook "+script.Name()+" failed")
	case result.Denied:
		return "denied", outcome{}
	}
	return "ok", outcome{}
}

// scrubbed is a message a script may have built from what it read, with
// the connector's injected secrets removed, since the message goes to
// the audit line and the client: a per-event script reads events before
// the scrubbing across events.
func (ex *exchange) scrubbed(msg string) string {
	if c := ex.connector; c != nil && c.Scrubber != nil {
		msg, _ = c.Scrubber.ScrubString(msg)
	}
	return msg
}

// streamEnd carries the outcome of a per-event run that ended a stream
// out of the event loop, as the error of its read.
type streamEnd struct{ o outcome }

func endStream(o outcome) error { return &streamEnd{o: o} }

func (e *streamEnd) Error() string { return e.o.Error() }

// eventHookEnded is the outcome of a stream that a per-event run ended,
// false for any other error. The client has its status and part of the
// body, so the outcome aborts its connection (outcome.replied).
func eventHookEnded(err error) (outcome, bool) {
	var end *streamEnd
	if !errors.As(err, &end) {
		return outcome{}, false
	}
	o := end.o
	o.cut = true
	o.reason += "; the stream was cut off"
	return o, true
}

// hookEventFormat is the hooks package's name for a stream's format.
func hookEventFormat(f redaction.EventFormat) hooks.EventFormat {
	if f == redaction.JSONLines {
		return hooks.EventFormatNDJSON
	}
	return hooks.EventFormatSSE
}
