package policy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/egressgw/egressgw/allowlist"
)

// ErrBadTarget marks a request target that is malformed or ambiguous
// (SPEC §3 bad_request).
var ErrBadTarget = errors.New("bad request target")

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
// paths prefix (a deny rule's above all):
//   - dot segments ("/v1/../admin"), also percent-encoded, with backslash
//     separators, which some servers treat as "/", or with path parameters
//     ("/..;/admin"), which some servers strip;
//   - empty segments ("//admin"), which many servers merge;
//   - percent-encoded characters that need no encoding ("/%61dmin"), which
//     every server decodes.
func CheckPath(escapedPath string) error {
	if strings.Contains(escapedPath, "//") {
		return fmt.Errorf("%w: the path has an empty segment (%q); send it without the doubled slash", ErrBadTarget, escapedPath)
	}
	if !strings.ContainsAny(escapedPath, ".%\\") {
		return nil // no dot, escape or backslash: nothing more to resolve
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
	lower = strings.ReplaceAll(lower, "%2e", ".")
	for _, segment := range strings.Split(lower, "/") {
		segment, _, _ = strings.Cut(segment, ";")
		if segment == "." || segment == ".." {
			return fmt.Errorf("%w: the path has a dot segment (%q); send the resolved path", ErrBadTarget, escapedPath)
		}
	}
	return nil
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
		return Request{}, Request{}, fmt.Errorf("%w: %v", ErrBadTarget, err)
	}
	var defaultPort uint16
	switch u.Scheme {
	case "http":
		defaultPort = 80
	case "https":
		defaultPort = 443
	default:
		return Request{}, Request{}, fmt.Errorf("%w: want an http:// or https:// URL, got %q", ErrBadTarget, rawURL)
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
