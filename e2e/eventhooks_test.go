package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

// eventFixtures holds the per-event hook walk-through of
// docs/connector-authors.md, "Hooks on streamed responses".
var eventFixtures = filepath.Join("..", "cmd", "egressgw", "testdata", "hook-events")

// TestHookTestEvents runs `egressgw hook test --events` the way the
// walk-through does: the stream the hook leaves on stdout, in the
// fixture's own format, and what it dropped or refused.
func TestHookTestEvents(t *testing.T) {
	t.Parallel()
	script := filepath.Join(eventFixtures, "llm_events.tengo")
	t.Run("sse", func(t *testing.T) {
		t.Parallel()
		res := egressgw(t, "hook", "test", "--script", script, "--events", filepath.Join(eventFixtures, "chat.sse"),
			"--response", filepath.Join(eventFixtures, "chat.response.json"))
		want := "event: delta\nid: 1\ndata: {\"moderated\":true,\"text\":\"Hello\",\"type\":\"delta\"}\n\n" +
			"event: delta\nid: 2\ndata: {\"moderated\":true,\"text\":\" world\",\"type\":\"delta\"}\n\n" +
			"data: [DONE]\n\n"
		if res.exitCode != 0 || res.stdout != want {
			t.Errorf("exit %d, stdout:\n%s\nwant:\n%s\nstderr:\n%s", res.exitCode, res.stdout, want, res.stderr)
		}
		if !strings.Contains(res.stderr, "event 2: dropped") || !strings.Contains(res.stderr, "4 events in, 3 out") {
			t.Errorf("stderr does not account for the dropped event:\n%s", res.stderr)
		}
	})
	t.Run("ndjson deny ends the stream", func(t *testing.T) {
		t.Parallel()
		res := egressgw(t, "hook", "test", "--script", script, "--events", filepath.Join(eventFixtures, "leak.ndjson"))
		want := "{\"moderated\":true,\"text\":\"a\",\"type\":\"delta\"}\n" +
			"hook_denied: event 2: the upstream streamed what looks like a live API key\n"
		if res.exitCode != 0 || res.stdout != want {
			t.Errorf("exit %d, stdout:\n%s\nwant:\n%s\nstderr:\n%s", res.exitCode, res.stdout, want, res.stderr)
		}
	})
	t.Run("failure names the event and the line", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		bad := filepath.Join(dir, "bad.tengo")
		writeFile(t, bad, "n := 1\nif event.id == \"2\" {\n\tevent.data = n.nope\n}\n")
		res := egressgw(t, "hook", "test", "--script", bad, "--events", filepath.Join(eventFixtures, "chat.sse"))
		if res.exitCode != 1 || !strings.Contains(res.stdout, "hook_failed: event 3: ") || !strings.Contains(res.stdout, "bad.tengo:3") {
			t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s", res.exitCode, res.stdout, res.stderr)
		}
	})
	t.Run("whole response of an event script", func(t *testing.T) {
		t.Parallel()
		// Without --events the same script runs on a whole response, with
		// event undefined.
		res := egressgw(t, "hook", "test", "--script", script, "--response", filepath.Join(eventFixtures, "chat.response.json"))
		if res.exitCode != 0 || !strings.Contains(res.stdout, `"status": 200`) {
			t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s", res.exitCode, res.stdout, res.stderr)
		}
	})
}
