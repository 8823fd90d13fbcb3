//go:build linux

package hooks

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func mustCompileEvents(tb testing.TB, name, src string) *Script {
	tb.Helper()
	s, err := CompileEventHook(name, []byte(src))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func sseResponse() Response {
	return Response{Status: 200, Headers: map[string][]string{"Content-Type": {"text/event-stream"}}}
}

func newTestEventHook(t *testing.T, rt *Runtime, s *Script, format EventFormat, lim Limits) *EventHook {
	t.Helper()
	req := sampleRequest()
	h, err := rt.NewEventHook(s, sampleMeta, req, sseResponse(), format, lim)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestEventHookEdits(t *testing.T) {
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 1})
	cases := []struct {
		name     string
		script   string
		format   EventFormat
		in       Event
		wantData string
		wantDrop bool
		changed  bool
		dropped  []string
	}{
		{
			name:     "data edited",
			script:   `event.data = text.to_upper(event.data)`,
			format:   EventFormatSSE,
			in:       Event{Data: []byte("hello\nworld"), Type: "message", ID: "7"},
			wantData: "HELLO\nWORLD", changed: true,
		},
		{
			name:     "json wins over data",
			script:   `event.json.n = event.json.n + 1; event.data = "ignored"`,
			format:   EventFormatNDJSON,
			in:       Event{Data: []byte(`{"n": 1, "s": "x"}`)},
			wantData: `{"n":2,"s":"x"}`, changed: true,
		},
		{
			name:     "json undefined for text",
			script:   `if event.json != undefined { event.data = "was json" }`,
			format:   EventFormatSSE,
			in:       Event{Data: []byte("[DONE]")},
			wantData: "[DONE]",
		},
		{
			name:     "sees the stream's fields",
			script:   `event.data = event.event + "/" + event.id + "/" + string(response.status) + "/" + response.headers["Content-Type"][0] + "/" + request.path + "/" + tenant.id + "/" + request.body`,
			format:   EventFormatSSE,
			in:       Event{Data: []byte("x"), Type: "delta", ID: "42"},
			wantData: "delta/42/200/text/event-stream//v1/items/acme/", changed: true,
		},
		{
			name:     "ndjson has no event or id",
			script:   `event.data = "[" + event.event + "|" + event.id + "]"`,
			format:   EventFormatNDJSON,
			in:       Event{Data: []byte(`{}`)},
			wantData: "[|]", changed: true,
		},
		{
			name:     "dropped",
			script:   `if event.json.secret { event = undefined }`,
			format:   EventFormatNDJSON,
			in:       Event{Data: []byte(`{"secret": true}`)},
			wantDrop: true,
		},
		{
			name:     "unchanged",
			script:   `x := event.data`,
			format:   EventFormatSSE,
			in:       Event{Data: []byte("same"), Type: "t", ID: "1"},
			wantData: "same",
		},
		{
			name:     "event and id are read-only",
			script:   `event.event = "other"; event.id = "99"`,
			format:   EventFormatSSE,
			in:       Event{Data: []byte("d"), Type: "t", ID: "1"},
			wantData: "d", dropped: []string{"event.event", "event.id"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := mustCompileEvents(t, "hooks/ev.tengo", `text := import("text")`+"\n"+tc.script)
			h := newTestEventHook(t, rt, s, tc.format, Limits{})
			out, oc, err := h.Run(context.Background(), tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if oc.Denied {
				t.Fatalf("denied: %s", oc.DenyReason)
			}
			if oc.EventDropped != tc.wantDrop {
				t.Fatalf("EventDropped = %v, want %v", oc.EventDropped, tc.wantDrop)
			}
			if tc.wantDrop {
				return
			}
			if string(out.Data) != tc.wantData {
				t.Errorf("data = %q, want %q", out.Data, tc.wantData)
			}
			if oc.BodyChanged != tc.changed {
				t.Errorf("BodyChanged = %v, want %v", oc.BodyChanged, tc.changed)
			}
			if out.Type != tc.in.Type || out.ID != tc.in.ID {
				t.Errorf("event/id = %q/%q, want %q/%q", out.Type, out.ID, tc.in.Type, tc.in.ID)
			}
			if strings.Join(oc.DroppedEdits, ",") != strings.Join(tc.dropped, ",") {
				t.Errorf("dropped edits %v, want %v", oc.DroppedEdits, tc.dropped)
			}
		})
	}
}

func TestEventHookDenyAndFailures(t *testing.T) {
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 1})
	run := func(t *testing.T, script string, format EventFormat, ev Event, lim Limits) (Event, Outcome, error) {
		t.Helper()
		h := newTestEventHook(t, rt, mustCompileEvents(t, "hooks/ev.tengo", script), format, lim)
		return h.Run(context.Background(), ev)
	}
	t.Run("deny", func(t *testing.T) {
		_, oc, err := run(t, `if event.json.flagged { deny = "flagged event" }`, EventFormatNDJSON, Event{Data: []byte(`{"flagged": true}`)}, Limits{})
		if err != nil || !oc.Denied || oc.DenyReason != "flagged event" {
			t.Fatalf("outcome %+v, err %v; want denied with the reason", oc, err)
		}
	})
	t.Run("data over max_body_bytes", func(t *testing.T) {
		_, _, err := run(t, `x := 1`, EventFormatSSE, Event{Data: []byte(strings.Repeat("a", 2048))}, Limits{MaxBodyBytes: 1024})
		var tooLarge *BodyTooLargeError
		if !errors.As(err, &tooLarge) || tooLarge.Size != 2048 {
			t.Fatalf("err %v, want a BodyTooLargeError of 2048 bytes", err)
		}
	})
	t.Run("edit over max_body_bytes", func(t *testing.T) {
		_, _, err := run(t, `text := import("text"); event.data = text.repeat("a", 2048)`, EventFormatSSE, Event{Data: []byte("a")}, Limits{MaxBodyBytes: 1024})
		runError(t, err, FailInvalidOutput)
	})
	t.Run("ndjson line break", func(t *testing.T) {
		_, _, err := run(t, `event.data = "a\nb"`, EventFormatNDJSON, Event{Data: []byte(`{}`)}, Limits{})
		re := runError(t, err, FailInvalidOutput)
		if !strings.Contains(re.Message, "line break") {
			t.Errorf("message %q does not say why", re.Message)
		}
	})
	t.Run("sse carriage return", func(t *testing.T) {
		_, _, err := run(t, `event.data = "a\rid: 9"`, EventFormatSSE, Event{Data: []byte("x")}, Limits{})
		runError(t, err, FailInvalidOutput)
	})
	t.Run("event not a map", func(t *testing.T) {
		_, _, err := run(t, `event = 5`, EventFormatSSE, Event{Data: []byte("x")}, Limits{})
		runError(t, err, FailInvalidOutput)
	})
	t.Run("response is read-only", func(t *testing.T) {
		_, _, err := run(t, `response.status = 500`, EventFormatSSE, Event{Data: []byte("x")}, Limits{})
		runError(t, err, FailRuntime)
	})
	t.Run("runtime error", func(t *testing.T) {
		_, _, err := run(t, "x := 1\ny := x.nope.deeper", EventFormatSSE, Event{Data: []byte("x")}, Limits{})
		if re := runError(t, err, FailRuntime); re.Line != 2 {
			t.Errorf("line %d, want 2", re.Line)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		_, _, err := run(t, `for {}`, EventFormatSSE, Event{Data: []byte("x")}, Limits{})
		runError(t, err, FailTimeout)
	})
	t.Run("max_allocs", func(t *testing.T) {
		_, _, err := run(t, `a := []; for i := 0; i < 100000; i++ { a = append(a, {}) }`, EventFormatSSE, Event{Data: []byte("x")}, Limits{MaxAllocs: 1000})
		runError(t, err, FailAllocLimit)
	})
	t.Run("script not compiled for events", func(t *testing.T) {
		_, err := rt.NewEventHook(mustCompile(t, "hooks/plain.tengo", `x := 1`), sampleMeta, sampleRequest(), sseResponse(), EventFormatSSE, Limits{})
		if err == nil {
			t.Fatal("a script compiled without the event variable was accepted for per-event runs")
		}
	})
}

