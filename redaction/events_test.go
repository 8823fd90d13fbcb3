package redaction

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// decodeAll splits stream into events, fed in pieces of size step.
func decodeAll(t testing.TB, format EventFormat, stream []byte, step, limit int) ([]*Event, error) {
	t.Helper()
	d := NewEventDecoder(format, limit)
	var evs []*Event
	for i := 0; ; i += step {
		end := i >= len(stream)
		if !end {
			d.Write(stream[i:min(i+step, len(stream))])
		}
		for {
			ev, err := d.Next(end)
			if err != nil {
				return evs, err
			}
			if ev == nil {
				break
			}
			evs = append(evs, ev)
		}
		if end {
			return evs, nil
		}
	}
}

// view is what a client reads of an event.
type view struct {
	Data   string
	Name   string
	ID     string
	Fields []string
	Open   bool
}

func viewOf(evs []*Event) []view {
	var out []view
	for _, e := range evs {
		v := view{Data: string(e.Data), Name: e.Name, ID: e.ID, Open: e.unterminated}
		for _, f := range e.Fields {
			v.Fields = append(v.Fields, f.Name+"="+string(f.Value))
		}
		out = append(out, v)
	}
	return out
}

func TestDecodeServerSentEvents(t *testing.T) {
	cases := []struct {
		name   string
		stream string
		want   []view
	}{
		{"one event", "data: hello\n\n", []view{{Data: "hello", Fields: []string{"data=hello"}}}},
		{"data lines joined", "data: a\ndata:b\ndata:  c\n\n", []view{{Data: "a\nb\n c", Fields: []string{"data=a", "data=b", "data= c"}}}},
		{"CRLF and CR line ends", "event: up\r\ndata: 1\r\rdata: 2\r\n\r\n", []view{
			{Data: "1", Name: "up", Fields: []string{"event=up", "data=1"}},
			{Data: "2", Fields: []string{"data=2"}},
		}},
		{"comment, id, retry", ": ping\nid: 7\nretry: 100\ndata: x\n\n", []view{{Data: "x", ID: "7", Fields: []string{"= ping", "id=7", "retry=100", "data=x"}}}},
		{"field without colon", "data\n\n", []view{{Data: "", Fields: []string{"data="}}}},
		{"comment-only event", ":keep-alive\n\n", []view{{Fields: []string{"=keep-alive"}}}},
		{"id with NUL ignored", "id: a\x00b\ndata: x\n\n", []view{{Data: "x", Fields: []string{"id=a\x00b", "data=x"}}}},
		{"byte order mark dropped", "\xef\xbb\xbfdata: x\n\n", []view{{Data: "x", Fields: []string{"data=x"}}}},
		{"unterminated rest", "data: a\n\ndata: b", []view{{Data: "a", Fields: []string{"data=a"}}, {Data: "b", Fields: []string{"data=b"}, Open: true}}},
		{"extra blank line", "data: a\n\n\n", []view{{Data: "a", Fields: []string{"data=a"}}, {}}},
	}
	for _, c := range cases {
		for _, step := range []int{1, 2, 3, 1000} {
			t.Run(fmt.Sprintf("%s/step%d", c.name, step), func(t *testing.T) {
				evs, err := decodeAll(t, ServerSentEvents, []byte(c.stream), step, 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				if got := viewOf(evs); !reflect.DeepEqual(got, c.want) {
					t.Fatalf("got %#v\nwant %#v", got, c.want)
				}
			})
		}
	}
}

func TestDecodeJSONLines(t *testing.T) {
	cases := []struct {
		name   string
		stream string
		want   []string
		out    string // re-serialised
	}{
		{"lines", "{\"a\":1}\n{\"b\":2}\n", []string{`{"a":1}`, `{"b":2}`}, "{\"a\":1}\n{\"b\":2}\n"},
		{"CRLF kept", "{\"a\":1}\r\n", []string{`{"a":1}`}, "{\"a\":1}\r\n"},
		{"blank line", "\n{}\n", []string{"", "{}"}, "\n{}\n"},
		{"last line unterminated", "1\n2", []string{"1", "2"}, "1\n2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			evs, err := decodeAll(t, JSONLines, []byte(c.stream), 1, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var out []byte
			for _, e := range evs {
				got = append(got, string(e.Data))
				out = AppendEvent(out, e)
			}
			if !reflect.DeepEqual(got, c.want) || string(out) != c.out {
				t.Fatalf("got %q, %q; want %q, %q", got, out, c.want, c.out)
			}
		})
	}
}

