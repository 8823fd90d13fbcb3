package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/egressgw/egressgw/allowlist"
)

// lintAddresses warns about the host patterns of an allowing rule or
// connector that span addresses of many unrelated owners, or that name
// only addresses the gateway never dials (the
// built-in special-purpose table, or network.deny_cidrs, without
// network.allow_cidrs reopening any of them; see docs/admins.md): such a
// rule looks like access but every request under it is refused with
// destination_ip_denied. hosts are the patterns as written; at gives the
// line of a path below the rule. Gateway.yaml's network section must be
// built already.
func (b *builder) lintAddresses(doc *yamlDoc, action allowlist.Action, hosts []string, at func(...any) int) {
	if action != allowlist.Allow {
		return // denying what is never dialled is harmless
	}
	var addresses *allowlist.AddressPolicy
	for i, h := range hosts {
		prefix, ok := patternPrefix(h)
		if !ok {
			continue
		}
		if addresses == nil {
			addresses = b.snap.Gateway.AddressPolicy(nil, nil)
		}
		reason, refused := addresses.RefusesAll(prefix)
		if !refused {
			if tooWide(prefix) {
				b.warnf(doc, at("hosts", i), "host %q allows addresses of many unrelated owners (wider than an IPv4 /8 or an IPv6 /16); list the ranges you mean", h)
			}
			continue
		}
		advice := "remove it, or if it is meant to be reachable, add it to network.allow_cidrs in " + GatewayFileName
		if strings.HasPrefix(reason, "operator deny_cidrs") {
			advice = "remove it here, or from network.deny_cidrs in " + GatewayFileName
		}
		b.warnf(doc, at("hosts", i), "host %q: the gateway never dials it (%s), so every request to it is refused with destination_ip_denied; %s", h, reason, advice)
	}
}

// patternPrefix returns the addresses an IP literal or CIDR host pattern
// names; ok is false for names and for patterns that do not parse (which
// are errors of their own).
func patternPrefix(h string) (netip.Prefix, bool) {
	p, err := allowlist.ParsePattern(h)
	if err != nil || !p.IsAddress() {
		return netip.Prefix{}, false
	}
	text := p.String()
	if strings.Contains(text, "/") {
		prefix, err := netip.ParsePrefix(text)
		return prefix, err == nil
	}
	addr, err := netip.ParseAddr(text)
	if err != nil {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, addr.BitLen()), true
}

// lintTenant warns about what in a tenant's policy cannot work as written
// (docs/admins.md, "Checking a policy"): a rule an earlier one shadows, a
// deny no allow could reach, and a tenant without a request rate. It runs only on a
// tenant that loaded without errors, whose rules are its connectors in the
// order of tf.Connectors, then tf.Rules.
func (b *builder) lintTenant(doc *yamlDoc, tf tenantFile, t *Tenant) {
	if len(t.rules) != len(tf.Connectors)+len(tf.Rules) {
		return // some reference did not resolve; reported elsewhere
	}
	line := func(k int) int {
		if k < len(tf.Connectors) {
			return doc.line("connectors", k)
		}
		return doc.line("rules", k-len(tf.Connectors))
	}
	what := func(r Rule) string {
		if r.Kind == KindConnector {
			return fmt.Sprintf("connector %q", r.Name)
		}
		return fmt.Sprintf("rule %q", r.Name)
	}
	var earlier coverIndex
	for k, r := range t.rules {
		// The first matching allow decides, and a matching deny wins (the
		// first one is reported): an earlier rule of the same action that
		// matches every request r does leaves r nothing to decide.
		for _, i := range earlier.candidates(r.Match.Hosts) {
			if e := t.rules[i]; e.Match.Action == r.Match.Action && ruleCovers(e.Match, r.Match) {
				b.warnf(doc, line(k), "%s can never be the one that matches: the earlier %s covers all its hosts, ports, methods and paths; remove it, or narrow or reorder the earlier one", what(r), what(e))
				break
			}
		}
		earlier.add(k, r.Match.Hosts)
		if r.Match.Action == allowlist.Allow {
			continue
		}
		reachable := false
		for _, a := range t.rules {
			if a.Match.Action == allowlist.Allow && hostsOverlap(a.Match.Hosts, r.Match.Hosts) {
				reachable = true
				break
			}
		}
		if !reachable {
			b.warnf(doc, line(k), "deny %s denies what is already denied: no allow rule or connector of this tenant covers its hosts; remove it, or allow something it is meant to carve out of", what(r))
		}
	}
	if t.Quota.Rate.Unlimited() && len(t.rules) > 0 { // no rules: already warned, nothing passes
		b.warnf(doc, doc.line("quota"), "tenant %q has no request rate limit: set quota.requests_per_second and burst here, or tenant_defaults in %s, so that one sandbox cannot flood the gateway and its upstreams", tf.ID, GatewayFileName)
	}
}

// coverIndex finds, among the rules added so far, those that may cover a
// rule: one that covers it must match its first host, so only rules with
// that exact host, a wildcard over one of its parent domains, or an
// address pattern need the full comparison. Without it the shadow check
// compared every pair of rules, which took tens of seconds for a tenant of
// 10,000 rules on every load.
type coverIndex struct {
	exact     map[string][]int // by host
	wildcards map[string][]int // by the domain after "*."
	addresses []int            // rules with an address or CIDR pattern
}

