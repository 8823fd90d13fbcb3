package allowlist

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// patternKind says which of the pattern forms a Pattern holds.
type patternKind uint8

const (
	kindNone     patternKind = iota // the zero Pattern, which matches nothing
	kindExact                       // one host name
	kindWildcard                    // every name below a domain
	kindAddress                     // an IP literal or a CIDR
)

// Pattern is one host pattern of a rule: an exact host ("api.github.com"), a
// subdomain wildcard ("*.example.com": matches a.example.com and
// a.b.example.com, never example.com), an IP literal ("203.0.113.7",
// "2001:db8::1") or a CIDR ("198.51.100.0/24").
//
// The zero Pattern matches nothing. Patterns are comparable values and safe
// for concurrent use.
type Pattern struct {
	kind patternKind
	// host is the normalised host of an exact pattern, or the normalised
	// domain after "*." of a wildcard pattern.
	host string
	// prefix holds an address pattern; an IP literal is a full-length prefix.
	prefix netip.Prefix
}

// ParsePattern parses one host pattern, normalising host names as
// [NormalizeHost] does (the domain after "*." too).
//
// It refuses, with an error that says why: an empty pattern; "*" and "*.";
// a wildcard whose domain is a public suffix ("*.com", "*.co.uk",
// "*.github.io"), because it would cover sites of unrelated owners; a "*"
// anywhere but as the whole leading label ("a.*.com", "*a.com", "a*.com",
// "*.*.example.com"); a wildcard over an IP address; a CIDR with host bits
// set ("10.0.0.1/8", which suggests 10.0.0.0/8); URLs, ports and brackets;
// and every host NormalizeHost refuses.
func ParsePattern(s string) (Pattern, error) {
	switch {
	case s == "":
		return Pattern{}, errors.New("empty host pattern")
	case strings.Contains(s, "://"):
		return Pattern{}, fmt.Errorf("host pattern %q is a URL; give the host alone, such as api.example.com, and list ports, methods and paths in the rule", s)
	case strings.HasPrefix(s, "["):
		return Pattern{}, fmt.Errorf("host pattern %q: give IPv6 addresses without brackets and without a port", s)
	case strings.IndexByte(s, '/') >= 0:
		return parseCIDRPattern(s)
	case s == "*" || s == "*.":
		return Pattern{}, fmt.Errorf("host pattern %q would match every host; list the hosts or domains to allow", s)
	case strings.HasPrefix(s, "*."):
		return parseWildcardPattern(s)
	case strings.IndexByte(s, '*') >= 0:
		return Pattern{}, fmt.Errorf("host pattern %q: a wildcard may only be the whole first label, as in *.example.com", s)
	}

	host, err := NormalizeHost(s)
	if err != nil {
		return Pattern{}, fmt.Errorf("host pattern %q: %w", s, err)
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		return Pattern{kind: kindAddress, prefix: netip.PrefixFrom(addr, addr.BitLen())}, nil
	}
	return Pattern{kind: kindExact, host: host}, nil
}

// parseWildcardPattern parses a pattern starting with "*.".
func parseWildcardPattern(s string) (Pattern, error) {
	rest := s[len("*."):]
	if strings.IndexByte(rest, '*') >= 0 {
		return Pattern{}, fmt.Errorf("host pattern %q: a wildcard may only be the whole first label, as in *.example.com", s)
	}
	domain, err := NormalizeHost(rest)
	if err != nil {
		return Pattern{}, fmt.Errorf("host pattern %q: %w", s, err)
	}
	if _, err := netip.ParseAddr(domain); err == nil {
		return Pattern{}, fmt.Errorf("host pattern %q: a wildcard cannot cover an IP address; use a CIDR such as 198.51.100.0/24", s)
	}
	// PublicSuffix also answers for names not on the list (by the list's
	// default rule, the last label), so "*.internal" is refused as well.
	if suffix, _ := publicsuffix.PublicSuffix(domain); suffix == domain {
		return Pattern{}, fmt.Errorf("host pattern %q would match every site registered under the public suffix %q; list the domains to allow instead", s, domain)
	}
	return Pattern{kind: kindWildcard, host: domain}, nil
}

// parseCIDRPattern parses a pattern containing a slash.
func parseCIDRPattern(s string) (Pattern, error) {
	prefix, err := netip.ParsePrefix(s)
	if err != nil {
		return Pattern{}, fmt.Errorf("host pattern %q is not a CIDR such as 198.51.100.0/24 or 2001:db8::/32: %w", s, err)
	}
	if masked := prefix.Masked(); masked != prefix {
		return Pattern{}, fmt.Errorf("host pattern %q has bits set after the first %d; did you mean %s?", s, prefix.Bits(), masked)
	}
	return Pattern{kind: kindAddress, prefix: prefix}, nil
}

// String returns the canonical text of p, which ParsePattern parses back to
// p. An IP literal is written without a prefix length.
func (p Pattern) String() string {
	switch p.kind {
	case kindExact:
		return p.host
	case kindWildcard:
		return "*." + p.host
	case kindAddress:
		if p.prefix.Bits() == p.prefix.Addr().BitLen() {
			return p.prefix.Addr().String()
		}
		return p.prefix.String()
	}
	return ""
}

// IsAddress reports whether p is an IP literal or CIDR pattern.
func (p Pattern) IsAddress() bool { return p.kind == kindAddress }

// Match reports whether p matches host, which must be normalised by
// [NormalizeHost]: a host that is not may fail to match. An address pattern
// matches a host that is an IP literal inside it, an IPv4 address and its
// IPv4-mapped IPv6 form being the same address.
func (p Pattern) Match(host string) bool {
	switch p.kind {
	case kindExact:
		return host == p.host
	case kindWildcard:
		return isBelow(host, p.host)
	case kindAddress:
		addr, ok := hostAddr(host)
		return ok && prefixContainsEither(p.prefix, addr)
	}
	return false
}

// isBelow reports whether host is a proper subdomain of domain.
func isBelow(host, domain string) bool {
	// At least one character and a dot before the domain.
	return len(host) >= len(domain)+2 &&
		host[len(host)-len(domain)-1] == '.' &&
		host[len(host)-len(domain):] == domain
}

// prefixContainsEither reports whether prefix contains addr written either as
// IPv4 or as IPv4-mapped IPv6, so that a pattern written in one form matches
// a host written in the other.
func prefixContainsEither(prefix netip.Prefix, addr netip.Addr) bool {
	addr = addr.Unmap()
	if prefix.Contains(addr) {
		return true
	}
	return addr.Is4() && prefix.Contains(netip.AddrFrom16(addr.As16()))
}

// hostAddr returns the address a normalised host stands for, if it is an IP
// literal. It looks before it parses because a failed netip.ParseAddr
// allocates its error, and matching must not allocate.
func hostAddr(host string) (netip.Addr, bool) {
	if host == "" || strings.IndexByte(host, ':') < 0 && !lastLabelIsNumeric(host) {
		return netip.Addr{}, false
	}
	addr, err := netip.ParseAddr(host)
	return addr, err == nil
}
