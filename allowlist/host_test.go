package allowlist

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unicode"
)

func TestNormalizeHost(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	// 4 labels of 63 plus 3 dots = 255; trim to exactly 253.
	host253 := label63 + "." + label63 + "." + label63 + "." + strings.Repeat("a", 61)

	tests := []struct {
		name string
		host string
		want string
		err  error // nil: success
	}{
		// Host names.
		{name: "plain", host: "api.github.com", want: "api.github.com"},
		{name: "uppercase", host: "API.GitHub.COM", want: "api.github.com"},
		{name: "one trailing dot removed", host: "example.com.", want: "example.com"},
		{name: "single label", host: "localhost", want: "localhost"},
		{name: "underscore allowed", host: "my_service.internal", want: "my_service.internal"},
		{name: "hyphens anywhere", host: "r3---sn-abc.example", want: "r3---sn-abc.example"},
		{name: "digits in labels", host: "123abc.example", want: "123abc.example"},
		{name: "numeric label not last", host: "127.0.0.1.example.com", want: "127.0.0.1.example.com"},
		{name: "hex-looking label not last", host: "0x7f.example.com", want: "0x7f.example.com"},
		{name: "last label not hex", host: "example.0xg", want: "example.0xg"},
		{name: "longest name", host: host253, want: host253},
		{name: "longest label", host: label63 + ".example", want: label63 + ".example"},

		// Internationalised names.
		{name: "IDNA", host: "bücher.example", want: "xn--bcher-kva.example"},
		{name: "IDNA uppercase", host: "BÜCHER.example", want: "xn--bcher-kva.example"},
		{name: "A-label kept", host: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{name: "A-label uppercase", host: "XN--BCHER-KVA.example", want: "xn--bcher-kva.example"},
		{name: "IDNA non-transitional", host: "faß.de", want: "xn--fa-hia.de"},
		{name: "fullwidth letters", host: "ＡＢＣ.com", want: "abc.com"},
		{name: "ideographic full stop", host: "bücher。example", want: "xn--bcher-kva.example"},
		{name: "ideographic trailing dot", host: "example.com。", want: "example.com"},
		{name: "ignored soft hyphen", host: "ex\u00adample.com", want: "example.com"},
		{name: "invalid A-label", host: "xn--zz.example", err: ErrInvalidHost},
		{name: "A-label of pure ASCII", host: "xn--abc-.example", err: ErrInvalidHost},
		{name: "disallowed rune", host: "a\u2028b.example", err: ErrInvalidHost},
		{name: "fullwidth colon", host: "a：b", err: ErrInvalidHost},
		{name: "only ignored runes", host: "\u00ad", err: ErrInvalidHost},

		// IPv4.
		{name: "IPv4", host: "203.0.113.7", want: "203.0.113.7"},
		{name: "IPv4 zero", host: "0.0.0.0", want: "0.0.0.0"},
		{name: "IPv4 broadcast", host: "255.255.255.255", want: "255.255.255.255"},
		{name: "IPv4 decimal integer", host: "2130706433", err: ErrNonCanonicalIP},
		{name: "IPv4 hex parts", host: "0x7f.1", err: ErrNonCanonicalIP},
		{name: "IPv4 hex integer", host: "0x7f000001", err: ErrNonCanonicalIP},
		{name: "IPv4 hex integer uppercase", host: "0X7F000001", err: ErrNonCanonicalIP},
		{name: "IPv4 octal integer", host: "017700000001", err: ErrNonCanonicalIP},
		{name: "IPv4 two parts", host: "127.1", err: ErrNonCanonicalIP},
		{name: "IPv4 three parts", host: "127.0.1", err: ErrNonCanonicalIP},
		{name: "IPv4 leading zero", host: "127.0.0.01", err: ErrNonCanonicalIP},
		{name: "IPv4 octal part", host: "0177.0.0.1", err: ErrNonCanonicalIP},
		{name: "IPv4 hex part", host: "0x7f.0.0.1", err: ErrNonCanonicalIP},
		{name: "IPv4 trailing dot", host: "127.0.0.1.", err: ErrNonCanonicalIP},
		{name: "IPv4 five parts", host: "1.2.3.4.5", err: ErrNonCanonicalIP},
		{name: "IPv4 part too large", host: "1.2.3.256", err: ErrNonCanonicalIP},
		{name: "IPv4 empty hex", host: "0x", err: ErrNonCanonicalIP},
		{name: "IPv4 name ending in number", host: "example.123", err: ErrNonCanonicalIP},
		{name: "IPv4 name ending in 0x", host: "example.0x", err: ErrNonCanonicalIP},
		{name: "IPv4 fullwidth digits", host: "１２７.０.０.１", err: ErrNonCanonicalIP},
		{name: "IPv4 invalid octal", host: "09.0.0.1", err: ErrNonCanonicalIP},

		// IPv6.
		{name: "IPv6 loopback", host: "::1", want: "::1"},
		{name: "IPv6 long form", host: "0:0:0:0:0:0:0:1", want: "::1"},
		{name: "IPv6 uppercase", host: "2001:DB8::1", want: "2001:db8::1"},
		{name: "IPv6 leading zeros", host: "2001:0db8:0000::0001", want: "2001:db8::1"},
		{name: "IPv4-mapped stays IPv6", host: "::ffff:127.0.0.1", want: "::ffff:127.0.0.1"},
		{name: "IPv4-mapped hex", host: "::FFFF:7F00:1", want: "::ffff:127.0.0.1"},
		{name: "IPv4-mapped leading zero", host: "::ffff:127.0.0.01", err: ErrInvalidHost},
		{name: "IPv6 zone", host: "fe80::1%eth0", err: ErrInvalidHost},
		{name: "IPv6 encoded zone", host: "fe80::1%25eth0", err: ErrInvalidHost},
		{name: "IPv6 brackets", host: "[::1]", err: ErrInvalidHost},
		{name: "IPv6 too many groups", host: "1:2:3:4:5:6:7:8:9", err: ErrInvalidHost},
		{name: "host with port", host: "example.com:443", err: ErrInvalidHost},
		{name: "IPv4 with port", host: "127.0.0.1:80", err: ErrInvalidHost},

		// Garbage.
		{name: "empty", host: "", err: ErrInvalidHost},
		{name: "dot", host: ".", err: ErrInvalidHost},
		{name: "leading dot", host: ".example.com", err: ErrInvalidHost},
		{name: "two trailing dots", host: "example.com..", err: ErrInvalidHost},
		{name: "empty label", host: "a..b", err: ErrInvalidHost},
		{name: "space", host: "exa mple.com", err: ErrInvalidHost},
		{name: "slash", host: "example.com/path", err: ErrInvalidHost},
		{name: "at sign", host: "user@example.com", err: ErrInvalidHost},
		{name: "asterisk", host: "*.example.com", err: ErrInvalidHost},
		{name: "percent", host: "exa%6dple.com", err: ErrInvalidHost},
		{name: "NUL", host: "example.com\x00.evil", err: ErrInvalidHost},
		{name: "invalid UTF-8", host: "ex\xffample.com", err: ErrInvalidHost},
		{name: "too long", host: host253 + "a", err: ErrInvalidHost},
		{name: "label too long", host: label63 + "a.example", err: ErrInvalidHost},
		{name: "huge input", host: strings.Repeat("a.", 600) + "com", err: ErrInvalidHost},
		{name: "IDNA label too long", host: strings.Repeat("ü", 63) + ".example", err: ErrInvalidHost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizeHost(tt.host)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("NormalizeHost(%q) = %q, %v; want error %v", tt.host, got, err, tt.err)
				}
				if got != "" {
					t.Errorf("NormalizeHost(%q) returned %q with its error", tt.host, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("NormalizeHost(%q) = %q, %v; want %q", tt.host, got, err, tt.want)
			}
			if again, err := NormalizeHost(got); err != nil || again != got {
				t.Errorf("NormalizeHost(%q) = %q, %v; want it unchanged", got, again, err)
			}
		})
	}
}

