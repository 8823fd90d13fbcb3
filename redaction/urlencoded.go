package redaction

import "bytes"

// urlEncoded redacts a query string or an application/x-www-form-urlencoded
// body: pairs separated by '&', keys and values percent-encoded with '+'
// for space. A named pair's value is replaced (or the pair removed, with
// action drop); the detectors run over every other decoded value. Pairs
// that do not change stay byte for byte; a changed value is re-encoded.
// A key without '=' has no value and is left alone.
func (r *run) urlEncoded(s []byte) ([]byte, bool) {
	var out []byte
	copied := 0
	cut := func(a int) {
		if out == nil {
			out = make([]byte, 0, len(s)+len(s)/16+64)
		}
		out = append(out, s[copied:a]...)
		copied = a
	}
	kept := false
	prevAmp := -1
	for i := 0; ; {
		end := len(s)
		if k := bytes.IndexByte(s[i:], '&'); k >= 0 {
			end = i + k
		}
		pair := s[i:end]
		key, value, hasValue := bytes.Cut(pair, []byte("="))
		rule := -1
		if hasValue && len(r.p.params) > 0 {
			r.str = appendQueryUnescaped(r.str[:0], key)
			rule = r.p.paramRule(r.str)
		}
		switch {
		case !hasValue:
			kept = kept || len(pair) > 0
		case rule >= 0:
			decoded := appendQueryUnescaped(r.str[:0], value)
			r.str = decoded
			switch {
			case r.isOwnReplacement(rule, decoded):
				kept = true
			case r.p.action == actionDrop:
				switch {
				case kept:
					cut(prevAmp)
					copied = end
				case end < len(s):
					cut(i)
					copied = end + 1
				default:
					cut(i)
					copied = end
				}
				r.counts[rule]++
			default:
				cut(i + len(key) + 1)
				out = appendQueryEscaped(out, r.appendReplacement(nil, rule, decoded))
				copied = end
				r.counts[rule]++
				kept = true
			}
		default:
			kept = true
			if !r.p.scan.active() {
				break
			}
			r.str = appendQueryUnescaped(r.str[:0], value)
			if red, changed := r.redactText(r.str); changed {
				cut(i + len(key) + 1)
				out = appendQueryEscaped(out, red)
				copied = end
			}
		}
		if end == len(s) {
			break
		}
		prevAmp = end
		i = end + 1
	}
	if out == nil {
		return s, false
	}
	return append(out, s[copied:]...), true
}

// appendQueryUnescaped decodes like url.QueryUnescape, except that a '%'
// not followed by two hex digits stays as it is instead of failing the
// whole value: the detectors still see everything else.
func appendQueryUnescaped(dst, s []byte) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			dst = append(dst, ' ')
		case c == '%' && i+2 < len(s) && isHexDigit(s[i+1]) && isHexDigit(s[i+2]):
			dst = append(dst, byte(hex4(s[i+1:i+3])))
			i += 2
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// appendQueryEscaped encodes like url.QueryEscape.
func appendQueryEscaped(dst, s []byte) []byte {
	const hexDigits = "0123456789ABCDEF"
	for _, c := range s {
		switch {
		case isAlnum(c) || c == '-' || c == '_' || c == '.' || c == '~':
			dst = append(dst, c)
		case c == ' ':
			dst = append(dst, '+')
		default:
			dst = append(dst, '%', hexDigits[c>>4], hexDigits[c&0xf])
		}
	}
	return dst
}
