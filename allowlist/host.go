package allowlist

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// ErrInvalidHost is returned for a host that is not a usable host name or IP
// literal. The wrapping error says what is wrong with it.
var ErrInvalidHost = errors.New("invalid host")

// ErrNonCanonicalIP is returned for a host that some clients or resolvers read
// as an IPv4 address but that is not written as canonical dotted decimal, such
// as "127.1", "0x7f000001" or "2130706433". Such spellings are ambiguous: the
// gateway might match a rule against one reading while a resolver dials
// another, so they are refused instead of guessed at.
var ErrNonCanonicalIP = errors.New("non-canonical IP literal")

const (
	// maxHostLength is the longest DNS name in text form, without the root dot.
	maxHostLength = 253
	// maxLabelLength is the longest DNS label.
	maxLabelLength = 63
	// maxInputLength bounds the work done on one input. It is larger than
	// maxHostLength because IDNA mapping may shrink a name (some code points
	// are ignored); anything longer is refused before it is mapped.
	maxInputLength = 1024
)

// hostProfile converts internationalised names for lookup as UTS #46 and
// idna.Lookup do (non-transitional mapping, bidi and joiner rules, A-labels
// validated), with two relaxations that match what browsers and HTTP clients
// accept in practice: underscores are allowed (some APIs use them in host
// names) and hyphens may appear anywhere in a label (as in "r3---sn-x"). The
// ASCII characters it lets through are checked by validateLabels afterwards.
var hostProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.CheckHyphens(false),
)

// NormalizeHost returns the canonical form of a request host, given without a
// port and without the brackets around an IPv6 address, or an error wrapping
// [ErrInvalidHost] or [ErrNonCanonicalIP].
//
// A host name is lowercased, one trailing dot is removed and an
// internationalised name is converted to punycode ("bücher.example" becomes
// "xn--bcher-kva.example"). The result holds only letters a-z, digits, '-',
// '_' and dots, is at most 253 characters long and has labels of 1 to 63
// characters. Underscores are accepted because real service names use them.
//
// An IPv6 literal may be written in any valid form and is returned as
// [netip.Addr.String] gives it; an IPv4-mapped address stays in IPv6 form
// ("::ffff:192.0.2.1"). Zones ("fe80::1%eth0") are refused.
//
// A host whose last label is numeric (decimal digits, or "0x" followed by hex
// digits or nothing) is an IPv4 address attempt, as browsers and inet_aton
// read it, and must be exactly four decimal numbers 0-255 without leading
// zeros; anything else ("127.1", "0177.0.0.1", "2130706433", "1.2.3.4.5")
// fails with [ErrNonCanonicalIP]. This includes "127.0.0.1." with a trailing
// dot: an IP literal has no root label, so only the exact canonical text is
// accepted, as written.
func NormalizeHost(host string) (string, error) {
	switch {
	case host == "":
		return "", fmt.Errorf("%w: empty host", ErrInvalidHost)
	case len(host) > maxInputLength:
		return "", fmt.Errorf("%w: host of %d bytes is longer than %d characters", ErrInvalidHost, len(host), maxHostLength)
	}
	if strings.IndexByte(host, ':') >= 0 {
		return normalizeIPv6(host)
	}

	name := host
	if isASCII(host) {
		// strings.ToLower returns its argument unchanged, without copying,
		// when there is nothing to lower.
		name = strings.ToLower(host)
	}
	if needsIDNA(name) {
		if !utf8.ValidString(host) {
			// IDNA would turn invalid bytes into U+FFFD and encode that.
			return "", fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidHost, host)
		}
		ascii, err := hostProfile.ToASCII(host)
		if err == nil {
			// The A-label form must itself be valid: a name whose
			// punycode does not decode back under the same rules (as
			// "ℶκ" mapped to Hebrew and Greek in one label) would be a
			// host no later normalisation accepts.
			_, err = hostProfile.ToASCII(ascii)
		}
		if err != nil {
			return "", fmt.Errorf("%w: %q is not a valid internationalised host name: %v", ErrInvalidHost, host, err)
		}
		name = ascii
	}

	if name == "" {
		// Every rune of the input was one that IDNA ignores.
		return "", fmt.Errorf("%w: %q is empty once mapped", ErrInvalidHost, host)
	}
	if name[0] == '.' {
		return "", fmt.Errorf("%w: %q starts with a dot", ErrInvalidHost, host)
	}
	trimmed := strings.TrimSuffix(name, ".")
	if strings.HasSuffix(trimmed, ".") {
		return "", fmt.Errorf("%w: %q ends with more than one dot", ErrInvalidHost, host)
	}

	if lastLabelIsNumeric(trimmed) {
		return canonicalIPv4(host, name)
	}
	if err := validateLabels(trimmed); err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrInvalidHost, host, err)
	}
	return trimmed, nil
}

