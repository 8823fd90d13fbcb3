package redaction

import (
	"bytes"
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MinHMACKeyLen is the shortest redaction.hmac_key a profile with action
// hash accepts. A short key would let anyone who guesses it confirm
// low-entropy values such as SSNs from their hashes.
const MinHMACKeyLen = 16

// Pattern is a custom detector: text that Regex (RE2 syntax, as Go's
// regexp package reads it) matches is redacted and reported as Name.
type Pattern struct {
	Name  string
	Regex string
}

// ProfileConfig is one profile under redaction.profiles in gateway.yaml
// (docs/reference.md, docs/connector-authors.md), as the policy loader reads it.
type ProfileConfig struct {
	// Name names the profile in connectors' redact lists, reports and
	// metrics: letters, digits, '_', '-' and '.'.
	Name string
	// Detectors are built-in detectors (DetectorNames) run over JSON
	// string values, form values, text bodies, query values and header
	// values.
	Detectors []string
	// Patterns are custom detectors, run wherever Detectors run.
	Patterns []Pattern
	// JSONFields name JSON members whose whole value is redacted: a name
	// or a dotted path whose segments may be "*" (any one key). A field
	// matches when its path ends with the pattern, so "password" matches
	// that key at any depth, "user.date_of_birth" a date_of_birth whose
	// parent is user, "*.ssn" any ssn that is not at the top level. Arrays
	// are transparent: "users.ssn" matches {"users":[{"ssn":...}]}. Keys
	// compare ASCII case-insensitively. Single-segment names also name
	// form fields and query parameters.
	JSONFields []string
	// Headers name headers whose every value is redacted (or which are
	// removed, with action drop). Case-insensitive.
	Headers []string
	// QueryParams name query parameters and form fields whose value is
	// redacted (or which are removed, with action drop). ASCII
	// case-insensitive.
	QueryParams []string
	// Action is "mask" (the default), "hash" or "drop".
	Action string
	// OnUnsupportedBody says what happens to a body this profile cannot
	// parse (not JSON, form or text, or declared JSON but invalid):
	// "block" (the default) refuses it with an *UnsupportedBodyError;
	// "pass" lets it through, scanned as text with the detectors when it
	// was declared JSON, untouched otherwise.
	OnUnsupportedBody string
}

type action uint8

const (
	actionMask action = iota
	actionHash
	actionDrop
)

// Profile is a compiled redaction profile. It is immutable and safe for
// concurrent use; build it once per policy load with NewProfile.
type Profile struct {
	name      string
	action    action
	passOther bool   // on_unsupported_body: pass
	hmacKey   []byte // only for actionHash
	rules     []string
	scan      scanner
	fields    []fieldRule
	headers   []nameRule // canonical header names
	params    []nameRule // query parameter and form field names
}

// fieldRule is one json_fields entry split into path segments.
type fieldRule struct {
	segs []string
	rule int
}

// nameRule names a header, query parameter or form field.
type nameRule struct {
	name string
	rule int
}

// NewProfile validates cfg and compiles it. hmacKey is the decoded
// redaction.hmac_key; it may be nil unless cfg.Action is "hash". Errors
// name the profile and the offending entry, for config error messages.
func NewProfile(cfg ProfileConfig, hmacKey []byte) (*Profile, error) {
	if !validRuleName(cfg.Name) {
		return nil, fmt.Errorf("redaction profile name %q: use 1 to 64 letters, digits, '_', '-' or '.'", cfg.Name)
	}
	p := &Profile{name: cfg.Name}
	fail := func(format string, args ...any) (*Profile, error) {
		return nil, fmt.Errorf("redaction profile %q: %s", cfg.Name, fmt.Sprintf(format, args...))
	}
	switch cfg.Action {
	case "", "mask":
		p.action = actionMask
	case "hash":
		p.action = actionHash
		if len(hmacKey) < MinHMACKeyLen {
			return fail("action hash needs redaction.hmac_key of at least %d bytes (it has %d)", MinHMACKeyLen, len(hmacKey))
		}
		p.hmacKey = bytes.Clone(hmacKey)
	case "drop":
		p.action = actionDrop
	default:
		return fail("action %q: use mask, hash or drop", cfg.Action)
	}
	switch cfg.OnUnsupportedBody {
	case "", "block":
	case "pass":
		p.passOther = true
	default:
		return fail("on_unsupported_body %q: use pass or block", cfg.OnUnsupportedBody)
	}

	for _, name := range cfg.Detectors {
		d, ok := parseDetector(name)
		if !ok {
			return fail("unknown detector %q (known: %s)", name, strings.Join(DetectorNames(), ", "))
		}
		if p.scan.enabled[d] {
			return fail("detector %q is listed twice", name)
		}
		p.scan.enable(d, p.addRule(name))
	}
	for _, pat := range cfg.Patterns {
		if !validRuleName(pat.Name) {
			return fail("pattern name %q: use 1 to 64 letters, digits, '_', '-' or '.'", pat.Name)
		}
		if _, builtin := parseDetector(pat.Name); builtin {
			return fail("pattern %q has the name of a built-in detector", pat.Name)
		}
		for _, other := range p.scan.patterns {
			if p.rules[other.rule] == pat.Name {
				return fail("pattern %q is defined twice", pat.Name)
			}
		}
		re, err := regexp.Compile(pat.Regex)
		if err != nil {
			return fail("pattern %q: %v", pat.Name, err)
		}
		if re.Match(nil) {
			return fail("pattern %q matches the empty string", pat.Name)
		}
		p.scan.patterns = append(p.scan.patterns, customPattern{re: re, rule: p.addRule(pat.Name)})
		p.scan.any = true
	}
	for _, f := range cfg.JSONFields {
		segs, err := parseFieldPattern(f)
		if err != nil {
			return fail("json_fields %q: %v", f, err)
		}
		for _, other := range p.fields {
			if strings.EqualFold(p.rules[other.rule], f) {
				return fail("json_fields %q is listed twice", f)
			}
		}
		p.fields = append(p.fields, fieldRule{segs: segs, rule: p.addRule(f)})
	}
	for _, h := range cfg.Headers {
		if !validHeaderName(h) {
			return fail("headers %q is not a valid header name", h)
		}
		canon := textproto.CanonicalMIMEHeaderKey(h)
		if framingHeader(canon) {
			return fail("header %q cannot be redacted: the gateway needs it to frame and route the message", canon)
		}
		if p.headerRule(canon) >= 0 {
			return fail("header %q is listed twice", canon)
		}
		p.headers = append(p.headers, nameRule{name: canon, rule: p.addRule(canon)})
	}
	for _, q := range cfg.QueryParams {
		if q == "" || !utf8.ValidString(q) || strings.ContainsFunc(q, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fail("query_params %q is not a valid parameter name", q)
		}
		if p.paramRule([]byte(q)) >= 0 {
			return fail("query_params %q is listed twice", q)
		}
		p.params = append(p.params, nameRule{name: q, rule: p.addRule(q)})
	}
	// A bare json_fields name also names form fields and query parameters:
	// an admin who lists "password" means the password however it is sent.
	for _, f := range p.fields {
		if len(f.segs) == 1 && p.paramRule([]byte(f.segs[0])) < 0 {
			p.params = append(p.params, nameRule{name: f.segs[0], rule: f.rule})
		}
	}
	if len(p.rules) == 0 {
		return fail("no detectors, patterns, json_fields, headers or query_params: it would redact nothing")
	}
	return p, nil
}

func (p *Profile) addRule(name string) int {
	p.rules = append(p.rules, name)
	return len(p.rules) - 1
}

// Name is the profile's name.
func (p *Profile) Name() string { return p.name }

// InspectsBody reports whether the profile applies to bodies at all; a
// profile of only headers and query parameters does not, so the caller
// need not buffer (or size-limit) the body for it.
func (p *Profile) InspectsBody() bool { return p.scan.active() || len(p.fields) > 0 }

func (p *Profile) inspectsQuery() bool { return p.scan.active() || len(p.params) > 0 }

func (p *Profile) headerRule(canon string) int {
	for _, h := range p.headers {
		if strings.EqualFold(h.name, canon) {
			return h.rule
		}
	}
	return -1
}

func (p *Profile) paramRule(name []byte) int {
	for _, q := range p.params {
		if equalFoldASCII(name, q.name) {
			return q.rule
		}
	}
	return -1
}

func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if x == y {
			continue
		}
		if x|0x20 != y|0x20 || (x|0x20) < 'a' || (x|0x20) > 'z' {
			return false
		}
	}
	return true
}

