package redaction

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"slices"
)

// maxRounds bounds how often one text is rescanned. Replacing a match can
// change what its neighbours look like (a card number followed by
// "-123-45-6789" hides an SSN until the card becomes a marker), so a text
// is scanned again until nothing more matches. Every round turns at least
// one byte that is not yet a marker into a marker, so this ends; in
// practice the second round finds nothing.
const maxRounds = 8

// rescanMargin is how far around a replacement a later round looks for
// triggers. Built-in detectors decide from a bounded neighbourhood of
// their trigger (an address's '@' is at most 64 bytes after where it
// starts, a card or phone number spans at most a few dozen bytes), so only
// triggers this close to a replacement can see anything new. Custom
// patterns are rerun over the whole text.
const rescanMargin = 128

// run is the state of one redaction call: counts per rule, scratch memory
// and the HMAC. It keeps a Profile immutable and safe for concurrent use.
type run struct {
	p      *Profile
	counts []int
	mac    hash.Hash
	sum    []byte
	sr     scratch
	rounds [2][]byte // alternating outputs of redactText's rounds
	str    []byte    // a decoded JSON string or URL-encoded value
}

func (p *Profile) newRun() *run {
	return &run{p: p, counts: make([]int, len(p.rules))}
}

// redactText replaces every detector and pattern match in s, rescanning
// until nothing more matches. It returns s itself when nothing matched;
// otherwise a buffer of the run that the next redactText call reuses.
func (r *run) redactText(s []byte) ([]byte, bool) {
	changed := false
	var windows []span // nil: the whole text
	for round := range maxRounds {
		pieces := r.p.scan.find(s, &r.sr, windows)
		if len(pieces) == 0 {
			break
		}
		buf := &r.rounds[round%2]
		next := &r.sr.windows[round%2]
		*buf, *next = r.apply((*buf)[:0], (*next)[:0], s, pieces)
		s, windows = *buf, *next
		changed = true
	}
	return s, changed
}

// apply appends to dst the text s with pieces replaced, and to windows the
// neighbourhoods of the replacements in dst, merged.
func (r *run) apply(dst []byte, windows []span, s []byte, pieces []match) ([]byte, []span) {
	size := len(s)
	for _, m := range pieces {
		size += r.replacementLen(m.rule) - (m.end - m.start)
	}
	dst = slices.Grow(dst, size)
	prev := 0
	for _, m := range pieces {
		dst = append(dst, s[prev:m.start]...)
		w := span{max(0, len(dst)-rescanMargin), 0}
		dst = r.appendReplacement(dst, m.rule, s[m.start:m.end])
		w.end = min(size, len(dst)+rescanMargin)
		if n := len(windows); n > 0 && windows[n-1].end >= w.start {
			windows[n-1].end = w.end
		} else {
			windows = append(windows, w)
		}
		r.counts[m.rule]++
		prev = m.end
	}
	return append(dst, s[prev:]...), windows
}

// appendReplacement appends what stands in for value, which rule matched:
// "hmac:<16 hex>" when the profile hashes, "[REDACTED:<rule>]" otherwise
// (drop removes whole fields; a match inside a text is masked).
func (r *run) appendReplacement(dst []byte, rule int, value []byte) []byte {
	if r.p.action == actionHash {
		if r.mac == nil {
			r.mac = hmac.New(sha256.New, r.p.hmacKey)
		} else {
			r.mac.Reset()
		}
		r.mac.Write(value)
		r.sum = r.mac.Sum(r.sum[:0])
		dst = append(dst, hashPrefix...)
		return hex.AppendEncode(dst, r.sum[:hashHexLen/2])
	}
	dst = append(dst, maskPrefix...)
	dst = append(dst, r.p.rules[rule]...)
	return append(dst, ']')
}

func (r *run) replacementLen(rule int) int {
	if r.p.action == actionHash {
		return len(hashPrefix) + hashHexLen
	}
	return len(maskPrefix) + len(r.p.rules[rule]) + 1
}

// isOwnReplacement reports whether v already is what rule would leave, so
// a field, header or parameter redacted once is not redacted again.
func (r *run) isOwnReplacement(rule int, v []byte) bool {
	if isMarker(v) {
		return true
	}
	name := r.p.rules[rule]
	return r.p.action != actionHash && len(v) == len(maskPrefix)+len(name)+1 &&
		string(v[:len(maskPrefix)]) == maskPrefix && string(v[len(maskPrefix):len(v)-1]) == name && v[len(v)-1] == ']'
}

// report turns the counts into a Report, one Finding per name.
func (r *run) report() Report {
	var rep Report
	for i, n := range r.counts {
		if n == 0 {
			continue
		}
		name := r.p.rules[i]
		if k := slices.IndexFunc(rep, func(f Finding) bool { return f.Detector == name }); k >= 0 {
			rep[k].Count += n
			continue
		}
		rep = append(rep, Finding{Profile: r.p.name, Detector: name, Count: n})
	}
	return rep
}

func (r *run) resetCounts() { clear(r.counts) }
