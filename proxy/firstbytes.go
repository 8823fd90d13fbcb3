package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/policy"
)

// decideFirstBytes reads what the client of an opaque tunnel sends first
// and decides on it before the relay sends it on; it reports whether the
// relay should go on in the client-to-upstream direction. It runs once
// per tunnel, in that direction only, so an upstream that speaks first
// (SSH, SMTP) is heard meanwhile (receiveFirstBytes).
//
// A TLS ClientHello must name the CONNECT's host (docs/sandbox-runtimes.md):
// a tunnel opened to an allowed host must not carry a handshake with
// another one behind the same address (domain fronting). A hello without a
// server name is let through: it names no other host, and neither does an
// IP literal. Plain HTTP, unless the upstream spoke first, is the
// gateway's to serve request by request (plaintunnel.go): the upstream
// connection dialled for the tunnel is closed unused. Anything else is
// relayed as it is. Nothing reaches the upstream before this decision:
// the bytes stay unread on client, and the relay passes them on first,
// counted and paced as the rest.
func (t *tunnel) decideFirstBytes(client *meteredConn) bool {
	ex := t.ex
	// What might still become a request line is relayed as it is: a
	// client may send a word ("ping") and wait for the answer.
	first, ok := t.readFirstBytes(client, false)
	if !ok {
		return false
	}
	if len(first) == 0 {
		return true // the client sent nothing before it finished: the relay sees that too
	}
	if classifyRequestLine(first) == isRequestLine && t.turn.take(turnServeHTTP) {
		_ = t.upstream.Close() // never sent a byte; ends receiveFirstBytes
		ex.gw.servePlainTunnel(t, first)
		return false
	}
	if _, err := netip.ParseAddr(ex.host); err != nil && looksLikeTLS(first[0]) {
		if why := ex.checkClientHello(first); why != "" {
			ex.end(refused(policy.CodeTunnelSNIMismatch, why))
			t.close()
			return false
		}
	}
	return true
}

// receiveFirstBytes waits for the upstream of an opaque tunnel to speak
// first or end, and passes what it says on to the client; it reports
// whether the relay should go on in that direction. Whatever the upstream
// says settles the tunnel as a relay; once the client's plain HTTP has
// settled it as the gateway's to serve instead, it returns at once, with
// nothing sent to the client.
func (t *tunnel) receiveFirstBytes(upstream, client *meteredConn) bool {
	buf := make([]byte, idleReadBuffer)
	for {
		n, err := upstream.Read(buf) // bounded by the tunnel's idle timeout
		if (n > 0 || errors.Is(err, io.EOF)) && !t.turn.take(turnRelay) {
			return false
		}
		if n > 0 {
			if _, werr := client.Write(buf[:n]); werr != nil {
				t.close()
				return false
			}
		}
		switch {
		case err == nil:
			if n > 0 {
				return true
			}
		case t.turn.servesHTTP():
			return false // its connection was closed for that
		case errors.Is(err, io.EOF):
			// As the relay does on an end: let the other direction finish.
			if client.CloseWrite() != nil {
				t.close()
			}
			return false
		default:
			t.close()
			return false
		}
	}
}

// firstTurn settles, once per opaque tunnel, whether it is relayed or
// served as plain HTTP: the first of the upstream's first bytes and the
// client's plain HTTP decides.
type firstTurn struct {
	mu    sync.Mutex
	state turnState
}

type turnState int

const (
	turnOpen      turnState = iota // neither has happened yet
	turnRelay                      // the upstream spoke or ended first, or the client sent no HTTP
	turnServeHTTP                  // the client's plain HTTP came first
)

// take settles the turn as want if it is still open, and reports whether
// it is want now.
func (f *firstTurn) take(want turnState) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == turnOpen {
		f.state = want
	}
	return f.state == want
}

func (f *firstTurn) servesHTTP() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state == turnServeHTTP
}

// readFirstBytes returns the tunnel's first bytes as client holds them
// unread (those that came behind the CONNECT head first), peeking at
// what the client sends until they hold a whole ClientHello (or too much
// to be one), the start of an HTTP/1.x request line, or anything else;
// with wholeLine unset, bytes that may yet become a request line end the
// wait as well. The wait is client's read bound: the tunnel's idle
// timeout from its last byte either way. ok is false when the tunnel was
// closed instead: idle, or broken off in the middle of a handshake.
func (t *tunnel) readFirstBytes(client *meteredConn, wholeLine bool) (first []byte, ok bool) {
	first = client.unread
	for {
		switch {
		case len(first) == 0:
		case len(first) >= maxFirstBytes:
			return first, true
		case looksLikeTLS(first[0]):
			if _, complete, err := parseClientHello(first); complete || err != nil {
				return first, true // checkClientHello says what an error means
			}
		case !wholeLine || classifyRequestLine(first) != mayBeRequestLine:
			return first, true
		}
		var err error
		first, err = client.peek(maxFirstBytes - len(first))
		switch {
		case err == nil:
		case errors.Is(err, io.EOF) && (len(first) == 0 || !looksLikeTLS(first[0])):
			return first, true // what came is all there is
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
