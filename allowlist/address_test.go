package allowlist

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func addrPort(tb testing.TB, s string) netip.AddrPort {
	tb.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		tb.Fatal(err)
	}
	return ap
}

func prefixes(texts ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(texts))
	for i, text := range texts {
		ps[i] = netip.MustParsePrefix(text)
	}
	return ps
}

func addrs(texts ...string) []netip.Addr {
	as := make([]netip.Addr, len(texts))
	for i, text := range texts {
		as[i] = netip.MustParseAddr(text)
	}
	return as
}

// checkCase is one address and what Check must say about it: "" allowed,
// else a piece of the reason.
type checkCase struct {
	addr   string
	denied string
}

func runCheckCases(t *testing.T, policy *AddressPolicy, cases []checkCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.addr, func(t *testing.T) {
			ap := addrPort(t, c.addr)
			err := policy.Check(ap)
			if c.denied == "" {
				if err != nil {
					t.Fatalf("Check(%s) = %v; want allowed", c.addr, err)
				}
				return
			}
			var addrErr *AddressError
			if !errors.As(err, &addrErr) {
				t.Fatalf("Check(%s) = %v; want an *AddressError saying %q", c.addr, err, c.denied)
			}
			if !strings.Contains(addrErr.Reason, c.denied) {
				t.Errorf("Check(%s) reason %q; want it to say %q", c.addr, addrErr.Reason, c.denied)
			}
			if addrErr.Addr != ap {
				t.Errorf("AddressError.Addr = %s; want %s as given", addrErr.Addr, ap)
			}
		})
	}
}

