package redaction

import (
	"slices"
	"unicode/utf16"
	"unicode/utf8"
)

// maxJSONDepth bounds object and array nesting. Deeper documents are
// treated as bodies redaction cannot parse (on_unsupported_body), so a
// small body of brackets cannot make the tokenizer's recursion expensive.
const maxJSONDepth = 1000

// jsonRun redacts one JSON document in a single pass. It validates the
// input as it goes and copies every byte it does not change straight from
// the input: nothing is decoded into values and re-encoded, so structure,
// white space, number spellings and untouched strings stay as they were.
// out stays nil until the first edit, so a document without findings
// costs no copy.
type jsonRun struct {
	*run
	in     []byte
	out    []byte
	copied int // in[:copied] is already in out
	// path holds the keys of the members enclosing the current value, as
	// spans of in, or of keys for keys that had escapes. Offsets rather
	// than slices keep the hot loop free of pointer writes.
	path []pathKey
	keys []byte
}

type pathKey struct {
	start, end int
	decoded    bool // the key is keys[start:end], not in[start:end]
}

func (j *jsonRun) key(k pathKey) []byte {
	if k.decoded {
		return j.keys[k.start:k.end]
	}
	return j.in[k.start:k.end]
}

// json redacts in and reports whether in was valid JSON; out is in itself
// when nothing changed.
func (r *run) json(in []byte) (out []byte, ok bool) {
	j := jsonRun{run: r, in: in}
	i, ok := j.value(0, 0, true)
	if !ok || skipWS(in, i) != len(in) {
		return nil, false
	}
	if j.out == nil {
		return in, true
	}
	return append(j.out, in[j.copied:]...), true
}

// cut copies the input up to a into out, so the caller can append a
// replacement for in[a:b] and set copied to b.
// matchField returns the rule of the first json_fields pattern that the
// current member's path ends with, or -1.
func (j *jsonRun) matchField() int {
	for _, f := range j.p.fields {
		base := len(j.path) - len(f.segs)
		if base < 0 {
			continue
		}
		matched := true
		for k := len(f.segs) - 1; k >= 0; k-- {
			if seg := f.segs[k]; seg != "*" && !equalFoldASCII(j.key(j.path[base+k]), seg) {
				matched = false
				break
			}
		}
		if matched {
			return f.rule
		}
	}
	return -1
}

