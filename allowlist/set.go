package allowlist

import (
	"math"
	"net/netip"
	"strconv"
	"strings"
)

// Action is what a rule does with the traffic it matches.
type Action uint8

const (
	// Allow lets matching traffic through unless a deny rule also matches.
	Allow Action = iota
	// Deny refuses matching traffic, whatever allow rules match.
	Deny
)

// String returns "allow" or "deny".
func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// Rule is one allow or deny rule. A rule with no Hosts matches nothing.
type Rule struct {
	Action  Action
	Hosts   []Pattern
	Ports   []uint16 // empty: 80 and 443 for an allow rule, every port for a deny rule
	Methods []string // upper-case; empty: every method
	// Paths are path prefixes ("/repos/"); empty: every path. A prefix
	// matches the request path if strings.HasPrefix(path, prefix); a deny
	// rule's also ignoring case, percent-encoding and path parameters (see
	// denyMatchesAsServersRead). A path PathAmbiguity refuses matches every
	// deny rule naming paths and no allow rule naming paths, and the Result
	// says so. The caller refuses paths an upstream could read otherwise
	// (dot or empty segments, needless percent-encoding: policy.CheckPath);
	// no cleaning happens here.
	Paths []string
}

// Conditional reports whether the rule restricts methods or paths, which
// only traffic the gateway can read (plain HTTP or an inspected tunnel) can
// be checked against.
func (r Rule) Conditional() bool { return len(r.Methods) > 0 || len(r.Paths) > 0 }

// Query is the request a Set is asked about.
type Query struct {
	Host   string // normalised (NormalizeHost)
	Port   uint16
	Method string // upper-case; ignored when Tunnel
	Path   string // ignored when Tunnel
	Tunnel bool   // an uninspected CONNECT: method and path are unknown
}

// Result holds rule indices into the slice given to NewSet, -1 when none
// matched.
type Result struct {
	Deny  int // the first (lowest index) deny rule that matches
	Allow int // the first allow rule that matches
	// AmbiguousPath is set when a rule naming paths met a path that
	// PathAmbiguity refuses: a deny rule then matched it, an allow rule did
	// not.
	AmbiguousPath bool
}

// Set is an immutable, indexed list of rules, safe for concurrent use.
type Set struct {
	rules []compiledRule
	// exact maps a host to the ascending indices of the rules naming it.
	exact map[string][]int32
	// wildcard maps the domain of a "*.domain" pattern to the ascending
	// indices of the rules naming it.
	wildcard map[string][]int32
	// addresses lists the IP and CIDR patterns, checked only for IP hosts.
	addresses []addressEntry
}

// compiledRule is a Rule with its defaults filled in.
type compiledRule struct {
	action      Action
	conditional bool
	ports       []uint16 // nil: every port
	methods     []string
	paths       []string
	// serverPaths are a deny rule's paths as serverPath reads them.
	serverPaths []string
}

type addressEntry struct {
	prefix netip.Prefix
	rule   int32
}

// NewSet indexes rules for Match. It copies what it keeps, so the caller may
// reuse rules afterwards. Rule methods are upper-cased.
//
// NewSet panics with more than math.MaxInt32 rules.
func NewSet(rules []Rule) *Set {
	if len(rules) > math.MaxInt32 {
		panic("allowlist: too many rules")
	}
	s := &Set{
		rules:    make([]compiledRule, len(rules)),
		exact:    make(map[string][]int32),
		wildcard: make(map[string][]int32),
	}
	for i, r := range rules {
		index := int32(i)
		s.rules[i] = compileRule(r)
		for _, p := range r.Hosts {
			switch p.kind {
			case kindExact:
				s.exact[p.host] = appendIndex(s.exact[p.host], index)
			case kindWildcard:
				s.wildcard[p.host] = appendIndex(s.wildcard[p.host], index)
			case kindAddress:
				s.addresses = append(s.addresses, addressEntry{prefix: p.prefix, rule: index})
			}
		}
	}
	return s
}

func compileRule(r Rule) compiledRule {
	c := compiledRule{
		action:      r.Action,
		conditional: r.Conditional(),
		ports:       append([]uint16(nil), r.Ports...),
		paths:       append([]string(nil), r.Paths...),
	}
	if len(c.ports) == 0 && r.Action == Allow {
		// A deny rule without ports keeps them all nil: "deny this host"
		// must not leave its other ports open.
		c.ports = []uint16{80, 443}
	}
	for _, m := range r.Methods {
		c.methods = append(c.methods, strings.ToUpper(m))
	}
	if r.Action == Deny {
		for _, p := range r.Paths {
			c.serverPaths = append(c.serverPaths, serverPath(p))
		}
	}
	return c
}

// appendIndex adds index to an ascending list, once even if a rule names the
// same host twice.
func appendIndex(list []int32, index int32) []int32 {
	if n := len(list); n > 0 && list[n-1] == index {
		return list
	}
	return append(list, index)
}