func TestCheckBuiltinRanges(t *testing.T) {
	policy := NewAddressPolicy(AddressConfig{})
	runCheckCases(t, policy, []checkCase{
		// Each IPv4 range with its first and last address and both neighbours.
		{"0.0.0.0:80", "0.0.0.0/32"},
		{"0.0.0.1:80", "0.0.0.0/8"},
		{"0.255.255.255:80", "0.0.0.0/8"},
		{"1.0.0.0:80", ""},
		{"9.255.255.255:80", ""},
		{"10.0.0.0:80", "10.0.0.0/8"},
		{"10.255.255.255:80", "10.0.0.0/8"},
		{"11.0.0.0:80", ""},
		{"100.63.255.255:80", ""},
		{"100.64.0.0:80", "100.64.0.0/10"},
		{"100.127.255.255:80", "100.64.0.0/10"},
		{"100.128.0.0:80", ""},
		{"126.255.255.255:80", ""},
		{"127.0.0.0:80", "127.0.0.0/8"},
		{"127.0.0.1:80", "127.0.0.0/8"},
		{"127.255.255.255:80", "127.0.0.0/8"},
		{"128.0.0.0:80", ""},
		{"168.63.129.15:80", ""},
		{"168.63.129.16:80", "168.63.129.16/32"},
		{"168.63.129.17:80", ""},
		{"169.253.255.255:80", ""},
		{"169.254.0.0:80", "169.254.0.0/16"},
		{"169.254.169.254:80", "169.254.0.0/16"},
		{"169.254.255.255:80", "169.254.0.0/16"},
		{"169.255.0.0:80", ""},
		{"172.15.255.255:80", ""},
		{"172.16.0.0:80", "172.16.0.0/12"},
		{"172.31.255.255:80", "172.16.0.0/12"},
		{"172.32.0.0:80", ""},
		{"191.255.255.255:80", ""},
		{"192.0.0.0:80", "192.0.0.0/29"},
		{"192.0.0.9:80", "192.0.0.9/32"},
		{"192.0.0.11:80", "192.0.0.0/24"},
		{"192.0.0.255:80", "192.0.0.0/24"},
		{"192.0.1.0:80", ""},
		{"192.0.2.0:80", "192.0.2.0/24"},
		{"192.0.2.255:80", "192.0.2.0/24"},
		{"192.0.3.0:80", ""},
		{"192.167.255.255:80", ""},
		{"192.168.0.0:80", "192.168.0.0/16"},
		{"192.168.255.255:80", "192.168.0.0/16"},
		{"192.169.0.0:80", ""},
		{"198.17.255.255:80", ""},
		{"198.18.0.0:80", "198.18.0.0/15"},
		{"198.19.255.255:80", "198.18.0.0/15"},
		{"198.20.0.0:80", ""},
		{"198.51.99.255:80", ""},
		{"198.51.100.0:80", "198.51.100.0/24"},
		{"198.51.100.255:80", "198.51.100.0/24"},
		{"198.51.101.0:80", ""},
		{"203.0.112.255:80", ""},
		{"203.0.113.0:80", "203.0.113.0/24"},
		{"203.0.113.255:80", "203.0.113.0/24"},
		{"203.0.114.0:80", ""},
		{"223.255.255.255:80", ""},
		{"224.0.0.0:80", "224.0.0.0/4"},
		{"239.255.255.255:80", "224.0.0.0/4"},
		{"240.0.0.0:80", "240.0.0.0/4"},
		{"255.255.255.254:80", "240.0.0.0/4"},
		{"255.255.255.255:80", "255.255.255.255/32"},

		// IPv6.
		{"[::]:80", "::/128"},
		{"[::1]:80", "::1/128"},
		{"[::2]:80", "::/96"},
		{"[::7f00:1]:80", "::/96"},                     // IPv4-compatible ::127.0.0.1
		{"[::a9fe:a9fe]:80", "::/96"},                  // IPv4-compatible ::169.254.169.254
		{"[::5db8:d70e]:80", "::/96"},                  // IPv4-compatible, public IPv4
		{"[::ffff:0:a9fe:a9fe]:80", "::ffff:0:0:0/96"}, // IPv4-translated, not IPv4-mapped
		{"[::ffff:0:5db8:d70e]:80", "::ffff:0:0:0/96"},
		{"[::ffff:0:0:0]:80", "::ffff:0:0:0/96"},
		{"[::ffff:0:ffff:ffff]:80", "::ffff:0:0:0/96"},
		{"[::fffe:ffff:ffff]:80", "2000::/3"},
		{"[::1:0:0:0]:80", "2000::/3"},
		{"[::1:0:0]:80", "2000::/3"},
		{"[100::]:80", "100::/64"},
		{"[100::ffff:ffff:ffff:ffff]:80", "100::/64"},
		{"[100:0:0:1::]:80", "100:0:0:1::/64"},
		{"[100:0:0:2::]:80", "2000::/3"},
		{"[2001:db7:ffff:ffff:ffff:ffff:ffff:ffff]:80", ""},
		{"[2001:db8::]:80", "2001:db8::/32"},
		{"[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:80", "2001:db8::/32"},
		{"[2001:db9::]:80", ""},
		{"[fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80", "2000::/3"},
		{"[fc00::]:80", "fc00::/7"},
		{"[fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80", "fc00::/7"},
		{"[fe00::]:80", "2000::/3"},
		{"[fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80", "2000::/3"},
		{"[fe80::]:80", "fe80::/10"},
		{"[fe80::1%eth0]:80", "fe80::/10"},
		{"[febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80", "fe80::/10"},
		{"[fec0::]:80", "fec0::/10"},
		{"[fec0::1]:80", "fec0::/10"},
		{"[feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80", "fec0::/10"},
		{"[ff00::]:80", "ff00::/8"},
		{"[ff02::1]:80", "ff00::/8"},
		{"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80", "ff00::/8"},

		// Ranges that embed IPv4 are denied whatever they embed.
		{"[64:ff9b::]:80", "64:ff9b::/96"},
		{"[64:ff9b::7f00:1]:80", "64:ff9b::/96"},
		{"[64:ff9b::5db8:d70e]:80", "64:ff9b::/96"}, // 93.184.215.14, a public address
		{"[64:ff9b::ffff:ffff]:80", "64:ff9b::/96"},
		{"[64:ff9b::1:0:0]:80", "2000::/3"},
		{"[64:ff9b:1::]:80", "64:ff9b:1::/48"},
		{"[64:ff9b:1:ffff::5db8:d70e]:80", "64:ff9b:1::/48"},
		{"[64:ff9b:2::]:80", "2000::/3"},
		{"[2002::]:80", "2002::/16"},
		{"[2002:5db8:d70e::1]:80", "2002::/16"},
		{"[2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80", "2002::/16"},
		{"[2003::]:80", ""},
		{"[2001::]:80", "2001::/32"},
		{"[2001:0:5db8:d70e::1]:80", "2001::/32"},
		{"[2001:0:ffff:ffff:ffff:ffff:ffff:ffff]:80", "2001::/32"},
		{"[2001:1::]:80", "2001::/23"},
		{"[2001:200::]:80", ""},

		// IPv4-mapped addresses are checked as the IPv4 address.
		{"[::ffff:127.0.0.1]:80", "127.0.0.0/8"},
		{"[::ffff:10.0.0.1]:80", "10.0.0.0/8"},
		{"[::ffff:169.254.169.254]:80", "169.254.0.0/16"},
		{"[::ffff:0.0.0.0]:80", "0.0.0.0/32"},
		{"[::ffff:93.184.215.14]:443", ""},

		// Public addresses.
		{"93.184.215.14:443", ""},
		{"8.8.8.8:53", ""},
		{"[2606:4700::1111]:443", ""},
		{"[2606:4700::1111%eth0]:443", ""},
	})
}

