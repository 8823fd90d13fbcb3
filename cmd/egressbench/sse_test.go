package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// readAll reads st to its end and returns how many events came and the
// error it ended with (nil for a whole stream).
func readAll(st *eventStream) (int, error) {
	defer st.close()
	for {
		if _, err := st.next(); err != nil {
			if errors.Is(err, io.EOF) {
				return st.events, nil
			}
			return st.events, err
		}
	}
}

func TestEventStreamsWholeCutAndRedacted(t *testing.T) {
	log := newEventLog()
	mux := http.NewServeMux()
	mux.Handle("/", newUpstreamHandler(log))
	mux.HandleFunc("/cut", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write(bytes.Repeat(sseEvent, 2))
		w.Write(sseEvent[:100])
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	})
	mux.HandleFunc("/masked", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write(bytes.ReplaceAll(bytes.Repeat(sseEvent, 3), []byte(sampleEmail), []byte("[REDACTED:email]")))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := context.Background()
	open := func(t *testing.T, path string, want int, wantEmail bool) *eventStream {
		t.Helper()
		st, err := openEventStream(ctx, srv.Client(), srv.URL+path, want, wantEmail, nil)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	t.Run("whole", func(t *testing.T) {
		if n, err := readAll(open(t, pathEvents+"?events=5", 5, true)); n != 5 || err != nil {
			t.Errorf("%d events, %v; want 5 and a clean end", n, err)
		}
	})
	t.Run("fewer than sent", func(t *testing.T) {
		if n, err := readAll(open(t, pathEvents+"?events=3", 5, true)); n != 3 || err == nil || !strings.Contains(err.Error(), "3 of 5") {
			t.Errorf("%d events, %v; want an error after 3 of 5", n, err)
		}
	})
	t.Run("more than sent", func(t *testing.T) {
		if _, err := readAll(open(t, pathEvents+"?events=3", 2, true)); err == nil {
			t.Error("a third event of a stream of two was accepted")
		}
	})
	t.Run("cut inside an event", func(t *testing.T) {
		if n, err := readAll(open(t, "/cut", 5, true)); n != 2 || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%d events, %v; want 2 and unexpected EOF", n, err)
		}
	})
	t.Run("redacted where it should not be", func(t *testing.T) {
		if n, err := readAll(open(t, "/masked", 3, true)); n != 1 || err == nil || !strings.Contains(err.Error(), "masked") {
			t.Errorf("%d events, %v; want the first refused as masked", n, err)
		}
	})
	t.Run("in clear where it should be redacted", func(t *testing.T) {
		if n, err := readAll(open(t, pathEvents+"?events=2", 2, false)); n != 1 || err == nil || !strings.Contains(err.Error(), "in clear") {
			t.Errorf("%d events, %v; want the first refused as in clear", n, err)
		}
	})
	t.Run("masked as expected", func(t *testing.T) {
		if n, err := readAll(open(t, "/masked", 3, false)); n != 3 || err != nil {
			t.Errorf("%d events, %v; want 3 and a clean end", n, err)
		}
	})
	if len(sseEvent) != sseEventSize {
		t.Errorf("an event is %d bytes, want %d", len(sseEvent), sseEventSize)
	}
}

// A stream whose events all arrive when it ends (a response redacted
// whole) is measured, not waited on forever: every event written in the
// window is counted with its full delay, and the measurement ends.
func TestTimeToEventOfAStreamDeliveredAtItsEnd(t *testing.T) {
	log := newEventLog()
	events := serveEvents(log)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		held := httptest.NewRecorder()
		events(held, r) // the whole stream, paced as ever, held back
		w.Header().Set("Content-Type", held.Header().Get("Content-Type"))
		w.Write(held.Body.Bytes())
	}))
	defer srv.Close()
	env := &benchEnv{
		opts:      options{streams: 2, window: window{warmup: 50 * time.Millisecond, measure: 200 * time.Millisecond}},
		up:        &upstreams{tlsAddr: srv.Listener.Addr().String(), events: log},
		clientTLS: srv.Client().Transport.(*http.Transport).TLSClientConfig,
	}
	s := &session{env: env}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := measureTimeToEvent(ctx, s, sseSideOf(&runningTarget{name: targetDirect}, credentials{}, false))
	if r.errors != 0 || len(r.latencies) == 0 {
		t.Fatalf("%d samples, %s", len(r.latencies), r.errorSummary())
	}
	// Events written in the window wait at least for the rest of their
	// stream: the first stream's last event comes a whole stream after
	// its first, and the window ends a quarter of a stream in.
	floor := (pacedEventsPerStream-1)*pacedEventInterval - env.opts.window.total()
	if got := r.latencies[0]; got < floor {
		t.Errorf("shortest time to event %v; a stream delivered at its end cannot bring an event of the window sooner than %v", got, floor)
	}
	if ctx.Err() != nil {
		t.Fatal("the measurement ran into the test's own deadline")
	}
}
