package redaction

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// clientView is what a client acts on in an event: its data, name, id,
// whether it was finished, and its other lines in order (data lines
// are rewritten together, so their place among the others is not kept).
type clientView struct {
	Data, Name, ID string
	HasData, Open  bool
	Others         []string
}

func clientViews(evs []*Event) []clientView {
	var out []clientView
	for _, e := range evs {
		v := clientView{Data: string(e.Data), Name: e.Name, ID: e.ID, HasData: e.hasData, Open: e.unterminated}
		for _, f := range e.Fields {
			if f.Name != "data" {
				v.Others = append(v.Others, f.Name+"\x00"+string(f.Value))
			}
		}
		out = append(out, v)
	}
	return out
}

var sseSeeds = []string{
	"data: hello\n\n",
	"event: up\r\nid: 1\r\nretry: 10\r\ndata: a\r\ndata:  b\r\n\r\n",
	": ping\r\rdata\rdata:x\r\r\n\n",
	"\xef\xbb\xbf\xef\xbb\xbfdata: x",
	"data: {\"t\":\"sk-live-0\"}\n\ndata: {\"t\":\"123456789abcdef\"}\n\n",
	"id: a\x00b\nevent\n:\n\n\n\ndata: \xff\n",
}

func fuzzRoundTrip(t *testing.T, format EventFormat, stream []byte, step uint8) {
	n := int(step%32) + 1
	evs, err := decodeAll(t, format, stream, n, 64)
	var tooLarge *EventTooLargeError
	if err != nil {
		if !errors.As(err, &tooLarge) {
			t.Fatalf("unexpected error %v", err)
		}
		return
	}
	var out []byte
	for _, e := range evs {
		out = AppendEvent(out, e)
	}
	again, err := decodeAll(t, format, out, 1<<20, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := clientViews(again), clientViews(evs); !reflect.DeepEqual(got, want) {
		t.Fatalf("%q re-serialised as %q reads back as\n%#v\nnot\n%#v", stream, out, got, want)
	}
	// Read in one piece, the same events.
	whole, err := decodeAll(t, format, stream, len(stream)+1, 64)
	if err != nil || !reflect.DeepEqual(clientViews(whole), clientViews(evs)) {
		t.Fatalf("%q: pieces of %d read differently from the whole (%v)", stream, n, err)
	}
}

func FuzzDecodeServerSentEvents(f *testing.F) {
	for _, s := range sseSeeds {
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(7))
	}
	f.Fuzz(func(t *testing.T, stream []byte, step uint8) {
		fuzzRoundTrip(t, ServerSentEvents, stream, step)
	})
}

func FuzzDecodeJSONLines(f *testing.F) {
	for _, s := range []string{"{\"a\":1}\n{\"b\":2}\r\n", "\n\n1", "a\rb\r\r\n", "{\"t\":\"\\n\"}"} {
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(5))
	}
	f.Fuzz(func(t *testing.T, stream []byte, step uint8) {
		fuzzRoundTrip(t, JSONLines, stream, step)
	})
}

// FuzzEventReaderSecret spreads a secret over the string values of
// events around fuzzed text and checks that neither the bytes the client
// gets nor the values it puts together hold it.
func FuzzEventReaderSecret(f *testing.F) {
	f.Add("hello ", " world", uint8(3), uint8(2), uint8(5))
	f.Add("sk-live-", "%2d", uint8(1), uint8(1), uint8(1))
	f.Add("\\u00", "", uint8(9), uint8(4), uint8(32))
	f.Fuzz(func(t *testing.T, before, after string, cut, size, step uint8) {
		s := mustScrubber(t, testSecret)
		c := int(cut) % len(testSecret)
		sz := int(size%8) + 1
		parts := []string{before + testSecret[:c]}
		for i := c; i < len(testSecret); i += sz {
			parts = append(parts, testSecret[i:min(i+sz, len(testSecret))])
		}
		parts[len(parts)-1] += after
		var stream strings.Builder
		for _, p := range parts {
			stream.WriteString("data: {\"t\":" + string(appendEscaped([]byte{'"'}, []byte(p))) + "\"}\n\n")
		}
		got, err := readEvents(t, EventStreamConfig{Format: ServerSentEvents, Scrubber: s, MaxEventBytes: 1 << 20}, stream.String(), int(step%64)+1)
		if err != nil {
			t.Fatal(err)
		}
		if _, n := s.Scrub([]byte(got)); n > 0 {
			t.Fatalf("the wire holds the secret: %q", got)
		}
		evs, _ := decodeAll(t, ServerSentEvents, []byte(got), 1<<20, 1<<20)
		var joined bytes.Buffer
		for _, e := range evs {
			for _, str := range eventStrings(e.Data) {
				joined.Write(str.text)
			}
		}
		if _, n := s.Scrub(joined.Bytes()); n > 0 {
			t.Fatalf("the client puts together the secret: %q", joined.String())
		}
	})
}