func TestDecodeRefusesEventOverLimit(t *testing.T) {
	for _, c := range []struct {
		format EventFormat
		stream string
	}{
		{ServerSentEvents, "data: 0123456789\n\n"},
		{ServerSentEvents, "data: 01234\ndata: 56789\n\n"},
		{ServerSentEvents, "data: 0123456789012345678901234567890123456789"}, // never ends
		{JSONLines, "\"0123456789\"\n"},
		{JSONLines, "\"0123456789012345678901234567890123456789"},
	} {
		_, err := decodeAll(t, c.format, []byte(c.stream), 4, 12)
		var tooLarge *EventTooLargeError
		if !errors.As(err, &tooLarge) || tooLarge.Limit != 12 {
			t.Errorf("%q: err %v, want EventTooLargeError", c.stream, err)
		}
	}
	// Exactly at the limit passes.
	if _, err := decodeAll(t, ServerSentEvents, []byte("data: 0123\n\n"), 3, 12); err != nil {
		t.Errorf("event of 12 bytes: %v", err)
	}
}

func TestAppendEventRoundTrips(t *testing.T) {
	stream := "event: a\r\nid: 1\r\n: note\r\ndata: x\r\ndata:  y\r\n\r\nretry: 5\n\ndata\n\n"
	evs, err := decodeAll(t, ServerSentEvents, []byte(stream), 1000, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, e := range evs {
		out = AppendEvent(out, e)
	}
	want := "event: a\nid: 1\n: note\ndata: x\ndata:  y\n\nretry: 5\n\ndata:\n\n"
	if string(out) != want {
		t.Fatalf("got %q, want %q", out, want)
	}
	again, err := decodeAll(t, ServerSentEvents, out, 1000, 1<<20)
	if err != nil || !reflect.DeepEqual(viewOf(again), viewOf(evs)) {
		t.Fatalf("re-read %v differs: %#v", err, viewOf(again))
	}
	// Data edited to more lines is written as more data lines.
	evs[0].Data = []byte("1\n2\r\n3")
	if got := string(AppendEvent(nil, evs[0])); got != "event: a\nid: 1\n: note\ndata: 1\ndata: 2\ndata: 3\n\n" {
		t.Fatalf("edited: %q", got)
	}
}

// readEvents runs stream through an EventReader fed in pieces of step
// bytes and returns what comes out.
func readEvents(t testing.TB, cfg EventStreamConfig, stream string, step int) (string, error) {
	t.Helper()
	var src io.Reader = strings.NewReader(stream)
	if step > 0 {
		src = &pieces{data: []byte(stream), step: step}
	}
	out, err := io.ReadAll(NewEventReader(context.Background(), src, cfg))
	return string(out), err
}

type pieces struct {
	data []byte
	step int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.data) == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), p.step)], p.data)
	p.data = p.data[n:]
	return n, nil
}

func TestEventReaderRedactsEachEvent(t *testing.T) {
	pii := mustProfile(t, ProfileConfig{Name: "pii", Detectors: []string{"email"}, JSONFields: []string{"password"}})
	var findings []Report
	cfg := EventStreamConfig{Format: ServerSentEvents, Redact: Chain{pii}, OnRedacted: func(r Report) { findings = append(findings, r) }}
	stream := "data: {\"to\":\"jane@example.com\",\"password\":\"pw\"}\n\n" +
		"event: note\ndata: write to bob@example.com\ndata: today\n\n" +
		": ping\n\n"
	got, err := readEvents(t, cfg, stream, 7)
	if err != nil {
		t.Fatal(err)
	}
	want := "data: {\"to\":\"[REDACTED:email]\",\"password\":\"[REDACTED:password]\"}\n\n" +
		"event: note\ndata: write to [REDACTED:email]\ndata: today\n\n" +
		": ping\n\n"
	if got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if len(findings) != 2 {
		t.Fatalf("findings per event: %v", findings)
	}
}

