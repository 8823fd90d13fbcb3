package policy

import (
	"errors"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

func TestResponsePerEvent(t *testing.T) {
	const eventScript = "if event != undefined {\n\tevent.data = \"x\"\n}\n"
	load := func(connector, script string) (*Snapshot, error) {
		return Load(fstest.MapFS{
			"connectors/llm.yaml":    {Data: []byte(connector)},
			"hooks/llm_events.tengo": {Data: []byte(script)},
		}, time.Now())
	}
	t.Run("on", func(t *testing.T) {
		snap, err := load("name: llm\nhosts: [\"api.llm.example\"]\nhooks:\n  response: hooks/llm_events.tengo\n  response_per_event: true\n", eventScript)
		if err != nil {
			t.Fatal(err)
		}
		h := snap.versions["llm"][0].Hooks
		if !h.ResponsePerEvent || h.Response == nil || !h.Response.PerEvent() {
			t.Fatalf("hooks %+v: want the response script compiled for per-event runs", h)
		}
	})
	t.Run("off by default", func(t *testing.T) {
		snap, err := load("name: llm\nhosts: [\"api.llm.example\"]\nhooks:\n  response: hooks/llm_events.tengo\n", "response.headers[\"X\"] = \"1\"\n")
		if err != nil {
			t.Fatal(err)
		}
		if h := snap.versions["llm"][0].Hooks; h.ResponsePerEvent || h.Response.PerEvent() {
			t.Fatalf("hooks %+v: per-event runs without response_per_event", h)
		}
	})
	errorsOf := func(err error) string {
		var le *LoadError
		if !errors.As(err, &le) {
			t.Fatalf("error %v (%T), want a *LoadError", err, err)
		}
		return err.Error()
	}
	t.Run("event variable needs response_per_event", func(t *testing.T) {
		_, err := load("name: llm\nhosts: [\"api.llm.example\"]\nhooks:\n  response: hooks/llm_events.tengo\n", eventScript)
		if got := errorsOf(err); !strings.Contains(got, "hooks/llm_events.tengo:1:") || !strings.Contains(got, "event") {
			t.Errorf("errors %q, want the script's line naming event", got)
		}
	})
	t.Run("wrong type", func(t *testing.T) {
		_, err := load("name: llm\nhosts: [\"api.llm.example\"]\nhooks:\n  response: hooks/llm_events.tengo\n  response_per_event: sometimes\n", eventScript)
		if got := errorsOf(err); !strings.Contains(got, "connectors/llm.yaml:5:") {
			t.Errorf("errors %q, want one at connectors/llm.yaml:5", got)
		}
	})
}

func TestExplainSaysResponseHookRunsPerEvent(t *testing.T) {
	snap := mustLoad(t, map[string]string{
		"connectors/llm.yaml":    "name: llm\nhosts: [\"api.llm.example\"]\nports: [80]\nhooks:\n  response: hooks/llm_events.tengo\n  response_per_event: true\n",
		"hooks/llm_events.tengo": "x := 1\n",
		"tenants/t.yaml":         "id: t\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [llm]\n",
	})
	tenant, _ := snap.Tenant("t")
	tr, err := tenant.ExplainURL("GET", "http://api.llm.example/v1/stream")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tr.Hooks, "response hooks/llm_events.tengo (per event on streamed bodies)") {
		t.Errorf("explain's hooks %q do not say the response script runs per event", tr.Hooks)
	}
}
