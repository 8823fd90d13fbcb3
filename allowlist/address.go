package allowlist

import (
	"fmt"
	"net"
	"net/netip"
)

// AddressConfig is what an AddressPolicy is built from.
type AddressConfig struct {
	// Deny is the operator's network.deny_cidrs: always denied, even if in
	// Allow.
	Deny []netip.Prefix
	// Allow is the operator's network.allow_cidrs: exceptions to the
	// built-in ranges and to Local.
	Allow []netip.Prefix
	// Local holds the addresses of the gateway host's own interfaces
	// (see LocalAddrs): denied unless in Allow.
	Local []netip.Addr
	// Listeners are the gateway's own listeners: never allowed, not even via
	// Allow. A listener on an unspecified address (0.0.0.0 or ::) with port P
	// blocks every Local address, every loopback address and the unspecified
	// address at port P.
	Listeners []netip.AddrPort
}

// AddressPolicy decides whether the gateway may dial an address (SPEC §4,
// network safety). It is immutable and safe for concurrent use.
//
// IPv4-mapped IPv6 addresses are read as the IPv4 address they hold, on both
// sides: a prefix of Deny or Allow written as ::ffff:a.b.c.d/n with n >= 96 is
// the IPv4 prefix a.b.c.d/(n-96), and the address ::ffff:127.0.0.1 is checked
// as 127.0.0.1.
type AddressPolicy struct {
	deny      []addressRange
	allow     []netip.Prefix
	builtin   []addressRange
	local     map[netip.Addr]struct{}
	listeners []netip.AddrPort
}

// addressRange is a denied prefix with the reason reported for it, built
// once so that Check does no formatting.
type addressRange struct {
	prefix netip.Prefix
	reason string
}

// NewAddressPolicy builds an AddressPolicy from c. It copies what it keeps.
// Invalid (zero) prefixes and addresses in c are ignored.
func NewAddressPolicy(c AddressConfig) *AddressPolicy {
	p := &AddressPolicy{local: make(map[netip.Addr]struct{}, len(c.Local))}
	for _, prefix := range c.Deny {
		if prefix.IsValid() {
			prefix = unmapPrefix(prefix)
			p.deny = append(p.deny, addressRange{prefix: prefix, reason: "operator deny_cidrs " + prefix.String()})
		}
	}
	for _, prefix := range c.Allow {
		if prefix.IsValid() {
			p.allow = append(p.allow, unmapPrefix(prefix))
		}
	}
	for _, prefix := range BuiltinDenied() {
		p.builtin = append(p.builtin, addressRange{prefix: prefix, reason: "in special-purpose range " + prefix.String()})
	}
	for _, addr := range c.Local {
		if addr.IsValid() {
			p.local[unmapAddr(addr)] = struct{}{}
		}
	}
	for _, l := range c.Listeners {
		if l.Addr().IsValid() {
			p.listeners = append(p.listeners, netip.AddrPortFrom(unmapAddr(l.Addr()), l.Port()))
		}
	}
	return p
}

