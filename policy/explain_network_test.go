package policy

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/allowlist"
)

// TestExplainNetworkSafety checks that explain applies network safety as
// the gateway's dialer does: an allowed request to an address the gateway
// never dials ends in destination_ip_denied, never allow.
func TestExplainNetworkSafety(t *testing.T) {
	fsys := fstest.MapFS{
		"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\nnetwork:\n  allow_cidrs: [\"127.0.0.3/32\", \"127.0.0.1/32\"]\n  deny_cidrs: [\"8.8.4.0/24\"]\n")},
		"tenants/t.yaml": {Data: []byte("id: t\nauth: { token_sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }\n" +
			"rules:\n  - name: open\n    hosts: [\"127.0.0.0/8\", \"8.8.0.0/16\", \"169.254.169.254\", \"::1\", \"localhost\", \"a.example\"]\n    ports: [80, 443, 3128]\n")},
		"tenants/r.yaml": {Data: []byte("id: r\nmode: report\nauth: { token_sha256: \"60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752\" }\n")},
	}
	snap, err := Load(fsys, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	gw := snap.Gateway
	local := allowlist.StaticHostAddrs(netip.MustParseAddr("8.8.8.9"))
	network := Network{Addresses: gw.AddressPolicy(local, gw.ListenerAddrs())}
	cases := []struct {
		name, tenant, url string
		resolve           bool
		decision          string
		code              Code
		inReason          string // part of the reason; "" to skip
		notInReason       string // never in the reason; "" to skip
		addresses         int    // addresses in the trace
	}{
		{name: "loopback literal", tenant: "t", url: "http://127.0.0.2/", decision: "deny", code: CodeDestinationIPDenied, inReason: "127.0.0.0/8", addresses: 1},
		{name: "loopback literal in a tunnel", tenant: "t", url: "https://127.0.0.2/", decision: "deny", code: CodeDestinationIPDenied, inReason: "127.0.0.2:443", addresses: 1},
		{name: "metadata literal", tenant: "t", url: "http://169.254.169.254/latest", decision: "deny", code: CodeDestinationIPDenied, inReason: "169.254.0.0/16", addresses: 1},
		{name: "IPv6 loopback literal", tenant: "t", url: "http://[::1]/", decision: "deny", code: CodeDestinationIPDenied, addresses: 1},
		{name: "reopened by allow_cidrs", tenant: "t", url: "http://127.0.0.3/", decision: "allow", code: CodeOK, addresses: 1},
		{name: "reopened, on the listener's port", tenant: "t", url: "http://127.0.0.3:3128/", decision: "allow", code: CodeOK, addresses: 1},
		{name: "reopened, another port than the listener's", tenant: "t", url: "http://127.0.0.1/", decision: "allow", code: CodeOK, addresses: 1},
		{name: "the gateway's own listener, even when reopened", tenant: "t", url: "http://127.0.0.1:3128/", decision: "deny", code: CodeDestinationIPDenied, inReason: "the gateway itself", notInReason: "allow_cidrs", addresses: 1},
		{name: "operator deny_cidrs", tenant: "t", url: "http://8.8.4.4/", decision: "deny", code: CodeDestinationIPDenied, inReason: "deny_cidrs 8.8.4.0/24", addresses: 1},
		{name: "the gateway host's address", tenant: "t", url: "http://8.8.8.9/", decision: "deny", code: CodeDestinationIPDenied, inReason: "gateway host", addresses: 1},
		{name: "public literal", tenant: "t", url: "http://8.8.8.8/", decision: "allow", code: CodeOK, addresses: 1},
		{name: "refused by the rules first", tenant: "t", url: "http://10.0.0.1/", decision: "deny", code: CodeDestinationNotAllowed, addresses: 1},
		{name: "report mode still cannot dial it", tenant: "r", url: "http://127.0.0.2/", decision: "deny", code: CodeDestinationIPDenied, addresses: 1},
		{name: "report mode, public literal", tenant: "r", url: "http://8.8.8.8/", decision: "report", code: CodeDestinationNotAllowed, addresses: 1},
		{name: "name, not resolved", tenant: "t", url: "http://localhost/", decision: "allow", code: CodeOK, addresses: 0},
		{name: "name resolved to the listener", tenant: "t", url: "http://localhost:3128/", resolve: true, decision: "deny", code: CodeDestinationIPDenied, inReason: "localhost:3128"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tenant, ok := snap.Tenant(c.tenant)
			if !ok {
				t.Fatalf("no tenant %q", c.tenant)
			}
			n := network
			if c.resolve {
				n.Resolver = net.DefaultResolver
			}
			tr, err := tenant.ExplainRequest(context.Background(), "GET", c.url, gw, n)
			if err != nil {
				t.Fatal(err)
			}
			if tr.Decision != c.decision || tr.Code != c.code || !strings.Contains(tr.Reason, c.inReason) {
				t.Errorf("decision %s (%s), reason %q; want %s (%s) with %q", tr.Decision, tr.Code, tr.Reason, c.decision, c.code, c.inReason)
			}
			if c.notInReason != "" && strings.Contains(tr.Reason, c.notInReason) {
				t.Errorf("reason %q mentions %q, which would not help", tr.Reason, c.notInReason)
			}
			if !c.resolve && len(tr.Addresses) != c.addresses {
				t.Errorf("addresses %+v, want %d", tr.Addresses, c.addresses)
			}
			if c.resolve && len(tr.Addresses) == 0 {
				t.Errorf("no addresses shown for a resolved name")
			}
			var text strings.Builder
			if err := tr.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			if want := "decision: " + strings.ToUpper(c.decision) + " (" + string(c.code) + ")"; !strings.Contains(text.String(), want) {
				t.Errorf("text has no %q:\n%s", want, text.String())
			}
			if c.code == CodeDestinationIPDenied && (tr.Rule != "" || len(tr.Inject) > 0) {
				t.Errorf("a refused destination names rule %q and injects %v", tr.Rule, tr.Inject)
			}
		})
	}
}
