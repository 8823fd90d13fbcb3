package redaction

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"
)

// MinSecretLen is the shortest secret NewSecretScrubber accepts. Scrubbing
// every occurrence of a shorter value would shred ordinary text ("admin",
// "12345"), and a value that short is no secret anyway.
const MinSecretLen = 8

// SecretMask replaces every occurrence of a secret.
const SecretMask = "[REDACTED:secret]"

// SecretScrubber removes exact secret values, the credentials the gateway
// injects, from response headers, response bodies and any text bound for
// a log, whatever the redaction profiles say. It is immutable and safe for
// concurrent use; a nil *SecretScrubber scrubs nothing.
type SecretScrubber struct {
	needles [][]byte // every searched form, longest first
	// values are the secrets as injected, for echoes in which any
	// character may be percent-encoded or JSON-escaped (escapedAt).
	values [][]byte
	// triggers are the bytes that start such an escape: one of them is in
	// every escaped echo that is not also a plain one.
	triggers string
	maxLen   int // the longest match: a needle, or a value escaped whole
	index    *needleIndex
	// firstBytes marks the bytes a form can start with (HoldFrom).
	firstBytes [256]bool
}

// NewSecretScrubber builds a scrubber for values. Besides each value as it
// is, it also looks for the forms an upstream that echoes a request would
// use (docs/connector-authors.md, "Injected secrets"):
//   - upper- and lower-case, and hex in either case;
//   - base64, standard and URL-safe, padded or not, at each of the three
//     alignments the value can have inside a longer encoded blob: the
//     characters that depend on the value alone are replaced, which leaves
//     at most the bits of one byte of the value on either side;
//   - any mix of plain characters, percent-encoded ones ("%2F", "%2f", "+"
//     for a space) and JSON-escaped ones ("\u0041", "\/", "\n"), which
//     covers JSON as Go, PHP and HTML-safe writers escape it and URL
//     query and path encoding.
//
// A value shorter than MinSecretLen, or one that occurs in SecretMask
// itself, is an error naming its index; the policy loader turns that into
// a config error naming the secret.
func NewSecretScrubber(values [][]byte) (*SecretScrubber, error) {
	s := &SecretScrubber{}
	for i, v := range values {
		if len(v) < MinSecretLen {
			return nil, fmt.Errorf("secret #%d is %d bytes; secrets shorter than %d bytes would match ordinary text and cannot be scrubbed", i, len(v), MinSecretLen)
		}
		if strings.Contains(SecretMask, string(v)) {
			return nil, fmt.Errorf("secret #%d occurs in the replacement text %q", i, SecretMask)
		}
		s.values = append(s.values, bytes.Clone(v))
		s.maxLen = max(s.maxLen, escapedMax*len(v))
		if bytes.IndexByte(v, ' ') >= 0 && !strings.Contains(s.triggers, "+") {
			s.triggers += "+"
		}
		for _, form := range secretForms(v) {
			if !slices.ContainsFunc(s.needles, func(n []byte) bool { return bytes.Equal(n, form) }) {
				s.needles = append(s.needles, form)
			}
		}
	}
	// Longest first: where two secrets start at the same byte, the longer
	// one is replaced whole.
	slices.SortStableFunc(s.needles, func(a, b []byte) int { return len(b) - len(a) })
	for _, n := range s.needles {
		s.maxLen = max(s.maxLen, len(n))
	}
	s.triggers = `%\` + s.triggers
	for _, n := range s.needles {
		s.firstBytes[n[0]] = true
	}
	for _, v := range s.values {
		s.firstBytes[v[0]] = true
	}
	for _, c := range []byte(s.triggers) {
		s.firstBytes[c] = true
	}
	// One sampled pass for all forms: measured faster than one vectorised
	// bytes.Index per form even for a single secret (BENCHMARKS.md).
	s.index = newNeedleIndex(s.needles)
	return s, nil
}

// secretForms are the exact forms searched for v. Escaped forms (JSON,
// percent-encoding) are escapedAt's, in any mix.
func secretForms(v []byte) [][]byte {
	forms := [][]byte{
		bytes.Clone(v),
		asciiCase(v, 'a', 'z'),
		asciiCase(v, 'A', 'Z'),
		[]byte(hex.EncodeToString(v)),
		[]byte(strings.ToUpper(hex.EncodeToString(v))),
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for align := range 3 {
			forms = append(forms, base64Core(enc, v, align))
		}
	}
	return forms
}

// asciiCase is v with the ASCII letters from lo to hi switched to the
// other case; other bytes stay, so the form is as long as v.
func asciiCase(v []byte, lo, hi byte) []byte {
	out := bytes.Clone(v)
	for i, c := range out {
		if lo <= c && c <= hi {
			out[i] = c ^ 0x20
		}
	}
	return out
}

// base64Core is the part of the base64 encoding of v, preceded by align
// bytes of anything and followed by anything, that depends on v alone: the
// characters whose six bits all come from v.
func base64Core(enc *base64.Encoding, v []byte, align int) []byte {
	encoded := enc.EncodeToString(append(make([]byte, align), v...))
	first := (8*align + 5) / 6      // the first character with no bit of the lead
	end := 8 * (align + len(v)) / 6 // past the last character with all bits from v
	return []byte(encoded[first:end])
}

// escapedMax is the most bytes one character of a value takes in an
// escaped echo ("\u0041").
const escapedMax = 6

// escapedAt returns the end of an echo of v that starts at b[i] and in
// which any character may be percent-encoded or JSON-escaped, or -1. An
// escape that decodes to the character wanted is read as one, otherwise
// the byte must be the character itself.
func escapedAt(b []byte, i int, v []byte) int {
	for _, c := range v {
		if i >= len(b) {
			return -1
		}
		if n := escapeOf(b[i:], c); n > 0 {
			i += n
			continue
		}
		if b[i] != c {
			return -1
		}
		i++
	}
	return i
}

// escapeOf is the length of the escape at the start of b if it stands for
// c, else 0.
func escapeOf(b []byte, c byte) int {
	switch b[0] {
	case '%':
		if len(b) >= 3 && unhexByte(b[1], b[2]) == int(c) {
			return 3
		}
	case '+':
		if c == ' ' {
			return 1
		}
	case '\\':
		if len(b) < 2 {
			return 0
		}
		if b[1] == 'u' {
			if len(b) >= 6 && c < utf8.RuneSelf && unhexByte(b[2], b[3]) == 0 && unhexByte(b[4], b[5]) == int(c) {
				return 6
			}
			return 0
		}
		if jsonShortEscape(b[1]) == c {
			return 2
		}
	}
	return 0
}

// jsonShortEscape is the character a two-byte JSON escape "\x" stands for,
// or 0 for none.
func jsonShortEscape(x byte) byte {
	switch x {
	case '"', '\\', '/':
		return x
	case 'b':
		return '\b'
	case 'f':
		return '\f'
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	}
	return 0
}

// unhexByte decodes two hex digits, or returns -1.
func unhexByte(hi, lo byte) int {
	h, l := unhexDigit(hi), unhexDigit(lo)
	if h < 0 || l < 0 {
		return -1
	}
	return h<<4 | l
}

func unhexDigit(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// nextEscaped finds the leftmost escaped echo of a value at or after from,
// the longest at that position, as (start, end), or (-1, -1). An echo that
// is not also a plain one holds a trigger byte, and at most len(v)-1 plain
// bytes come before its first trigger: only the starts in that window
// before each trigger are tried, each once.
func (s *SecretScrubber) nextEscaped(b []byte, from int) (int, int) {
	tried := from   // starts below tried have been tried
	var next [3]int // the next position of each trigger byte; -1 none left
	for k := range next {
		next[k] = -2
	}
	for {
		t := -1
		for k := 0; k < len(s.triggers); k++ {
			if next[k] == -2 || next[k] >= 0 && next[k] < tried {
				// Vectorised per byte, and each byte searched again only
				// once passed: text full of one trigger costs one pass.
				if i := bytes.IndexByte(b[tried:], s.triggers[k]); i >= 0 {
					next[k] = tried + i
				} else {
					next[k] = -1
				}
			}
			if next[k] >= 0 && (t < 0 || next[k] < t) {
				t = next[k]
			}
		}
		if t < 0 {
			return -1, -1
		}
		best, bestEnd := -1, -1
		for _, v := range s.values {
			for start := max(tried, t-len(v)+1); start <= t && (best < 0 || start <= best); start++ {
				if c := b[start]; c != v[0] && c != '%' && c != '\\' && c != '+' {
					continue // cannot start an echo of v
				}
				if end := escapedAt(b, start, v); end >= 0 {
					if best < 0 || start < best || end > bestEnd {
						best, bestEnd = start, end
					}
					break
				}
			}
		}
		if best >= 0 {
			return best, bestEnd
		}
		tried = t + 1
	}
}

// Scrub returns b with every secret replaced by SecretMask, and how many
// were replaced. It returns b itself when there was none.
func (s *SecretScrubber) Scrub(b []byte) ([]byte, int) {
	if s == nil || len(s.needles) == 0 {
		return b, 0
	}
	out, consumed, n := s.scrubPrefix(nil, b, len(b), true)
	if n == 0 {
		return b, 0
	}
	return append(out, b[consumed:]...), n
}

// ScrubString is Scrub for strings: log messages, error texts, header
// values.
func (s *SecretScrubber) ScrubString(str string) (string, int) {
	if s == nil || len(s.needles) == 0 {
		return str, 0
	}
	out, n := s.Scrub([]byte(str))
	if n == 0 {
		return str, 0
	}
	return string(out), n
}

// Headers scrubs every header value in place and returns how many secrets
// it replaced.
func (s *SecretScrubber) Headers(h http.Header) int {
	if s == nil || len(s.needles) == 0 {
		return 0
	}
	total := 0
	for _, values := range h {
		for k, v := range values {
			if out, n := s.ScrubString(v); n > 0 {
				values[k] = out
				total += n
			}
		}
	}
	return total
}

// scrubPrefix replaces the secrets in b that start before limit, leftmost
// first, appending to dst, and returns how much of b it consumed: up to
// limit, or past the last secret it replaced. When lazy is set, dst stays
// nil until there is something to replace.
func (s *SecretScrubber) scrubPrefix(dst, b []byte, limit int, lazy bool) ([]byte, int, int) {
	escStart, escEnd := -2, -2 // the next escaped echo, when searched
	from, n := 0, 0
	for from < limit {
		start, end := -1, -1
		if i, k := s.index.next(b, from, s.needles); i >= 0 {
			start, end = i, i+len(s.needles[k])
		}
		if escStart != -1 && escStart < from {
			escStart, escEnd = s.nextEscaped(b, from)
		}
		if escStart >= 0 && (start < 0 || escStart < start || escStart == start && escEnd > end) {
			start, end = escStart, escEnd
		}
		if start < 0 || start >= limit {
			break
		}
		if dst == nil && lazy {
			dst = make([]byte, 0, len(b)+len(b)/16)
		}
		dst = append(dst, b[from:start]...)
		dst = append(dst, SecretMask...)
		from = end
		n++
	}
	if n == 0 && lazy {
		return nil, 0, 0
	}
	end := max(from, limit)
	return append(dst, b[from:end]...), end, n
}

// needleIndex finds many needles in one pass. Every 8-byte window of
// every needle that starts in its first step bytes, where step is the
// shortest needle's length minus 7, is hashed into a 64 Ki-bit filter; the
// text is probed only at every step-th position, since every occurrence
// of a needle covers one of them with one of its indexed windows. Probes
// that pass the filter are verified.
type needleIndex struct {
	filter [1 << 10]uint64
	step   int
	byGram map[uint64][]gramAt // indexed windows, by their 8 bytes
}

// gramAt is an indexed window: needle k, at offset.
type gramAt struct{ k, offset int }

func prefixHash(w uint64) uint64 { return (w * 0x9E3779B97F4A7C15) >> 48 }

func newNeedleIndex(needles [][]byte) *needleIndex {
	x := &needleIndex{byGram: map[uint64][]gramAt{}, step: math.MaxInt}
	for _, n := range needles {
		x.step = min(x.step, len(n)-7)
	}
	for k, n := range needles {
		for offset := range x.step {
			w := binary.LittleEndian.Uint64(n[offset:])
			h := prefixHash(w)
			x.filter[h>>6] |= 1 << (h & 63)
			x.byGram[w] = append(x.byGram[w], gramAt{k, offset})
		}
	}
	return x
}

// next returns the leftmost occurrence at or after from, the longest at
// that position. Probing position p finds exactly the occurrences that
// start in (p-step, p], so the first probe with a hit has the leftmost.
func (x *needleIndex) next(b []byte, from int, needles [][]byte) (int, int) {
	first := (from + x.step - 1) / x.step * x.step
	for p := first; ; p += x.step {
		if p-x.step+1 >= len(b) {
			return -1, -1
		}
		if p+8 > len(b) {
			// An occurrence probed here would start after p-step and
			// end past len(b): there is none.
			return -1, -1
		}
		w := binary.LittleEndian.Uint64(b[p:])
		h := prefixHash(w)
		if x.filter[h>>6]&(1<<(h&63)) == 0 {
			continue
		}
		best, bestK := -1, -1
		for _, g := range x.byGram[w] {
			start := p - g.offset
			if start < from || best >= 0 && (start > best || start == best && len(needles[g.k]) <= len(needles[bestK])) {
				continue
			}
			if bytes.HasPrefix(b[start:], needles[g.k]) {
				best, bestK = start, g.k
			}
		}
		if best >= 0 {
			return best, bestK
		}
	}
}

// scrubChunk is how much a ScrubReader reads from its source at a time.
const scrubChunk = 32 << 10

// ScrubReader scrubs secrets from a stream as it is read, for bodies too
// large or too long-lived to buffer. It holds back at most the longest
// secret form minus one byte between reads, so a secret split across
// reads is still found, and its output is exactly what Scrub would give
// for the whole stream.
type ScrubReader struct {
	s       *SecretScrubber
	src     io.Reader
	pending []byte // read from src, not yet scrubbed
	out     []byte // scrubbed, not yet returned
	outPos  int
	err     error // from src, returned once pending and out are drained
	count   int
}

// Reader returns a reader of r's bytes with the secrets replaced. The
// caller keeps closing the original body and must drop any
// Content-Length, since the length can change.
func (s *SecretScrubber) Reader(r io.Reader) *ScrubReader {
	return &ScrubReader{s: s, src: r}
}

// Count is the number of secrets replaced so far; read it after the
// stream is done.
func (z *ScrubReader) Count() int { return z.count }

// Read implements io.Reader.
func (z *ScrubReader) Read(p []byte) (int, error) {
	if z.s == nil || len(z.s.needles) == 0 {
		return z.src.Read(p)
	}
	for z.outPos == len(z.out) {
		if z.err != nil && len(z.pending) == 0 {
			return 0, z.err
		}
		if z.err == nil {
			if z.pending == nil {
				// Between reads at most maxLen-1 bytes stay pending, so
				// this buffer never has to grow.
				z.pending = make([]byte, 0, scrubChunk+z.s.maxLen)
			}
			n, err := z.src.Read(z.pending[len(z.pending):cap(z.pending)])
			z.pending = z.pending[:len(z.pending)+n]
			z.err = err
		}
		limit := len(z.pending)
		if z.err == nil {
			// A secret starting in the last maxLen-1 bytes may continue in
			// the next read.
			limit -= z.s.maxLen - 1
			if limit <= 0 {
				continue
			}
		}
		var consumed, n int
		z.out, consumed, n = z.s.scrubPrefix(z.out[:0], z.pending, limit, false)
		z.count += n
		z.outPos = 0
		z.pending = z.pending[:copy(z.pending, z.pending[consumed:])]
	}
	n := copy(p, z.out[z.outPos:])
	z.outPos += n
	return n, nil
}