func TestCheckEveryBuiltinRangeEdges(t *testing.T) {
	policy := NewAddressPolicy(AddressConfig{})
	for _, prefix := range BuiltinDenied() {
		first := prefix.Addr()
		last := lastAddr(prefix)
		for _, addr := range []netip.Addr{first, last} {
			if err := policy.Check(netip.AddrPortFrom(addr, 443)); err == nil {
				t.Errorf("Check(%s) allowed; it is in %s", addr, prefix)
			}
			if addr.Is4() {
				mapped := netip.AddrFrom16(addr.As16())
				if err := policy.Check(netip.AddrPortFrom(mapped, 443)); err == nil {
					t.Errorf("Check(%s) allowed; it maps %s in %s", mapped, addr, prefix)
				}
			}
		}
	}
}

// lastAddr returns the highest address of prefix.
func lastAddr(prefix netip.Prefix) netip.Addr {
	b := prefix.Addr().AsSlice()
	for i := prefix.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	addr, _ := netip.AddrFromSlice(b)
	return addr
}

func TestBuiltinDeniedIsAFreshCopy(t *testing.T) {
	list := BuiltinDenied()
	list[0] = netip.MustParsePrefix("8.8.8.0/24")
	if err := NewAddressPolicy(AddressConfig{}).Check(addrPort(t, "0.0.0.1:80")); err == nil {
		t.Error("changing the returned list changed the policy")
	}
	if BuiltinDenied()[0] == list[0] {
		t.Error("BuiltinDenied returned a shared slice")
	}
	for _, p := range BuiltinDenied() {
		if p != p.Masked() || p.Addr().Is4In6() {
			t.Errorf("built-in range %s is not canonical", p)
		}
	}
}