func TestEventReaderJSONLines(t *testing.T) {
	pii := mustProfile(t, ProfileConfig{Name: "pii", Detectors: []string{"email"}})
	cfg := EventStreamConfig{Format: JSONLines, Redact: Chain{pii}}
	got, err := readEvents(t, cfg, "{\"e\":\"a@example.com\"}\nnot json b@example.com\n{\"n\":1}", 5)
	if err != nil {
		t.Fatal(err)
	}
	if want := "{\"e\":\"[REDACTED:email]\"}\nnot json [REDACTED:email]\n{\"n\":1}"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

const testSecret = "sk-live-0123456789abcdef"

func TestEventReaderScrubsSecretsAcrossEvents(t *testing.T) {
	s := mustScrubber(t, testSecret)
	cases := []struct {
		name   string
		format EventFormat
		stream string
		want   string
	}{
		{"within one event", ServerSentEvents,
			"data: {\"t\":\"key " + testSecret + "\"}\n\n",
			"data: {\"t\":\"key [REDACTED:secret]\"}\n\n"},
		{"token per event, JSON", ServerSentEvents,
			"data: {\"id\":1,\"d\":{\"t\":\"your key: sk-li\"}}\n\n" +
				"data: {\"id\":2,\"d\":{\"t\":\"ve-0123\"}}\n\n" +
				": ping\n\n" +
				"data: {\"id\":3,\"d\":{\"t\":\"456789abcdef done\"}}\n\n",
			"data: {\"id\":1,\"d\":{\"t\":\"your key: [REDACTED:secret]\"}}\n\n" +
				"data: {\"id\":2,\"d\":{\"t\":\"\"}}\n\n" +
				": ping\n\n" +
				"data: {\"id\":3,\"d\":{\"t\":\" done\"}}\n\n"},
		{"token per event, JSON-escaped", ServerSentEvents,
			"data: {\"t\":\"sk-\\u006cive-0\"}\n\n" + "data: {\"t\":\"123456789abcdef\"}\n\n",
			"data: {\"t\":\"[REDACTED:secret]\"}\n\n" + "data: {\"t\":\"\"}\n\n"},
		{"token per event, text", ServerSentEvents,
			"data: sk-live-01\n\ndata: 23456789abcdef!\n\n",
			"data: [REDACTED:secret]\n\ndata: !\n\n"},
		{"percent-encoded across events", ServerSentEvents,
			"data: sk-live%2D01\n\ndata: 23456789abcdef\n\n",
			"data: [REDACTED:secret]\n\ndata:\n\n"},
		{"JSON lines", JSONLines,
			"{\"t\":\"sk-live-0\"}\n{\"t\":\"123456789abcdef\"}\n",
			"{\"t\":\"[REDACTED:secret]\"}\n{\"t\":\"\"}\n"},
		{"prefix only, released at the end", ServerSentEvents,
			"data: sk-live-01\n\n",
			"data: sk-live-01\n\n"},
	}
	for _, c := range cases {
		for _, step := range []int{1, 5, 0} {
			t.Run(fmt.Sprintf("%s/step%d", c.name, step), func(t *testing.T) {
				got, err := readEvents(t, EventStreamConfig{Format: c.format, Scrubber: s}, c.stream, step)
				if err != nil {
					t.Fatal(err)
				}
				if got != c.want {
					t.Fatalf("got  %q\nwant %q", got, c.want)
				}
			})
		}
	}
}

// TestEventReaderReleasesOrdinaryEventsAtOnce: an event goes out before
// the next one is written, unless its end might begin a secret.
func TestEventReaderReleasesOrdinaryEventsAtOnce(t *testing.T) {
	pii := mustProfile(t, ProfileConfig{Name: "pii", Detectors: []string{"email"}})
	pr, pw := io.Pipe()
	r := NewEventReader(context.Background(), pr, EventStreamConfig{
		Format: ServerSentEvents, Redact: Chain{pii}, Scrubber: mustScrubber(t, testSecret),
	})
	go func() {
		_, _ = pw.Write([]byte("data: {\"t\":\"hello s\"}\n\n"))
		_, _ = pw.Write([]byte("data: {\"t\":\"k-live-\"}\n\n"))
		_, _ = pw.Write([]byte("data: {\"t\":\"bye\"}\n\n"))
	}()
	buf := make([]byte, 4096)
	// "hello s" might begin the secret: nothing yet; the second event
	// settles it ("sk-live-" still might), the third releases both.
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "data: {\"t\":\"hello s\"}\n\ndata: {\"t\":\"k-live-\"}\n\ndata: {\"t\":\"bye\"}\n\n" {
		t.Fatalf("first read %q, %v", buf[:n], err)
	}
	go func() {
		_, _ = pw.Write([]byte("data: {\"t\":\"plain\"}\n\n"))
	}()
	n, err = r.Read(buf)
	if err != nil || string(buf[:n]) != "data: {\"t\":\"plain\"}\n\n" {
		t.Fatalf("second read %q, %v", buf[:n], err)
	}
	pw.Close()
	if n, err := r.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("end: %d, %v", n, err)
	}
}

