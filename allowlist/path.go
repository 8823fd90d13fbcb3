package allowlist

import (
	"net/url"
	"strings"
)

// PathAmbiguity says why a request path, as sent (percent-encoded), could
// be read by an upstream as another path than the one a paths prefix is
// compared with, or returns "" when it cannot. It is asked only where a
// rule names paths (see docs/admins.md, "Paths"): elsewhere every path of
// the host is allowed alike and no spelling matters.
//
//   - An encoded "/" or "\" (%2F, %5C), or a raw "\": some servers split
//     segments on them, others do not.
//   - A byte outside ASCII, raw or encoded: upstreams fold Unicode in ways
//     no single normalisation covers (NFKC reads "／ａdmin" as "/admin",
//     Windows' best-fit mappings go further), so such a path is refused
//     rather than matched in one folding and read in another.
//   - An encoded "%" before two hex digits ("%252e"): a server that
//     decodes twice reads "%2e" as ".".
//   - A segment ending in "." or a space, also encoded ("/admin./",
//     "/admin%20/"): Windows servers strip them.
//
// It does not allocate.
func PathAmbiguity(path string) string {
	last := byte('/') // the last decoded byte of the segment, before any ";"
	params := false   // the segment has reached its parameters
	for i := 0; i < len(path); i++ {
		c, encoded := path[i], false
		if c == '%' && i+2 < len(path) {
			if hi, lo := unhex(path[i+1]), unhex(path[i+2]); hi < 16 && lo < 16 {
				c, encoded = hi<<4|lo, true
				if c == '%' && i+4 < len(path) && unhex(path[i+3]) < 16 && unhex(path[i+4]) < 16 {
					return "it percent-encodes a percent-encoding (" + path[i:i+5] + "), which a server that decodes twice reads as another character"
				}
				i += 2
			}
		}
		switch {
		case c == '/' && !encoded:
			if last == '.' || last == ' ' {
				return "a segment ends in a dot or a space, which some servers strip"
			}
			last, params = '/', false
			continue
		case c == '/' || c == '\\':
			return `it has an encoded "/" or a "\", which servers read as a separator or not`
		case c >= 0x80:
			return "it has characters outside ASCII, which servers may fold into other ASCII paths"
		case c == ';' && !encoded:
			params = true
		}
		if !params {
			last = c
		}
	}
	if last == '.' || last == ' ' {
		return "a segment ends in a dot or a space, which some servers strip"
	}
	return ""
}

// serverPath is path as the most lenient server reads it before routing:
// percent-decoded, then with each segment's parameters removed. A deny
// prefix compared with it (ignoring case) catches "/%3Aadmin"-style
// spellings of what it names. Paths without "%" or ";" are returned as
// they are, without allocating.
func serverPath(path string) string {
	if strings.IndexByte(path, '%') >= 0 {
		if decoded, err := url.PathUnescape(path); err == nil {
			path = decoded
		}
	}
	if strings.IndexByte(path, ';') >= 0 {
		path = StripPathParams(path)
	}
	return path
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
