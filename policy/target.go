package policy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/redaction"
)

// ErrBadTarget marks a request target that is malformed or ambiguous
// (docs/reference.md, "What clients see" bad_request).
var ErrBadTarget = errors.New("bad request target")

// SchemePort is the port a URL of scheme names when it names none: 80 for
// http, 443 for https; ok is false for any other scheme.
func SchemePort(scheme string) (port uint16, ok bool) {
	switch scheme {
	case "http":
		return 80, true
	case "https":
		return 443, true
	}
	return 0, false
}

// SplitTarget splits and normalises an authority such as "Example.COM:8080"
// or "[::1]:443"; defaultPort is used when none is given.
func SplitTarget(authority string, defaultPort uint16) (string, uint16, error) {
	host, portText := authority, ""
	if h, p, err := net.SplitHostPort(authority); err == nil {
		host, portText = h, p
	} else if strings.HasPrefix(authority, "[") && strings.HasSuffix(authority, "]") {
		host = authority[1 : len(authority)-1]
	}
	port := defaultPort
	if portText != "" {
		n, err := strconv.ParseUint(portText, 10, 16)
		if err != nil || n == 0 || portText[0] == '0' {
			return "", 0, fmt.Errorf("%w: invalid port %q", ErrBadTarget, portText)
		}
		port = uint16(n)
	}
	if port == 0 {
		return "", 0, fmt.Errorf("%w: %q has no port", ErrBadTarget, authority)
	}
	normal, err := allowlist.NormalizeHost(host)
	if err != nil {
		return "", 0, fmt.Errorf("%w: host %q: %w", ErrBadTarget, host, err)
	}
	return normal, port, nil
}

// CheckPath refuses a request path that an upstream could resolve to a
// different path than the one matched, since such a path could slip past a
// paths prefix (a deny rule's above all), or that cannot be decoded into
// one path at all (docs/admins.md, "Paths"):
//   - dot segments ("/v1/../admin"), also percent-encoded, with backslash
//     separators, which some servers treat as "/", or with path parameters
//     ("/..;/admin"), which some servers strip;
//   - empty segments ("//admin"), which many servers merge;
//   - percent-encoded characters that need no encoding ("/%61dmin"), which
//     every server decodes;
//   - a "%" that starts no escape ("%zz", IIS's "%u002e"), which servers
//     read in different ways;
//   - bytes that decode to no UTF-8 ("%C0%AE", an overlong "."; surrogates;
//     cut-off sequences), which lenient decoders read as other characters;
//   - control characters, raw or encoded ("%00", "%09"), and raw spaces,
//     "?" or "#", which a path on the wire never holds.
//
// Spellings that only matter where a rule names paths (an encoded "/",
// characters outside ASCII) are the allowlist's: allowlist.PathAmbiguity.
// A clean path is checked without allocating.
func CheckPath(escapedPath string) error {
	if strings.Contains(escapedPath, "//") {
		return fmt.Errorf("%w: the path has an empty segment (%q); send it without the doubled slash", ErrBadTarget, escapedPath)
	}
	if !needsDecoding(escapedPath) {
		return nil // no dot, escape, backslash or odd byte: nothing more to resolve
	}
	if why := undecodable(escapedPath); why != "" {
		// The path is not quoted: it may hold what a hook meant as a query.
		return fmt.Errorf("%w: the path %s", ErrBadTarget, why)
	}
	if c, ok := encodedUnreserved(escapedPath); ok {
		return fmt.Errorf("%w: the path percent-encodes %q, which needs no encoding (%q); send it as is", ErrBadTarget, string(rune(c)), escapedPath)
	}
	lower := strings.ToLower(escapedPath)
	for _, sep := range []string{"%2f", "%5c", "\\"} {
		lower = strings.ReplaceAll(lower, sep, "/")
	}
	if strings.Contains(lower, "//") {
		return fmt.Errorf("%w: the path has an empty segment once its encoded or backslash separators are read as slashes (%q)", ErrBadTarget, escapedPath)
	}
	// A server that decodes before it splits off path parameters reads
	// ".%3B" as the dot segment ".;".
	lower = strings.ReplaceAll(strings.ReplaceAll(lower, "%2e", "."), "%3b", ";")
	for rest, more := lower, true; more; {
		var segment string
		segment, rest, more = strings.Cut(rest, "/")
		segment, _, _ = strings.Cut(segment, ";")
		if segment == "." || segment == ".." {
			return fmt.Errorf("%w: the path has a dot segment (%q); send the resolved path", ErrBadTarget, escapedPath)
		}
	}
	return nil
}

