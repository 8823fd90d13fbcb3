package redaction

import (
	"strings"
	"testing"
	"time"
)

// Bodies of up to redaction.max_body_bytes come from the sandbox, so no
// input may make a detector rescan the same bytes again and again. Each
// case repeats a trigger that a careless detector would follow to the end
// of the text; quadratic work on 256 KiB takes tens of seconds, linear
// work milliseconds.
func TestAdversarialInputsStayLinear(t *testing.T) {
	if testing.Short() {
		t.Skip("takes a few seconds")
	}
	p := mustProfile(t, ProfileConfig{
		Detectors: DetectorNames(), JSONFields: []string{"password", "a.*.c"},
		Patterns: []Pattern{{Name: "loud", Regex: `[A-Z]{8,}`}},
	})
	const size = 256 << 10
	rep := func(unit string) string { return strings.Repeat(unit, size/len(unit)) }
	for _, c := range []struct{ name, contentType, body string }{
		{"jwt starts inside a base64url run", "text/plain", rep("-eyJA")},
		{"chained jwt parts", "text/plain", rep("a.eyJhbGciOiJub25lIn0.")},
		{"github prefixes", "text/plain", rep("ghp_A")},
		{"long domain", "text/plain", "x@" + rep("a")},
		{"chained addresses", "text/plain", rep("a@a.aa")},
		{"cards glued by dashes", "text/plain", rep("4111111111111111-")},
		{"unmatched PEM ends", "text/plain", rep("-----BEGIN A PRIVATE KEY-----\n-----END B PRIVATE KEY-----\n")},
		{"markers next to matches", "text/plain", rep("[REDACTED:x]a@b.cc")},
		{"pattern matching inside markers", "text/plain", rep("ABCDEFGHIJ ")},
		{"phone openers", "text/plain", rep("+1 (")},
		{"long bearer token", "text/plain", "Bearer 1" + rep(".")},
		{"digit run after plus", "text/plain", "+" + rep("1")},
		{"escaped JSON string", "application/json", `"` + rep(`\u0040a`) + `"`},
		{"dense JSON matches", "application/json", `"` + rep(`a@b.cc `) + `"`},
		{"deep JSON, many times", "application/json", "[" + strings.Repeat(strings.Repeat("[", 900)+strings.Repeat("]", 900)+",", 100) + "1]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			if _, _, err := p.Body(c.contentType, []byte(c.body)); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("%d bytes took %v", len(c.body), took)
			}
		})
	}
}
