package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// errUpstreamNoH2 is an upstream that did not choose HTTP/2 by ALPN for a
// request that needs it (gRPC).
var errUpstreamNoH2 = errors.New("the upstream does not offer HTTP/2 (ALPN h2)")

// newGRPCTransport is the transport of gRPC requests: the generation's
// transport (newTransport) that speaks HTTP/2 or nothing. gRPC needs
// HTTP/2 end to end for its trailers and its streams both ways at once;
// sent over HTTP/1.1 it would reach the upstream as a request it cannot
// answer. So the connection's TLS is set up here, and one whose upstream
// did not choose h2 is closed before a byte of the request is sent.
// HTTP/2 without TLS (h2c) is not spoken to upstreams.
func newGRPCTransport(d *dialer, gw policy.Gateway) *http.Transport {
	t := newTransport(d, gw)
	base := t.TLSClientConfig
	t.DialContext = func(context.Context, string, string) (net.Conn, error) {
		return nil, errUpstreamNoH2
	}
	t.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.dialH2(ctx, network, addr, base, gw.DialTimeout)
	}
	return t
}

// dialH2 connects to addr through the dialer, as every upstream
// connection is, and sets up TLS under base offering h2 and http/1.1: an
// upstream with only HTTP/1.1 then completes the handshake and says so,
// rather than failing it with an alert that would read as any other TLS
// failure. The connection is returned only if the upstream chose h2.
func (d *dialer) dialH2(ctx context.Context, network, addr string, base *tls.Config, handshakeTimeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &dialError{code: policy.CodeBadRequest, err: err}
	}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cfg := base.Clone()
	cfg.ServerName = host
	cfg.NextProtos = []string{innerH2, "http/1.1"}
	tc := tls.Client(conn, cfg)
	if handshakeTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, handshakeTimeout)
		defer cancel()
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	if tc.ConnectionState().NegotiatedProtocol != innerH2 {
		_ = tc.Close()
		return nil, errUpstreamNoH2
	}
	return tc, nil
}

// newUpgradeTransport is the transport of protocol upgrades: the
// generation's transport (newTransport) that speaks HTTP/1.1 alone, where
// a 101 exists. Go's transport keeps WebSocket upgrades on HTTP/1.1 by
// itself, but would send any other upgrade over HTTP/2 to an upstream
// that offers it, which refuses such a request.
func newUpgradeTransport(d *dialer, gw policy.Gateway) *http.Transport {
	t := newTransport(d, gw)
	t.ForceAttemptHTTP2 = false
	t.Protocols = new(http.Protocols)
	t.Protocols.SetHTTP1(true)
	return t
}

// transportFor is the transport that sends a request: gRPC's for a gRPC
// request, the upgrades' for a protocol upgrade, the generation's own for
// every other.
func (rt *runtimeState) transportFor(grpc, upgrade bool) *http.Transport {
	switch {
	case grpc:
		return rt.grpcTransport
	case upgrade:
		return rt.upgradeTransport
	}
	return rt.transport
}

// closeIdleConnections retires the idle pooled connections of every
// transport of the generation.
func (rt *runtimeState) closeIdleConnections() {
	rt.transport.CloseIdleConnections()
	rt.grpcTransport.CloseIdleConnections()
	rt.upgradeTransport.CloseIdleConnections()
}