func TestCheckOperatorLists(t *testing.T) {
	t.Run("allow exceptions", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{
			Allow: prefixes("127.0.0.1/32", "10.0.0.0/8", "64:ff9b::/96", "::1/128"),
		})
		runCheckCases(t, policy, []checkCase{
			{"127.0.0.1:8080", ""},
			{"[::ffff:127.0.0.1]:8080", ""},
			{"127.0.0.2:8080", "127.0.0.0/8"},
			{"10.20.30.40:443", ""},
			{"[::ffff:10.20.30.40]:443", ""},
			{"[64:ff9b::7f00:1]:443", ""},
			{"[::1]:443", ""},
			{"172.16.0.1:443", "172.16.0.0/12"},
		})
	})
	t.Run("mapped allow prefix", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{Allow: prefixes("::ffff:127.0.0.0/104")})
		runCheckCases(t, policy, []checkCase{
			{"127.0.0.1:80", ""},
			{"[::ffff:127.0.0.1]:80", ""},
			{"10.0.0.1:80", "10.0.0.0/8"},
		})
	})
	t.Run("deny over allow", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{
			Deny:  prefixes("10.1.0.0/16", "93.184.215.0/24", "::ffff:8.8.8.0/120"),
			Allow: prefixes("10.0.0.0/8", "93.184.215.14/32"),
		})
		runCheckCases(t, policy, []checkCase{
			{"10.1.2.3:443", "operator deny_cidrs 10.1.0.0/16"},
			{"[::ffff:10.1.2.3]:443", "operator deny_cidrs 10.1.0.0/16"},
			{"10.2.0.1:443", ""},
			{"93.184.215.14:443", "operator deny_cidrs 93.184.215.0/24"},
			{"8.8.8.8:53", "operator deny_cidrs 8.8.8.0/24"},
			{"8.8.4.4:53", ""},
		})
	})
	t.Run("local addresses", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{
			Local: StaticHostAddrs(addrs("93.184.215.99", "2606:4700::99", "::ffff:93.184.215.98", "fe80::1%eth0")...),
		})
		runCheckCases(t, policy, []checkCase{
			{"93.184.215.99:443", "address of the gateway host"},
			{"[::ffff:93.184.215.99]:443", "address of the gateway host"},
			{"93.184.215.98:443", "address of the gateway host"},
			{"[2606:4700::99]:443", "address of the gateway host"},
			{"93.184.215.100:443", ""},
		})
	})
	t.Run("allow lifts local", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{
			Local: StaticHostAddrs(addrs("93.184.215.99")...),
			Allow: prefixes("93.184.215.99/32"),
		})
		runCheckCases(t, policy, []checkCase{{"93.184.215.99:443", ""}})
	})
	t.Run("invalid entries ignored", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{
			Deny:      []netip.Prefix{{}},
			Allow:     []netip.Prefix{{}},
			Local:     StaticHostAddrs(netip.Addr{}),
			Listeners: []netip.AddrPort{{}},
		})
		runCheckCases(t, policy, []checkCase{{"93.184.215.14:443", ""}, {"10.0.0.1:443", "10.0.0.0/8"}})
	})
}

func TestCheckListeners(t *testing.T) {
	t.Run("specific listener never allowed", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{
			Allow:     prefixes("0.0.0.0/0", "::/0"),
			Listeners: []netip.AddrPort{addrPort(t, "127.0.0.1:9128"), addrPort(t, "93.184.215.99:3128")},
		})
		runCheckCases(t, policy, []checkCase{
			{"127.0.0.1:9128", "the gateway's own listener"},
			{"[::ffff:127.0.0.1]:9128", "the gateway's own listener"},
			{"0.0.0.0:9128", "the gateway's own listener"},
			{"[::]:9128", "the gateway's own listener"},
			{"93.184.215.99:3128", "the gateway's own listener"},
			{"127.0.0.1:9129", ""},
			{"127.0.0.2:9128", ""},
			{"93.184.215.99:443", ""},
		})
	})
	t.Run("unspecified listener", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{
			Allow:     prefixes("127.0.0.0/8", "::1/128", "0.0.0.0/8", "10.0.0.0/8"),
			Local:     StaticHostAddrs(addrs("10.0.0.5", "93.184.215.99", "127.0.0.1", "::1")...),
			Listeners: []netip.AddrPort{addrPort(t, "0.0.0.0:3128")},
		})
		runCheckCases(t, policy, []checkCase{
			{"127.0.0.1:3128", "the gateway's own listener"},
			{"127.3.4.5:3128", "the gateway's own listener"},
			{"[::1]:3128", "the gateway's own listener"},
			{"[::ffff:127.0.0.1]:3128", "the gateway's own listener"},
			{"0.0.0.0:3128", "the gateway's own listener"},
			{"[::]:3128", "the gateway's own listener"},
			{"10.0.0.5:3128", "the gateway's own listener"},
			{"93.184.215.99:3128", "the gateway's own listener"},
			{"127.0.0.1:8080", ""},
			{"[::1]:8080", ""},
			{"10.0.0.5:8080", ""},
			{"10.0.0.6:3128", ""},
			{"93.184.215.99:8080", "address of the gateway host"},
			{"93.184.215.14:3128", ""},
		})
	})
	t.Run("IPv6 unspecified listener", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{
			Allow:     prefixes("127.0.0.0/8"),
			Listeners: []netip.AddrPort{addrPort(t, "[::]:3128")},
		})
		runCheckCases(t, policy, []checkCase{
			{"127.0.0.1:3128", "the gateway's own listener"},
			{"127.0.0.1:3129", ""},
		})
	})
	t.Run("mapped listener", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{
			Allow:     prefixes("127.0.0.0/8"),
			Listeners: []netip.AddrPort{addrPort(t, "[::ffff:127.0.0.1]:3128")},
		})
		runCheckCases(t, policy, []checkCase{{"127.0.0.1:3128", "the gateway's own listener"}})
	})
}

