package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// sendFirstBytes reads what the client of an opaque tunnel sends first,
// decides on it and sends it on to the upstream, before the relay takes
// over; it reports whether the relay should. It runs once per tunnel, in
// the client-to-upstream direction only, so an upstream that speaks first
// (SSH, SMTP) is heard meanwhile.
//
// A TLS ClientHello must name the CONNECT's host (docs/sandbox-runtimes.md):
// a tunnel opened to an allowed host must not carry a handshake with
// another one behind the same address (domain fronting). A hello without a
// server name is let through: it names no other host. Anything but TLS is
// relayed as it is. Nothing reaches the upstream before this decision.
func (t *tunnel) sendFirstBytes(ctx context.Context, egress *quota.Shaper, idle time.Duration) bool {
	ex := t.ex
	if _, err := netip.ParseAddr(ex.host); err == nil {
		// An IP literal names no server; the address is all there is.
		return t.sendEarly(ctx, t.early, egress, idle)
	}
	first, ok := t.readFirstBytes(idle)
	if !ok {
		return false
	}
	if len(first) == 0 {
		return true // the client sent nothing before it finished: the relay sees that too
	}
	// The place to route other first bytes (plain HTTP inside a CONNECT)
	// once the gateway treats them on their own.
	if looksLikeTLS(first[0]) {
		if why := ex.checkClientHello(first); why != "" {
			ex.end(refused(policy.CodeTunnelSNIMismatch, why))
			t.close()
			return false
		}
	}
	return t.sendEarly(ctx, first, egress, idle)
}

// readFirstBytes returns the tunnel's first bytes: those that came behind
// the CONNECT head, then what the client sends, until they are either
// not TLS or hold a whole ClientHello (or too much to be one). ok is false
// when the tunnel was closed instead: idle for idle_timeout, or broken off
// in the middle of a handshake.
func (t *tunnel) readFirstBytes(idle time.Duration) (first []byte, ok bool) {
	first = t.early
	t.early = nil
	var chunk []byte
	for {
		if len(first) > 0 {
			if !looksLikeTLS(first[0]) || len(first) >= maxFirstBytes {
				return first, true
			}
			if _, complete, err := parseClientHello(first); complete || err != nil {
				return first, true // checkClientHello says what an error means
			}
		}
		if chunk == nil {
			chunk = make([]byte, idleReadBuffer)
		}
		_ = t.client.SetReadDeadline(time.Now().Add(idle))
		n, err := t.client.Read(chunk[:min(len(chunk), maxFirstBytes-len(first))])
		if n > 0 {
			t.lastActivity.Store(time.Now().UnixNano())
			first = append(first, chunk[:n]...)
		}
		switch {
		case err == nil:
		case t.stillActive(err, idle):
		case errors.Is(err, io.EOF) && len(first) == 0:
			return nil, true
		default:
			t.close()
			return nil, false
		}
	}
}

// checkClientHello says why the tunnel must close, or "" when the TLS
// handshake in first may go on: its server name is the CONNECT's host,
// as hosts are matched (lower case, one trailing dot, IDNA), or it names
// none.
func (ex *exchange) checkClientHello(first []byte) string {
	hello, complete, err := parseClientHello(first)
	switch {
	case err == nil && !complete:
		err = errHelloTooLarge
		fallthrough
	case err != nil:
		return fmt.Sprintf("the tunnel to %s began with a TLS handshake the gateway cannot read (%v), so the server it asks for is unknown; the tunnel was closed", ex.host, err)
	case !hello.hasServerName:
		return ""
	}
	if name, err := allowlist.NormalizeHost(hello.serverName); err == nil && name == ex.host {
		return ""
	}
	shown := hello.serverName
	if len(shown) > 255 {
		shown = shown[:255] + "..."
	}
	return fmt.Sprintf("the TLS ClientHello asks for server %q but the tunnel was opened to %s; a tunnel carries TLS only for the host its CONNECT names", shown, ex.host)
}

// sendEarly writes the bytes read before the relay began to the upstream,
// paced and counted as the relay would.
func (t *tunnel) sendEarly(ctx context.Context, data []byte, egress *quota.Shaper, idle time.Duration) bool {
	if len(data) == 0 {
		return true
	}
	_ = t.upstream.SetWriteDeadline(time.Now().Add(idle))
	n, err := egress.Writer(ctx, t.upstream).Write(data)
	t.ex.bytesUp.Add(int64(n))
	if err != nil {
		t.close()
		return false
	}
	t.lastActivity.Store(time.Now().UnixNano())
	return true
}
