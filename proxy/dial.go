package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/policy"
)

// dialer is the one way the gateway reaches an upstream. Every path (plain
// requests through the transport, tunnels) ends here, so the address check
// runs on every address actually dialled, after DNS: a name that resolves
// to a denied address is refused however it got into the request.
type dialer struct {
	addresses   *allowlist.AddressPolicy
	resolver    *net.Resolver
	dnsTimeout  time.Duration
	dialTimeout time.Duration
	idleTimeout time.Duration
	// heads watches the connections dialRequests makes for a response
	// head within headWait (headwait.go); nil watches none.
	heads    *headWatch
	headWait time.Duration
}

func newDialer(g policy.Gateway, addresses *allowlist.AddressPolicy, heads *headWatch) *dialer {
	return &dialer{
		addresses:   addresses,
		resolver:    g.Resolver(), // the one explain --resolve uses too
		dnsTimeout:  g.DNSTimeout,
		dialTimeout: g.DialTimeout,
		idleTimeout: g.IdleTimeout,
		heads:       heads,
		headWait:    g.ResponseHeaderTimeout,
	}
}

// dialRequests is DialContext for the transport of ordinary requests,
// whose connections bound the wait for a response head (headwait.go);
// newRequestTransport uses it only with a watch and a bound.
func (d *dialer) dialRequests(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		d.heads.watch(c.(*meteredConn), d.headWait)
	}
	return c, err
}

// dialError carries the client-facing code of a failed dial.
type dialError struct {
	code policy.Code
	dns  dnsFault // which DNS failure, when code is dns_failure
	// ownListener: every address refused was one of the gateway's own
	// listeners, which network.allow_cidrs cannot open.
	ownListener bool
	err         error
}

// dnsFault tells apart the DNS failures a client must act on differently:
// a name that does not exist is the client's to fix; a resolver that
// failed or did not answer in network.dns_timeout is the operator's
// (docs/operators.md, "Timeouts").
type dnsFault int

const (
	dnsNotFound       dnsFault = iota // NXDOMAIN, or a name with no address
	dnsResolverFailed                 // SERVFAIL, refused, resolver unreachable
	dnsTimedOut                       // no answer within network.dns_timeout
)

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// DialContext resolves addr's host, drops every address the policy denies,
// and connects to the first remaining one that answers.
func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &dialError{code: policy.CodeBadRequest, err: err}
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, &dialError{code: policy.CodeBadRequest, err: err}
	}
	ips, err := d.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var firstDenied, lastErr error
	ownListener := true
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip.Unmap(), uint16(port))
		if err := d.addresses.Check(ap); err != nil {
			if firstDenied == nil {
				firstDenied = err
			}
			var ae *allowlist.AddressError
			ownListener = ownListener && errors.As(err, &ae) && ae.OwnListener
			continue
		}
		c, err := d.dialAddr(ctx, network, ap)
		if err == nil {
			return newUpstreamConn(c, d.idleTimeout), nil
		}
		lastErr = err
	}
	if lastErr == nil && firstDenied != nil {
		return nil, &dialError{code: policy.CodeDestinationIPDenied, ownListener: ownListener, err: firstDenied}
	}
	if isTimeout(lastErr) {
		return nil, &dialError{code: policy.CodeUpstreamTimeout, err: lastErr}
	}
	return nil, &dialError{code: policy.CodeUpstreamUnreachable, err: lastErr}
}

// dialAddr connects to ap with control as the socket's last check, so
// that no caller can connect to an address the policy denies, whatever it
// checked before.
func (d *dialer) dialAddr(ctx context.Context, network string, ap netip.AddrPort) (net.Conn, error) {
	nd := net.Dialer{Timeout: d.dialTimeout, ControlContext: d.control}
	return nd.DialContext(ctx, network, ap.String())
}

// control re-checks the address the socket is about to connect to. The
// loop above already checked it; this is the last line, on the exact
// address the kernel gets.
func (d *dialer) control(_ context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("unparseable dial address: %w", err)
	}
	return d.addresses.Check(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
}

func (d *dialer) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.dnsTimeout)
	defer cancel()
	ips, err := d.resolver.LookupNetIP(ctx, "ip", host)
	if err == nil && len(ips) == 0 {
		err = &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	if err != nil {
		return nil, &dialError{code: policy.CodeDNSFailure, dns: dnsFaultOf(err), err: err}
	}
	return ips, nil
}

// dnsFaultOf sorts a failed lookup. Go's resolver reports NXDOMAIN as
// IsNotFound and a lookup cut by its context or the resolver's own
// timeout as IsTimeout; anything else (SERVFAIL, REFUSED, a resolver that
// cannot be reached) is the resolver's failure, never the name's.
func dnsFaultOf(err error) dnsFault {
	var de *net.DNSError
	switch {
	case errors.As(err, &de) && de.IsNotFound:
		return dnsNotFound
	case isTimeout(err) || (errors.As(err, &de) && de.IsTimeout):
		return dnsTimedOut
	default:
		return dnsResolverFailed
	}
}

