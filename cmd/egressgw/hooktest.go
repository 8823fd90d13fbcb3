package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/egressgw/egressgw/hooks"
)

// requestFixture is a request as `hook test` reads it from JSON. Body is
// the raw body; JSON, when present instead, is encoded as the body.
type requestFixture struct {
	Method  string              `json:"method"`
	URL     string              `json:"url"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
	JSON    json.RawMessage     `json:"json,omitempty"`
}

type responseFixture struct {
	Status  int                 `json:"status"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
	JSON    json.RawMessage     `json:"json,omitempty"`
}

// hookTest runs a hook script offline against fixtures, for connector
// authors: the edited request or response, the deny reason, or the error
// with the script's line.
func hookTest(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("hook test", stderr)
	scriptPath := fs.String("script", "", "the hook script (.tengo)")
	requestPath := fs.String("request", "", "request fixture (JSON); default: GET https://api.example.com/")
	responsePath := fs.String("response", "", "response fixture (JSON); given, the script runs as a response hook")
	eventsPath := fs.String("events", "", "streamed body fixture (server-sent events, or NDJSON when named .ndjson or .jsonl); given, the script runs once per event")
	tenant := fs.String("tenant", "test-tenant", "tenant id the script sees")
	connector := fs.String("connector", "test-connector", "connector name the script sees")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || *scriptPath == "" {
		fmt.Fprintln(stderr, hookTestUsage)
		return exitUsage
	}
	src, err := os.ReadFile(*scriptPath)
	if err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	script, err := compileForHookTest(*scriptPath, src, *eventsPath != "" || *responsePath != "", *eventsPath != "")
	if err != nil {
		fmt.Fprintln(stdout, err)
		return exitFail
	}
	req := requestFixture{Method: "GET", URL: "https://api.example.com/"}
	if err := readFixture(*requestPath, &req); err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	hreq, err := req.toHook()
	if err != nil {
		fmt.Fprintln(stderr, "egressgw: request fixture:", err)
		return exitFail
	}
	rt, err := hooks.NewRuntime(hooks.RuntimeConfig{MaxConcurrent: 1})
	if err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	defer rt.Close()
	meta := hooks.Meta{Tenant: *tenant, Connector: *connector, ConnectorVersion: 1}
	ctx := context.Background()
	if *eventsPath != "" {
		return hookTestEvents(ctx, rt, script, meta, hreq, *responsePath, *eventsPath, stdout, stderr)
	}

	var result any
	var outcome hooks.Outcome
	if *responsePath != "" {
		resp := responseFixture{Status: 200}
		if err := readFixture(*responsePath, &resp); err != nil {
			fmt.Fprintln(stderr, "egressgw:", err)
			return exitFail
		}
		body := []byte(resp.Body)
		if len(resp.JSON) > 0 {
			body = resp.JSON
		}
		var out hooks.Response
		out, outcome, err = rt.RunResponse(ctx, script, meta, hreq, hooks.Response{Status: resp.Status, Headers: resp.Headers, Body: body}, hooks.Limits{})
		result = map[string]any{"response": map[string]any{"status": out.Status, "headers": out.Headers, "body": string(out.Body)}}
	} else {
		var out hooks.Request
		out, outcome, err = rt.RunRequest(ctx, script, meta, hreq, hooks.Limits{})
		result = map[string]any{"request": map[string]any{"method": out.Method, "url": out.URL, "headers": out.Headers, "body": string(out.Body)}}
	}
	if err != nil {
		var runErr *hooks.RunError
		var tooLarge *hooks.BodyTooLargeError
		switch {
		case errors.As(err, &tooLarge):
			fmt.Fprintf(stdout, "body_too_large: %v\n", err)
		case errors.As(err, &runErr):
			fmt.Fprintf(stdout, "hook_failed: %v\n", err)
		default:
			fmt.Fprintf(stdout, "hook_failed: %v\n", err)
		}
		return exitFail
	}
	if outcome.Denied {
		fmt.Fprintf(stdout, "hook_denied: %s\n", outcome.DenyReason)
		return exitOK
	}
	out := result.(map[string]any)
	if len(outcome.DroppedEdits) > 0 {
		out["dropped_edits"] = outcome.DroppedEdits
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return exitFail
	}
	return exitOK
}

