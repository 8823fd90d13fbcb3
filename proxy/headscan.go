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
	first  byte                            // the current line's first byte
	named  bool                            // the current line's name ended (its first colon)
	cl, te bool
	done   bool // the head ended; wait for reset
}

// scan reads p, the next bytes of the head, and reports whether the head
// ended in it with both Content-Length and Transfer-Encoding. It jumps
// from line end to line end and looks only at the start of each line, as
// a name longer than the two cannot be either.
func (h *headScan) scan(p []byte) bool {
	for !h.done && len(p) > 0 {
		end := bytes.IndexByte(p, '\n')
		if end < 0 {
			h.take(p)
			return false
		}
		h.take(p[:end])
		p = p[end+1:]
		if h.n == 0 || (h.n == 1 && h.first == '\r') {
			h.done = true
			return h.cl && h.te
		}
		h.n, h.named = 0, false
	}
	return false
}

// take adds part, a piece of the current line without its line feed.
// A line that starts in part is looked at where it is; only the start of
// one cut across reads is copied.
func (h *headScan) take(part []byte) {
	if h.n == 0 && len(part) > 0 {
		h.first = part[0]
	}
	if !h.named && h.n < len(h.line) {
		start := part[:min(len(part), len(h.line))]
		if h.n > 0 {
			seen := h.n + copy(h.line[h.n:], part)
			start = h.line[:seen]
		}
		colon := bytes.IndexByte(start[h.n:], ':')
		if colon < 0 && h.n == 0 {
			copy(h.line[:], start) // the line may go on in the next read
		}
		if colon >= 0 {
			h.named = true
			switch name := start[:h.n+colon]; len(name) {
			case len("Content-Length"):
				h.cl = h.cl || bytes.EqualFold(name, []byte("Content-Length"))
			case len("Transfer-Encoding"):
				h.te = h.te || bytes.EqualFold(name, []byte("Transfer-Encoding"))
			}
		}
	}
	h.n += len(part)
}

// reset starts on the next request's head.
func (h *headScan) reset() { *h = headScan{} }
