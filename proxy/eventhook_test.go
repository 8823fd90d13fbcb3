//go:build linux

package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/redaction"
)

const eventHookSecret = "sk-injected-9f31c0de"

// eventHookScript edits, drops, denies or fails by what the event says.
const eventHookScript = `
if event != undefined {
	if event.data == "drop" {
		event = undefined
	} else if event.data == "fail" {
		x := 1
		event.data = x.nope
	} else if event.data == "deny" || event.data == "` + eventHookSecret + `" {
		deny = "refused: " + event.data
	} else {
		event.data = event.data + " [" + event.event + "]"
	}
}
`

// eventHookExchange is an exchange allowed by connector llm (its
// response script per event when perEvent, injecting eventHookSecret),
// in a gateway whose hooks run in real workers; and the gateway's
// metrics.
func eventHookExchange(t *testing.T, perEvent bool) (*exchange, *prometheus.Registry) {
	t.Helper()
	t.Setenv("EGRESSGW_TEST_LLM_KEY", eventHookSecret)
	connector := "name: llm\nhosts: [\"api.llm.test\"]\ninspect: false\ninject:\n  headers: { Authorization: \"Bearer ${secret:llm_key}\" }\n  allow_plaintext: true\nhooks:\n  response: hooks/llm_events.tengo\n  max_body_bytes: 64\n"
	script := "response.headers[\"X-Whole\"] = \"1\"\n"
	if perEvent {
		connector += "  response_per_event: true\n"
		script = eventHookScript
	}
	snap, err := policy.Load(fstest.MapFS{
		"gateway.yaml":           {Data: []byte("secrets:\n  llm_key: { env: EGRESSGW_TEST_LLM_KEY }\n")},
		"connectors/llm.yaml":    {Data: []byte(connector)},
		"hooks/llm_events.tengo": {Data: []byte(script)},
		"tenants/t.yaml":         {Data: []byte("id: t\nauth: { token_sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }\nconnectors: [llm]\n")},
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rt, err := hooks.NewRuntime(hooks.RuntimeConfig{MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	registry := prometheus.NewRegistry()
	gw, err := New(Options{
		Logger:    slog.New(slog.DiscardHandler),
		Audit:     &pathAudit{},
		Registry:  registry,
		Settings:  snap.Gateway,
		Quota:     quota.NewMemory(quota.MemoryOptions{}),
		Bandwidth: quota.NewBandwidth(quota.BandwidthOptions{}),
		Hooks:     rt,
	})
	if err != nil {
		t.Fatal(err)
	}
	gw.Apply(snap)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gw.Shutdown(ctx)
	})
	tenant, _ := snap.Tenant("t")
	d := tenant.Decide(policy.Request{Host: "api.llm.test", Port: 80, Method: "POST", Path: "/v1/chat"})
	if !d.Allow || d.Connector == nil {
		t.Fatalf("decision %+v, want connector llm", d)
	}
	ex := &exchange{gw: gw, tenant: tenant, connector: d.Connector, method: "POST", scheme: "http", host: "api.llm.test", port: 80, path: "/v1/chat"}
	return ex, registry
}

func hookRunsCounted(t *testing.T, registry *prometheus.Registry, result string) float64 {
	t.Helper()
	families, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "egressgw_hook_runs_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["connector"] == "llm" && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestResponseEventHook(t *testing.T) {
	ex, registry := eventHookExchange(t, true)
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}}
	run := ex.responseEventHook(resp, nil, redaction.ServerSentEvents)
	if run == nil {
		t.Fatal("no per-event function for a connector with hooks.response_per_event")
	}
	ctx := context.Background()

	ev := &redaction.Event{Data: []byte("hello"), Name: "delta", ID: "1"}
	if keep, err := run(ctx, ev); !keep || err != nil || string(ev.Data) != "hello [delta]" {
		t.Errorf("edited event: keep %v, err %v, data %q", keep, err, ev.Data)
	}
	if keep, err := run(ctx, &redaction.Event{Data: []byte("drop")}); keep || err != nil {
		t.Errorf("dropped event: keep %v, err %v", keep, err)
	}

	ends := []struct {
		name, data string
		code       policy.Code
		result     string
	}{
		{"deny", "deny", policy.CodeHookDenied, "denied"},
		{"failure", "fail", policy.CodeHookFailed, "runtime_error"},
		{"event over max_body_bytes", strings.Repeat("x", 65), policy.CodeBodyTooLarge, "body_too_large"},
		{"deny quoting an injected secret", eventHookSecret, policy.CodeHookDenied, "denied"},
	}
	for _, tc := range ends {
		keep, err := run(ctx, &redaction.Event{Data: []byte(tc.data)})
		o, ended := eventHookEnded(err)
		if keep || !ended {
			t.Errorf("%s: keep %v, err %v; want the stream ended", tc.name, keep, err)
			continue
		}
		if o.code != tc.code || !o.replied() {
			t.Errorf("%s: outcome %+v; want %s with the client's connection aborted", tc.name, o, tc.code)
		}
		if strings.Contains(o.reason, eventHookSecret) {
			t.Errorf("%s: audit reason %q holds the injected secret", tc.name, o.reason)
		}
	}
	for result, want := range map[string]float64{"ok": 2, "denied": 2, "runtime_error": 1, "body_too_large": 1} {
		if got := hookRunsCounted(t, registry, result); got != want {
			t.Errorf("hook_runs_total{result=%q} = %v, want %v", result, got, want)
		}
	}
	if len(ex.hooks) != 1 || ex.hooks[0] != "hooks/llm_events.tengo" {
		t.Errorf("audit hooks %v, want the script once for the whole stream", ex.hooks)
	}
	if _, ended := eventHookEnded(context.Canceled); ended {
		t.Error("an error of another kind was taken for a per-event hook's end")
	}
}

