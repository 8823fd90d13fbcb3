package proxy

import (
	"bytes"
	"errors"
)

// errSmuggling fails the read that completes a request head carrying both
// Content-Length and Transfer-Encoding. net/http would read such a request
// by its Transfer-Encoding and drop the Content-Length without a trace, as
// RFC 9112 lets a server do; but the two disagreeing about where the body
// ends is the classic sign of request smuggling, and the gateway refuses
// it (docs/reference.md, "What clients see": 400 bad_request). Failing the
// read makes net/http answer 400 itself, which the connection turns into
// the gateway's reply and audit line (malformed.go).
var errSmuggling = errors.New("request smuggling sign")

// smugglingDetail is what the refusal says.
const smugglingDetail = "it has both Content-Length and Transfer-Encoding, which disagree on where its body ends (a sign of request smuggling); send one of them"

// headScan follows a connection's request head as it is read, up to the
// blank line that ends it, and no further: what follows is body, and the
// next head is scanned after the connection goes idle again (reset).
type headScan struct {
	line   [len("transfer-encoding:")]byte // the start of the current line
	n      int                             // bytes of the current line seen
	cl, te bool
	done   bool // the head ended; wait for reset
}

// scan reads p, the next bytes of the head, and reports whether the head
// ended in it with both Content-Length and Transfer-Encoding.
func (h *headScan) scan(p []byte) bool {
	if h.done {
		return false
	}
	for _, b := range p {
		if b == '\n' {
			if h.n == 0 || (h.n == 1 && h.line[0] == '\r') {
				h.done = true
				return h.cl && h.te
			}
			h.n = 0
			continue
		}
		if h.n < len(h.line) {
			h.line[h.n] = b
			h.n++
			if b == ':' {
				name := h.line[:h.n-1]
				h.cl = h.cl || bytes.EqualFold(name, []byte("Content-Length"))
				h.te = h.te || bytes.EqualFold(name, []byte("Transfer-Encoding"))
			}
		} else {
			h.n++ // a long line: its name is none of the two
		}
	}
	return false
}

// reset starts on the next request's head.
func (h *headScan) reset() { *h = headScan{} }
