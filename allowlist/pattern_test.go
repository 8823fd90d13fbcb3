package allowlist

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePattern(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      string
		isAddress bool
	}{
		{name: "exact", in: "api.github.com", want: "api.github.com"},
		{name: "exact normalised", in: "API.GitHub.com.", want: "api.github.com"},
		{name: "exact IDNA", in: "bücher.example", want: "xn--bcher-kva.example"},
		{name: "exact single label", in: "localhost", want: "localhost"},
		{name: "exact public suffix is only itself", in: "github.io", want: "github.io"},
		{name: "wildcard", in: "*.example.com", want: "*.example.com"},
		{name: "wildcard normalised", in: "*.Example.COM.", want: "*.example.com"},
		{name: "wildcard IDNA", in: "*.bücher.example", want: "*.xn--bcher-kva.example"},
		{name: "wildcard below public suffix", in: "*.example.co.uk", want: "*.example.co.uk"},
		{name: "wildcard below private suffix", in: "*.project.github.io", want: "*.project.github.io"},
		{name: "wildcard deep", in: "*.a.b.example.com", want: "*.a.b.example.com"},
		{name: "IPv4", in: "203.0.113.7", want: "203.0.113.7", isAddress: true},
		{name: "IPv6", in: "2001:DB8::1", want: "2001:db8::1", isAddress: true},
		{name: "IPv4-mapped", in: "::ffff:203.0.113.7", want: "::ffff:203.0.113.7", isAddress: true},
		{name: "CIDR v4", in: "198.51.100.0/24", want: "198.51.100.0/24", isAddress: true},
		{name: "CIDR v6", in: "2001:DB8::/32", want: "2001:db8::/32", isAddress: true},
		{name: "CIDR single address", in: "203.0.113.7/32", want: "203.0.113.7", isAddress: true},
		{name: "CIDR mapped", in: "::ffff:198.51.100.0/120", want: "::ffff:198.51.100.0/120", isAddress: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePattern(tt.in)
			if err != nil {
				t.Fatalf("ParsePattern(%q): %v", tt.in, err)
			}
			if got := p.String(); got != tt.want {
				t.Errorf("ParsePattern(%q).String() = %q; want %q", tt.in, got, tt.want)
			}
			if got := p.IsAddress(); got != tt.isAddress {
				t.Errorf("ParsePattern(%q).IsAddress() = %v; want %v", tt.in, got, tt.isAddress)
			}
			again, err := ParsePattern(p.String())
			if err != nil || again != p {
				t.Errorf("ParsePattern(%q) = %v, %v; want the same pattern back", p.String(), again, err)
			}
		})
	}
}

