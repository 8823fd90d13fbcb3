package allowlist

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// contractRanges are the ranges docs/admins.md promises are never dialled
// unless allow_cidrs lists them. Written out here, not taken from the
// table, so that dropping a row fails a test.
var contractRanges = []string{
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
	"198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "168.63.129.16/32",
	"::/128", "::1/128", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
	"64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32",
	"fec0::/10", "::ffff:0:0:0/96", "::/96",
}

func TestSpecialRangesHoldTheContractList(t *testing.T) {
	rows := map[netip.Prefix]string{}
	for _, r := range SpecialRanges() {
		if _, dup := rows[r.Prefix]; dup {
			t.Errorf("row %s is listed twice", r.Prefix)
		}
		if r.Prefix != r.Prefix.Masked() || r.Prefix.Addr().Is4In6() || r.Name == "" {
			t.Errorf("row %s %q: want a masked prefix, not IPv4-mapped, with a name", r.Prefix, r.Name)
		}
		rows[r.Prefix] = r.Name
	}
	for _, text := range contractRanges {
		if _, ok := rows[netip.MustParsePrefix(text)]; !ok {
			t.Errorf("%s is not a row of the built-in table", text)
		}
	}
}

// oracleDenied is the built-in rule written independently of Check: in a
// row, or IPv6 outside 2000::/3. addr is unmapped.
func oracleDenied(addr netip.Addr) bool {
	if addr.Is6() && !netip.MustParsePrefix("2000::/3").Contains(addr) {
		return true
	}
	for _, r := range SpecialRanges() {
		if r.Prefix.Contains(addr) {
			return true
		}
	}
	return false
}

// TestEveryRowBothDirections refuses the first and last address of every
// row, naming a row that holds it, and accepts the address just outside
// unless that neighbour is itself special.
func TestEveryRowBothDirections(t *testing.T) {
	policy := NewAddressPolicy(AddressConfig{})
	ranges := SpecialRanges()
	reasonNamesRow := func(reason string, addr netip.Addr) bool {
		for _, r := range ranges {
			if r.Prefix.Contains(addr) && strings.Contains(reason, "range "+r.Prefix.String()+", "+r.Name) {
				return true
			}
		}
		return addr.Is6() && strings.Contains(reason, "2000::/3")
	}
	for _, row := range ranges {
		t.Run(row.Prefix.String(), func(t *testing.T) {
			for _, addr := range []netip.Addr{row.Prefix.Addr(), lastAddr(row.Prefix)} {
				forms := []netip.Addr{addr}
				if addr.Is4() {
					forms = append(forms, netip.AddrFrom16(addr.As16())) // ::ffff:a.b.c.d
				}
				for _, form := range forms {
					var addrErr *AddressError
					if err := policy.Check(netip.AddrPortFrom(form, 443)); !errors.As(err, &addrErr) {
						t.Errorf("Check(%s) = %v; want refused, it is in %s", form, err, row.Prefix)
					} else if !reasonNamesRow(addrErr.Reason, addr) {
						t.Errorf("Check(%s) reason %q names no row holding it", form, addrErr.Reason)
					}
				}
			}
			for _, neighbour := range []netip.Addr{row.Prefix.Addr().Prev(), lastAddr(row.Prefix).Next()} {
				if !neighbour.IsValid() {
					continue
				}
				err := policy.Check(netip.AddrPortFrom(neighbour, 443))
				if want := oracleDenied(neighbour); want != (err != nil) {
					t.Errorf("Check(%s) = %v; want denied=%v (neighbour of %s)", neighbour, err, want, row.Prefix)
				}
			}
		})
	}
}

