package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/redaction"
)

// transformed is what the transform step leaves for the forward step
// besides the request itself.
type transformed struct {
	// bodyHeld says a hook or redaction replaced the request body with
	// one held whole.
	bodyHeld bool
	// answered is the request as the connector's response hook sees it:
	// what left, before injection. Set only where there is such a hook.
	answered *hooks.Request
}

// transformRequest is the request side of the transform step: the hook
// sees what the sandbox sent, then redaction scrubs what will leave. A
// request the hook edited goes on under the edit's decision.
func (ex *exchange) transformRequest(r *http.Request) (transformed, outcome) {
	var out transformed
	edit, o := ex.requestHook(r, &out)
	if !o.ok() {
		return out, o
	}
	if edit.Report && !ex.out.report {
		// Report mode lets the edited request through, as what enforce
		// would deny: without credentials. The rule that let the request
		// in is still the one the audit line names.
		edit.Rule = ex.out.rule
		ex.setDecision(edit)
	}
	if o := ex.redactRequest(r, &out); !o.ok() {
		return out, o
	}
	if c := ex.connector; c != nil && c.Hooks != nil && c.Hooks.Response != nil {
		out.answered = ex.keepForResponseHook(r, c.Hooks.Limits.MaxBodyBytes, &out)
	}
	return out, outcome{}
}

// keepForResponseHook records what leaves for the response hook, body
// included when it fits the hook's max_body_bytes (a larger one is only
// context, not worth holding), and leaves r able to send it all.
func (ex *exchange) keepForResponseHook(r *http.Request, limit int64, out *transformed) *hooks.Request {
	body, tooLarge := readBounded(r.Body, limit)
	switch {
	case tooLarge:
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
		body = nil
	case body != nil:
		out.setRequestBody(r, body)
	}
	req := ex.hookRequest(r, body)
	return &req
}

// hookRequest is r as a script sees it: without the proxy credentials and
// before injection.
func (ex *exchange) hookRequest(r *http.Request, body []byte) hooks.Request {
	headers := r.Header.Clone()
	for name := range headers {
		if strings.HasPrefix(name, "Proxy-") {
			delete(headers, name)
		}
	}
	in := hooks.Request{
		Method: r.Method, Scheme: ex.scheme, Host: ex.host, Port: int(ex.port),
		Path: ex.path, Query: r.URL.RawQuery, Headers: headers, Body: body,
	}
	in.URL = in.Scheme + "://" + net.JoinHostPort(ex.host, itoa(ex.port)) + in.Path
	if in.Query != "" {
		in.URL += "?" + in.Query
	}
	return in
}

// requestHook runs the allowing connector's request hook on r and applies
// its edits. The script sees what the sandbox sent: before injection, and
// without the proxy credentials. An edited method or path is decided again,
// so a hook cannot carry a request outside the connector's rules: it
// returns the edit's decision, the zero Decision when there was no edit.
func (ex *exchange) requestHook(r *http.Request, out *transformed) (edit policy.Decision, o outcome) {
	c := ex.connector
	if c == nil || c.Hooks == nil || c.Hooks.Request == nil {
		return edit, outcome{}
	}
	script, limits := c.Hooks.Request, c.Hooks.Limits
	body, tooLarge := readBounded(r.Body, limits.MaxBodyBytes)
	if tooLarge {
		ex.gw.metrics.hookRun(c.Name, "body_too_large", 0)
		return edit, refused(policy.CodeBodyTooLarge, fmt.Sprintf("the request body is larger than the %d bytes connector %q's hook may read", limits.MaxBodyBytes, c.Name))
	}
	in := ex.hookRequest(r, body)
	result, o := ex.runHook(r.Context(), c, script, func(rt *hooks.Runtime, ctx context.Context, meta hooks.Meta) (hooks.Outcome, error) {
		var err error
		var oc hooks.Outcome
		in, oc, err = rt.RunRequest(ctx, script, meta, in, limits)
		return oc, err
	})
	if !o.ok() {
		return edit, o
	}
	if result.Denied {
		return edit, refused(policy.CodeHookDenied, result.DenyReason)
	}
	if in.Method != r.Method || in.Path != ex.path {
		if err := policy.CheckPath(in.Path); err != nil {
			return edit, refused(policy.CodeHookFailed, fmt.Sprintf("hook %s produced an ambiguous path", script.Name()))
		}
		d := ex.tenant.Decide(policy.Request{Host: ex.host, Port: ex.port, Method: in.Method, Path: in.Path, TLS: ex.scheme == "https"})
		if !d.Allow {
			return edit, refused(d.Code, "after hook "+script.Name()+": "+d.Reason)
		}
		if d.Connector != c {
			// Another rule would allow the edit, but the request carries this
			// connector's credentials, which cover only what it allows.
			return edit, refused(policy.CodeDestinationNotAllowed, fmt.Sprintf(
				"after hook %s: %s %s is not among the methods and paths that connector %q allows", script.Name(), in.Method, in.Path, c.Name))
		}
		edit = d
		edit.Reason = "after hook " + script.Name() + ": " + d.Reason
		ex.method, ex.path = in.Method, in.Path
	}
	target, err := url.ParseRequestURI(in.Path + queryPart(in.Query))
	if err != nil {
		return policy.Decision{}, refused(policy.CodeHookFailed, fmt.Sprintf("hook %s produced an invalid path or query", script.Name()))
	}
	r.Method = in.Method
	r.URL.Path, r.URL.RawPath, r.URL.RawQuery = target.Path, target.RawPath, target.RawQuery
	r.Header = in.Headers
	out.setRequestBody(r, in.Body)
	return edit, outcome{}
}

