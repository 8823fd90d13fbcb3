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
	out := encodeULID(uint64(now.UnixMilli()), rand.Uint64(), uint16(rand.Uint64()>>48))
	return string(out[:])
}

// encodeULID writes 48 bits of ms then 80 random bits (random, then
// extra) as 26 base32 digits: ten for the time, whose first carries 3
// bits, and eight for each 40-bit half of the random bits.
func encodeULID(ms, random uint64, extra uint16) (out [26]byte) {
	ms &= 1<<48 - 1
	high := random >> 24                          // random bits 0-39
	low := (random&(1<<24-1))<<16 | uint64(extra) // random bits 40-79
	for i := range 10 {
		out[i] = crockford[ms>>(5*(9-i))&31]
	}
	for i := range 8 {
		out[10+i] = crockford[high>>(5*(7-i))&31]
		out[18+i] = crockford[low>>(5*(7-i))&31]
	}
	return out
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
