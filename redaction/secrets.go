package redaction

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// MinSecretLen is the shortest secret NewSecretScrubber accepts. Scrubbing
// every occurrence of a shorter value would shred ordinary text ("admin",
// "12345"), and a value that short is no secret anyway.
const MinSecretLen = 8

// SecretMask replaces every occurrence of a secret.
const SecretMask = "[REDACTED:secret]"

// manyNeedles is the number of searched forms above which the scrubber
// switches from one bytes.Index per form (vectorised, fastest for a few)
// to a single pass with a hashed 8-byte prefix filter.
const manyNeedles = 8

// SecretScrubber removes exact secret values, the credentials the gateway
// injects, from response headers, response bodies and any text bound for
// a log, whatever the redaction profiles say. It is immutable and safe for
// concurrent use; a nil *SecretScrubber scrubs nothing.
type SecretScrubber struct {
	needles [][]byte // every searched form, longest first
	maxLen  int
	index   *needleIndex // set when there are more than manyNeedles
}

// NewSecretScrubber builds a scrubber for values. Besides each value as it
// is, it also looks for the forms an upstream that echoes a request would
// use: JSON-escaped (plain, HTML-safe as Go writes it, "\/" as PHP writes
// it) and URL-encoded (query and path). A value shorter than MinSecretLen,
// or one that occurs in SecretMask itself, is an error naming its index;
// the policy loader turns that into a config error naming the secret.
func NewSecretScrubber(values [][]byte) (*SecretScrubber, error) {
	s := &SecretScrubber{}
	for i, v := range values {
		if len(v) < MinSecretLen {
			return nil, fmt.Errorf("secret #%d is %d bytes; secrets shorter than %d bytes would match ordinary text and cannot be scrubbed", i, len(v), MinSecretLen)
		}
		if strings.Contains(SecretMask, string(v)) {
			return nil, fmt.Errorf("secret #%d occurs in the replacement text %q", i, SecretMask)
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
	if len(s.needles) > manyNeedles {
		s.index = newNeedleIndex(s.needles)
	}
	return s, nil
}

func secretForms(v []byte) [][]byte {
	plain := appendEscaped(nil, v)
	var html bytes.Buffer
	json.HTMLEscape(&html, plain)
	str := string(v)
	return [][]byte{
		bytes.Clone(v),
		plain,
		html.Bytes(),
		bytes.ReplaceAll(plain, []byte("/"), []byte(`\/`)),
		[]byte(url.QueryEscape(str)),
		[]byte(url.PathEscape(str)),
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
	var pos [manyNeedles]int // next occurrence of each needle, when few
	for k := range pos {
		pos[k] = -2 // not searched yet
	}
	from, n := 0, 0
	for from < limit {
		start, k := s.next(b, from, pos[:])
		if start < 0 || start >= limit {
			break
		}
		if dst == nil && lazy {
			dst = make([]byte, 0, len(b)+len(b)/16)
		}
		dst = append(dst, b[from:start]...)
		dst = append(dst, SecretMask...)
		from = start + len(s.needles[k])
		n++
	}
	if n == 0 && lazy {
		return nil, 0, 0
	}
	end := max(from, limit)
	return append(dst, b[from:end]...), end, n
}

// next finds the leftmost needle occurrence at or after from, the longest
// at that position, as (start, needle index), or (-1, -1).
func (s *SecretScrubber) next(b []byte, from int, pos []int) (int, int) {
	if s.index != nil {
		return s.index.next(b, from, s.needles)
	}
	best, bestK := -1, -1
	for k, needle := range s.needles {
		if pos[k] == -1 {
			continue // no occurrence left
		}
		if pos[k] < from {
			if i := bytes.Index(b[from:], needle); i >= 0 {
				pos[k] = from + i
			} else {
				pos[k] = -1
				continue
			}
		}
		// Needles are longest first, so a tie keeps the longer one.
		if best < 0 || pos[k] < best {
			best, bestK = pos[k], k
		}
	}
	return best, bestK
}

// needleIndex finds many needles in one pass: the first 8 bytes of every
// needle are hashed into a 64 Ki-bit filter, and only positions whose 8
// bytes pass the filter are compared.
type needleIndex struct {
	filter   [1 << 10]uint64
	byPrefix map[uint64][]int // needle indexes by first 8 bytes, longest first
}

func prefixHash(w uint64) uint64 { return (w * 0x9E3779B97F4A7C15) >> 48 }

func newNeedleIndex(needles [][]byte) *needleIndex {
	x := &needleIndex{byPrefix: map[uint64][]int{}}
	for k, n := range needles {
		w := binary.LittleEndian.Uint64(n)
		h := prefixHash(w)
		x.filter[h>>6] |= 1 << (h & 63)
		x.byPrefix[w] = append(x.byPrefix[w], k)
	}
	return x
}

func (x *needleIndex) next(b []byte, from int, needles [][]byte) (int, int) {
	for i := from; i+8 <= len(b); i++ {
		w := binary.LittleEndian.Uint64(b[i:])
		h := prefixHash(w)
		if x.filter[h>>6]&(1<<(h&63)) == 0 {
			continue
		}
		for _, k := range x.byPrefix[w] {
			if bytes.HasPrefix(b[i:], needles[k]) {
				return i, k
			}
		}
	}
	return -1, -1
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
