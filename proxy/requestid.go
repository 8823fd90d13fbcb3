package proxy

import (
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// crockford is the base32 alphabet of ULIDs: no I, L, O or U.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// newRequestID returns a ULID: 48 bits of milliseconds then 80 random
// bits, so ids sort by time in logs and never collide in practice. An id
// names a request and grants nothing, so its bits come from the runtime's
// per-thread ChaCha8 generator (seeded by the OS) rather than a
// getrandom per request.
func newRequestID(now time.Time) string {
	random := rand.Uint64()
	hi := uint64(now.UnixMilli())<<16 | random>>48
	lo := random<<16 | rand.Uint64()>>48
	var out [26]byte
	// 128 bits as 26 base32 digits, the first digit carrying 3 bits.
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

// setUpstreamRequestID names the exchange to the upstream with the id of
// its audit line and of the X-Request-Id its client gets back, in the
// header the allowing connector names (X-Request-Id unless it says
// otherwise, none when it says ""; docs/reference.md). It replaces what
// the client or a hook put there: the id must be the gateway's for the
// upstream's logs to lead back to the audit line. It runs where
// credentials are injected, after every hook.
func (ex *exchange) setUpstreamRequestID(h http.Header) {
	name := policy.DefaultRequestIDHeader
	if c := ex.connector; c != nil {
		name = c.RequestIDHeader
	}
	if name != "" {
		h[name] = ex.requestIDValue[:] // the transport only reads it
	}
}