// upstreamTLS verifies upstream certificates against the system roots plus
// the operator's extra roots (roots is nil when there are none, which means
// the system roots); there is deliberately no way to skip verification.
func upstreamTLS(roots *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// classify turns a failed upstream exchange into its outcome: a
// client-facing code and a message that names the destination but never
// the internal error text, which can hold addresses of the gateway's own
// network. An address the gateway never dials, or a request it will not
// send on, is the gateway's refusal; the rest are failures.
func classify(err error, tenant, target string) outcome {
	code, msg := failureMessage(err, tenant, target)
	if code == policy.CodeDestinationIPDenied || code == policy.CodeBadRequest {
		return refused(code, msg)
	}
	return failed(code, msg)
}

func failureMessage(err error, tenant, target string) (policy.Code, string) {
	if errors.Is(err, errBodyStalled) {
		// The client's fault, not the upstream's: it stopped sending.
		return policy.CodeBadRequest, fmt.Sprintf("the request body for %s stalled: no byte arrived for limits.request_body_timeout, so the gateway closed the connection", target)
	}
	var de *dialError
	if errors.As(err, &de) {
		switch de.code {
		case policy.CodeDestinationIPDenied:
			if de.ownListener {
				return de.code, fmt.Sprintf("tenant %q may not reach %s: that is the gateway itself (one of its own listeners), never a destination; send requests through the gateway as the proxy (HTTP_PROXY, HTTPS_PROXY) rather than to it", tenant, target)
			}
			return de.code, fmt.Sprintf("tenant %q may not reach %s: it resolves to an address the gateway never dials (private, loopback, link-local, the gateway host's own addresses or another special-purpose range); if it is meant to be reachable, the operator can add it to network.allow_cidrs", tenant, target)
		case policy.CodeDNSFailure:
			switch de.dns {
			case dnsNotFound:
				return de.code, fmt.Sprintf("the host of %s does not exist (no such host); check the spelling", target)
			case dnsTimedOut:
				return de.code, fmt.Sprintf("the gateway's DNS resolver did not answer in time for the host of %s (network.dns_timeout); retry, and tell the operator if it persists", target)
			default:
				return de.code, fmt.Sprintf("the gateway's DNS resolver failed to resolve the host of %s; this is no fault of the name, retry, and tell the operator if it persists", target)
			}
		case policy.CodeUpstreamTimeout:
			return de.code, fmt.Sprintf("connecting to %s timed out", target)
		case policy.CodeBadRequest:
			return de.code, fmt.Sprintf("%s is not a valid destination", target)
		}
		return policy.CodeUpstreamUnreachable, fmt.Sprintf("could not connect to %s", target)
	}
	if errors.Is(err, errUpstreamNoH2) {
		return policy.CodeUpstreamUnreachable, fmt.Sprintf("%s does not offer HTTP/2 (ALPN h2) over TLS, which gRPC needs; the gateway does not send gRPC over HTTP/1.1", target)
	}
	var certErr *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var hostnameErr x509.HostnameError
	if errors.As(err, &certErr) || errors.As(err, &unknownAuthority) || errors.As(err, &hostnameErr) {
		return policy.CodeUpstreamUnreachable, fmt.Sprintf("the TLS certificate of %s could not be verified; if it is a private API, the operator can add its CA to tls.upstream_roots", target)
	}
	if isTimeout(err) {
		return policy.CodeUpstreamTimeout, fmt.Sprintf("%s did not answer in time", target)
	}
	return policy.CodeUpstreamUnreachable, fmt.Sprintf("the connection to %s failed", target)
}

// upstreamConn is an upstream connection wrapped once, as every
// connection the gateway holds is (docs/design.md, "The connection
// wrapper"), with its own clock: a read or write fails once it has moved
// no byte either way for idle, so a silent upstream surfaces as a timeout
// instead of holding a request, or a pooled connection, forever. Counted
// from its last byte, not from when a read began: the read a pooled
// connection was parked with waits on for the answer to the next request
// sent on it.
type upstreamConn struct {
	meteredConn
	clock activity
}

func newUpstreamConn(c net.Conn, idle time.Duration) *meteredConn {
	u := &upstreamConn{meteredConn: meteredConn{Conn: c, tcp: tcpConn(c), readIdle: idle, writeBound: idle}}
	u.activity = &u.clock
	u.clock.touch(time.Now())
	return &u.meteredConn
}

// resolverWarning tells the operator, at most every resolverWarnEvery,
// that the gateway's DNS resolver failed or timed out, with the resolver's
// own error: clients are told only that the resolver failed, and a broken
// resolver is the operator's to fix, unlike a misspelt name.
type resolverWarning struct {
	lastWarned atomic.Int64 // unix seconds
	unwarned   atomic.Int64
}

const resolverWarnEvery = 10 * time.Second

func (w *resolverWarning) note(g *Gateway, requestID string, err error) {
	var de *dialError
	if !errors.As(err, &de) || de.code != policy.CodeDNSFailure || de.dns == dnsNotFound {
		return
	}
	n := w.unwarned.Add(1)
	now, last := g.now().Unix(), w.lastWarned.Load()
	if now-last < int64(resolverWarnEvery/time.Second) || !w.lastWarned.CompareAndSwap(last, now) {
		return
	}
	w.unwarned.Add(-n)
	what := "failed"
	if de.dns == dnsTimedOut {
		what = "did not answer within network.dns_timeout"
	}
	g.log.LogAttrs(context.Background(), slog.LevelWarn, "the DNS resolver "+what,
		slog.String("request_id", requestID), slog.Int64("failures_since_last_warning", n), slog.String("error", de.err.Error()))
}
