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
	// built-in table and to Local. A prefix opens exactly the addresses it
	// contains: an IPv4 prefix never opens an IPv6 address that embeds
	// one of its addresses (other than the IPv4-mapped ::ffff:a.b.c.d,
	// which is that IPv4 address), and an IPv6 address outside 2000::/3
	// is opened only by an IPv6 prefix that contains it.
	Allow []netip.Prefix
	// Local holds the addresses of the gateway host's own interfaces,
	// denied unless in Allow. It is read on every Check, so a HostAddrs
	// that is refreshed takes effect without a new AddressPolicy. Nil
	// means none.
	Local *HostAddrs
	// Listeners are the gateway's own listeners: never allowed, not even via
	// Allow. A listener on an unspecified address (0.0.0.0 or ::) with port P
	// blocks every Local address, every loopback address and the unspecified
	// address at port P.
	Listeners []netip.AddrPort
}

// AddressPolicy decides whether the gateway may dial an address (network
// safety, see docs/admins.md). It is immutable, apart from the host's own
// addresses it reads from its HostAddrs, and safe for concurrent use.
//
// IPv4-mapped IPv6 addresses are read as the IPv4 address they hold, on both
// sides: a prefix of Deny or Allow written as ::ffff:a.b.c.d/n with n >= 96 is
// the IPv4 prefix a.b.c.d/(n-96), and the address ::ffff:127.0.0.1 is checked
// as 127.0.0.1. No other IPv6 form is read as IPv4: the IPv4-translated
// ::ffff:0:a.b.c.d, the IPv4-compatible ::a.b.c.d and the NAT64, 6to4 and
// Teredo ranges route as IPv6 (to a translator, or nowhere), so they are
// rows of the built-in table, denied whatever they embed.
type AddressPolicy struct {
	deny      []addressRange
	allow     []netip.Prefix
	local     *HostAddrs
	listeners []netip.AddrPort
}

// addressRange is a denied prefix with the reason reported for it, built
// once so that Check does no formatting.
type addressRange struct {
	prefix netip.Prefix
	reason string
}

// NewAddressPolicy builds an AddressPolicy from c. It copies what it keeps,
// except c.Local, which it reads on every Check. Invalid (zero) prefixes
// and addresses in c are ignored.
func NewAddressPolicy(c AddressConfig) *AddressPolicy {
	p := &AddressPolicy{local: c.Local}
	if p.local == nil {
		p.local = StaticHostAddrs()
	}
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
	for _, l := range c.Listeners {
		if l.Addr().IsValid() {
			p.listeners = append(p.listeners, netip.AddrPortFrom(unmapAddr(l.Addr()), l.Port()))
		}
	}
	return p
}

// Check returns nil when ap may be dialled, else an *AddressError saying why
// not. In order:
//
//  1. the gateway's own listeners are refused, whatever Allow says;
//  2. addresses in Deny are refused;
//  3. addresses in Allow are accepted;
//  4. addresses in a row of the built-in table (SpecialRanges), and IPv6
//     addresses outside global unicast 2000::/3, are refused;
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
		return &AddressError{Addr: ap, Reason: "the gateway's own listener", OwnListener: true}
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
	if reason, denied := builtin.denies(addr); denied {
		return &AddressError{Addr: ap, Reason: reason}
	}
	if p.local.Contains(addr) {
		return &AddressError{Addr: ap, Reason: "address of the gateway host"}
	}
	return nil
}

// RefusesAll reports whether Check refuses every address of prefix on
// every port because of Deny or of the built-in table (with no address of
// it reopened by Allow), and names the row that does. The host's own
// addresses and the listeners are not considered: they change while the
// gateway runs. It is meant for configuration checks, not the request path.
func (p *AddressPolicy) RefusesAll(prefix netip.Prefix) (reason string, refused bool) {
	if !prefix.IsValid() {
		return "", false
	}
	prefix = unmapPrefix(prefix)
	for _, r := range p.deny {
		if covers(r.prefix, prefix) {
			return r.reason, true
		}
	}
	for _, a := range p.allow {
		if a.Overlaps(prefix) {
			return "", false
		}
	}
	return builtin.refusesAll(prefix)
}

// covers reports whether outer contains every address of inner.
func covers(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
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
			if p.local.Contains(addr) || addr.IsLoopback() {
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
	// special-purpose range 127.0.0.0/8, loopback (RFC 1122)", "outside
	// IPv6 global unicast 2000::/3 ...", "operator deny_cidrs
	// 10.1.0.0/16", "address of the gateway host" or "the gateway's own
	// listener".
	Reason string
	// OwnListener marks an address refused because it is one of the
	// gateway's own listeners, which no setting opens; Allow does for the
	// other reasons.
	OwnListener bool
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
