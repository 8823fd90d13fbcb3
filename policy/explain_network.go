package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/egressgw/egressgw/allowlist"
)

// Network is what explain needs to apply network safety as the gateway's
// dialer does (docs/admins.md, "Network safety"): the address policy the
// gateway dials under and, to look names up, a resolver.
type Network struct {
	// Addresses decides every address; nil means the policy built from
	// the snapshot's network.deny_cidrs and allow_cidrs alone.
	Addresses *allowlist.AddressPolicy
	// Resolver, when set, resolves host names so that each address they
	// give is checked; nil leaves names unresolved (only IP literals are
	// checked), as explain without --resolve.
	Resolver *net.Resolver
}

// AddressTrace is one destination address explain checked.
type AddressTrace struct {
	Address string `json:"address"`
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason,omitempty"` // why the gateway never dials it
}

// AddressPolicy builds the address policy the gateway applies under this
// snapshot: network.deny_cidrs and allow_cidrs over the built-in table,
// plus the host's own addresses (local, nil for none known) and the
// gateway's listeners.
func (g Gateway) AddressPolicy(local *allowlist.HostAddrs, listeners []netip.AddrPort) *allowlist.AddressPolicy {
	return allowlist.NewAddressPolicy(allowlist.AddressConfig{
		Deny: g.DenyCIDRs, Allow: g.AllowCIDRs, Local: local, Listeners: listeners,
	})
}

// ListenerAddrs returns the configured listen and admin_listen addresses
// that are IP literals with a port, for AddressConfig.Listeners when the
// gateway is not running (names and unparsable values are left out).
func (g Gateway) ListenerAddrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range []string{g.Listen, g.AdminListen} {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap)
		}
	}
	return out
}

// Resolver returns the resolver the gateway looks names up with:
// network.dns_servers in order, or the system resolver when none is set.
func (g Gateway) Resolver() *net.Resolver {
	if len(g.DNSServers) == 0 {
		return net.DefaultResolver
	}
	servers := g.DNSServers
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var lastErr error
			for _, s := range servers {
				var nd net.Dialer
				c, err := nd.DialContext(ctx, network, s)
				if err == nil {
					return c, nil
				}
				lastErr = err
			}
			return nil, lastErr
		},
	}
}

// ExplainRequest traces rawURL as ExplainURL does and then, when the
// rules let the request through, applies network safety to its
// destination as the gateway's dialer would: an IP literal always, a name
// when n.Resolver is set. When every address is one the gateway never
// dials, the decision becomes deny with destination_ip_denied, which is
// what the client would get.
func (t *Tenant) ExplainRequest(ctx context.Context, method, rawURL string, gw Gateway, n Network) (Trace, error) {
	return t.ExplainRequestGranted(ctx, method, rawURL, gw, n, GrantsAt{})
}

// ExplainRequestGranted is ExplainRequest with the tenant's grants in ga:
// what the gateway serving them decides.
func (t *Tenant) ExplainRequestGranted(ctx context.Context, method, rawURL string, gw Gateway, n Network, ga GrantsAt) (Trace, error) {
	tr, err := t.ExplainURLGranted(method, rawURL, ga)
	if err != nil {
		return tr, err
	}
	if n.Addresses == nil {
		n.Addresses = gw.AddressPolicy(nil, nil)
	}
	tr.checkNetwork(ctx, gw, n)
	return tr, nil
}

func (tr *Trace) checkNetwork(ctx context.Context, gw Gateway, n Network) {
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(tr.Host); err == nil {
		addrs = []netip.Addr{ip}
	} else if n.Resolver == nil {
		tr.Network = "not resolved (use --resolve, or resolve=1 on /v1/explain): " + tr.Network
		return
	} else {
		if gw.DNSTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, gw.DNSTimeout)
			defer cancel()
		}
		ips, err := n.Resolver.LookupNetIP(ctx, "ip", tr.Host)
		if err == nil && len(ips) == 0 {
			err = errors.New("no addresses")
		}
		if err != nil {
			tr.Network = fmt.Sprintf("%s could not be resolved here (%v); the gateway's own lookup decides when the request is made", tr.Host, err)
			return
		}
		addrs = ips
	}
	var refused []string
	ownListener := true // every refused address is one of the gateway's listeners
	for _, ip := range addrs {
		ap := netip.AddrPortFrom(ip.Unmap(), tr.Port)
		at := AddressTrace{Address: ap.String(), Allowed: true}
		var ae *allowlist.AddressError
		if err := n.Addresses.Check(ap); errors.As(err, &ae) {
			at.Allowed, at.Reason = false, ae.Reason
			refused = append(refused, fmt.Sprintf("%s (%s)", ap, ae.Reason))
			ownListener = ownListener && ae.OwnListener
		} else if err != nil {
			at.Allowed, at.Reason = false, err.Error()
			refused = append(refused, fmt.Sprintf("%s (%s)", ap, err))
			ownListener = false
		}
		tr.Addresses = append(tr.Addresses, at)
	}
	switch {
	case len(refused) == 0:
		tr.Network = fmt.Sprintf("%s may be dialled: %s", tr.Host, addressList(tr.Addresses))
		return
	case len(refused) < len(addrs):
		tr.Network = fmt.Sprintf("the gateway dials only the allowed addresses of %s; it skips %s", tr.Host, strings.Join(refused, ", "))
		return
	}
	tr.Network = fmt.Sprintf("the gateway never dials %s: %s", tr.Host, strings.Join(refused, ", "))
	if tr.Decision == "deny" {
		return // the rules refuse it first; nothing is dialled
	}
	tr.Decision, tr.Code = "deny", CodeDestinationIPDenied
	if ownListener {
		// No setting opens these: pointing to allow_cidrs would mislead.
		tr.Reason = fmt.Sprintf("tenant %q may not reach %s: that is the gateway itself (one of its own listeners), never a destination; send requests through the gateway as the proxy (HTTP_PROXY, HTTPS_PROXY) rather than to it",
			tr.Tenant, hostPort(tr.Host, tr.Port))
		tr.Rule, tr.Inject, tr.Upgrade = "", nil, ""
		return
	}
	tr.Reason = fmt.Sprintf("tenant %q may not reach %s: it resolves to an address the gateway never dials (%s); if it is meant to be reachable, the operator can add it to network.allow_cidrs",
		tr.Tenant, hostPort(tr.Host, tr.Port), strings.Join(refused, ", "))
	tr.Rule, tr.Inject, tr.Upgrade = "", nil, ""
}

func addressList(as []AddressTrace) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.Address
	}
	return strings.Join(s, ", ")
}