// responseHook runs the connector's response hook on resp (already
// scrubbed of injected secrets) and applies its edits; answered is the
// request as the hook sees it (transformed.answered).
func (ex *exchange) responseHook(resp *http.Response, answered *hooks.Request) error {
	c := ex.connector
	if c == nil || c.Hooks == nil || c.Hooks.Response == nil {
		return nil
	}
	script, limits := c.Hooks.Response, c.Hooks.Limits
	if err := decodeBody(resp); err != nil {
		return err
	}
	body, tooLarge := readBounded(resp.Body, limits.MaxBodyBytes)
	_ = resp.Body.Close()
	if tooLarge {
		ex.gw.metrics.hookRun(c.Name, "body_too_large", 0)
		return refusedErr(policy.CodeBodyTooLarge, fmt.Sprintf("the response body is larger than the %d bytes connector %q's hook may read", limits.MaxBodyBytes, c.Name))
	}
	req := hooks.Request{Method: ex.method, Scheme: ex.scheme, Host: ex.host, Port: int(ex.port), Path: ex.path}
	if answered != nil {
		req = *answered
	}
	in := hooks.Response{Status: resp.StatusCode, Headers: resp.Header, Body: body}
	result, o := ex.runHook(resp.Request.Context(), c, script, func(rt *hooks.Runtime, ctx context.Context, meta hooks.Meta) (hooks.Outcome, error) {
		var err error
		var oc hooks.Outcome
		in, oc, err = rt.RunResponse(ctx, script, meta, req, in, limits)
		return oc, err
	})
	if !o.ok() {
		return &o
	}
	if result.Denied {
		return refusedErr(policy.CodeHookDenied, result.DenyReason)
	}
	resp.StatusCode, resp.Status = in.Status, strconv.Itoa(in.Status)+" "+http.StatusText(in.Status)
	resp.Header = in.Headers
	setResponseBody(resp, in.Body)
	return nil
}

// runHook runs one script through the gateway's hook runtime, counting the
// run; errors come back as refusals with their code (docs/reference.md,
// "What clients see").
func (ex *exchange) runHook(ctx context.Context, c *policy.Connector, script *hooks.Script,
	run func(*hooks.Runtime, context.Context, hooks.Meta) (hooks.Outcome, error)) (hooks.Outcome, outcome) {
	ex.hooks = append(ex.hooks, script.Name())
	rt := ex.gw.hooks
	if rt == nil {
		// Built without a runtime (Options.Hooks): hooked requests fail
		// closed rather than pass unhooked.
		ex.gw.log.Error("hook runtime unavailable: the gateway was built without one")
		ex.gw.metrics.hookRun(c.Name, "unavailable", 0)
		return hooks.Outcome{}, refused(policy.CodeHookFailed, "the gateway cannot run hooks right now")
	}
	start := ex.gw.now()
	result, err := run(rt, ctx, hooks.Meta{Tenant: ex.tenant.ID, Connector: c.Name, ConnectorVersion: c.Version})
	label, o := ex.hookRunOutcome(script, result, err, false)
	ex.gw.metrics.hookRun(c.Name, label, ex.gw.now().Sub(start))
	return result, o
}

// readBounded reads at most limit bytes of body and reports whether there
// was more; it never holds more than limit+1 bytes.
func readBounded(body io.ReadCloser, limit int64) ([]byte, bool) {
	if body == nil || body == http.NoBody {
		return nil, false
	}
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return data, false
	}
	return data, int64(len(data)) > limit
}

func queryPart(q string) string {
	if q == "" {
		return ""
	}
	return "?" + q
}

// inject sets the allowing connector's credentials on an outgoing request,
// after the request hook, so no script ever sees them. A request that only
// report mode lets through gets none: the connector's credentials cover
// what its rules allow, nothing more. Compression is not requested: what
// comes back is scrubbed of the secrets, and transformed, which a
// compressed body would hide.
func (ex *exchange) inject(h http.Header) {
	ex.setUpstreamRequestID(h)
	c := ex.connector
	if c == nil {
		return
	}
	if !ex.out.report {
		for _, ih := range c.Inject {
			h.Set(ih.Name, ih.Value)
		}
	}
	if len(c.Inject) > 0 || c.Hooks != nil || c.Redact != nil {
		h.Del("Accept-Encoding")
	}
}

