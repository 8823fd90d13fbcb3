package allowlist

import (
	"net/netip"
)

// SpecialRange is one row of the built-in table of addresses the gateway
// never dials unless the operator's allow list names them.
type SpecialRange struct {
	Prefix netip.Prefix
	// Name says what the range is, after the IANA special-purpose address
	// registries (or the RFC that reserves it), such as "loopback (RFC
	// 1122)".
	Name string
}

// GlobalUnicast is the only part of the IPv6 address space the gateway
// dials (minus the rows of SpecialRanges inside it): everything outside it
// is special, reserved or unassigned, and future special-purpose blocks are
// carved out of it as well.
var GlobalUnicast = netip.MustParsePrefix("2000::/3")

// specialRanges is the built-in table, in the order of the registries.
// Rows may nest (192.0.0.9/32 in 192.0.0.0/24): a refusal names the most
// specific row. IPv4-mapped IPv6 (::ffff:0:0/96) has no row because it is
// checked as the IPv4 address it holds. Rows outside 2000::/3 are refused
// by that rule anyway; they are listed so that the reason names them.
var specialRanges = [...]struct{ cidr, name string }{
	// IPv4: the IANA IPv4 Special-Purpose Address Registry, multicast and
	// a cloud metadata address outside those ranges.
	{"0.0.0.0/8", `"this network" (RFC 791)`},
	{"0.0.0.0/32", `"this host on this network" (RFC 1122)`},
	{"10.0.0.0/8", "private use (RFC 1918)"},
	{"100.64.0.0/10", "shared address space, carrier-grade NAT (RFC 6598)"},
	{"127.0.0.0/8", "loopback (RFC 1122)"},
	{"169.254.0.0/16", "link-local, home of cloud metadata services (RFC 3927)"},
	{"172.16.0.0/12", "private use (RFC 1918)"},
	{"192.0.0.0/24", "IETF protocol assignments (RFC 6890)"},
	{"192.0.0.0/29", "IPv4 service continuity prefix, DS-Lite (RFC 7335)"},
	{"192.0.0.8/32", "IPv4 dummy address (RFC 7600)"},
	{"192.0.0.9/32", "port control protocol anycast (RFC 7723)"},
	{"192.0.0.10/32", "TURN anycast (RFC 8155)"},
	{"192.0.0.170/32", "NAT64/DNS64 discovery (RFC 8880)"},
	{"192.0.0.171/32", "NAT64/DNS64 discovery (RFC 8880)"},
	{"192.0.2.0/24", "documentation, TEST-NET-1 (RFC 5737)"},
	{"192.31.196.0/24", "AS112-v4 (RFC 7535)"},
	{"192.52.193.0/24", "automatic multicast tunneling (RFC 7450)"},
	{"192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"},
	{"192.168.0.0/16", "private use (RFC 1918)"},
	{"192.175.48.0/24", "direct delegation AS112 service (RFC 7534)"},
	{"198.18.0.0/15", "benchmarking (RFC 2544)"},
	{"198.51.100.0/24", "documentation, TEST-NET-2 (RFC 5737)"},
	{"203.0.113.0/24", "documentation, TEST-NET-3 (RFC 5737)"},
	{"224.0.0.0/4", "multicast (RFC 5771)"},
	{"240.0.0.0/4", "reserved (RFC 1112)"},
	{"255.255.255.255/32", "limited broadcast (RFC 919)"},
	{"168.63.129.16/32", "cloud metadata service outside the private ranges"},

	// IPv6: the IANA IPv6 Special-Purpose Address Registry, and the
	// deprecated or embedding forms that route as IPv6 on the gateway host
	// while naming an IPv4 address.
	{"::/128", "unspecified address (RFC 4291)"},
	{"::1/128", "loopback (RFC 4291)"},
	{"::/96", "IPv4-compatible, deprecated (RFC 4291): denied whatever IPv4 address it embeds"},
	{"::ffff:0:0:0/96", "IPv4-translated (RFC 2765): routes as IPv6, denied whatever IPv4 address it embeds"},
	{"64:ff9b::/96", "NAT64 (RFC 6052): reaches the IPv4 address it embeds through a translator, denied whatever it embeds"},
	{"64:ff9b:1::/48", "local-use NAT64 (RFC 8215): denied whatever it embeds"},
	{"100::/64", "discard-only (RFC 6666)"},
	{"100:0:0:1::/64", "dummy IPv6 prefix"},
	{"2001::/23", "IETF protocol assignments (RFC 2928)"},
	{"2001::/32", "Teredo (RFC 4380): reaches the IPv4 address it embeds, denied whatever it embeds"},
	{"2001:1::1/128", "port control protocol anycast (RFC 7723)"},
	{"2001:1::2/128", "TURN anycast (RFC 8155)"},
	{"2001:1::3/128", "DNS-SD service registration protocol anycast"},
	{"2001:2::/48", "benchmarking (RFC 5180)"},
	{"2001:3::/32", "automatic multicast tunneling (RFC 7450)"},
	{"2001:4:112::/48", "AS112-v6 (RFC 7535)"},
	{"2001:10::/28", "deprecated ORCHID (RFC 4843)"},
	{"2001:20::/28", "ORCHIDv2 (RFC 7343)"},
	{"2001:30::/28", "drone remote ID entity tags (RFC 9374)"},
	{"2001:db8::/32", "documentation (RFC 3849)"},
	{"2002::/16", "6to4 (RFC 3056): reaches the IPv4 address it embeds, denied whatever it embeds"},
	{"2620:4f:8000::/48", "direct delegation AS112 service (RFC 7534)"},
	{"3fff::/20", "documentation (RFC 9637)"},
	{"5f00::/16", "segment routing SIDs (RFC 9602)"},
	{"fc00::/7", "unique local (RFC 4193)"},
	{"fe80::/10", "link-local (RFC 4291)"},
	{"fec0::/10", "site-local, deprecated (RFC 3879)"},
	{"ff00::/8", "multicast (RFC 4291)"},
}