func TestCheckInvalidAddress(t *testing.T) {
	err := NewAddressPolicy(AddressConfig{Allow: prefixes("0.0.0.0/0", "::/0")}).Check(netip.AddrPort{})
	var addrErr *AddressError
	if !errors.As(err, &addrErr) || !strings.Contains(addrErr.Reason, "not a valid IP address") {
		t.Errorf("Check(zero) = %v; want refused as invalid", err)
	}
}

func TestAddressErrorMessage(t *testing.T) {
	err := NewAddressPolicy(AddressConfig{}).Check(addrPort(t, "[::ffff:127.0.0.1]:80"))
	want := "destination address [::ffff:127.0.0.1]:80 is not allowed: in special-purpose range 127.0.0.0/8, loopback (RFC 1122)"
	if err == nil || err.Error() != want {
		t.Errorf("error = %v; want %q", err, want)
	}
}

func TestCheckDoesNotAllocateWhenAllowed(t *testing.T) {
	policy := benchmarkPolicy()
	for _, s := range []string{"93.184.215.14:443", "[2606:4700::1111]:443", "[::ffff:93.184.215.14]:443", "10.0.0.9:443"} {
		ap := addrPort(t, s)
		if err := policy.Check(ap); err != nil {
			t.Fatal(err)
		}
		if allocs := testing.AllocsPerRun(100, func() { _ = policy.Check(ap) }); allocs != 0 {
			t.Errorf("Check(%s) allocates %v times", s, allocs)
		}
	}
}

func TestLocalAddrs(t *testing.T) {
	list, err := LocalAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range list {
		if !addr.IsValid() || addr.Is4In6() {
			t.Errorf("LocalAddrs returned %v; want valid, unmapped addresses", addr)
		}
	}
}