// TestNormalizeHostNonCanonicalMessage checks that a user is told which
// address an ambiguous spelling stands for.
func TestNormalizeHostNonCanonicalMessage(t *testing.T) {
	tests := []struct {
		host, mention string
	}{
		{"2130706433", "127.0.0.1"},
		{"0x7f.1", "127.0.0.1"},
		{"0x7f000001", "127.0.0.1"},
		{"017700000001", "127.0.0.1"},
		{"127.1", "127.0.0.1"},
		{"0177.0.0.1", "127.0.0.1"},
		{"127.0.0.1.", "127.0.0.1"},
		{"127.0.0.01", "127.0.0.1"},
		{"0x", "0.0.0.0"},
		{"１２７.０.０.１", "127.0.0.1"},
		{"1.2.3.4.5", "four decimal numbers"},
		{"example.123", "four decimal numbers"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			_, err := NormalizeHost(tt.host)
			if !errors.Is(err, ErrNonCanonicalIP) || !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("NormalizeHost(%q) error = %v; want ErrNonCanonicalIP mentioning %q", tt.host, err, tt.mention)
			}
		})
	}
}

func TestParseLooseIPv4(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" when not an address
	}{
		{"1", "0.0.0.1"},
		{"4294967295", "255.255.255.255"},
		{"4294967296", ""},
		{"1.16777215", "1.255.255.255"},
		{"1.16777216", ""},
		{"1.2.65535", "1.2.255.255"},
		{"1.2.3.255", "1.2.3.255"},
		{"256.1", ""},
		{"0x", "0.0.0.0"},
		{"0xffffffff", "255.255.255.255"},
		{"08", ""},
		{"1.2.3.4.5", ""},
		{"1..2", ""},
		{"+1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			addr, ok := parseLooseIPv4(tt.in)
			got := ""
			if ok {
				got = addr.String()
			}
			if got != tt.want {
				t.Errorf("parseLooseIPv4(%q) = %q; want %q", tt.in, got, tt.want)
			}
		})
	}
}