func TestEventReaderEndsOnOversizedEvent(t *testing.T) {
	cfg := EventStreamConfig{Format: ServerSentEvents, MaxEventBytes: 32}
	got, err := readEvents(t, cfg, "data: short\n\ndata: "+strings.Repeat("x", 64)+"\n\n", 0)
	var tooLarge *EventTooLargeError
	if !errors.As(err, &tooLarge) {
		t.Fatalf("err %v", err)
	}
	if got != "data: short\n\n" {
		t.Fatalf("got %q: want the event before the oversized one, and nothing of that", got)
	}
	// Events held back for a possible secret count too.
	cfg.Scrubber = mustScrubber(t, testSecret)
	_, err = readEvents(t, cfg, "data: sk-live\n\n: a\n\n: b\n\n: c\n\n: d\n\n: e\n\n", 0)
	if !errors.As(err, &tooLarge) || !tooLarge.Held {
		t.Fatalf("held: err %v", err)
	}
}

func TestEventReaderPerEvent(t *testing.T) {
	cfg := EventStreamConfig{Format: ServerSentEvents, Scrubber: mustScrubber(t, testSecret),
		PerEvent: func(_ context.Context, ev *Event) (bool, error) {
			if ev.Name == "drop" {
				return false, nil
			}
			ev.Data = append(ev.Data, " "+testSecret...)
			return true, nil
		}}
	got, err := readEvents(t, cfg, "event: drop\ndata: a\n\ndata: b\n\n", 0)
	if err != nil || got != "data: b [REDACTED:secret]\n\n" {
		t.Fatalf("got %q, %v", got, err)
	}
	boom := errors.New("boom")
	cfg.PerEvent = func(context.Context, *Event) (bool, error) { return false, boom }
	if _, err := readEvents(t, cfg, "data: b\n\n", 0); !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
}

func TestEventReaderBrokenSource(t *testing.T) {
	src := io.MultiReader(strings.NewReader("data: a\n\ndata: b"), iotest.ErrReader(io.ErrUnexpectedEOF))
	out, err := io.ReadAll(NewEventReader(context.Background(), src, EventStreamConfig{Format: ServerSentEvents}))
	if !errors.Is(err, io.ErrUnexpectedEOF) || string(out) != "data: a\n\n" {
		t.Fatalf("got %q, %v", out, err)
	}
}