// transformResponse is the response side of the transform step: injected
// secrets scrubbed first, so neither redaction nor the response hook ever
// sees them, then the connector's response redaction, then the hook, which
// sees the request as answered. A stream of events (server-sent events,
// NDJSON) is transformed event by event instead (streamResponseEvents).
func (ex *exchange) transformResponse(resp *http.Response, answered *hooks.Request) error {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Only the head is still HTTP: the policy let the switch through
		// (upgrade: true), and the connection changes hands after it.
		if c := ex.connector; c != nil && c.Scrubber != nil {
			c.Scrubber.Headers(resp.Header)
		}
		return nil
	}
	if format := ex.responseEventFormat(resp); format != redaction.NotEvents {
		return ex.streamResponseEvents(resp, format, answered)
	}
	if err := scrubResponse(resp, ex.connector); err != nil {
		return err
	}
	if err := ex.redactResponse(resp); err != nil {
		return err
	}
	return ex.responseHook(resp, answered)
}

// redactRequest applies the connector's request redaction to what leaves:
// after the request hook, so a script cannot put back what redaction
// removes, and before injection, so the injected credential is not
// redacted away. A body it cannot inspect whole is refused, never sent;
// an NDJSON or JSON Lines body not already held is redacted line by line
// as it goes up (streamRequestEvents).
func (ex *exchange) redactRequest(r *http.Request, out *transformed) outcome {
	c := ex.connector
	if c == nil || c.Redact == nil || len(c.Redact.Request) == 0 {
		return outcome{}
	}
	chain := c.Redact.Request
	ex.recordRedactions(chain.Headers(r.Header))
	query, rep := chain.Query(r.URL.RawQuery)
	r.URL.RawQuery = query
	ex.recordRedactions(rep)
	if !chain.InspectsBody() || r.Body == nil || r.Body == http.NoBody {
		return outcome{}
	}
	if enc := r.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		return refused(policy.CodeBodyTooLarge, "a "+enc+"-encoded request body cannot be redacted; send it uncompressed")
	}
	if !out.bodyHeld && redaction.EventFormatOf(r.Header.Get("Content-Type")) == redaction.JSONLines {
		ex.streamRequestEvents(r, chain)
		return outcome{}
	}
	limit := ex.rt.live.Gateway.Redaction.MaxBodyBytes
	body, tooLarge := readBounded(r.Body, limit)
	if tooLarge {
		return refused(policy.CodeBodyTooLarge, fmt.Sprintf("the request body is larger than redaction.max_body_bytes (%d) and is never sent unredacted", limit))
	}
	redacted, rep, err := chain.Body(r.Header.Get("Content-Type"), body)
	if err != nil {
		return refused(policy.CodeBodyTooLarge, err.Error())
	}
	ex.recordRedactions(rep)
	out.setRequestBody(r, redacted)
	return outcome{}
}

// redactResponse applies the connector's response redaction before the
// response hook sees it.
func (ex *exchange) redactResponse(resp *http.Response) error {
	c := ex.connector
	if c == nil || c.Redact == nil || len(c.Redact.Response) == 0 {
		return nil
	}
	chain := c.Redact.Response
	ex.recordRedactions(chain.Headers(resp.Header))
	if !chain.InspectsBody() {
		return nil
	}
	if err := decodeBody(resp); err != nil {
		return err
	}
	limit := ex.rt.live.Gateway.Redaction.MaxBodyBytes
	body, tooLarge := readBounded(resp.Body, limit)
	_ = resp.Body.Close()
	if tooLarge {
		return refusedErr(policy.CodeBodyTooLarge, fmt.Sprintf("the response body is larger than redaction.max_body_bytes (%d) and is never passed unredacted", limit))
	}
	out, rep, err := chain.Body(resp.Header.Get("Content-Type"), body)
	if err != nil {
		return refusedErr(policy.CodeBodyTooLarge, err.Error())
	}
	ex.recordRedactions(rep)
	setResponseBody(resp, out)
	return nil
}

// setRequestBody replaces a request's body with b, which the transport
// frames itself: no header of the old body's length survives.
func (out *transformed) setRequestBody(r *http.Request, b []byte) {
	r.Body, r.ContentLength = http.NoBody, 0
	if len(b) > 0 {
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
	}
	r.Header.Del("Content-Length")
	out.bodyHeld = true
}

// setResponseBody replaces a response's body with b, framed by its length.
func setResponseBody(resp *http.Response, b []byte) {
	resp.Body = io.NopCloser(bytes.NewReader(b))
	resp.ContentLength = int64(len(b))
	resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
	resp.Header.Del("Transfer-Encoding")
}

func (ex *exchange) recordRedactions(rep redaction.Report) {
	ex.countRedactions(rep)
	ex.redactions = append(ex.redactions, rep.Strings()...)
}