// Match finds, by rule order, the first deny rule and the first allow rule
// that match q.
//
// A rule matches when one of its host patterns matches q.Host, q.Port is one
// of its ports, and, unless q.Tunnel, q.Method is one of its methods and
// q.Path starts with one of its paths. A deny rule's methods match whatever
// the case of q.Method, so a request cannot step around a deny by spelling
// its method in lower case; allow rules compare methods exactly.
//
// For a Tunnel query a rule matches on host and port alone, and an
// unconditional deny rule is preferred over a conditional one: Result.Deny is
// the lowest matching unconditional deny rule, else the lowest matching
// conditional one. The caller can tell the two apart with [Rule.Conditional].
//
// Match does not allocate; its cost grows with the number of labels in the
// host and the rules naming the host, not with the size of the set.
func (s *Set) Match(q Query) Result {
	b := best{allow: noRule, denyUnconditional: noRule, denyConditional: noRule}
	if addr, ok := hostAddr(q.Host); ok {
		// IP hosts are matched by address patterns only: exact and wildcard
		// patterns never hold an IP literal.
		for _, e := range s.addresses {
			if b.done(e.rule) {
				break // entries are in ascending rule order
			}
			if prefixContainsEither(e.prefix, addr) {
				s.consider(&b, e.rule, &q)
			}
		}
	} else {
		s.considerAll(&b, s.exact[q.Host], &q)
		// Each proper parent domain of the host may carry a wildcard: for
		// a.b.example.com look up b.example.com, example.com and com.
		for i := 0; i < len(q.Host); i++ {
			if q.Host[i] == '.' {
				s.considerAll(&b, s.wildcard[q.Host[i+1:]], &q)
			}
		}
	}
	return b.result(q.Tunnel)
}

// noRule is larger than every rule index.
const noRule = math.MaxInt32

// best tracks the lowest matching rule index found so far in each category.
type best struct {
	allow, denyUnconditional, denyConditional int32
	path                                      pathState
}

// pathState caches PathAmbiguity for the query's path, asked only once a
// rule naming paths is met.
type pathState uint8

const (
	pathUnchecked pathState = iota
	pathClear
	pathAmbiguous
)

// done reports whether rule index can no longer improve any category.
func (b *best) done(index int32) bool {
	return index >= b.allow && index >= b.denyUnconditional && index >= b.denyConditional
}

func (b *best) result(tunnel bool) Result {
	deny := b.denyUnconditional
	if b.denyConditional < deny && (!tunnel || deny == noRule) {
		deny = b.denyConditional
	}
	return Result{Deny: indexOrNone(deny), Allow: indexOrNone(b.allow), AmbiguousPath: b.path == pathAmbiguous}
}

func indexOrNone(index int32) int {
	if index == noRule {
		return -1
	}
	return int(index)
}

// considerAll walks an ascending list of rule indices whose host pattern
// matched, stopping once no later index can improve the result.
func (s *Set) considerAll(b *best, indices []int32, q *Query) {
	for _, index := range indices {
		if b.done(index) {
			return
		}
		s.consider(b, index, q)
	}
}

// consider records rule index, whose host pattern matched, if the rest of
// the rule matches and it improves its category.
func (s *Set) consider(b *best, index int32, q *Query) {
	r := &s.rules[index]
	var slot *int32
	switch {
	case r.action == Allow:
		slot = &b.allow
	case r.conditional:
		slot = &b.denyConditional
	default:
		slot = &b.denyUnconditional
	}
	if index < *slot && r.matches(q, &b.path) {
		*slot = index
	}
}

// matches checks everything but the host.
func (r *compiledRule) matches(q *Query, state *pathState) bool {
	if r.ports != nil && !containsPort(r.ports, q.Port) {
		return false
	}
	if q.Tunnel {
		return true
	}
	return r.matchesMethod(q.Method) && r.matchesPath(q.Path, state)
}

func containsPort(ports []uint16, port uint16) bool {
	for _, p := range ports {
		if p == port {
			return true
		}
	}
	return false
}

func (r *compiledRule) matchesMethod(method string) bool {
	if len(r.methods) == 0 {
		return true
	}
	for _, m := range r.methods {
		if m == method || r.action == Deny && strings.EqualFold(m, method) {
			return true
		}
	}
	return false
}

func (r *compiledRule) matchesPath(path string, state *pathState) bool {
	if len(r.paths) == 0 {
		return true
	}
	if *state == pathUnchecked {
		*state = pathClear
		if PathAmbiguity(path) != "" {
			*state = pathAmbiguous
		}
	}
	if *state == pathAmbiguous {
		// No prefix comparison can be trusted: fail closed either way.
		return r.action == Deny
	}
	for _, p := range r.paths {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return r.action == Deny && r.denyMatchesAsServersRead(path)
}

// denyMatchesAsServersRead matches a deny rule's prefixes as servers that
// ignore case, decode percent-encoding or strip path parameters read the
// path, so that none of "/Admin/users", "/admin;x=1/users" and
// "/v1/users%3Abatch" gets past a deny of "/admin/" or "/v1/users:batch".
// A deny reaching too far fails closed; an allow rule stays exact.
func (r *compiledRule) denyMatchesAsServersRead(path string) bool {
	path = serverPath(path)
	for _, p := range r.serverPaths {
		if len(path) >= len(p) && strings.EqualFold(path[:len(p)], p) {
			return true
		}
	}
	return false
}

// StripPathParams removes the parameters of each path segment
// ("/a;x=1/b;y" is "/a/b"), as some servers do before routing.
func StripPathParams(path string) string {
	var b strings.Builder
	b.Grow(len(path))
	for path != "" {
		segment, rest, more := strings.Cut(path, "/")
		segment, _, _ = strings.Cut(segment, ";")
		b.WriteString(segment)
		if more {
			b.WriteByte('/')
		}
		path = rest
	}
	return b.String()
}
