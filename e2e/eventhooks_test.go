package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// chatOrigin streams server-sent events of a chat API: each after the
// first waits for the test to release it, so the test can tell the client
// had an event before the upstream sent the next.
type chatOrigin struct{ next chan struct{} }

func (o *chatOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	events := []string{
		"event: delta\nid: 1\ndata: {\"type\":\"delta\",\"text\":\"Hello\"}\n\n",
		"event: ping\ndata: {\"type\":\"ping\"}\n\n",
		"event: delta\nid: 2\ndata: {\"type\":\"delta\",\"text\":\"here is sk-live-0123\"}\n\n",
		"event: delta\nid: 3\ndata: {\"type\":\"delta\",\"text\":\"never sent\"}\n\n",
	}
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

// TestPerEventHookThroughCurl: curl --no-buffer, through the real
// gateway, inspecting, gets each event as the connector's per-event hook
// leaves it, before the upstream sends the next; a dropped event never
// comes; an event the hook denies ends the transfer as broken (a stream
// reset over HTTP/2, curl exit 92), not as a whole stream, and the audit line says hook_denied.
func TestPerEventHookThroughCurl(t *testing.T) {
	t.Parallel()
	curl := lookPathOrSkip(t, "curl")
	script, err := os.ReadFile(filepath.Join(eventFixtures, "llm_events.tengo"))
	if err != nil {
		t.Fatal(err)
	}
	origin := &chatOrigin{next: make(chan struct{})}
	up := startTLSUpstream(t, "127.0.0.1", origin)
	dir := writeConfig(t, configFiles{
		"gateway.yaml":           inspectingGatewayYAML(""),
		"hooks/llm_events.tengo": string(script),
		"connectors/llm.yaml": yamlf(`
			name: llm
			hosts: [%q]
			ports: [%d]
			inspect: true
			hooks: { response: hooks/llm_events.tengo, response_per_event: true }
		`, hostAPI, up.port),
		"tenants/streamer.yaml": tenantYAML(streamer, "connectors: [llm]\n"),
	})
	if res := egressgw(t, "ca", "init", "--out", filepath.Join(dir, "ca")); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	g := newGateway(t)
	g.start(t, "--config", dir, "--log-format", "json")

	ctx, cancel := context.WithTimeout(context.Background(), scaled(30*time.Second))
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, "-sS", "--no-buffer", "--cacert", filepath.Join(dir, "ca", "ca.pem"),
		"-x", "http://"+g.proxyAddr, "--proxy-user", streamer.tenant+":"+streamer.token, up.url(hostAPI, "/v1/chat"))
	cmd.Env = clientEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		r := bufio.NewReader(stdout)
		for {
			line, err := r.ReadString('\n')
			if line != "" {
				lines <- line
			}
			if err != nil {
				return
			}
		}
	}()
	readEvent := func() string {
		t.Helper()
		var ev strings.Builder
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					return ev.String()
				}
				ev.WriteString(line)
				if line == "\n" {
					return ev.String()
				}
			case <-ctx.Done():
				t.Fatalf("no whole event reached curl (so far %q); stderr: %s", ev.String(), stderr.String())
			}
		}
	}
	if ev := readEvent(); ev != "event: delta\nid: 1\ndata: {\"moderated\":true,\"text\":\"Hello\",\"type\":\"delta\"}\n\n" {
		t.Fatalf("first event %q, want it as the hook left it", ev)
	}
	origin.next <- struct{}{} // the ping, which the hook drops
	origin.next <- struct{}{} // the leak, which the hook denies
	rest := readEvent()
	err = cmd.Wait()
	var exit *exec.ExitError
	// Inside the inspected tunnel curl speaks HTTP/2, where the cut is a
	// stream reset: exit 92 (stream not closed cleanly), never a clean end.
	if !errors.As(err, &exit) || exit.ExitCode() != 92 {
		t.Errorf("curl ended with %v after %q; want exit 92 (stream reset mid-body)\nstderr: %s", err, rest, stderr.String())
	}
	if rest != "" {
		t.Errorf("after the first event curl got %q; want nothing (the ping dropped, the leak denied)", rest)
	}
	rec := g.waitAudit(t, auditWith("tenant", streamer.tenant, "path", "/v1/chat"))
	if rec["code"] != "hook_denied" || !strings.Contains(fmt.Sprint(rec["reason"]), "looks like a live API key") || fmt.Sprint(rec["hooks"]) != "[hooks/llm_events.tengo]" {
		t.Errorf("audit line %v: want hook_denied with the script's reason, the script named once", rec)
	}
}
