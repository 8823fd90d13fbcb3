package policy

import (
	"net/netip"
	"strings"

	"github.com/egressgw/egressgw/allowlist"
)

// DefaultSelfServiceHost is the host a sandbox asks the gateway about
// itself through, unless self_service.host renames it.
const DefaultSelfServiceHost = "egressgw.internal"

// SelfServiceSettings is gateway.yaml's self_service section, with
// defaults applied (docs/reference.md, "The tenant's own endpoint").
type SelfServiceSettings struct {
	// Enabled: plain requests to Host are answered by the gateway itself,
	// never forwarded. Off, Host is a name like any other.
	Enabled bool
	// Host is normalised as requests' hosts are, so comparing a request's
	// normalised host with it is exact.
	Host string
}

// selfServiceSettings validates the self_service section. The host must be
// a name: an address or a pattern would shadow real destinations.
func (b *builder) selfServiceSettings(doc *yamlDoc, f selfServiceFile) SelfServiceSettings {
	s := SelfServiceSettings{Enabled: true, Host: DefaultSelfServiceHost}
	if f.Enabled != nil {
		s.Enabled = *f.Enabled
	}
	if f.Host == nil {
		return s
	}
	host, err := allowlist.NormalizeHost(*f.Host)
	if _, isAddr := netip.ParseAddr(host); err != nil || isAddr == nil || strings.Contains(host, "*") {
		b.errorf(doc, doc.line("self_service", "host"), "self_service.host: want a host name such as %s, not an address or pattern", DefaultSelfServiceHost)
		return s
	}
	s.Host = host
	return s
}