// embeddingForms returns the IPv6 spellings that embed v4 but route as
// IPv6 (to a translator, a relay, or nowhere).
func embeddingForms(v4 netip.Addr) []netip.Addr {
	b := v4.As4()
	with := func(prefix string, at int) netip.Addr {
		a := netip.MustParseAddr(prefix).As16()
		copy(a[at:at+4], b[:])
		return netip.AddrFrom16(a)
	}
	return []netip.Addr{
		with("::ffff:0:0:0", 12), // IPv4-translated ::ffff:0:a.b.c.d
		with("::", 12),           // IPv4-compatible ::a.b.c.d
		with("64:ff9b::", 12),    // NAT64
		with("64:ff9b:1::", 12),  // local-use NAT64
		with("2002::1", 2),       // 6to4 2002:aabb:ccdd::1
		with("2001::", 4),        // Teredo server address
		with("2001::", 12),       // Teredo (obfuscated) client address
	}
}

func TestEmbeddingFormsDeniedWhateverTheyEmbed(t *testing.T) {
	plain := NewAddressPolicy(AddressConfig{})
	// Allowing the IPv4 address (even all of IPv4) does not open the IPv6
	// forms that embed it: only an IPv6 prefix can.
	allowV4 := NewAddressPolicy(AddressConfig{Allow: prefixes("0.0.0.0/0")})
	for _, v4 := range []string{"93.184.215.14", "8.8.8.8", "127.0.0.1", "169.254.169.254", "10.0.0.1", "0.0.0.0", "255.255.255.255"} {
		for _, form := range embeddingForms(netip.MustParseAddr(v4)) {
			for name, policy := range map[string]*AddressPolicy{"no allow_cidrs": plain, "allow_cidrs 0.0.0.0/0": allowV4} {
				if err := policy.Check(netip.AddrPortFrom(form, 80)); err == nil {
					t.Errorf("%s: Check(%s) allowed; it embeds %s", name, form, v4)
				}
			}
		}
	}
}

func TestAllowCIDRsAndIPv6OutsideGlobalUnicast(t *testing.T) {
	t.Run("an IPv6 prefix that holds it opens it", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{Allow: prefixes("fec0::/16", "::ffff:0:a9fe:a9fe/128", "fd00:ec2::254/128")})
		runCheckCases(t, policy, []checkCase{
			{"[fec0::1]:80", ""},
			{"[fec1::1]:80", "fec0::/10"},
			{"[::ffff:0:a9fe:a9fe]:80", ""},
			{"[::ffff:0:a9fe:a9ff]:80", "::ffff:0:0:0/96"},
			{"[fd00:ec2::254]:80", ""},
			{"169.254.169.254:80", "169.254.0.0/16"},
		})
	})
	t.Run("an IPv4 prefix never opens IPv6", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{Allow: prefixes("127.0.0.1/32", "169.254.169.254/32")})
		runCheckCases(t, policy, []checkCase{
			{"127.0.0.1:80", ""},
			{"[::ffff:127.0.0.1]:80", ""}, // IPv4-mapped is the IPv4 address itself
			{"[::ffff:0:7f00:1]:80", "::ffff:0:0:0/96"},
			{"[::7f00:1]:80", "::/96"},
			{"[::ffff:0:a9fe:a9fe]:80", "::ffff:0:0:0/96"},
			{"[64:ff9b::a9fe:a9fe]:80", "64:ff9b::/96"},
		})
	})
	t.Run("deny still wins", func(t *testing.T) {
		policy := NewAddressPolicy(AddressConfig{Allow: prefixes("fec0::/10"), Deny: prefixes("fec0::1/128")})
		runCheckCases(t, policy, []checkCase{
			{"[fec0::1]:80", "operator deny_cidrs fec0::1/128"},
			{"[fec0::2]:80", ""},
		})
	})
}