const hookTestUsage = "usage: egressgw hook test --script FILE [--request REQ.json] [--response RESP.json] [--events STREAM]"

// compileForHookTest compiles a script as the gateway would: per event
// when events are given. A response script written for per-event runs
// (it uses event) is also run whole, as the gateway runs it on responses
// that are not streamed.
func compileForHookTest(name string, src []byte, response, perEvent bool) (*hooks.Script, error) {
	if perEvent {
		return hooks.CompileEventHook(name, src)
	}
	script, err := hooks.Compile(name, src)
	if err != nil && response {
		if s, eventErr := hooks.CompileEventHook(name, src); eventErr == nil {
			return s, nil
		}
	}
	return script, err
}

// hookTestEvents runs a per-event response hook on every event of a
// streamed body fixture, as the gateway does with
// hooks.response_per_event: the events it leaves go to stdout in the
// fixture's format; a denial or failure ends the stream there.
func hookTestEvents(ctx context.Context, rt *hooks.Runtime, script *hooks.Script, meta hooks.Meta, req hooks.Request,
	responsePath, eventsPath string, stdout, stderr io.Writer) int {
	resp := responseFixture{Status: 200}
	if err := readFixture(responsePath, &resp); err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	stream, err := os.ReadFile(eventsPath)
	if err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	var contentType string
	if values := resp.Headers["Content-Type"]; len(values) > 0 {
		contentType = values[0]
	}
	format := eventFormatOf(eventsPath, contentType)
	if contentType == "" {
		if resp.Headers == nil {
			resp.Headers = map[string][]string{}
		}
		resp.Headers["Content-Type"] = []string{contentTypeOf(format)}
	}
	hook, err := rt.NewEventHook(script, meta, req, hooks.Response{Status: resp.Status, Headers: resp.Headers}, format, hooks.Limits{})
	if err != nil {
		fmt.Fprintf(stdout, "hook_failed: %v\n", err)
		return exitFail
	}
	events := readEvents(format, stream)
	out := 0
	for i, ev := range events {
		n := i + 1
		result, outcome, err := hook.Run(ctx, ev)
		var tooLarge *hooks.BodyTooLargeError
		switch {
		case errors.As(err, &tooLarge):
			fmt.Fprintf(stdout, "body_too_large: event %d: %v\n", n, err)
			return exitFail
		case err != nil:
			fmt.Fprintf(stdout, "hook_failed: event %d: %v\n", n, err)
			return exitFail
		case outcome.Denied:
			fmt.Fprintf(stdout, "hook_denied: event %d: %s\n", n, outcome.DenyReason)
			fmt.Fprintf(stderr, "the stream ends at event %d of %d: a client's connection is aborted there\n", n, len(events))
			return exitOK
		case outcome.EventDropped:
			fmt.Fprintf(stderr, "event %d: dropped\n", n)
			continue
		}
		if len(outcome.DroppedEdits) > 0 {
			fmt.Fprintf(stderr, "event %d: dropped edits: %s\n", n, strings.Join(outcome.DroppedEdits, ", "))
		}
		writeEvent(stdout, format, result)
		out++
	}
	fmt.Fprintf(stderr, "%d events in, %d out (%s)\n", len(events), out, format)
	return exitOK
}

func readFixture(path string, into any) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func (f requestFixture) toHook() (hooks.Request, error) {
	u, err := url.Parse(f.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return hooks.Request{}, fmt.Errorf("url %q: want an absolute http(s) URL", f.URL)
	}
	port := 443
	if u.Scheme == "http" {
		port = 80
	}
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return hooks.Request{}, fmt.Errorf("url %q: bad port", f.URL)
		}
	}
	body := []byte(f.Body)
	if len(f.JSON) > 0 {
		body = f.JSON
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	return hooks.Request{
		Method: f.Method, URL: f.URL, Scheme: u.Scheme, Host: u.Hostname(), Port: port,
		Path: path, Query: u.RawQuery, Headers: f.Headers, Body: body,
	}, nil
}
