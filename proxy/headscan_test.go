package proxy

import (
	"bytes"
	"strings"
	"testing"
)

// headHasBoth is an oracle: whether the head that p starts with (up to
// its first empty line) has both a Content-Length and a Transfer-Encoding
// line, and whether it ended at all.
func headHasBoth(p []byte) (both, ended bool) {
	var cl, te bool
	for len(p) > 0 {
		line, rest, found := bytes.Cut(p, []byte("\n"))
		if !found {
			return false, false
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			return cl && te, true
		}
		if name, _, ok := bytes.Cut(line, []byte(":")); ok {
			cl = cl || strings.EqualFold(string(name), "Content-Length")
			te = te || strings.EqualFold(string(name), "Transfer-Encoding")
		}
		p = rest
	}
	return false, false
}

// scanInPieces feeds p to a fresh headScan cut into pieces of size step.
func scanInPieces(p []byte, step int) bool {
	var h headScan
	for len(p) > 0 {
		n := min(step, len(p))
		if h.scan(p[:n]) {
			return true
		}
		p = p[n:]
	}
	return false
}

func TestHeadScan(t *testing.T) {
	for _, c := range []struct {
		name string
		head string
		want bool
	}{
		{"both", "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"both, other order and case", "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-LENGTH: 4\r\n\r\n", true},
		{"bare line feeds", "POST / HTTP/1.1\nContent-Length: 4\nTransfer-Encoding: chunked\n\n", true},
		{"Content-Length only", "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody", false},
		{"Transfer-Encoding only", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"names in the body", "POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"a longer name", "POST / HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"a name as a value", "POST / HTTP/1.1\r\nX-A: Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"a head not yet ended", "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n", false},
		{"a bare colon after a line that starts with a carriage return", "POST / HTTP/1.1\r\n\rX\r\n:\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"a name longer than the scan looks at", "POST / HTTP/1.1\r\nX-A-Very-Long-Header-Name: 1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			for step := 1; step <= len(c.head); step++ {
				if got := scanInPieces([]byte(c.head), step); got != c.want {
					t.Fatalf("in pieces of %d: %v, want %v", step, got, c.want)
				}
			}
		})
	}
}

// FuzzHeadScan holds the scanner to the oracle whatever the bytes and
// however they are cut into reads.
func FuzzHeadScan(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"), uint8(3))
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\nTransfer-Encoding: chunked\r\n\r\n"), uint8(1))
	f.Add([]byte("GET / HTTP/1.1\nHost: x\n\n"), uint8(7))
	f.Fuzz(func(t *testing.T, p []byte, step uint8) {
		want, ended := headHasBoth(p)
		got := scanInPieces(p, int(step)+1)
		if ended && got != want || !ended && got {
			t.Fatalf("scan %v, oracle %v (head ended: %v) for %q", got, want, ended, p)
		}
	})
}
