package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"net"
	"net/http"
	"unsafe"

	"github.com/egressgw/egressgw/policy"
)

// authMemo remembers the Proxy-Authorization a client connection last
// proved and whom it identified, so that the later requests of a
// keep-alive connection cost a comparison instead of a base64 decode, a
// SHA-256 and a table lookup. It is checked against one policy generation:
// after a reload, the first request proves its credentials again. The
// proxy listener speaks HTTP/1.1 only, whose requests on a connection are
// served one after another by one goroutine, so the memo needs no lock
// (HTTP/2 on that listener would need one).
type authMemo struct {
	rt     *runtimeState
	header string
	tenant *policy.Tenant
	sum    [sha256.Size]byte
}

type authMemoKey struct{}

// withAuthMemo gives a client connection that is not the gateway's own
// (see connContext) its own empty memo.
func withAuthMemo(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, authMemoKey{}, new(authMemo))
}

// authMemoOf is the memo of the connection ctx belongs to, or nil where
// requests do not come from the gateway's own listener.
func authMemoOf(ctx context.Context) *authMemo {
	memo, _ := ctx.Value(authMemoKey{}).(*authMemo)
	return memo
}

// authMemo is the memo of the connection r came on: the gateway's own
// connections hold theirs (countedConn), others have it in r's context.
func (ex *exchange) authMemo(r *http.Request) *authMemo {
	if ex.conn != nil {
		return &ex.conn.memo
	}
	return authMemoOf(r.Context())
}

// recall returns the tenant header identified under rt, if it is the
// header this memo holds.
func (m *authMemo) recall(rt *runtimeState, header string) (*policy.Tenant, [sha256.Size]byte, bool) {
	if m == nil || m.rt != rt || m.tenant == nil || !sameSecret(m.header, header) {
		return nil, [sha256.Size]byte{}, false
	}
	return m.tenant, m.sum, true
}

func (m *authMemo) remember(rt *runtimeState, header string, tenant *policy.Tenant, sum [sha256.Size]byte) {
	if m != nil {
		*m = authMemo{rt: rt, header: header, tenant: tenant, sum: sum}
	}
}

// forget clears the memo once a connection sends credentials that fail,
// so that it keeps nothing of a credential the gateway no longer accepts.
func (m *authMemo) forget() {
	if m != nil {
		*m = authMemo{}
	}
}

// sameSecret compares two credentials in time that depends only on their
// lengths, so a client cannot learn a remembered header a byte at a time
// (as crypto/subtle.ConstantTimeCompare, without converting to []byte),
// eight bytes at a time.
func sameSecret(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	x := unsafe.Slice(unsafe.StringData(a), len(a))
	y := unsafe.Slice(unsafe.StringData(b), len(b))
	var diff uint64
	i := 0
	for ; i+8 <= len(x); i += 8 {
		diff |= binary.LittleEndian.Uint64(x[i:]) ^ binary.LittleEndian.Uint64(y[i:])
	}
	for ; i < len(x); i++ {
		diff |= uint64(x[i] ^ y[i])
	}
	return diff == 0
}