func TestRefusesAll(t *testing.T) {
	policy := NewAddressPolicy(AddressConfig{
		Allow: prefixes("127.0.0.1/32", "fd00::/8"),
		Deny:  prefixes("93.184.215.0/24"),
	})
	for _, c := range []struct {
		prefix string
		want   string // "" = not refused whole, else a piece of the reason
	}{
		{"169.254.169.254/32", "169.254.0.0/16"},
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.0.0.0/7", ""}, // 11.0.0.0/8 is public
		{"0.0.0.0/0", ""},
		{"127.0.0.2/32", "127.0.0.0/8"},
		{"127.0.0.1/32", ""}, // opened by allow_cidrs
		{"127.0.0.0/8", ""},  // partly opened
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"::ffff:127.0.0.1/128", ""},
		{"fec0::/10", "fec0::/10"},
		{"fec0::1/128", "fec0::/10"},
		{"::ffff:0:a9fe:a9fe/128", "::ffff:0:0:0/96"},
		{"2001:db8::/48", "2001:db8::/32"},
		{"4000::/2", "2000::/3"},
		{"fd00::/8", ""},
		{"fd00:ec2::254/128", ""},
		{"fc00::/8", "fc00::/7"},
		{"::/0", ""},
		{"2606:4700::/32", ""},
		{"93.184.215.14/32", "operator deny_cidrs 93.184.215.0/24"},
		{"93.184.0.0/16", ""},
	} {
		reason, refused := policy.RefusesAll(netip.MustParsePrefix(c.prefix))
		if refused != (c.want != "") || !strings.Contains(reason, c.want) {
			t.Errorf("RefusesAll(%s) = %q, %v; want refused=%v saying %q", c.prefix, reason, refused, c.want != "", c.want)
		}
	}
}

// listing is an injectable address lister whose answer a test changes.
type listing struct {
	mu    sync.Mutex
	addrs []netip.Addr
	err   error
	calls int
}

func (l *listing) set(addrs []netip.Addr, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addrs, l.err = addrs, err
}

func (l *listing) list() ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	return l.addrs, l.err
}

func TestHostAddrsRefresh(t *testing.T) {
	l := &listing{addrs: addrs("93.184.215.99")}
	host, err := NewHostAddrs(l.list)
	if err != nil {
		t.Fatal(err)
	}
	policy := NewAddressPolicy(AddressConfig{Local: host})
	denied := func(s string) bool { return policy.Check(addrPort(t, s)) != nil }
	if !denied("93.184.215.99:443") || denied("93.184.215.98:443") {
		t.Fatal("the first listing is not what the policy refuses")
	}

	// An address an interface gains is refused once listed again, by the
	// policy built before; one it loses is no longer the host's.
	l.set(addrs("93.184.215.98", "::ffff:93.184.215.97"), nil)
	if err := host.Refresh(); err != nil {
		t.Fatal(err)
	}
	if !denied("93.184.215.98:443") || !denied("93.184.215.97:443") || denied("93.184.215.99:443") {
		t.Error("the refreshed listing is not what the policy refuses")
	}

	// A failed listing keeps the last one.
	l.set(nil, errors.New("netlink: no buffer space"))
	if err := host.Refresh(); err == nil {
		t.Error("Refresh hid the listing's error")
	}
	if !denied("93.184.215.98:443") {
		t.Error("a failed listing let the host's address through")
	}

	if _, err := NewHostAddrs(l.list); err == nil {
		t.Error("NewHostAddrs hid the first listing's error")
	}
}

func TestHostAddrsRunRefreshesUntilCancelled(t *testing.T) {
	l := &listing{}
	host, err := NewHostAddrs(l.list)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var failures sync.WaitGroup
	failures.Add(1)
	var once sync.Once
	go func() {
		defer close(done)
		host.Run(ctx, time.Millisecond, func(error) { once.Do(failures.Done) })
	}()
	l.set(addrs("93.184.215.99"), nil)
	deadline := time.Now().Add(10 * time.Second)
	for !host.Contains(netip.MustParseAddr("93.184.215.99")) {
		if time.Now().After(deadline) {
			t.Fatal("Run did not pick up the new listing")
		}
		time.Sleep(time.Millisecond)
	}
	l.set(nil, errors.New("listing failed"))
	failures.Wait() // onError heard of it
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running after its context ended")
	}
}
