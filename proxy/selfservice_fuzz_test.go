package proxy

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/egressgw/egressgw/policy"
)

// FuzzParseFiling feeds a sandbox's access-request bodies to the parser:
// whatever it accepts names the filing tenant, a host in the form the
// gateway matches (never the self-service host), a real port, an
// upper-case method token, a path without query, and a bounded reason.
func FuzzParseFiling(f *testing.F) {
	// The seeds are in testdata/fuzz/FuzzParseFiling: good filings, odd
	// spellings of the self-service host and of addresses, unknown fields.
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseFiling(data, "acme", policy.DefaultSelfServiceHost)
		if err != nil {
			return
		}
		if s.Tenant != "acme" {
			t.Fatalf("tenant %q, want the caller's", s.Tenant)
		}
		host, port, err := policy.SplitTarget(s.Host, uint16(s.Port))
		if err != nil || host != s.Host || int(port) != s.Port || s.Port < 1 || s.Port > 65535 {
			t.Fatalf("host %q port %d are not in the gateway's form (%v)", s.Host, s.Port, err)
		}
		if s.Host == policy.DefaultSelfServiceHost {
			t.Fatalf("filed for the self-service host itself")
		}
		if !filedMethod.MatchString(s.Method) {
			t.Fatalf("method %q", s.Method)
		}
		if !strings.HasPrefix(s.Path, "/") || strings.ContainsAny(s.Path, "?#") {
			t.Fatalf("path %q", s.Path)
		}
		if len(s.Reason) > maxFiledReason || !utf8.ValidString(s.Reason) {
			t.Fatalf("reason of %d bytes, valid UTF-8 %v", len(s.Reason), utf8.ValidString(s.Reason))
		}
	})
}
