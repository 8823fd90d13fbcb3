package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"

	"github.com/egressgw/egressgw/policy"
)

// codeRevoked is the audit-only code of a tunnel or upgraded connection
// the gateway closed while it was open (docs/operators.md): here, one still
// open when the shutdown grace ran out.
const codeRevoked policy.Code = "revoked"

// statusFor maps a code to its HTTP status (SPEC §3).
func statusFor(code policy.Code) int {
	switch code {
	case policy.CodeProxyAuthRequired:
		return http.StatusProxyAuthRequired
	case policy.CodeDestinationNotAllowed, policy.CodeDestinationIPDenied, policy.CodeHookDenied:
		return http.StatusForbidden
	case policy.CodeBadRequest:
		return http.StatusBadRequest
	case policy.CodeRateLimited, policy.CodeConcurrencyLimited:
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
}

// errorResponse builds the gateway's own reply for ex, with the headers of
// SPEC §3. It closes the client connection: after a refusal the client
// should start over rather than reuse a connection in an unknown state.
func errorResponse(ex *exchange, req *http.Request) *http.Response {
	body, _ := json.Marshal(errorBody{
		Error: ex.code, Message: ex.message, Tenant: ex.tenantID(),
		Host: ex.host, Port: ex.port, RequestID: ex.id,
	})
	body = append(body, '\n')
	status := statusFor(ex.code)
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("X-Egressgw-Error", string(ex.code))
	h.Set("X-Request-Id", ex.id)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if ex.code == policy.CodeRateLimited && ex.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(ex.retryAfter))
	}
	if ex.code == policy.CodeProxyAuthRequired {
		h.Set("Proxy-Authenticate", `Basic realm="egressgw"`)
	}
	ex.status = status
	return &http.Response{
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
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