func (x *coverIndex) add(i int, hosts []allowlist.Pattern) {
	if x.exact == nil {
		x.exact, x.wildcards = map[string][]int{}, map[string][]int{}
	}
	addressSeen := false
	for _, h := range hosts {
		text := h.String()
		switch domain, wild := strings.CutPrefix(text, "*."); {
		case h.IsAddress():
			if !addressSeen {
				x.addresses = append(x.addresses, i)
				addressSeen = true
			}
		case wild:
			if l := x.wildcards[domain]; len(l) == 0 || l[len(l)-1] != i {
				x.wildcards[domain] = append(l, i)
			}
		default:
			if l := x.exact[text]; len(l) == 0 || l[len(l)-1] != i {
				x.exact[text] = append(l, i)
			}
		}
	}
}

// candidates lists, in rule order, the rules added so far that may cover
// a rule with these hosts.
func (x *coverIndex) candidates(hosts []allowlist.Pattern) []int {
	if len(hosts) == 0 || x.exact == nil {
		return nil
	}
	first := hosts[0]
	if first.IsAddress() {
		return x.addresses
	}
	text := first.String()
	var out []int
	domain, wild := strings.CutPrefix(text, "*.")
	if wild {
		out = append(out, x.wildcards[domain]...)
	} else {
		out = append(out, x.exact[text]...)
		domain = text
	}
	for {
		_, parent, ok := strings.Cut(domain, ".")
		if !ok {
			break
		}
		out = append(out, x.wildcards[parent]...)
		domain = parent
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// tooWide reports whether an allowed address range spans what no single
// owner holds: wider than an IPv4 /8 or an IPv6 /16.
func tooWide(prefix netip.Prefix) bool {
	if prefix.Addr().Is4() {
		return prefix.Bits() < 8
	}
	return prefix.Bits() < 16
}

// ruleCovers reports whether every request r matches is matched by e too.
func ruleCovers(e, r allowlist.Rule) bool {
	return hostsCover(e.Hosts, r.Hosts) && portsCover(e, r) && stringsCover(e.Methods, r.Methods, func(a, b string) bool { return a == b }) &&
		stringsCover(e.Paths, r.Paths, strings.HasPrefix)
}

// hostsCover reports whether every host some pattern of inner matches is
// matched by a pattern of outer.
func hostsCover(outer, inner []allowlist.Pattern) bool {
	for _, in := range inner {
		if !slices.ContainsFunc(outer, func(out allowlist.Pattern) bool { return patternCovers(out, in) }) {
			return false
		}
	}
	return true
}

// patternCovers reports whether out matches every host in matches.
func patternCovers(out, in allowlist.Pattern) bool {
	if out == in {
		return true
	}
	outText, inText := out.String(), in.String()
	outPrefix, outAddr := unmappedPrefix(outText)
	inPrefix, inAddr := unmappedPrefix(inText)
	switch {
	case outAddr || inAddr:
		return outAddr && inAddr && outPrefix.Bits() <= inPrefix.Bits() && outPrefix.Contains(inPrefix.Addr())
	case strings.HasPrefix(inText, "*."):
		domain, ok := strings.CutPrefix(outText, "*.")
		return ok && strings.HasSuffix(inText[1:], "."+domain) || ok && inText[2:] == domain
	}
	return out.Match(inText)
}

// unmappedPrefix is patternPrefix with an IPv4-mapped IPv6 prefix read as
// the IPv4 prefix it holds, as the matcher reads it.
func unmappedPrefix(h string) (netip.Prefix, bool) {
	p, ok := patternPrefix(h)
	if ok && p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, ok
}

// hostsOverlap reports whether some host is matched by a pattern of each.
func hostsOverlap(a, b []allowlist.Pattern) bool {
	for _, x := range a {
		for _, y := range b {
			xp, xAddr := unmappedPrefix(x.String())
			yp, yAddr := unmappedPrefix(y.String())
			if xAddr && yAddr && xp.Overlaps(yp) || patternCovers(x, y) || patternCovers(y, x) {
				return true
			}
		}
	}
	return false
}

// portsCover reports whether e's ports include every port of r's; an
// allow rule without ports means 80 and 443, a deny rule every port.
func portsCover(e, r allowlist.Rule) bool {
	ports := func(m allowlist.Rule) []uint16 {
		if len(m.Ports) == 0 && m.Action == allowlist.Allow {
			return []uint16{80, 443}
		}
		return m.Ports
	}
	ep, rp := ports(e), ports(r)
	if len(ep) == 0 {
		return true
	}
	if len(rp) == 0 {
		return false
	}
	for _, p := range rp {
		if !slices.Contains(ep, p) {
			return false
		}
	}
	return true
}

// stringsCover reports whether outer (empty: everything) includes every
// value of inner (empty: everything), by covers.
func stringsCover(outer, inner []string, covers func(value, by string) bool) bool {
	if len(outer) == 0 {
		return true
	}
	if len(inner) == 0 {
		return false
	}
	for _, v := range inner {
		if !slices.ContainsFunc(outer, func(o string) bool { return covers(v, o) }) {
			return false
		}
	}
	return true
}