func FuzzAddressCheck(f *testing.F) {
	for _, seed := range []string{
		"127.0.0.1", "::ffff:127.0.0.1", "93.184.215.14", "2606:4700::1111", "64:ff9b::5db8:d70e",
		"fe80::1", "::", "168.63.129.16", "2002:5db8:d70e::1", "10.1.2.3",
		"::ffff:0:a9fe:a9fe", "::a9fe:a9fe", "fec0::1", "2001:0:5db8:d70e::1", "64:ff9b:1::a9fe:a9fe",
		"3fff::1", "2620:4f:8000::1", "5f00::1", "4000::1", "2001:200::1",
	} {
		b := netip.MustParseAddr(seed).As16()
		f.Add(b[:], uint16(443))
	}
	empty := NewAddressPolicy(AddressConfig{})
	cfg := struct {
		deny, allow []netip.Prefix
		local       []netip.Addr
		listeners   []netip.AddrPort
	}{
		deny:      prefixes("10.1.0.0/16", "2606:4700::/32"),
		allow:     prefixes("10.0.0.0/8", "127.0.0.1/32", "64:ff9b::/96", "fec0::/16"),
		local:     addrs("93.184.215.99", "10.0.0.5"),
		listeners: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:3128"), netip.MustParseAddrPort("10.0.0.5:9128")},
	}
	configured := NewAddressPolicy(AddressConfig{
		Deny: cfg.deny, Allow: cfg.allow, Local: StaticHostAddrs(cfg.local...), Listeners: cfg.listeners,
	})
	contract := prefixes(contractRanges...)
	globalUnicast := netip.MustParsePrefix("2000::/3")
	// configuredOracle is Check's order of rules written out plainly for
	// the configured policy; addr is unmapped.
	configuredOracle := func(addr netip.Addr, port uint16) bool {
		for _, l := range cfg.listeners {
			if l.Port() == port && (l.Addr() == addr || addr.IsUnspecified() ||
				l.Addr().IsUnspecified() && (addr.IsLoopback() || slices.Contains(cfg.local, addr))) {
				return true
			}
		}
		if slices.ContainsFunc(cfg.deny, func(p netip.Prefix) bool { return p.Contains(addr) }) {
			return true
		}
		if slices.ContainsFunc(cfg.allow, func(p netip.Prefix) bool { return p.Contains(addr) }) {
			return false
		}
		return oracleDenied(addr) || slices.Contains(cfg.local, addr)
	}
	f.Fuzz(func(t *testing.T, raw []byte, port uint16) {
		var b [16]byte
		copy(b[:], raw)
		addr := netip.AddrFrom16(b)
		unmapped := addr.Unmap()
		ap := netip.AddrPortFrom(addr, port)
		emptyErr := empty.Check(ap)
		for _, p := range contract {
			if p.Contains(unmapped) && emptyErr == nil {
				t.Fatalf("Check(%s) allowed with no configuration; it is in %s", ap, p)
			}
		}
		if unmapped.Is6() && !globalUnicast.Contains(unmapped) && emptyErr == nil {
			t.Fatalf("Check(%s) allowed with no configuration; it is IPv6 outside 2000::/3", ap)
		}
		if want := oracleDenied(unmapped); want != (emptyErr != nil) {
			t.Fatalf("Check(%s) = %v with no configuration; want denied=%v", ap, emptyErr, want)
		}
		if emptyErr != nil {
			var addrErr *AddressError
			if !errors.As(emptyErr, &addrErr) || addrErr.Addr != ap || addrErr.Reason == "" {
				t.Fatalf("Check(%s) = %#v; want an *AddressError for it", ap, emptyErr)
			}
		}
		if err := configured.Check(ap); configuredOracle(unmapped, port) != (err != nil) {
			t.Fatalf("configured Check(%s) = %v; want denied=%v", ap, err, configuredOracle(unmapped, port))
		}
		if addr.Is4In6() {
			unmappedAP := netip.AddrPortFrom(unmapped, port)
			for _, policy := range []*AddressPolicy{empty, configured} {
				mappedOK, unmappedOK := policy.Check(ap) == nil, policy.Check(unmappedAP) == nil
				if mappedOK != unmappedOK {
					t.Fatalf("Check(%s) allowed=%v but Check(%s) allowed=%v", ap, mappedOK, unmappedAP, unmappedOK)
				}
			}
		}
	})
}

func benchmarkPolicy() *AddressPolicy {
	return NewAddressPolicy(AddressConfig{
		Deny:      prefixes("10.1.0.0/16", "198.51.100.0/24", "2001:db8:1::/48"),
		Allow:     prefixes("10.0.0.0/8"),
		Local:     StaticHostAddrs(addrs("10.0.0.5", "93.184.215.99", "127.0.0.1", "::1", "fe80::1")...),
		Listeners: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:3128"), netip.MustParseAddrPort("127.0.0.1:9128")},
	})
}

func BenchmarkAddressCheck(b *testing.B) {
	policy := benchmarkPolicy()
	for _, s := range []string{"93.184.215.14:443", "[2606:4700::1111]:443"} {
		ap := netip.MustParseAddrPort(s)
		b.Run(s, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := policy.Check(ap); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
