package redaction

import "bytes"

// HoldFrom returns where the part of b starts that might be the beginning
// of a secret form continued by bytes not yet seen: the smallest i such
// that b[i:] is a proper prefix of a searched form (any needle, or an
// escaped echo of a value, down to a half-written escape such as "%4" or
// "\u00"), len(b) when there is none. Every secret that starts before it
// ends inside b, so b[:HoldFrom(b)] can be scrubbed and let go, and only
// the rest needs to wait; for text that holds nothing like a secret that
// is all of it.
func (s *SecretScrubber) HoldFrom(b []byte) int {
	if s == nil || len(s.needles) == 0 {
		return len(b)
	}
	for i := max(0, len(b)-(s.maxLen-1)); i < len(b); i++ {
		if s.firstBytes[b[i]] && s.couldStart(b[i:]) {
			return i
		}
	}
	return len(b)
}

// couldStart reports whether t is a proper prefix of a form.
func (s *SecretScrubber) couldStart(t []byte) bool {
	c := t[0]
	for _, n := range s.needles {
		if n[0] == c && len(t) < len(n) && bytes.HasPrefix(n, t) {
			return true
		}
	}
	if c != '%' && c != '\\' && c != '+' && !s.startsValue(c) {
		return false
	}
	for _, v := range s.values {
		if escapedPrefix(t, v) {
			return true
		}
	}
	return false
}

func (s *SecretScrubber) startsValue(c byte) bool {
	for _, v := range s.values {
		if v[0] == c {
			return true
		}
	}
	return false
}

// escapedPrefix reports whether t, all of it, is the start of an escaped
// echo of v that more bytes could complete, as escapedAt reads echoes.
func escapedPrefix(t, v []byte) bool {
	i := 0
	for _, c := range v {
		if i == len(t) {
			return true
		}
		rest := t[i:]
		if partialEscape(rest, c) {
			return true
		}
		if n := escapeOf(rest, c); n > 0 {
			i += n
			continue
		}
		if rest[0] != c {
			return false
		}
		i++
	}
	return false // a whole echo: found where it is, not waited for
}

// partialEscape reports whether rest, all of it, is the beginning of an
// escape that stands for c but is cut short.
func partialEscape(rest []byte, c byte) bool {
	switch rest[0] {
	case '%':
		switch len(rest) {
		case 1:
			return true
		case 2:
			return unhexDigit(rest[1]) == int(c>>4)
		}
	case '\\':
		if len(rest) == 1 {
			return c < 0x80
		}
		if rest[1] != 'u' || c >= 0x80 || len(rest) >= 6 {
			return false
		}
		want := []int{0, 0, int(c >> 4)}
		for k := 2; k < len(rest); k++ {
			if unhexDigit(rest[k]) != want[k-2] {
				return false
			}
		}
		return true
	}
	return false
}

// nextMatch returns the leftmost secret form in b at or after from, the
// longest at that position, as (start, end), or (-1, -1): what Scrub
// replaces next.
func (s *SecretScrubber) nextMatch(b []byte, from int) (int, int) {
	start, end := -1, -1
	if i, k := s.index.next(b, from, s.needles); i >= 0 {
		start, end = i, i+len(s.needles[k])
	}
	if es, ee := s.nextEscaped(b, from); es >= 0 && (start < 0 || es < start || es == start && ee > end) {
		start, end = es, ee
	}
	return start, end
}
