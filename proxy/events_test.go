package proxy

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// eventsSecret is what the events fixture's connector injects.
const eventsSecret = "sk-live-4c0ffee0123456789abc"

// eventsOrigin is an upstream whose streams the test paces: each event
// after the first waits for the test to ask for it, so a test can tell
// whether the client had an event before the upstream sent the next.
type eventsOrigin struct {
	next chan struct{} // one receive per event after the first
	mu   sync.Mutex
	// lines are the NDJSON lines an upload delivered, as they came.
	lines chan string
}

func (o *eventsOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	send := func(events ...string) {
		for i, ev := range events {
			if i > 0 {
				select {
				case <-o.next:
				case <-r.Context().Done():
					return
				}
			}
			if _, err := io.WriteString(w, ev); err != nil || rc.Flush() != nil {
				return
			}
		}
	}
	switch r.URL.Path {
	case "/sse":
		w.Header().Set("Content-Type", "text/event-stream")
		send(
			"data: {\"to\":\"jane@example.com\",\"t\":\"hi\"}\n\n",
			// A model streaming the key it was sent, a token per event.
			"data: {\"t\":\"your key is "+eventsSecret[:9]+"\"}\n\n",
			"data: {\"t\":\""+eventsSecret[9:]+"\"}\n\n",
			"event: done\ndata: [DONE] mail bob@example.com\n\n",
		)
	case "/sse-gzip":
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		fmt.Fprintf(zw, "data: {\"to\":\"jane@example.com\"}\n\ndata: %s\n\n", eventsSecret)
		zw.Close()
	case "/ndjson":
		w.Header().Set("Content-Type", "application/x-ndjson")
		send("{\"to\":\"jane@example.com\"}\n", "{\"key\":\""+eventsSecret+"\"}\n")
	case "/big":
		w.Header().Set("Content-Type", "text/event-stream")
		send("data: small\n\n", "data: "+strings.Repeat("x", 8<<10)+"\n\n")
	case "/deep":
		w.Header().Set("Content-Type", "text/event-stream")
		send("data: {\"to\":\"jane@example.com\"}\n\n", "data: "+strings.Repeat("[", 1100)+strings.Repeat("]", 1100)+"\n\n")
	case "/upload":
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			o.lines <- sc.Text()
		}
		io.WriteString(w, "ok")
	}
}

type eventsFixture struct {
	g      *pathGateway
	origin *eventsOrigin
	up     *pathUpstream
	client *http.Client
}

func startEventsFixture(t *testing.T) *eventsFixture {
	t.Helper()
	fx := &eventsFixture{origin: &eventsOrigin{next: make(chan struct{}), lines: make(chan string, 16)}}
	fx.up = startPathUpstream(t, "127.0.0.1", true, fx.origin)
	fx.g = startPathGateway(t, pathInspecting+`secrets:
  model_key: { file: secrets/model_key }
redaction:
  max_event_bytes: 4KiB
  profiles:
    pii: { detectors: [email], json_fields: [password] }
`, pathInspectingFiles(t, map[string]string{
		"secrets/model_key": eventsSecret,
		"connectors/model.yaml": fmt.Sprintf("name: model\nhosts: [%q]\nports: [%d]\ninspect: true\n", zoneAPI, fx.up.port) +
			"inject: { headers: { Authorization: \"Bearer ${secret:model_key}\" } }\nredact: { request: [pii], response: [pii] }\n",
		// The same upstream under another name, with the key injected
		// and no redaction profile: scrubbed only.
		"connectors/model-raw.yaml": fmt.Sprintf("name: model-raw\nhosts: [%q]\nports: [%d]\ninspect: true\n", zoneSub, fx.up.port) +
			"inject: { headers: { Authorization: \"Bearer ${secret:model_key}\" } }\n",
		"tenants/streamer.yaml": pathStreamer.yaml("connectors: [model, model-raw]\n"),
	}))
	fx.client = fx.g.client(t, pathStreamer, zoneRoots(t))
	return fx
}

// readEvent reads one server-sent event (up to its blank line), failing
// the test if none comes within a generous bound.
func readEvent(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		var ev strings.Builder
		for {
			line, err := r.ReadString('\n')
			ev.WriteString(line)
			if err != nil || line == "\n" {
				got <- ev.String()
				return
			}
		}
	}()
	select {
	case ev := <-got:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event reached the client while the upstream waited for it to be read")
		return ""
	}
}