// normalizeIPv6 handles a host containing a colon, which can only be an IPv6
// literal.
func normalizeIPv6(host string) (string, error) {
	if strings.IndexByte(host, '%') >= 0 {
		return "", fmt.Errorf("%w: %q has an IPv6 zone; zones are not allowed in a destination", ErrInvalidHost, host)
	}
	if strings.HasPrefix(host, "[") {
		return "", fmt.Errorf("%w: %q: give the IPv6 address without brackets and without a port", ErrInvalidHost, host)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || !addr.Is6() {
		return "", fmt.Errorf("%w: %q is neither a host name nor an IPv6 address (a host takes no port)", ErrInvalidHost, host)
	}
	if isCanonicalText(addr, host) {
		return host, nil
	}
	return addr.String(), nil
}

// isCanonicalText reports whether text is exactly addr.String(), without
// allocating that string.
func isCanonicalText(addr netip.Addr, text string) bool {
	var buf [len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")]byte
	return string(addr.AppendTo(buf[:0])) == text
}

// canonicalIPv4 accepts host only when it is written exactly as the canonical
// dotted-decimal form of an IPv4 address. mapped is host after lowercasing and
// IDNA mapping; it names the address in the error.
func canonicalIPv4(host, mapped string) (string, error) {
	if addr, err := netip.ParseAddr(host); err == nil && addr.Is4() && isCanonicalText(addr, host) {
		return host, nil
	}
	if addr, ok := parseLooseIPv4(mapped); ok {
		return "", fmt.Errorf("%w: %q is read as the IPv4 address %s by some clients and resolvers; if that address is meant, write it as %s", ErrNonCanonicalIP, host, addr, addr)
	}
	return "", fmt.Errorf("%w: %q ends in a number, so it is read as an IPv4 address, but it is not four decimal numbers 0-255 without leading zeros", ErrNonCanonicalIP, host)
}

// parseLooseIPv4 reads s the way the WHATWG URL standard's IPv4 parser (and,
// for the forms it accepts, inet_aton) does: one to four parts separated by
// dots with an optional trailing dot, each part decimal, octal (leading 0) or
// hexadecimal (leading 0x), the last part filling the remaining bytes. It is
// used only to tell a user which address an ambiguous host stands for.
func parseLooseIPv4(s string) (netip.Addr, bool) {
	s = strings.TrimSuffix(s, ".")
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	numbers := make([]uint64, len(parts))
	for i, part := range parts {
		n, ok := parseLooseIPv4Part(part)
		if !ok {
			return netip.Addr{}, false
		}
		numbers[i] = n
	}
	last := len(numbers) - 1
	for _, n := range numbers[:last] {
		if n > 255 {
			return netip.Addr{}, false
		}
	}
	if numbers[last] >= 1<<(8*(5-len(numbers))) {
		return netip.Addr{}, false
	}
	value := numbers[last]
	for i, n := range numbers[:last] {
		value += n << (8 * (3 - i))
	}
	return netip.AddrFrom4([4]byte{byte(value >> 24), byte(value >> 16), byte(value >> 8), byte(value)}), true
}

// parseLooseIPv4Part parses one part of a loose IPv4 address.
func parseLooseIPv4Part(part string) (uint64, bool) {
	base := 10
	switch {
	case len(part) >= 2 && (part[:2] == "0x" || part[:2] == "0X"):
		part, base = part[2:], 16
		if part == "" {
			return 0, true
		}
	case len(part) >= 2 && part[0] == '0':
		part, base = part[1:], 8
	}
	if part == "" || part[0] == '+' || part[0] == '-' {
		return 0, false
	}
	n, err := strconv.ParseUint(part, base, 64)
	if err != nil || n > 0xffffffff {
		return 0, false
	}
	return n, true
}

// lastLabelIsNumeric reports whether the last label of name is all decimal
// digits, or "0x" followed by hex digits or nothing: the test browsers use to
// decide that a host is an IPv4 address. name is lowercase ASCII.
func lastLabelIsNumeric(name string) bool {
	label := name[strings.LastIndexByte(name, '.')+1:]
	if label == "" {
		return false
	}
	if strings.HasPrefix(label, "0x") {
		for i := 2; i < len(label); i++ {
			if !isHexDigit(label[i]) {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(label); i++ {
		if !isDigit(label[i]) {
			return false
		}
	}
	return true
}

// validateLabels checks the length and characters of a lowercase ASCII host
// name without a trailing dot.
func validateLabels(name string) error {
	if len(name) > maxHostLength {
		return fmt.Errorf("longer than %d characters", maxHostLength)
	}
	labelStart := 0
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '.' {
			if c := name[i]; !isHostNameByte(c) {
				return fmt.Errorf("character %q is not allowed in a host name", c)
			}
			continue
		}
		switch n := i - labelStart; {
		case n == 0:
			return errors.New("empty label")
		case n > maxLabelLength:
			return fmt.Errorf("label %q is longer than %d characters", name[labelStart:i], maxLabelLength)
		}
		labelStart = i + 1
	}
	return nil
}

// needsIDNA reports whether s must go through IDNA processing: it holds
// non-ASCII characters, or an A-label ("xn--") that must be validated. s is
// lowercased if it is ASCII.
func needsIDNA(s string) bool {
	if !isASCII(s) {
		return true
	}
	return strings.HasPrefix(s, "xn--") || strings.Contains(s, ".xn--")
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func isHostNameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || isDigit(c) || c == '-' || c == '_'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHexDigit(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'f' }
