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
// different path than the one matched: dot segments ("/v1/../admin"),
// also percent-encoded or with backslash separators, which some servers
// treat as "/". Such a path could slip past a paths prefix.
func CheckPath(escapedPath string) error {
	if !strings.ContainsAny(escapedPath, ".%\\") {
		return nil // no dot, escape or backslash: no dot segment, as written or decoded
	}
	lower := strings.ToLower(escapedPath)
	for _, sep := range []string{"%2f", "%5c", "\\"} {
		lower = strings.ReplaceAll(lower, sep, "/")
	}
	lower = strings.ReplaceAll(lower, "%2e", ".")
	for _, segment := range strings.Split(lower, "/") {
		if segment == "." || segment == ".." {
			return fmt.Errorf("%w: the path has a dot segment (%q); send the resolved path", ErrBadTarget, escapedPath)
		}
	}
	return nil
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