func TestParsePatternRefusals(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		mention string // the error must say this
		is      error  // and wrap this, when not nil
	}{
		{name: "empty", in: "", mention: "empty"},
		{name: "star", in: "*", mention: "every host"},
		{name: "star dot", in: "*.", mention: "every host"},
		{name: "public suffix", in: "*.com", mention: "public suffix"},
		{name: "multi-label public suffix", in: "*.co.uk", mention: "public suffix"},
		{name: "private public suffix", in: "*.github.io", mention: "public suffix"},
		{name: "public suffix with trailing dot", in: "*.COM.", mention: "public suffix"},
		{name: "unlisted top-level domain", in: "*.internal", mention: "public suffix"},
		{name: "IDNA public suffix", in: "*.рф", mention: "public suffix"},
		{name: "star in middle", in: "a.*.com", mention: "first label"},
		{name: "star inside first label", in: "*a.com", mention: "first label"},
		{name: "star at end of label", in: "a*.com", mention: "first label"},
		{name: "two wildcards", in: "*.*.example.com", mention: "first label"},
		{name: "double star", in: "**.example.com", mention: "first label"},
		{name: "star at end", in: "example.*", mention: "first label"},
		{name: "wildcard over IP", in: "*.127.0.0.1", mention: "IP address"},
		{name: "wildcard over bad IP", in: "*.1.2.3.4.5", is: ErrNonCanonicalIP},
		{name: "wildcard with empty label", in: "*..example.com", is: ErrInvalidHost},
		{name: "CIDR host bits", in: "10.0.0.1/8", mention: "did you mean 10.0.0.0/8?"},
		{name: "CIDR v6 host bits", in: "2001:db8::1/32", mention: "did you mean 2001:db8::/32?"},
		{name: "CIDR too long", in: "10.0.0.0/33", mention: "not a CIDR"},
		{name: "CIDR leading zero bits", in: "10.0.0.0/08", mention: "not a CIDR"},
		{name: "CIDR non-canonical address", in: "010.0.0.0/8", mention: "not a CIDR"},
		{name: "CIDR zone", in: "fe80::%eth0/64", mention: "not a CIDR"},
		{name: "CIDR of a name", in: "example.com/24", mention: "not a CIDR"},
		{name: "URL", in: "https://api.github.com", mention: "URL"},
		{name: "URL with path", in: "https://api.github.com/repos/", mention: "URL"},
		{name: "host with port", in: "api.github.com:443", mention: "no port", is: ErrInvalidHost},
		{name: "bracketed IPv6", in: "[2001:db8::1]", mention: "brackets"},
		{name: "IPv6 zone", in: "fe80::1%eth0", mention: "zone", is: ErrInvalidHost},
		{name: "non-canonical IPv4", in: "127.1", mention: "127.0.0.1", is: ErrNonCanonicalIP},
		{name: "IPv4 integer", in: "2130706433", is: ErrNonCanonicalIP},
		{name: "empty label", in: "a..b", mention: "empty label", is: ErrInvalidHost},
		{name: "bad character", in: "exa mple.com", mention: "not allowed", is: ErrInvalidHost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePattern(tt.in)
			if err == nil {
				t.Fatalf("ParsePattern(%q) = %v; want an error", tt.in, p)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("ParsePattern(%q) error %q does not mention %q", tt.in, err, tt.mention)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("ParsePattern(%q) error %q does not wrap %v", tt.in, err, tt.is)
			}
			if p != (Pattern{}) {
				t.Errorf("ParsePattern(%q) returned %v with its error", tt.in, p)
			}
		})
	}
}

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		pattern string
		host    string
		want    bool
	}{
		{"api.github.com", "api.github.com", true},
		{"api.github.com", "x.api.github.com", false},
		{"api.github.com", "github.com", false},
		{"api.github.com", "api.github.com.evil.example", false},

		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "a.b.c.d.e.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "badexample.com", false},
		{"*.example.com", "a.badexample.com", false},
		{"*.example.com", "example.com.evil.example", false},
		{"*.example.com", "com", false},
		{"*.example.com", ".example.com", false},

		{"203.0.113.7", "203.0.113.7", true},
		{"203.0.113.7", "203.0.113.8", false},
		{"203.0.113.7", "::ffff:203.0.113.7", true},
		{"203.0.113.7", "api.github.com", false},
		{"::ffff:203.0.113.7", "203.0.113.7", true},
		{"2001:db8::1", "2001:db8::1", true},
		{"2001:db8::1", "2001:db8::2", false},

		{"198.51.100.0/24", "198.51.100.0", true},
		{"198.51.100.0/24", "198.51.100.255", true},
		{"198.51.100.0/24", "198.51.101.0", false},
		{"198.51.100.0/24", "198.51.99.255", false},
		{"198.51.100.0/24", "::ffff:198.51.100.7", true},
		{"198.51.100.0/24", "::ffff:198.51.101.7", false},
		{"::ffff:198.51.100.0/120", "198.51.100.7", true},
		{"::ffff:198.51.100.0/120", "198.51.101.7", false},
		{"2001:db8::/32", "2001:db8:ffff::1", true},
		{"2001:db8::/32", "2001:db9::1", false},
		{"2001:db8::/32", "198.51.100.7", false},
		{"198.51.100.0/24", "fe80::1%eth0", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.host, func(t *testing.T) {
			p, err := ParsePattern(tt.pattern)
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Match(tt.host); got != tt.want {
				t.Errorf("ParsePattern(%q).Match(%q) = %v; want %v", tt.pattern, tt.host, got, tt.want)
			}
		})
	}
}

func TestZeroPatternMatchesNothing(t *testing.T) {
	var p Pattern
	for _, host := range []string{"", "example.com", "127.0.0.1", "::1"} {
		if p.Match(host) {
			t.Errorf("zero Pattern matches %q", host)
		}
	}
	if p.String() != "" || p.IsAddress() {
		t.Errorf("zero Pattern: String() = %q, IsAddress() = %v", p.String(), p.IsAddress())
	}
}

func FuzzParsePattern(f *testing.F) {
	for _, seed := range []string{
		"api.github.com", "*.example.com", "*.com", "*.github.io", "a.*.com", "*",
		"203.0.113.7", "198.51.100.0/24", "10.0.0.1/8", "2001:db8::/32", "::ffff:1.2.3.0/120",
		"*.bücher.example", "127.1", "https://x.example",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePattern(s)
		if err != nil {
			return
		}
		text := p.String()
		again, err := ParsePattern(text)
		if err != nil || again != p {
			t.Fatalf("ParsePattern(%q) = %q, which parses back as %v, %v", s, text, again, err)
		}
		if again.String() != text {
			t.Fatalf("ParsePattern(%q).String() = %q, then %q", s, text, again.String())
		}
		switch p.kind {
		case kindExact:
			if !p.Match(text) {
				t.Fatalf("exact pattern %q does not match itself", text)
			}
		case kindWildcard:
			if p.Match(p.host) {
				t.Fatalf("wildcard %q matches its apex", text)
			}
			if !p.Match("a." + p.host) {
				t.Fatalf("wildcard %q does not match a.%s", text, p.host)
			}
		case kindAddress:
			if !p.Match(p.prefix.Addr().String()) {
				t.Fatalf("address pattern %q does not match its own address", text)
			}
		}
	})
}
