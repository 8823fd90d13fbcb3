package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/egressgw/egressgw/hooks"
)

func TestReadEventFixture(t *testing.T) {
	cases := []struct {
		name   string
		format hooks.EventFormat
		in     string
		want   []hooks.Event
	}{
		{
			name:   "sse fields, multi-line data, comments, CRLF",
			format: hooks.EventFormatSSE,
			in:     ": a comment\r\nevent: delta\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\ndata:first\ndata: second\n\nretry: 10\nunknown: x\ndata\n\n",
			want: []hooks.Event{
				{Data: []byte(`{"a":1}`), Type: "delta", ID: "1"},
				{Data: []byte("first\nsecond")},
				{Data: []byte("")},
			},
		},
		{
			name:   "sse without data is no event; last event without a blank line",
			format: hooks.EventFormatSSE,
			in:     "event: ping\n\ndata: [DONE]",
			want:   []hooks.Event{{Data: []byte("[DONE]")}},
		},
		{
			name:   "sse CR line ends and one space stripped",
			format: hooks.EventFormatSSE,
			in:     "data:  two spaces\r\r",
			want:   []hooks.Event{{Data: []byte(" two spaces")}},
		},
		{
			name:   "ndjson lines, blank lines skipped",
			format: hooks.EventFormatNDJSON,
			in:     "{\"a\":1}\r\n\n{\"b\":2}",
			want:   []hooks.Event{{Data: []byte(`{"a":1}`)}, {Data: []byte(`{"b":2}`)}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := readEvents(tc.format, []byte(tc.in))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("events\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestWriteEventsRoundTrips(t *testing.T) {
	events := []hooks.Event{
		{Data: []byte("one\ntwo"), Type: "delta", ID: "7"},
		{Data: []byte(`{"x":1}`)},
	}
	var sse strings.Builder
	for _, ev := range events {
		writeEvent(&sse, hooks.EventFormatSSE, ev)
	}
	if want := "event: delta\nid: 7\ndata: one\ndata: two\n\ndata: {\"x\":1}\n\n"; sse.String() != want {
		t.Errorf("sse %q, want %q", sse.String(), want)
	}
	if got := readEvents(hooks.EventFormatSSE, []byte(sse.String())); !reflect.DeepEqual(got, events) {
		t.Errorf("read back %q", got)
	}
	var nd strings.Builder
	writeEvent(&nd, hooks.EventFormatNDJSON, events[1])
	if nd.String() != "{\"x\":1}\n" {
		t.Errorf("ndjson %q", nd.String())
	}
}

func TestEventFormatOf(t *testing.T) {
	cases := []struct {
		path, contentType string
		want              hooks.EventFormat
	}{
		{"s.sse", "", hooks.EventFormatSSE},
		{"s.txt", "", hooks.EventFormatSSE},
		{"s.ndjson", "", hooks.EventFormatNDJSON},
		{"s.JSONL", "", hooks.EventFormatNDJSON},
		{"s.txt", "application/x-ndjson; charset=utf-8", hooks.EventFormatNDJSON},
		{"s.ndjson", "text/event-stream", hooks.EventFormatSSE},
	}
	for _, tc := range cases {
		if got := eventFormatOf(tc.path, tc.contentType); got != tc.want {
			t.Errorf("eventFormatOf(%q, %q) = %v, want %v", tc.path, tc.contentType, got, tc.want)
		}
	}
}