// outsideGlobalUnicast is the reason for an IPv6 address in no row and
// outside 2000::/3.
const outsideGlobalUnicast = "outside IPv6 global unicast 2000::/3 (reserved or special-purpose)"

// SpecialRanges returns the built-in table as a fresh slice the caller may
// modify. Every IPv6 address outside GlobalUnicast is refused as well,
// whether or not a row names it.
func SpecialRanges() []SpecialRange {
	out := make([]SpecialRange, len(specialRanges))
	for i, r := range specialRanges {
		out[i] = SpecialRange{Prefix: netip.MustParsePrefix(r.cidr), Name: r.name}
	}
	return out
}

// BuiltinDenied returns the prefixes of the built-in table (SpecialRanges),
// as a fresh slice the caller may modify.
func BuiltinDenied() []netip.Prefix {
	ranges := SpecialRanges()
	out := make([]netip.Prefix, len(ranges))
	for i, r := range ranges {
		out[i] = r.Prefix
	}
	return out
}

// builtinTable is the built-in table arranged for Check: the decision
// scans only the outermost rows that an address of its family can be in,
// and only a refusal looks for the most specific row to name.
type builtinTable struct {
	rows []addressRange // every row, reason formatted
	// v4 holds the outermost IPv4 rows; v6 the outermost IPv6 rows inside
	// 2000::/3 (every IPv6 address outside it is refused anyway).
	v4, v6 []netip.Prefix
}

// builtin is computed once from specialRanges and never changed.
var builtin = newBuiltinTable()

func newBuiltinTable() *builtinTable {
	t := &builtinTable{}
	ranges := SpecialRanges()
	for _, r := range ranges {
		t.rows = append(t.rows, addressRange{prefix: r.Prefix, reason: "in special-purpose range " + r.Prefix.String() + ", " + r.Name})
	}
	for i, r := range ranges {
		nested := false
		for j, other := range ranges {
			if i != j && covers(other.Prefix, r.Prefix) && (other.Prefix != r.Prefix || j < i) {
				nested = true
			}
		}
		switch {
		case nested:
		case r.Prefix.Addr().Is4():
			t.v4 = append(t.v4, r.Prefix)
		case covers(GlobalUnicast, r.Prefix):
			t.v6 = append(t.v6, r.Prefix)
		}
	}
	return t
}

// denies reports whether addr (unmapped, without zone) is in the table or
// is IPv6 outside 2000::/3, and why. It does not allocate.
func (t *builtinTable) denies(addr netip.Addr) (string, bool) {
	outer := t.v4
	if addr.Is6() {
		if !GlobalUnicast.Contains(addr) {
			return t.reasonOr(netip.PrefixFrom(addr, addr.BitLen()), outsideGlobalUnicast), true
		}
		outer = t.v6
	}
	for _, prefix := range outer {
		if prefix.Contains(addr) {
			return t.reasonOr(netip.PrefixFrom(addr, addr.BitLen()), ""), true
		}
	}
	return "", false
}

// refusesAll reports whether every address of prefix (unmapped, masked)
// is refused by the table, and why.
func (t *builtinTable) refusesAll(prefix netip.Prefix) (string, bool) {
	if reason := t.reasonOr(prefix, ""); reason != "" {
		return reason, true
	}
	if prefix.Addr().Is6() && !prefix.Overlaps(GlobalUnicast) {
		return outsideGlobalUnicast, true
	}
	return "", false
}

// reasonOr names the most specific row that covers prefix, or returns
// otherwise when none does.
func (t *builtinTable) reasonOr(prefix netip.Prefix, otherwise string) string {
	best := -1
	for i, r := range t.rows {
		if covers(r.prefix, prefix) && (best < 0 || r.prefix.Bits() > t.rows[best].prefix.Bits()) {
			best = i
		}
	}
	if best < 0 {
		return otherwise
	}
	return t.rows[best].reason
}