func validRuleName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; !isWord(c) && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// parseFieldPattern splits a json_fields entry into its segments.
func parseFieldPattern(s string) ([]string, error) {
	if s == "" {
		return nil, fmt.Errorf("empty field")
	}
	if !utf8.ValidString(s) || len(s) > maxMarkerName {
		return nil, fmt.Errorf("not valid UTF-8 of at most %d bytes", maxMarkerName)
	}
	segs := strings.Split(s, ".")
	allStar := true
	for _, seg := range segs {
		switch {
		case seg == "":
			return nil, fmt.Errorf("empty segment (write \"a.b\", \"*.ssn\")")
		case seg == "*":
			continue
		case strings.Contains(seg, "*"):
			return nil, fmt.Errorf("\"*\" must be a whole segment")
		}
		allStar = false
		for i := range len(seg) {
			if !isMarkerNameByte(seg[i]) {
				return nil, fmt.Errorf("character %s is not allowed", strconv.QuoteRune(rune(seg[i])))
			}
		}
	}
	if allStar {
		return nil, fmt.Errorf("it would match every field")
	}
	return segs, nil
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if !isAlnum(c) && !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

// framingHeader reports headers that frame or route the message. They are
// never redacted: changing them would break the exchange, not protect data.
func framingHeader(canon string) bool {
	switch canon {
	case "Host", "Content-Length", "Content-Type", "Content-Encoding", "Transfer-Encoding",
		"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade":
		return true
	}
	return false
}

// Headers redacts h in place: every value of a header the profile names is
// replaced (or the header removed, with action drop), and the detectors
// run over every value of the other headers except the framing ones
// (Content-Type, Content-Length, ...). Values already redacted are left
// alone.
func (p *Profile) Headers(h http.Header) Report {
	if len(p.headers) == 0 && !p.scan.active() {
		return nil
	}
	r := p.newRun()
	for name, values := range h {
		if rule := p.headerRule(name); rule >= 0 {
			if p.action == actionDrop {
				delete(h, name)
				r.counts[rule] += len(values)
				continue
			}
			for k, v := range values {
				if v == "" || r.isOwnReplacement(rule, []byte(v)) {
					continue
				}
				values[k] = string(r.appendReplacement(nil, rule, []byte(v)))
				r.counts[rule]++
			}
			continue
		}
		if !p.scan.active() || framingHeader(textproto.CanonicalMIMEHeaderKey(name)) {
			continue
		}
		for k, v := range values {
			if out, changed := r.redactText([]byte(v)); changed {
				values[k] = string(out)
			}
		}
	}
	return r.report()
}

// Query redacts a raw (still percent-encoded) URL query: the value of a
// parameter the profile names is replaced (or the parameter removed, with
// action drop), and the detectors run over every other decoded value. Keys
// and untouched parameters stay byte for byte; a changed value is
// re-encoded with url.QueryEscape rules.
func (p *Profile) Query(rawQuery string) (string, Report) {
	if rawQuery == "" || !p.inspectsQuery() {
		return rawQuery, nil
	}
	r := p.newRun()
	out, changed := r.urlEncoded([]byte(rawQuery))
	if !changed {
		return rawQuery, nil
	}
	return string(out), r.report()
}

// Chain is the ordered list of profiles a connector applies in one
// direction (redact.request or redact.response). Each profile works on the
// previous one's output; markers one leaves are never redacted by the next.
type Chain []*Profile

// InspectsBody reports whether any profile of the chain applies to bodies.
func (c Chain) InspectsBody() bool {
	for _, p := range c {
		if p.InspectsBody() {
			return true
		}
	}
	return false
}

// Body runs Profile.Body of each profile in order. On error the body must
// not be sent; out is nil.
func (c Chain) Body(contentType string, body []byte) (out []byte, rep Report, err error) {
	for _, p := range c {
		var r Report
		body, r, err = p.Body(contentType, body)
		rep = append(rep, r...)
		if err != nil {
			return nil, rep, err
		}
	}
	return body, rep, nil
}

// Headers runs Profile.Headers of each profile in order.
func (c Chain) Headers(h http.Header) Report {
	var rep Report
	for _, p := range c {
		rep = append(rep, p.Headers(h)...)
	}
	return rep
}

// Query runs Profile.Query of each profile in order.
func (c Chain) Query(rawQuery string) (string, Report) {
	var rep Report
	for _, p := range c {
		var r Report
		rawQuery, r = p.Query(rawQuery)
		rep = append(rep, r...)
	}
	return rawQuery, rep
}

// Finding counts the values one rule of one profile replaced.
type Finding struct {
	// Profile is the profile's name.
	Profile string
	// Detector names the rule: a detector, a custom pattern, a json_fields
	// entry as written, a canonical header name or a query parameter name.
	// It is the <name> in "[REDACTED:<name>]" and the detector label of
	// redactions_total.
	Detector string
	// Count is how many values (matches, fields, header values,
	// parameters) were replaced or removed.
	Count int
}

// Report lists what one call redacted: names and counts, never values, so
// it may go to metrics and the audit log as it is.
type Report []Finding

// Total is the number of values redacted.
func (r Report) Total() int {
	n := 0
	for _, f := range r {
		n += f.Count
	}
	return n
}

// Strings renders the report for the audit log's redactions list, one
// "profile:detector=count" per finding.
func (r Report) Strings() []string {
	out := make([]string, len(r))
	for i, f := range r {
		out[i] = f.Profile + ":" + f.Detector + "=" + strconv.Itoa(f.Count)
	}
	return out
}
