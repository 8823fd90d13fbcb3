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
	tenant := fs.String("tenant", "test-tenant", "tenant id the script sees")
	connector := fs.String("connector", "test-connector", "connector name the script sees")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || *scriptPath == "" {
		fmt.Fprintln(stderr, "usage: egressgw hook test --script FILE [--request REQ.json] [--response RESP.json]")
		return exitUsage
	}
	src, err := os.ReadFile(*scriptPath)
	if err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	script, err := hooks.Compile(*scriptPath, src)
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