// Each event reaches the client before the upstream sends the next one,
// redacted, and a secret the upstream spells out a token per event is
// scrubbed from what the client puts together.
func TestPathEventsStreamedOneByOne(t *testing.T) {
	t.Parallel()
	fx := startEventsFixture(t)
	resp, err := fx.client.Get(fx.up.url(zoneAPI, "/sse"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Length") != "" {
		t.Errorf("a redacted stream kept a Content-Length: %v", resp.Header)
	}
	r := bufio.NewReader(resp.Body)
	if ev := readEvent(t, r); ev != "data: {\"to\":\"[REDACTED:email]\",\"t\":\"hi\"}\n\n" {
		t.Fatalf("first event %q", ev)
	}
	// The next event ends in what might begin the key: it is held until
	// the one after settles it, and both then come at once.
	fx.origin.next <- struct{}{}
	fx.origin.next <- struct{}{}
	second, third := readEvent(t, r), readEvent(t, r)
	if second != "data: {\"t\":\"your key is [REDACTED:secret]\"}\n\n" || third != "data: {\"t\":\"\"}\n\n" {
		t.Fatalf("events %q, %q: the key, split across them, is not scrubbed", second, third)
	}
	fx.origin.next <- struct{}{}
	if last := readEvent(t, r); last != "event: done\ndata: [DONE] mail [REDACTED:email]\n\n" {
		t.Fatalf("last event %q", last)
	}
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Fatalf("after the last event: %q, %v", rest, err)
	}
	rec := fx.g.audit.wait(t, "tenant", pathStreamer.id, "path", "/sse")
	if rec["code"] != "ok" || fmt.Sprint(rec["redactions"]) != "[pii:email=2]" {
		t.Errorf("audit line %v: want ok and two emails redacted", rec)
	}
	if n, _ := fx.g.metric(t, "egressgw_redactions_total", map[string]string{"profile": "pii", "detector": "email"}); n != 2 {
		t.Errorf("redactions_total{pii,email} = %v, want 2", n)
	}
}