func TestHoldFrom(t *testing.T) {
	s := mustScrubber(t, testSecret)
	cases := []struct {
		text string
		want int // from the end
	}{
		{"nothing here", 0},
		{"x sk-li", 5},
		{"x SK-LI", 5},
		{"x sk-live%2", 9},
		{"x sk\\u00", 6},
		{"x s", 1},
		{"x " + testSecret, 0}, // whole: found, not waited for
		{"x 736b2d6c", 8},      // hex form
	}
	for _, c := range cases {
		b := []byte(c.text)
		if got := len(b) - s.HoldFrom(b); got != c.want {
			t.Errorf("%q: holds %d bytes, want %d", c.text, got, c.want)
		}
	}
	if got := (*SecretScrubber)(nil).HoldFrom([]byte("abc")); got != 3 {
		t.Errorf("nil scrubber holds from %d", got)
	}
}

func TestEventFormatOf(t *testing.T) {
	for ct, want := range map[string]EventFormat{
		"text/event-stream":                ServerSentEvents,
		"Text/Event-Stream; charset=utf-8": ServerSentEvents,
		"application/x-ndjson":             JSONLines,
		"application/jsonl":                JSONLines,
		"application/json":                 NotEvents,
		"":                                 NotEvents,
	} {
		if got := EventFormatOf(ct); got != want {
			t.Errorf("%q: %v, want %v", ct, got, want)
		}
	}
}

// The whole-stream guarantee, checked against Scrub on the client's view:
// however a stream with the secret spread over events is cut into reads,
// neither the wire nor the concatenated data holds the secret.
func TestEventReaderNeverLeaksSplitSecret(t *testing.T) {
	s := mustScrubber(t, testSecret)
	for cut := 1; cut < len(testSecret); cut++ {
		for size := 1; size <= 4; size++ {
			var stream strings.Builder
			stream.WriteString("data: {\"t\":\"" + testSecret[:cut] + "\"}\n\n")
			for i := cut; i < len(testSecret); i += size {
				stream.WriteString("data: {\"t\":\"" + testSecret[i:min(i+size, len(testSecret))] + "\"}\n\n")
			}
			got, err := readEvents(t, EventStreamConfig{Format: ServerSentEvents, Scrubber: s}, stream.String(), 3)
			if err != nil {
				t.Fatal(err)
			}
			evs, _ := decodeAll(t, ServerSentEvents, []byte(got), 1000, 1<<20)
			var joined bytes.Buffer
			for _, e := range evs {
				for _, str := range eventStrings(e.Data) {
					joined.Write(str.text)
				}
			}
			if _, n := s.Scrub(joined.Bytes()); n > 0 || !strings.Contains(joined.String(), SecretMask) {
				t.Fatalf("cut %d size %d: client reads %q", cut, size, joined.String())
			}
		}
	}
}

// The per-event function is a connector's script: it must never see an
// injected secret whole, or it could re-encode it (here: reverse it) past
// the scrubbing that follows it.
func TestEventReaderPerEventSeesNoWholeSecret(t *testing.T) {
	var seen []string
	cfg := EventStreamConfig{Format: ServerSentEvents, Scrubber: mustScrubber(t, testSecret),
		PerEvent: func(_ context.Context, ev *Event) (bool, error) {
			seen = append(seen, string(ev.Data), ev.Name, ev.ID)
			reversed := make([]byte, len(ev.Data))
			for i, c := range ev.Data {
				reversed[len(ev.Data)-1-i] = c
			}
			ev.Data = reversed
			return true, nil
		}}
	got, err := readEvents(t, cfg, "event: "+testSecret+"\nid: "+testSecret+"\ndata: key="+testSecret+"\n\n", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range seen {
		if strings.Contains(s, testSecret) {
			t.Errorf("the per-event function saw the secret: %q", s)
		}
	}
	reversedSecret := []byte(testSecret)
	for i, j := 0, len(reversedSecret)-1; i < j; i, j = i+1, j-1 {
		reversedSecret[i], reversedSecret[j] = reversedSecret[j], reversedSecret[i]
	}
	if strings.Contains(got, string(reversedSecret)) {
		t.Errorf("the secret left reversed: %q", got)
	}
}
