package hooks

import (
	"bufio"
	"bytes"
	"reflect"
	"testing"
	"time"
)

func TestWireRoundTrip(t *testing.T) {
	run := &runFrame{
		flags: flagSource | flagResponse, key: scriptKey{1, 2, 3}, name: "hooks/a.tengo", source: []byte("x := 1"),
		limits: Limits{MaxAllocs: 5, MaxMemory: 6 << 20, Timeout: 7 * time.Millisecond, MaxBodyBytes: 8},
		meta:   sampleMeta,
		req:    sampleRequest(),
		resp:   sampleResponse(),
	}
	frame := encodeRunFrame(nil, run)
	payload, err := readFrame(bufio.NewReader(bytes.NewReader(frame)), len(frame))
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeRunFrame(payload)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, run) {
		t.Errorf("run frame changed in transit:\n got %+v\nwant %+v", got, run)
	}

	reply := &replyFrame{status: replyOK, retiring: true, method: "PUT", path: "/p", query: "q=1", code: 201,
		headers: map[string][]string{"A": {"1", "2"}}, bodyChanged: true, body: []byte("b"), dropped: []string{"request.host"}}
	gotReply, err := decodeReplyFrame(encodeReplyFrame(nil, reply)[4:])
	if err != nil || !reflect.DeepEqual(gotReply, reply) {
		t.Errorf("reply frame changed in transit: %+v, %v", gotReply, err)
	}

	if _, err := readFrame(bufio.NewReader(bytes.NewReader(frame)), len(frame)-5); err == nil {
		t.Error("a frame over the size limit was read")
	}
}

func TestWireRoundTripEvent(t *testing.T) {
	resp := sampleResponse()
	resp.Body = []byte{} // as decoded: empty, not nil
	req := sampleRequest()
	req.Body = []byte{}
	run := &runFrame{
		flags: flagResponse | flagEvent | flagEventScript, key: scriptKey{4}, limits: DefaultLimits(), meta: sampleMeta,
		req: req, resp: resp, format: EventFormatSSE, event: Event{Data: []byte("a\nb"), Type: "delta", ID: "17"},
	}
	payload := encodeRunFrame(nil, run)[4:]
	got, err := decodeRunFrame(payload)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, run) {
		t.Errorf("event run frame changed in transit:\n got %+v\nwant %+v", got, run)
	}
	for _, reply := range []*replyFrame{
		{status: replyEvent, eventDropped: true},
		{status: replyEvent, bodyChanged: true, body: []byte("new"), dropped: []string{"event.id"}},
	} {
		got, err := decodeReplyFrame(encodeReplyFrame(nil, reply)[4:])
		if err != nil || !reflect.DeepEqual(got, reply) {
			t.Errorf("event reply changed in transit: %+v, %v", got, err)
		}
	}
}

// FuzzDecodeReplyFrame: whatever a worker writes, the gateway's decoder
// returns an error or a frame, never panics or allocates without bound.
func FuzzDecodeReplyFrame(f *testing.F) {
	f.Add(encodeReplyFrame(nil, &replyFrame{status: replyOK, headers: map[string][]string{"A": {"1"}}, bodyChanged: true, body: []byte("x")})[4:])
	f.Add(encodeReplyFrame(nil, &replyFrame{status: replyFailed, kind: FailTimeout, line: 3, message: "m"})[4:])
	f.Add(encodeReplyFrame(nil, &replyFrame{status: replyDenied, reason: "no"})[4:])
	f.Add(encodeReplyFrame(nil, &replyFrame{status: replyEvent, bodyChanged: true, body: []byte("d"), dropped: []string{"event.id"}})[4:])
	f.Add([]byte{replyOK, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, payload []byte) {
		_, _ = decodeReplyFrame(payload)
	})
}

// encodeRunFrame is head and body in one buffer, as the runtime sends them.
func encodeRunFrame(buf []byte, f *runFrame) []byte {
	body := encodeRunBody(nil, f)
	return append(encodeRunHead(buf, f, len(body)), body...)
}
