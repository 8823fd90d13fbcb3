package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/state"
)

// statusFor maps a code to its HTTP status (docs/reference.md, "What
// clients see").
func statusFor(code policy.Code) int {
	switch code {
	case policy.CodeProxyAuthRequired:
		return http.StatusProxyAuthRequired
	case policy.CodeDestinationNotAllowed, policy.CodeDestinationIPDenied, policy.CodeHookDenied:
		return http.StatusForbidden
	case policy.CodeBadRequest:
		return http.StatusBadRequest
	case policy.CodeRateLimited, policy.CodeConcurrencyLimited, policy.CodeBudgetExhausted:
		return http.StatusTooManyRequests
	case policy.CodeQuotaUnavailable:
		return http.StatusServiceUnavailable
	case policy.CodeBodyTooLarge:
		return http.StatusRequestEntityTooLarge
	case policy.CodeUpstreamTimeout:
		return http.StatusGatewayTimeout
	case policy.CodeOK:
		return http.StatusOK
	default: // hook_failed, dns_failure, upstream_unreachable
		return http.StatusBadGateway
	}
}

// errorBody is the JSON every gateway-made response carries.
type errorBody struct {
	Error     policy.Code `json:"error"`
	Message   string      `json:"message"`
	Tenant    string      `json:"tenant,omitempty"`
	Host      string      `json:"host,omitempty"`
	Port      uint16      `json:"port,omitempty"`
	RequestID string      `json:"request_id"`
	// AccessRequest is the access request a destination_not_allowed
	// refusal was recorded as (docs/reference.md).
	AccessRequest *state.RequestRef `json:"access_request,omitempty"`
}

// errorResponse builds the gateway's own reply for ex's outcome, with the
// headers of docs/reference.md, "What clients see". It closes the client
// connection: after a refusal the client should start over rather than
// reuse a connection in an unknown state.
func errorResponse(ex *exchange, req *http.Request) *http.Response {
	o := ex.out
	code := o.Code()
	body, _ := json.Marshal(errorBody{
		Error: code, Message: o.reason, Tenant: ex.tenantID(),
		Host: ex.host, Port: ex.port, RequestID: ex.id,
		AccessRequest: ex.accessRequest,
	})
	body = append(body, '\n')
	status := statusFor(code)
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("X-Egressgw-Error", string(code))
	h.Set("X-Request-Id", ex.id)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if (code == policy.CodeRateLimited || code == policy.CodeBudgetExhausted) && o.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(o.retryAfter))
	}
	if code == policy.CodeProxyAuthRequired {
		h.Set("Proxy-Authenticate", `Basic realm="egressgw"`)
	}
	ex.status = status
	// A CONNECT's status line is all most clients show of a refusal
	// (docs/sandbox-runtimes.md, "What each client prints"); a plain
	// request's body is there to read, so it keeps the standard phrase.
	phrase := http.StatusText(status)
	if ex.tunnel {
		phrase = connectReasonPhrase(code, o.reason)
	}
	return &http.Response{
		Status:        strconv.Itoa(status) + " " + phrase,
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          &finishOnClose{Reader: bytes.NewReader(body), ex: ex},
		ContentLength: int64(len(body)),
		Close:         true,
		Request:       req,
	}
}

// reply ends ex with o and sends the gateway's JSON error for it on w;
// closing the reply closes the exchange's books.
func (ex *exchange) reply(w http.ResponseWriter, o outcome) {
	ex.end(ex.blameStalledBody(o))
	resp := errorResponse(ex, nil)
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.Header().Del("Content-Length")
	// A refusal before the body was read closes the connection rather
	// than wait for the body to read past it (docs/operators.md); an
	// HTTP/2 stream ends alone, and its connection serves the others.
	unread := ex.body.pending()
	if unread && !ex.body.onStream() {
		w.Header().Set("Connection", "close")
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	_ = resp.Body.Close()
	if unread {
		ex.body.abandon()
	}
}

// replyHijacked ends ex with o and sends its error on a connection taken
// over from the HTTP server, and closes it.
func (g *Gateway) replyHijacked(ex *exchange, o outcome, client net.Conn) {
	ex.end(o)
	resp := errorResponse(ex, nil)
	_ = client.SetWriteDeadline(g.now().Add(5 * time.Second))
	_ = resp.Write(client)
	_ = client.Close()
}

// finishOnClose closes the exchange when the proxy is done sending the
// gateway's own reply; its bytes are not upstream traffic and are not counted.
type finishOnClose struct {
	io.Reader
	ex *exchange
}

func (b *finishOnClose) Close() error {
	b.ex.finish()
	return nil
}