func (j *jsonRun) cut(a int) {
	if j.out == nil {
		j.out = make([]byte, 0, len(j.in)+len(j.in)/16+64)
	}
	j.out = append(j.out, j.in[j.copied:a]...)
	j.copied = a
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// value parses the value at in[i] (after white space) and returns the
// index after it. edit is false inside a value that a json_fields rule
// replaces as a whole: it is only validated.
func (j *jsonRun) value(i, depth int, edit bool) (int, bool) {
	in := j.in
	i = skipWS(in, i)
	if i >= len(in) {
		return i, false
	}
	switch in[i] {
	case '{':
		return j.object(i, depth+1, edit)
	case '[':
		return j.array(i, depth+1, edit)
	case '"':
		end, escaped, ok := scanString(in, i)
		if ok && edit && j.p.scan.active() {
			j.redactString(i, end, escaped)
		}
		return end, ok
	case 't':
		return literal(in, i, "true")
	case 'f':
		return literal(in, i, "false")
	case 'n':
		return literal(in, i, "null")
	}
	return scanNumber(in, i)
}

func (j *jsonRun) object(i, depth int, edit bool) (int, bool) {
	in := j.in
	if depth > maxJSONDepth {
		return i, false
	}
	i = skipWS(in, i+1)
	if i < len(in) && in[i] == '}' {
		return i + 1, true
	}
	trackPath := edit && len(j.p.fields) > 0
	kept := false   // a member of this object is in the output
	prevComma := -1 // the comma before the current member
	for {
		if i >= len(in) || in[i] != '"' {
			return i, false
		}
		keyStart := i
		keyEnd, escaped, ok := scanString(in, i)
		if !ok {
			return i, false
		}
		i = skipWS(in, keyEnd)
		if i >= len(in) || in[i] != ':' {
			return i, false
		}
		valStart := skipWS(in, i+1)
		rule := -1
		if trackPath {
			k := pathKey{start: keyStart + 1, end: keyEnd - 1}
			if escaped {
				start := len(j.keys)
				j.keys = appendUnescaped(j.keys, in[k.start:k.end])
				k = pathKey{start: start, end: len(j.keys), decoded: true}
			}
			j.path = append(j.path, k)
			rule = j.matchField()
		}
		valEnd, ok := j.value(valStart, depth, edit && rule < 0)
		if trackPath {
			if k := j.path[len(j.path)-1]; k.decoded {
				j.keys = j.keys[:k.start]
			}
			j.path = j.path[:len(j.path)-1]
		}
		if !ok {
			return valEnd, false
		}
		next := skipWS(in, valEnd)
		if next >= len(in) {
			return next, false
		}
		switch {
		case rule < 0:
			kept = true
		case j.p.action == actionDrop:
			// Remove the member with exactly one of the commas around it.
			switch {
			case kept:
				j.cut(prevComma)
				j.copied = valEnd
			case in[next] == ',':
				j.cut(keyStart)
				j.copied = skipWS(in, next+1)
			default:
				j.cut(keyStart)
				j.copied = valEnd
			}
			j.counts[rule]++
		default:
			j.replaceField(rule, valStart, valEnd)
			kept = true
		}
		switch in[next] {
		case ',':
			prevComma = next
			i = skipWS(in, next+1)
		case '}':
			return next + 1, true
		default:
			return next, false
		}
	}
}

// replaceField masks or hashes a whole member value. null stays null: it
// holds nothing to hide. A string is hashed by its decoded value, so a
// value hashes the same wherever it is found; any other value by its JSON
// text.
func (j *jsonRun) replaceField(rule, valStart, valEnd int) {
	in := j.in
	value := in[valStart:valEnd]
	if in[valStart] == 'n' {
		return
	}
	if in[valStart] == '"' {
		value = value[1 : len(value)-1]
		if slices.Contains(value, '\\') {
			j.str = appendUnescaped(j.str[:0], value)
			value = j.str
		}
		if j.isOwnReplacement(rule, value) {
			return
		}
	}
	j.cut(valStart)
	j.out = append(j.out, '"')
	j.out = j.appendReplacement(j.out, rule, value)
	j.out = append(j.out, '"')
	j.copied = valEnd
	j.counts[rule]++
}

// redactString runs the detectors over the string value in[start:end]
// (quotes included). A string without escapes is scanned in place and only
// the matches change; a string with escapes is decoded, scanned and, if
// something matched, written back with minimal escaping.
func (j *jsonRun) redactString(start, end int, escaped bool) {
	content := j.in[start+1 : end-1]
	if escaped {
		j.str = appendUnescaped(j.str[:0], content)
		content = j.str
	}
	out, changed := j.redactText(content)
	if !changed {
		return
	}
	j.cut(start + 1)
	if escaped {
		j.out = appendEscaped(j.out, out)
	} else {
		j.out = append(j.out, out...)
	}
	j.copied = end - 1
}

func (j *jsonRun) array(i, depth int, edit bool) (int, bool) {
	in := j.in
	if depth > maxJSONDepth {
		return i, false
	}
	i = skipWS(in, i+1)
	if i < len(in) && in[i] == ']' {
		return i + 1, true
	}
	for {
		end, ok := j.value(i, depth, edit)
		if !ok {
			return end, false
		}
		i = skipWS(in, end)
		if i >= len(in) {
			return i, false
		}
		switch in[i] {
		case ',':
			i++
		case ']':
			return i + 1, true
		default:
			return i, false
		}
	}
}

func literal(in []byte, i int, lit string) (int, bool) {
	if len(in)-i < len(lit) || string(in[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// scanNumber validates the JSON number at in[i].
func scanNumber(in []byte, i int) (int, bool) {
	if i < len(in) && in[i] == '-' {
		i++
	}
	switch {
	case i >= len(in):
		return i, false
	case in[i] == '0':
		i++
	case in[i] >= '1' && in[i] <= '9':
		i = digitsEnd(in, i)
	default:
		return i, false
	}
	if i < len(in) && in[i] == '.' {
		k := digitsEnd(in, i+1)
		if k == i+1 {
			return k, false
		}
		i = k
	}
	if i < len(in) && (in[i] == 'e' || in[i] == 'E') {
		i++
		if i < len(in) && (in[i] == '+' || in[i] == '-') {
			i++
		}
		k := digitsEnd(in, i)
		if k == i {
			return k, false
		}
		i = k
	}
	return i, true
}

// scanString validates the string starting at the quote in[i] and returns
// the index after its closing quote and whether it holds escapes.
func scanString(in []byte, i int) (end int, escaped, ok bool) {
	k := i + 1
	for k < len(in) {
		c := in[k]
		if c >= 0x20 && c != '"' && c != '\\' {
			k++
			continue
		}
		switch c {
		case '"':
			return k + 1, escaped, true
		case '\\':
			escaped = true
			if k+1 >= len(in) {
				return k, false, false
			}
			switch in[k+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				k += 2
			case 'u':
				if k+6 > len(in) || !isHex4(in[k+2:k+6]) {
					return k, false, false
				}
				k += 6
			default:
				return k, false, false
			}
		default:
			return k, false, false
		}
	}
	return k, false, false
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !isHexDigit(c) {
			return false
		}
	}
	return true
}

func isHexDigit(c byte) bool { return isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'f') }

func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		var v byte
		switch {
		case isDigit(c):
			v = c - '0'
		default:
			v = c | 0x20 - 'a' + 10
		}
		r = r<<4 | rune(v)
	}
	return r
}

// appendUnescaped appends the decoded content of a valid JSON string.
// Lone surrogates become U+FFFD, as encoding/json decodes them.
func appendUnescaped(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		if s[i] != '\\' {
			k := i + 1
			for k < len(s) && s[k] != '\\' {
				k++
			}
			dst = append(dst, s[i:k]...)
			i = k
			continue
		}
		c := s[i+1]
		i += 2
		switch c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(s[i : i+4])
			i += 4
			if utf16.IsSurrogate(r) {
				r2 := utf8.RuneError
				if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					r2 = hex4(s[i+2 : i+6])
				}
				if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, c)
		}
	}
	return dst
}

// appendEscaped appends s as JSON string content, escaping only what JSON
// requires: quotes, backslashes and control characters.
func appendEscaped(dst, s []byte) []byte {
	const hexDigits = "0123456789abcdef"
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return dst
}
