package policy

import (
	"net/netip"
	"strings"

	"github.com/egressgw/egressgw/allowlist"
)

// lintAddresses warns about the host patterns of an allowing rule or
// connector that name only addresses the gateway never dials (the
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
			addresses = allowlist.NewAddressPolicy(allowlist.AddressConfig{
				Deny: b.snap.Gateway.DenyCIDRs, Allow: b.snap.Gateway.AllowCIDRs,
			})
		}
		reason, refused := addresses.RefusesAll(prefix)
		if !refused {
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
