package redaction

import (
	"strings"
	"testing"
	"time"
)

// Bodies of up to redaction.max_body_bytes come from the sandbox, so no
// input may make a detector rescan the same bytes again and again. Each
// case repeats a trigger that a careless detector would follow to the end
// of the text. Rather than a time bound, which a loaded machine breaks,
// the same input is redacted at two sizes: linear work takes about 4×
// as long on 4× the bytes, quadratic work 16×.
func TestAdversarialInputsStayLinear(t *testing.T) {
	if testing.Short() {
		t.Skip("takes a few seconds")
	}
	p := mustProfile(t, ProfileConfig{
		Detectors: DetectorNames(), JSONFields: []string{"password", "a.*.c"},
		Patterns: []Pattern{{Name: "loud", Regex: `[A-Z]{8,}`}},
	})
	rep := func(unit string) func(int) string {
		return func(size int) string { return strings.Repeat(unit, size/len(unit)) }
	}
	for _, c := range []struct {
		name, contentType string
		body              func(size int) string
	}{
		{"jwt starts inside a base64url run", "text/plain", rep("-eyJA")},
		{"chained jwt parts", "text/plain", rep("a.eyJhbGciOiJub25lIn0.")},
		{"github prefixes", "text/plain", rep("ghp_A")},
		{"long domain", "text/plain", func(n int) string { return "x@" + rep("a")(n) }},
		{"chained addresses", "text/plain", rep("a@a.aa")},
		{"cards glued by dashes", "text/plain", rep("4111111111111111-")},
		{"unmatched PEM ends", "text/plain", rep("-----BEGIN A PRIVATE KEY-----\n-----END B PRIVATE KEY-----\n")},
		{"markers next to matches", "text/plain", rep("[REDACTED:x]a@b.cc")},
		{"pattern matching inside markers", "text/plain", rep("ABCDEFGHIJ ")},
		{"phone openers", "text/plain", rep("+1 (")},
		{"long bearer token", "text/plain", func(n int) string { return "Bearer 1" + rep(".")(n) }},
		{"digit run after plus", "text/plain", func(n int) string { return "+" + rep("1")(n) }},
		{"escaped JSON string", "application/json", func(n int) string { return `"` + rep(`\u0040a`)(n) + `"` }},
		{"dense JSON matches", "application/json", func(n int) string { return `"` + rep(`a@b.cc `)(n) + `"` }},
		{"deep JSON, many times", "application/json", func(n int) string {
			return "[" + rep(strings.Repeat("[", 900)+strings.Repeat("]", 900)+",")(n) + "1]"
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			const small, large = 64 << 10, 256 << 10
			short, long := fastest(t, p, c.contentType, c.body(small)), fastest(t, p, c.contentType, c.body(large))
			// 4× the bytes: about 4× for linear work, 16× for quadratic.
			// The margin absorbs caches and a loaded machine; the slack,
			// timer granularity on the short run.
			if long > 10*short+10*time.Millisecond {
				t.Errorf("%d bytes took %v, %d bytes %v: %.1f× for 4× the bytes, more than linear",
					small, short, large, long, float64(long)/float64(short))
			}
		})
	}
}

// fastest is the shortest of three redactions of body: the one least
// disturbed by whatever else the machine runs.
func fastest(t *testing.T, p *Profile, contentType, body string) time.Duration {
	t.Helper()
	best := time.Duration(1<<63 - 1)
	for range 3 {
		start := time.Now()
		if _, _, err := p.Body(contentType, []byte(body)); err != nil {
			t.Fatal(err)
		}
		best = min(best, time.Since(start))
	}
	return best
}