// One event script serves both runs: streamed responses per event, others
// whole, where event is undefined.
func TestEventScriptRunsWholeResponses(t *testing.T) {
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 1})
	s := mustCompileEvents(t, "hooks/both.tengo", `
if event == undefined {
	response.json.whole = true
} else {
	event.data = "per event"
}`)
	out, _, err := rt.RunResponse(context.Background(), s, sampleMeta, sampleRequest(), sampleResponse(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out.Body), `"whole":true`) {
		t.Errorf("whole response body %s, want the whole-body branch", out.Body)
	}
	h := newTestEventHook(t, rt, s, EventFormatSSE, Limits{})
	ev, _, err := h.Run(context.Background(), Event{Data: []byte("x")})
	if err != nil || string(ev.Data) != "per event" {
		t.Fatalf("event %q, err %v", ev.Data, err)
	}
}

// A script that names a top-level variable event keeps compiling as an
// ordinary hook: the variable exists only for per-event scripts.
func TestEventVariableOnlyInEventScripts(t *testing.T) {
	src := "event := 1\nrequest.headers[\"X\"] = string(event)"
	if _, err := Compile("hooks/own.tengo", []byte(src)); err != nil {
		t.Errorf("ordinary hook: %v", err)
	}
	if _, err := CompileEventHook("hooks/own.tengo", []byte(src)); err == nil {
		t.Error("per-event hook that redeclares event compiled")
	}
}
