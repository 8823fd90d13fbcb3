package redaction

import (
	"bytes"
	"cmp"
	"regexp"
	"slices"
)

// A scanner finds what a profile's detectors and patterns match in a text.
//
// Running every detector's regular expression over every value would cost
// far more than the gateway can spend per byte. Instead one pass looks at
// each byte once through a table of trigger bytes: '@' for addresses,
// digits for cards, SSNs, phones and IBANs, '+' and '(' for phones, 'A' for
// AWS keys, 'g' for GitHub tokens, 'e' for JWTs ("eyJ"), '-' for PEM blocks
// and 'B'/'b' for bearer tokens. Only at a trigger does targeted code look
// at the neighbourhood and validate (Luhn, mod 97, JSON header, ...).
// Custom patterns are RE2 expressions run by the regexp package.
type scanner struct {
	trigger  [256]trigger
	enabled  [numDetectors]bool
	rule     [numDetectors]int // rule index of each enabled detector
	patterns []customPattern
	any      bool // a detector or pattern is enabled
}

type customPattern struct {
	re   *regexp.Regexp
	rule int
}

type trigger uint8

const (
	trigNone trigger = iota
	trigDigit
	trigAt
	trigPlus
	trigParen
	trigUpperA
	trigLowerG
	trigLowerE
	trigDash
	trigBearer
)

// span is s[start:end] of some text.
type span struct{ start, end int }

// match is a span a rule matched; rule indexes Profile.rules.
type match struct {
	start, end int
	rule       int
}

func (sc *scanner) active() bool { return sc.any }

func (sc *scanner) enable(d detector, rule int) {
	sc.any = true
	sc.enabled[d] = true
	sc.rule[d] = rule
	set := func(t trigger, bs ...byte) {
		for _, b := range bs {
			sc.trigger[b] = t
		}
	}
	switch d {
	case detEmail:
		set(trigAt, '@')
	case detCreditCard, detUSSSN, detPhone, detIBAN:
		set(trigDigit, []byte("0123456789")...)
		if d == detPhone {
			set(trigPlus, '+')
			set(trigParen, '(')
		}
	case detAWSAccessKey:
		set(trigUpperA, 'A')
	case detGitHubToken:
		set(trigLowerG, 'g')
	case detJWT:
		set(trigLowerE, 'e')
	case detPrivateKey:
		set(trigDash, '-')
	case detBearerToken:
		set(trigBearer, 'B', 'b')
	}
}

// scratch is reusable working memory for scanner.find and run.redactText.
type scratch struct {
	found   []match
	marks   []span
	pieces  []match
	windows [2][]span
}

// find returns the spans of s to replace, sorted and disjoint. Overlapping
// matches are merged, so every byte any rule matched is replaced, and the
// merged span is named after the match that starts first (the longest at
// the same start). Redaction markers already in s are cut out of the spans:
// a marker is never redacted again, which is what makes redaction
// idempotent and keeps several profiles from mangling each other's output.
//
// windows, when not nil, limits where built-in detectors may be triggered
// (they still read the whole text around a trigger); custom patterns
// always run over all of s.
func (sc *scanner) find(s []byte, sr *scratch, windows []span) []match {
	found := sr.found[:0]
	sorted := true
	scan := func(from, to int) {
		for i := from; i < to; {
			t := sc.trigger[s[i]]
			if t == trigNone {
				i++
				continue
			}
			var (
				m    match
				next int
				ok   bool
			)
			if t == trigDigit {
				m, next, ok = sc.atDigit(s, i)
			} else {
				m, next, ok = sc.at(s, i, t)
			}
			if ok {
				if len(found) > 0 && m.start < found[len(found)-1].start {
					sorted = false
				}
				found = append(found, m)
			}
			i = next
		}
	}
	if windows == nil {
		scan(0, len(s))
	} else {
		for _, w := range windows {
			scan(w.start, w.end)
		}
		// Windows are disjoint, but a match may run from one into the next.
		sorted = false
	}
	for _, p := range sc.patterns {
		for _, loc := range p.re.FindAllIndex(s, -1) {
			if loc[1] > loc[0] {
				found = append(found, match{loc[0], loc[1], p.rule})
				sorted = false
			}
		}
	}
	sr.found = found
	if len(found) == 0 {
		return nil
	}
	if !sorted {
		slices.SortFunc(found, func(a, b match) int {
			if c := cmp.Compare(a.start, b.start); c != 0 {
				return c
			}
			return cmp.Compare(b.end, a.end)
		})
	}
	merged := found[:1]
	for _, m := range found[1:] {
		last := &merged[len(merged)-1]
		if m.start < last.end {
			last.end = max(last.end, m.end)
			continue
		}
		merged = append(merged, m)
	}
	sr.marks = appendMarkers(sr.marks[:0], s)
	if len(sr.marks) == 0 {
		return merged
	}
	sr.pieces = subtractSpans(sr.pieces[:0], merged, sr.marks)
	return sr.pieces
}

// at looks for a match triggered by s[i] and says where scanning goes on.
func (sc *scanner) at(s []byte, i int, t trigger) (m match, next int, ok bool) {
	switch t {
	case trigAt:
		if start, end, found := emailAt(s, i); found {
			return match{start, end, sc.rule[detEmail]}, end, true
		}
		return match{}, i + 1, false
	case trigDash:
		if end, found := privateKeyAt(s, i); found {
			return match{i, end, sc.rule[detPrivateKey]}, end, true
		}
		return match{}, i + 1, false
	}
	if wordBefore(s, i) {
		return match{}, i + 1, false
	}
	var (
		d          detector
		start, end = i, 0
		found      bool
	)
	switch t {
	case trigPlus:
		d = detPhone
		end, found = intlPhoneAt(s, i)
	case trigParen:
		d = detPhone
		end, found = nanpAt(s, i)
	case trigUpperA:
		d = detAWSAccessKey
		end, found = awsKeyAt(s, i)
	case trigLowerG:
		d = detGitHubToken
		end, found = githubTokenAt(s, i)
	case trigLowerE:
		d = detJWT
		end, found = jwtAt(s, i)
	case trigBearer:
		d = detBearerToken
		start, end, found = bearerAt(s, i)
	}
	if !found {
		return match{}, i + 1, false
	}
	return match{start, end, sc.rule[d]}, end, true
}