func TestPathEventsJSONLinesAndGzip(t *testing.T) {
	t.Parallel()
	fx := startEventsFixture(t)
	resp, err := fx.client.Get(fx.up.url(zoneAPI, "/ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(resp.Body)
	if line, err := r.ReadString('\n'); err != nil || line != "{\"to\":\"[REDACTED:email]\"}\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	fx.origin.next <- struct{}{}
	if rest, err := io.ReadAll(r); err != nil || string(rest) != "{\"key\":\"[REDACTED:secret]\"}\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
	resp.Body.Close()

	// A gzip stream is decoded, then redacted and scrubbed as any other.
	req, _ := http.NewRequest(http.MethodGet, fx.up.url(zoneAPI, "/sse-gzip"), nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err = fx.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "data: {\"to\":\"[REDACTED:email]\"}\n\ndata: [REDACTED:secret]\n\n" || resp.Header.Get("Content-Encoding") != "" {
		t.Fatalf("gzip stream: %q, %v, %v", body, err, resp.Header)
	}
}

// An event over redaction.max_event_bytes ends the stream: the client
// has the events before it, then a body cut short, and the audit line
// says event_too_large.
func TestPathEventsOverMaxEventBytes(t *testing.T) {
	t.Parallel()
	fx := startEventsFixture(t)
	resp, err := fx.client.Get(fx.up.url(zoneAPI, "/big"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if ev := readEvent(t, r); ev != "data: small\n\n" {
		t.Fatalf("first event %q", ev)
	}
	fx.origin.next <- struct{}{}
	rest, err := io.ReadAll(r)
	if !errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(string(rest), "xxxx") {
		t.Fatalf("after the oversized event: %d bytes, %v; want the stream cut off, nothing of the event", len(rest), err)
	}
	rec := fx.g.audit.wait(t, "tenant", pathStreamer.id, "path", "/big")
	if rec["code"] != "event_too_large" || rec["decision"] != "deny" || auditNumber(rec, "status") != 200 ||
		!strings.Contains(fmt.Sprint(rec["reason"]), "max_event_bytes (4096)") {
		t.Errorf("audit line %v: want event_too_large", rec)
	}
	if n, _ := fx.g.metric(t, "egressgw_requests_total", map[string]string{"tenant": pathStreamer.id, "code": "event_too_large"}); n != 1 {
		t.Errorf("requests_total{code=event_too_large} = %v, want 1", n)
	}
}

// An NDJSON upload is redacted line by line as it goes up: the upstream
// has the first line, redacted, while the client has not sent the second.
func TestPathEventsUploadRedactedLineByLine(t *testing.T) {
	t.Parallel()
	fx := startEventsFixture(t)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, fx.up.url(zoneAPI, "/upload"), pr)
	req.Header.Set("Content-Type", "application/x-ndjson")
	done := make(chan *http.Response, 1)
	go func() {
		resp, err := fx.client.Do(req)
		if err != nil {
			t.Error(err)
		}
		done <- resp
	}()
	io.WriteString(pw, "{\"from\":\"jane@example.com\",\"password\":\"hunter2\"}\n")
	line := func() string {
		select {
		case l := <-fx.origin.lines:
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("the upstream did not get the line while the upload went on")
			return ""
		}
	}
	if got := line(); got != "{\"from\":\"[REDACTED:email]\",\"password\":\"[REDACTED:password]\"}" {
		t.Fatalf("first line %q", got)
	}
	io.WriteString(pw, "not json, bob@example.com\n")
	if got := line(); got != "not json, [REDACTED:email]" {
		t.Fatalf("second line %q", got)
	}
	pw.Close()
	if resp := <-done; resp == nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("response %v", resp)
	} else {
		resp.Body.Close()
	}
	rec := fx.g.audit.wait(t, "tenant", pathStreamer.id, "path", "/upload")
	if rec["code"] != "ok" || fmt.Sprint(rec["redactions"]) != "[pii:email=2 pii:password=1]" {
		t.Errorf("audit line %v", rec)
	}
}

// An upload line over redaction.max_event_bytes is refused with 413 and
// never reaches the upstream.
func TestPathEventsUploadLineTooLong(t *testing.T) {
	t.Parallel()
	fx := startEventsFixture(t)
	req, _ := http.NewRequest(http.MethodPost, fx.up.url(zoneAPI, "/upload"),
		strings.NewReader("\""+strings.Repeat("y", 8<<10)+"\"\n"))
	req.Header.Set("Content-Type", "application/jsonl")
	resp, err := fx.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	e := assertPathRefusal(t, resp, http.StatusRequestEntityTooLarge, "body_too_large")
	if !strings.Contains(e.Message, "max_event_bytes (4096)") {
		t.Errorf("message %q", e.Message)
	}
	select {
	case l := <-fx.origin.lines:
		t.Fatalf("the upstream got %d bytes of the line", len(l))
	default:
	}
	fx.g.audit.wait(t, "tenant", pathStreamer.id, "path", "/upload", "code", "body_too_large")
}

// Without a redaction profile, an injecting connector's streams are
// scrubbed event by event too: an ordinary event is not held back for
// the bytes of a secret that might follow.
func TestPathEventsScrubbedWithoutProfile(t *testing.T) {
	t.Parallel()
	fx := startEventsFixture(t)
	resp, err := fx.client.Get(fx.up.url(zoneSub, "/sse"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if ev := readEvent(t, r); ev != "data: {\"to\":\"jane@example.com\",\"t\":\"hi\"}\n\n" {
		t.Fatalf("first event %q", ev)
	}
	fx.origin.next <- struct{}{}
	fx.origin.next <- struct{}{}
	fx.origin.next <- struct{}{}
	rest, err := io.ReadAll(r)
	if err != nil || strings.Contains(string(rest), eventsSecret[9:]) || !strings.Contains(string(rest), "[REDACTED:secret]") {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

// An event that a blocking profile cannot read (JSON nested deeper than
// redaction follows) ends the stream as such a whole body is refused:
// body_too_large, the client's connection aborted, nothing of the event
// delivered.
func TestPathEventsUnsupportedEventUnderBlockingProfile(t *testing.T) {
	t.Parallel()
	origin := &eventsOrigin{next: make(chan struct{}), lines: make(chan string, 16)}
	up := startPathUpstream(t, "127.0.0.1", true, origin)
	g := startPathGateway(t, pathInspecting+`redaction:
  profiles:
    strict: { detectors: [email], on_unsupported_body: block }
`, pathInspectingFiles(t, map[string]string{
		"connectors/model.yaml": fmt.Sprintf("name: model\nhosts: [%q]\nports: [%d]\ninspect: true\n", zoneAPI, up.port) +
			"redact: { response: [strict] }\n",
		"tenants/streamer.yaml": pathStreamer.yaml("connectors: [model]\n"),
	}))
	client := g.client(t, pathStreamer, zoneRoots(t))
	resp, err := client.Get(up.url(zoneAPI, "/deep"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if ev := readEvent(t, r); ev != "data: {\"to\":\"[REDACTED:email]\"}\n\n" {
		t.Fatalf("first event %q", ev)
	}
	origin.next <- struct{}{}
	rest, err := io.ReadAll(r)
	if !errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(string(rest), "[[[") {
		t.Fatalf("after the unreadable event: %q, %v; want the stream cut off, nothing of the event", rest, err)
	}
	rec := g.audit.wait(t, "tenant", pathStreamer.id, "path", "/deep")
	if rec["code"] != "body_too_large" || rec["decision"] != "deny" || auditNumber(rec, "status") != 200 ||
		!strings.Contains(fmt.Sprint(rec["reason"]), "strict") {
		t.Errorf("audit line %v: want body_too_large naming the profile", rec)
	}
}
