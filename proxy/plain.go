package proxy

import (
	"io"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/egressgw/egressgw/policy"
	"github.com/elazarl/goproxy"
)

// onRequest is the request path for plain HTTP, top to bottom:
// identify the tenant, decide, then hand the request to the exchange's
// RoundTrip, which forwards it through the safe dialer.
func (g *Gateway) onRequest(r *http.Request, pctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
	ex := g.begin(r, false)
	ex.scheme = r.URL.Scheme
	pctx.UserData = ex
	if !ex.identify(r) {
		return r, errorResponse(ex, r)
	}
	defaultPort := uint16(80)
	if r.URL.Scheme == "https" {
		defaultPort = 443
	} else if r.URL.Scheme != "http" {
		ex.fail(policy.CodeBadRequest, true, "only http:// URLs can be sent as plain proxy requests; use CONNECT (HTTPS_PROXY) for https")
		return r, errorResponse(ex, r)
	}
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	if err := policy.CheckPath(path); err != nil {
		ex.host = hostOnly(r.URL.Host)
		ex.fail(policy.CodeBadRequest, true, "the request is ambiguous: "+err.Error())
		return r, errorResponse(ex, r)
	}
	if !ex.target(r.URL.Host, defaultPort, path) {
		return r, errorResponse(ex, r)
	}
	if !ex.admit(r.Context(), true) {
		return r, errorResponse(ex, r)
	}
	removeHopByHop(r.Header, isUpgrade(r.Header))
	if refused := ex.transformRequest(r); refused != nil {
		ex.fail(refused.code, true, refused.message)
		return r, errorResponse(ex, r)
	}
	ex.inject(r.Header)
	if r.Body != nil && r.Body != http.NoBody {
		egress, _ := ex.shapers()
		r.Body = &countingReader{ReadCloser: egress.ReadCloser(r.Context(), r.Body), n: &ex.bytesUp}
	}
	pctx.RoundTripper = ex
	return r, nil
}

// RoundTrip forwards an allowed plain request with the transport of the
// exchange's policy generation. The response body is wrapped here, before
// goproxy sees it, so that goproxy keeps the upstream's Content-Length.
func (ex *exchange) RoundTrip(r *http.Request, _ *goproxy.ProxyCtx) (*http.Response, error) {
	resp, err := ex.rt.transport.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
			// goproxy relays an upgraded connection through the body's
			// Write and Read; count both, and close the books at the end.
			ex.status = resp.StatusCode
			resp.Body = &upgradedBody{rwc: rwc, ex: ex}
			return resp, nil
		}
	}
	if err := ex.transformResponse(resp); err != nil {
		_ = resp.Body.Close()
		return nil, err
	}
	_, ingress := ex.shapers()
	resp.Body = &finishingBody{ReadCloser: ingress.ReadCloser(r.Context(), resp.Body), ex: ex}
	return resp, nil
}

// onResponse turns upstream failures into the gateway's JSON errors and
// cleans what the upstream sends back.
func (g *Gateway) onResponse(resp *http.Response, pctx *goproxy.ProxyCtx) *http.Response {
	ex, ok := pctx.UserData.(*exchange)
	if !ok {
		return resp
	}
	if resp == nil {
		ex.upstreamFailed(pctx.Error)
		return errorResponse(ex, pctx.Req)
	}
	if ex.code != policy.CodeOK {
		return resp // the gateway's own refusal, already complete
	}
	ex.status = resp.StatusCode
	removeHopByHop(resp.Header, isUpgrade(resp.Header))
	resp.Header["X-Request-Id"] = []string{ex.id}
	ex.setRateHeaders(resp.Header)
	if resp.ContentLength < 0 && !isUpgrade(resp.Header) {
		// goproxy buffers a response unless it sees a chunked header; an
		// unknown length means a stream, which must flow as it arrives.
		resp.Header.Set("Transfer-Encoding", "chunked")
	}
	return resp
}

// nonProxyHandler answers requests sent to the gateway as if it were a web
// server, which is what a client that mistook it for its upstream does.
func (g *Gateway) nonProxyHandler(w http.ResponseWriter, r *http.Request) {
	ex := g.begin(r, false)
	ex.fail(policy.CodeBadRequest, true, "this is an egress gateway: send requests through it as a proxy (HTTP_PROXY / HTTPS_PROXY), with an absolute URL")
	writeError(w, ex)
}

// hopByHop are the headers that describe one connection, not the message
// (RFC 9110 §7.6.1); forwarding them would let a client steer the gateway's
// own connection to the upstream, or the upstream the client's.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop strips hop-by-hop headers in place; for a protocol upgrade
// (WebSocket) it keeps Connection: Upgrade and Upgrade, which the handshake
// needs end to end.
func removeHopByHop(h http.Header, upgrade bool) {
	for _, value := range h["Connection"] {
		for _, name := range strings.Split(value, ",") {
			name = textproto.TrimString(name)
			if name != "" && !(upgrade && strings.EqualFold(name, "Upgrade")) {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		if upgrade && (name == "Connection" || name == "Upgrade") {
			continue
		}
		if name == "Te" && strings.EqualFold(h.Get("Te"), "trailers") {
			continue // asks for trailers, which the transport handles end to end
		}
		h.Del(name)
	}
}

func isUpgrade(h http.Header) bool {
	for _, v := range h["Connection"] {
		for _, token := range strings.Split(v, ",") {
			if strings.EqualFold(textproto.TrimString(token), "upgrade") {
				return h.Get("Upgrade") != ""
			}
		}
	}
	return false
}

// upgradedBody is the two-way stream of a connection that switched
// protocols (WebSocket), counted in both directions.
type upgradedBody struct {
	rwc io.ReadWriteCloser
	ex  *exchange
}

func (b *upgradedBody) Read(p []byte) (int, error) {
	n, err := b.rwc.Read(p)
	b.ex.bytesDown.Add(int64(n))
	return n, err
}

func (b *upgradedBody) Write(p []byte) (int, error) {
	n, err := b.rwc.Write(p)
	b.ex.bytesUp.Add(int64(n))
	return n, err
}

func (b *upgradedBody) Close() error {
	err := b.rwc.Close()
	b.ex.finish()
	return err
}