// atDigit handles a digit. Which detector can start here follows from the
// first run of digits and the byte after it, so most numbers (years,
// amounts, identifiers) are dismissed without calling any detector.
func (sc *scanner) atDigit(s []byte, i int) (match, int, bool) {
	if wordBefore(s, i) {
		// Inside a word; only an IBAN starts with letters.
		if sc.enabled[detIBAN] && i >= 2 && isUpper(s[i-1]) && isUpper(s[i-2]) {
			if end, found := ibanAt(s, i-2); found {
				return match{i - 2, end, sc.rule[detIBAN]}, end, true
			}
		}
		return match{}, wordEnd(s, i), false
	}
	k := digitsEnd(s, i)
	run := k - i
	var after byte
	if k+1 < len(s) && isDigit(s[k+1]) {
		after = s[k] // a separator between digit groups
	}
	if sc.enabled[detCreditCard] && ((run >= 13 && run <= 19) || (run == 4 && (after == ' ' || after == '-'))) {
		if end, found := cardAt(s, i); found {
			return match{i, end, sc.rule[detCreditCard]}, end, true
		}
	}
	if run == 3 && (after == '-' || after == ' ') && sc.enabled[detUSSSN] {
		if end, found := ssnAt(s, i); found {
			return match{i, end, sc.rule[detUSSSN]}, end, true
		}
	}
	if sc.enabled[detPhone] && ((run == 3 && isPhoneSep(after)) || (run == 1 && s[i] == '1' && k+1 < len(s) && isPhoneSep(s[k]))) {
		if end, found := nanpAt(s, i); found {
			return match{i, end, sc.rule[detPhone]}, end, true
		}
	}
	// Later digits of the same number are not starting points.
	return match{}, wordEnd(s, k), false
}

// subtractSpans appends to dst the parts of the sorted, disjoint spans ms
// that lie outside the sorted, disjoint spans cut.
func subtractSpans(dst, ms []match, cut []span) []match {
	k := 0
	for _, m := range ms {
		start := m.start
		for k < len(cut) && cut[k].end <= start {
			k++
		}
		for j := k; j < len(cut) && cut[j].start < m.end; j++ {
			if cut[j].start > start {
				dst = append(dst, match{start, cut[j].start, m.rule})
			}
			start = max(start, cut[j].end)
		}
		if start < m.end {
			dst = append(dst, match{start, m.end, m.rule})
		}
	}
	return dst
}

// Redaction markers: what mask and hash leave behind.
const (
	maskPrefix = "[REDACTED:"
	hashPrefix = "hmac:"
	hashHexLen = 16
	// maxMarkerName bounds the name inside a mask marker.
	maxMarkerName = 128
)

func isMarkerNameByte(c byte) bool {
	return c >= 0x20 && c != 0x7f && c != '[' && c != ']' && c != '"' && c != '\\'
}

// maskMarkerEnd returns the end of the "[REDACTED:name]" at s[i], or -1.
func maskMarkerEnd(s []byte, i int) int {
	j := i + len(maskPrefix)
	if !bytes.HasPrefix(s[i:], []byte(maskPrefix)) {
		return -1
	}
	for k := j; k < len(s) && k <= j+maxMarkerName; k++ {
		switch c := s[k]; {
		case c == ']':
			if k == j {
				return -1
			}
			return k + 1
		case !isMarkerNameByte(c):
			return -1
		}
	}
	return -1
}

// hashMarkerEnd returns the end of the "hmac:<16 hex>" at s[i], or -1.
func hashMarkerEnd(s []byte, i int) int {
	j := i + len(hashPrefix)
	if j+hashHexLen > len(s) || !bytes.HasPrefix(s[i:], []byte(hashPrefix)) {
		return -1
	}
	for _, c := range s[j : j+hashHexLen] {
		if !isDigit(c) && (c < 'a' || c > 'f') {
			return -1
		}
	}
	return j + hashHexLen
}

// isMarker reports whether v is exactly one redaction marker.
func isMarker(v []byte) bool {
	return len(v) > 0 && (maskMarkerEnd(v, 0) == len(v) || hashMarkerEnd(v, 0) == len(v))
}

// appendMarkers appends the redaction markers in s, sorted and disjoint.
func appendMarkers(marks []span, s []byte) []span {
	first := len(marks)
	for _, m := range []struct {
		prefix string
		end    func([]byte, int) int
	}{{maskPrefix, maskMarkerEnd}, {hashPrefix, hashMarkerEnd}} {
		for off := 0; off < len(s); {
			k := bytes.Index(s[off:], []byte(m.prefix))
			if k < 0 {
				break
			}
			start := off + k
			if end := m.end(s, start); end > 0 {
				marks = append(marks, span{start, end})
				off = end
			} else {
				off = start + 1
			}
		}
	}
	found := marks[first:]
	if len(found) < 2 {
		return marks
	}
	slices.SortFunc(found, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	merged := found[:1]
	for _, m := range found[1:] {
		last := &merged[len(merged)-1]
		if m.start < last.end {
			last.end = max(last.end, m.end)
			continue
		}
		merged = append(merged, m)
	}
	return marks[:first+len(merged)]
}