func TestResponseEventHookOnlyWhereConnectorSaysSo(t *testing.T) {
	ex, _ := eventHookExchange(t, false)
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}}
	if ex.responseHookPerEvent() || ex.responseEventHook(resp, nil, redaction.ServerSentEvents) != nil {
		t.Error("a connector without hooks.response_per_event runs its response hook per event")
	}
}

// pathEventsHookScript edits, drops and denies events of the events
// origin's streams (events_test.go).
const pathEventsHookScript = `
if event != undefined {
	if event.json != undefined && event.json.key != undefined {
		deny = "the stream leaked " + event.json.key
	} else if event.event == "done" {
		event = undefined
	} else if event.json != undefined && event.json.t == "hi" {
		event.json.t = "HI"
	}
}
`

// startEventHookFixture serves the events origin behind connector
// hooked (inspected, injecting eventsSecret, its response script per
// event), with hooks run in real workers.
func startEventHookFixture(t *testing.T) *eventsFixture {
	t.Helper()
	rt, err := hooks.NewRuntime(hooks.RuntimeConfig{MaxConcurrent: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	fx := &eventsFixture{origin: &eventsOrigin{next: make(chan struct{}), lines: make(chan string, 16)}}
	fx.up = startPathUpstream(t, "127.0.0.1", true, fx.origin)
	fx.g = newPathGateway(t)
	fx.g.hooks = rt
	fx.g.serve(t, pathInspecting+"secrets:\n  model_key: { file: secrets/model_key }\n", pathInspectingFiles(t, map[string]string{
		"secrets/model_key":     eventsSecret,
		"hooks/events.tengo":    pathEventsHookScript,
		"tenants/streamer.yaml": pathStreamer.yaml("connectors: [hooked]\n"),
		"connectors/hooked.yaml": fmt.Sprintf("name: hooked\nhosts: [%q]\nports: [%d]\ninspect: true\n", zoneAPI, fx.up.port) +
			"inject: { headers: { Authorization: \"Bearer ${secret:model_key}\" } }\n" +
			"hooks: { response: hooks/events.tengo, response_per_event: true }\n",
	}))
	fx.client = fx.g.client(t, pathStreamer, zoneRoots(t))
	return fx
}

// Each event reaches the client as the hook leaves it, before the
// upstream sends the next; a dropped event is not sent; what the hook
// passes on is still scrubbed of the injected secret.
func TestPathEventHookStreamsEventByEvent(t *testing.T) {
	t.Parallel()
	fx := startEventHookFixture(t)
	resp, err := fx.client.Get(fx.up.url(zoneAPI, "/sse"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if ev := readEvent(t, r); ev != "data: {\"t\":\"HI\",\"to\":\"jane@example.com\"}\n\n" {
		t.Fatalf("first event %q, want it edited by the hook", ev)
	}
	fx.origin.next <- struct{}{}
	fx.origin.next <- struct{}{}
	second, third := readEvent(t, r), readEvent(t, r)
	if second != "data: {\"t\":\"your key is [REDACTED:secret]\"}\n\n" || third != "data: {\"t\":\"\"}\n\n" {
		t.Fatalf("events %q, %q: the key, split across them, is not scrubbed after the hook", second, third)
	}
	fx.origin.next <- struct{}{}
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Fatalf("after the hook dropped the last event: %q, %v", rest, err)
	}
	rec := fx.g.audit.wait(t, "tenant", pathStreamer.id, "path", "/sse")
	if rec["code"] != "ok" || fmt.Sprint(rec["hooks"]) != "[hooks/events.tengo]" {
		t.Errorf("audit line %v: want ok and the script named once", rec)
	}
	if n, _ := fx.g.metric(t, "egressgw_hook_runs_total", map[string]string{"connector": "hooked", "result": "ok"}); n != 4 {
		t.Errorf("hook_runs_total{hooked,ok} = %v, want one per event (4)", n)
	}
}

// A per-event hook that denies ends the stream: the client has the
// events before it, then its connection is aborted, not ended as if the
// stream were whole; the audit line says hook_denied with a reason that
// holds no injected secret.
func TestPathEventHookDenyAbortsTheStream(t *testing.T) {
	t.Parallel()
	fx := startEventHookFixture(t)
	resp, err := fx.client.Get(fx.up.url(zoneAPI, "/ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	r := bufio.NewReader(resp.Body)
	if line, err := r.ReadString('\n'); err != nil || line != "{\"to\":\"jane@example.com\"}\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	fx.origin.next <- struct{}{}
	rest, err := io.ReadAll(r)
	if err == nil {
		t.Fatalf("the stream ended cleanly after a denied event (rest %q): want the connection aborted", rest)
	}
	if strings.Contains(string(rest), eventsSecret) || strings.Contains(string(rest), "key") {
		t.Errorf("the denied event reached the client: %q", rest)
	}
	rec := fx.g.audit.wait(t, "tenant", pathStreamer.id, "path", "/ndjson")
	if rec["code"] != "hook_denied" || rec["decision"] != "deny" {
		t.Errorf("audit line %v: want deny, hook_denied", rec)
	}
	if reason := fmt.Sprint(rec["reason"]); !strings.Contains(reason, "the stream leaked") || strings.Contains(reason, eventsSecret) {
		t.Errorf("audit reason %q: want the script's reason without the injected secret", reason)
	}
	if n, _ := fx.g.metric(t, "egressgw_hook_runs_total", map[string]string{"connector": "hooked", "result": "denied"}); n != 1 {
		t.Errorf("hook_runs_total{hooked,denied} = %v, want 1", n)
	}
}