// BuiltinDenied returns the built-in special-purpose ranges of SPEC §4, as a
// fresh slice the caller may modify.
//
// IPv4-mapped addresses (::ffff:0:0/96) are not in the list because Check
// reads them as the IPv4 address they hold. The deprecated IPv4-compatible
// range ::/96 is, because some network stacks route ::a.b.c.d to a.b.c.d, as
// with the NAT64, 6to4 and Teredo ranges, which are denied whatever they
// embed.
func BuiltinDenied() []netip.Prefix {
	return []netip.Prefix{
		// IPv4
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.0.0.0/24"),
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("240.0.0.0/4"),
		netip.MustParsePrefix("168.63.129.16/32"), // cloud metadata outside the private ranges
		// IPv6; the exact ::/128 and ::1/128 come before ::/96 so that the
		// reason names them.
		netip.MustParsePrefix("::/128"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("::/96"), // IPv4-compatible (deprecated), embeds IPv4
		netip.MustParsePrefix("100::/64"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("fc00::/7"),
		netip.MustParsePrefix("fe80::/10"),
		netip.MustParsePrefix("ff00::/8"),
		netip.MustParsePrefix("64:ff9b::/96"),   // NAT64
		netip.MustParsePrefix("64:ff9b:1::/48"), // NAT64, local use
		netip.MustParsePrefix("2002::/16"),      // 6to4
		netip.MustParsePrefix("2001::/32"),      // Teredo
	}
}

// Check returns nil when ap may be dialled, else an *AddressError saying why
// not. In order:
//
//  1. the gateway's own listeners are refused, whatever Allow says;
//  2. addresses in Deny are refused;
//  3. addresses in Allow are accepted;
//  4. addresses in a built-in range (BuiltinDenied) are refused;
//  5. addresses of the gateway host (Local) are refused;
//  6. everything else is accepted.
//
// The address is unmapped and its zone dropped first, so ::ffff:127.0.0.1 is
// checked as 127.0.0.1 at every step. Check does not allocate when it
// accepts.
func (p *AddressPolicy) Check(ap netip.AddrPort) error {
	// Prefix.Contains never matches an address with a zone, so the zone
	// must go before any range is consulted.
	addr := unmapAddr(ap.Addr())
	if !addr.IsValid() {
		return &AddressError{Addr: ap, Reason: "not a valid IP address"}
	}
	if p.isListener(addr, ap.Port()) {
		return &AddressError{Addr: ap, Reason: "the gateway's own listener"}
	}
	for _, r := range p.deny {
		if r.prefix.Contains(addr) {
			return &AddressError{Addr: ap, Reason: r.reason}
		}
	}
	for _, prefix := range p.allow {
		if prefix.Contains(addr) {
			return nil
		}
	}
	for _, r := range p.builtin {
		if r.prefix.Contains(addr) {
			return &AddressError{Addr: ap, Reason: r.reason}
		}
	}
	if _, ok := p.local[addr]; ok {
		return &AddressError{Addr: ap, Reason: "address of the gateway host"}
	}
	return nil
}

// isListener reports whether dialling addr:port would reach one of the
// gateway's own listeners. addr is unmapped and without zone.
func (p *AddressPolicy) isListener(addr netip.Addr, port uint16) bool {
	for _, l := range p.listeners {
		if l.Port() != port {
			continue
		}
		switch {
		case l.Addr() == addr:
			return true
		case addr.IsUnspecified():
			// Connecting to 0.0.0.0 or :: reaches this host's own sockets.
			return true
		case l.Addr().IsUnspecified():
			// A wildcard listener answers on every address of this host.
			if _, local := p.local[addr]; local || addr.IsLoopback() {
				return true
			}
		}
	}
	return false
}

// AddressError says why an address may not be dialled.
type AddressError struct {
	Addr netip.AddrPort // as given to Check
	// Reason names the rule that refused the address, such as "in
	// special-purpose range 127.0.0.0/8", "operator deny_cidrs
	// 10.1.0.0/16", "address of the gateway host" or "the gateway's own
	// listener".
	Reason string
}

// Error returns a message naming the address and the reason.
func (e *AddressError) Error() string {
	return fmt.Sprintf("destination address %s is not allowed: %s", e.Addr, e.Reason)
}

// LocalAddrs lists every address of the host's network interfaces, as
// net.InterfaceAddrs reports them, unmapped and without zones. It is meant
// for AddressConfig.Local.
func LocalAddrs() ([]netip.Addr, error) {
	interfaceAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("listing the host's interface addresses: %w", err)
	}
	addrs := make([]netip.Addr, 0, len(interfaceAddrs))
	for _, a := range interfaceAddrs {
		var ip net.IP
		switch a := a.(type) {
		case *net.IPNet:
			ip = a.IP
		case *net.IPAddr:
			ip = a.IP
		default:
			continue
		}
		if addr, ok := netip.AddrFromSlice(ip); ok {
			addrs = append(addrs, addr.Unmap())
		}
	}
	return addrs, nil
}

// unmapAddr returns addr as IPv4 if it is IPv4-mapped, without zone.
func unmapAddr(addr netip.Addr) netip.Addr {
	return addr.Unmap().WithZone("")
}

// unmapPrefix returns an IPv4-mapped prefix of at least 96 bits as the IPv4
// prefix it covers, and any prefix masked, so that it compares with unmapped
// addresses.
func unmapPrefix(prefix netip.Prefix) netip.Prefix {
	if addr := prefix.Addr(); addr.Is4In6() && prefix.Bits() >= 96 {
		prefix = netip.PrefixFrom(addr.Unmap(), prefix.Bits()-96)
	}
	return prefix.Masked()
}