// needsDecoding reports whether path holds anything but the bytes of a
// plain path: visible ASCII other than ".", "%", "\\", "?" and "#".
func needsDecoding(path string) bool {
	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c <= ' ' || c >= 0x7f, c == '.', c == '%', c == '\\', c == '?', c == '#':
			return true
		}
	}
	return false
}

// undecodable says why path cannot be decoded into one path, or returns
// "" when it can (see CheckPath).
func undecodable(path string) string {
	for i := 0; i < len(path); {
		c, next, ok := decodedByte(path, i)
		switch {
		case !ok:
			return `has a "%" that starts no percent-encoding; encode a literal "%" as %25`
		case c < ' ' || c == 0x7f:
			return "holds a control character; percent-encoded or not, a path cannot carry one"
		case next == i+1 && (c == ' ' || c == '?' || c == '#'):
			return `holds a raw space, "?" or "#"; a path carries them percent-encoded`
		case c >= 0x80:
			n := utf8Length(c)
			var buf [utf8.UTFMax]byte
			k := 0
			for j := i; k < n && j < len(path); k++ {
				buf[k], j, ok = decodedByte(path, j)
				if !ok {
					return `has a "%" that starts no percent-encoding; encode a literal "%" as %25`
				}
				next = j
			}
			if r, size := utf8.DecodeRune(buf[:k]); n == 0 || k < n || size != n || r == utf8.RuneError && size == 1 {
				return "holds bytes that are not UTF-8 once percent-decoded (an overlong or cut-off sequence, or a surrogate), which servers decode in different ways"
			}
		}
		i = next
	}
	return ""
}

// decodedByte is the byte at path[i], percent-decoded, and where the next
// one starts; ok is false for a "%" that starts no escape.
func decodedByte(path string, i int) (c byte, next int, ok bool) {
	if path[i] != '%' {
		return path[i], i + 1, true
	}
	if i+2 >= len(path) {
		return 0, 0, false
	}
	hi, lo := unhex(path[i+1]), unhex(path[i+2])
	if hi > 15 || lo > 15 {
		return 0, 0, false
	}
	return hi<<4 | lo, i + 3, true
}

// utf8Length is the length of the UTF-8 sequence lead starts, 0 if it
// starts none (a continuation byte, or one no valid sequence begins with).
func utf8Length(lead byte) int {
	switch {
	case lead >= 0xC2 && lead <= 0xDF:
		return 2
	case lead >= 0xE0 && lead <= 0xEF:
		return 3
	case lead >= 0xF0 && lead <= 0xF4:
		return 4
	}
	return 0
}

// encodedUnreserved finds a percent-encoded unreserved character (RFC 3986
// §2.3: letters, digits, "-", "_", "~"; "." is a dot-segment matter).
func encodedUnreserved(path string) (byte, bool) {
	for i := strings.IndexByte(path, '%'); i >= 0 && i+2 < len(path); {
		hi, lo := unhex(path[i+1]), unhex(path[i+2])
		if hi < 16 && lo < 16 {
			c := hi<<4 | lo
			if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '~' {
				return c, true
			}
		}
		next := strings.IndexByte(path[i+1:], '%')
		if next < 0 {
			break
		}
		i += 1 + next
	}
	return 0, false
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10
	}
	return 255
}

// requestsForURL builds the requests a client makes for rawURL: for an http
// URL, the plain request, read in full; for an https URL, the CONNECT,
// decided on host and port alone, and the request sent inside the tunnel,
// as an inspected tunnel decides it (TLS set; its path is checked only if
// it is decided).
func requestsForURL(method, rawURL string) (outer, inner Request, err error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// The trace goes back to whoever asked, and to logs: no query.
		return Request{}, Request{}, fmt.Errorf("%w: %s", ErrBadTarget, redaction.ErrorForMessage(err))
	}
	defaultPort, ok := SchemePort(u.Scheme)
	if !ok {
		return Request{}, Request{}, fmt.Errorf("%w: want an http:// or https:// URL, got %q", ErrBadTarget, redaction.URLForMessage(rawURL))
	}
	host, port, err := SplitTarget(u.Host, defaultPort)
	if err != nil {
		return Request{}, Request{}, err
	}
	r := Request{Host: host, Port: port, Method: strings.ToUpper(method), Path: u.EscapedPath()}
	if r.Method == "" {
		r.Method = "GET"
	}
	if r.Path == "" {
		r.Path = "/"
	}
	if u.Scheme == "https" {
		inner = r
		inner.TLS = true
		return Request{Host: host, Port: port, Tunnel: true}, inner, nil
	}
	if err := CheckPath(r.Path); err != nil {
		return Request{}, Request{}, err
	}
	return r, Request{}, nil
}