func FuzzNormalizeHost(f *testing.F) {
	for _, seed := range []string{
		"api.github.com", "API.GitHub.COM.", "bücher.example", "xn--bcher-kva.example",
		"127.0.0.1", "127.1", "0x7f000001", "1.2.3.4.5", "::ffff:127.0.0.1", "fe80::1%eth0",
		"a..b", ".", "１２７.０.０.１", "my_service.internal",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, host string) {
		out, err := NormalizeHost(host)
		if err != nil {
			if !errors.Is(err, ErrInvalidHost) && !errors.Is(err, ErrNonCanonicalIP) {
				t.Fatalf("NormalizeHost(%q) error %v wraps neither sentinel", host, err)
			}
			return
		}
		if out == "" || len(out) > maxHostLength && !strings.Contains(out, ":") {
			t.Fatalf("NormalizeHost(%q) = %q: empty or too long", host, out)
		}
		if again, err := NormalizeHost(out); err != nil || again != out {
			t.Fatalf("NormalizeHost(%q) = %q, but NormalizeHost(%q) = %q, %v", host, out, out, again, err)
		}
		if strings.IndexFunc(out, unicode.IsUpper) >= 0 {
			t.Fatalf("NormalizeHost(%q) = %q has upper case", host, out)
		}
		if addr, err := netip.ParseAddr(out); err == nil && addr.String() != out {
			t.Fatalf("NormalizeHost(%q) = %q, not canonical %q", host, out, addr)
		}
		if !isASCII(out) {
			t.Fatalf("NormalizeHost(%q) = %q is not ASCII", host, out)
		}
	})
}

func BenchmarkNormalizeHost(b *testing.B) {
	for _, host := range []string{"api.github.com", "API.GitHub.com.", "bücher.example", "203.0.113.7", "2001:db8::1"} {
		b.Run(host, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NormalizeHost(host); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
