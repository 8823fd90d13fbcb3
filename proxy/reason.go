package proxy

import (
	"strings"
	"unicode/utf8"

	"github.com/egressgw/egressgw/policy"
)

// maxReasonPhrase bounds the reason phrase of a refused CONNECT's status
// line: long enough for the code and the sentence that says what was
// refused, short enough for a one-line client error.
const maxReasonPhrase = 160

// truncated marks a reason phrase cut at maxReasonPhrase.
const truncated = "..."

// connectReasonPhrase is the reason phrase of the gateway's reply to a
// CONNECT: the error code, then the message of the JSON body. Most
// clients print only the status line of a refused CONNECT, never its
// body (docs/sandbox-runtimes.md, "What each client prints"), so this is
// what a sandbox's user reads. It holds printable ASCII only (the status
// line is not a place for UTF-8 or control characters), at most
// maxReasonPhrase bytes, cut at a word. The message is the body's own, so
// it says no more than the body does.
func connectReasonPhrase(code policy.Code, message string) string {
	var b strings.Builder
	b.Grow(maxReasonPhrase)
	writeASCII(&b, string(code))
	if message = strings.TrimSpace(message); message != "" {
		b.WriteString(": ")
		writeASCII(&b, message)
	}
	phrase := b.String()
	if len(phrase) <= maxReasonPhrase {
		return strings.TrimRight(phrase, " ")
	}
	cut := phrase[:maxReasonPhrase-len(truncated)+1]
	// At the last space, unless that would waste more than half the
	// room: one very long word is cut where it is.
	if i := strings.LastIndexByte(cut, ' '); i >= maxReasonPhrase/2 {
		cut = cut[:i]
	} else {
		cut = cut[:len(cut)-1]
	}
	return strings.TrimRight(cut, " ") + truncated
}

// writeASCII writes s with every character outside printable ASCII
// replaced: white space and other control characters by a space, the
// rest (non-ASCII, invalid UTF-8) by '?'. Runs of spaces become one.
func writeASCII(b *strings.Builder, s string) {
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		s = s[size:]
		switch {
		case r < 0x20 || r == 0x7f:
			r = ' '
		case r > 0x7e:
			r = '?'
		}
		if r == ' ' && strings.HasSuffix(b.String(), " ") {
			continue
		}
		b.WriteByte(byte(r))
	}
}
