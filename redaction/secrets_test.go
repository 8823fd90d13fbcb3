package redaction

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

func mustScrubber(t testing.TB, secrets ...string) *SecretScrubber {
	t.Helper()
	values := make([][]byte, len(secrets))
	for i, s := range secrets {
		values[i] = []byte(s)
	}
	s, err := NewSecretScrubber(values)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// naiveScrub is the reference: leftmost occurrence first, longest at the
// same position.
func naiveScrub(b []byte, needles [][]byte) ([]byte, int) {
	var out []byte
	n := 0
	for i := 0; i < len(b); {
		best := -1
		for k, needle := range needles {
			if bytes.HasPrefix(b[i:], needle) && (best < 0 || len(needle) > len(needles[best])) {
				best = k
			}
		}
		if best < 0 {
			out = append(out, b[i])
			i++
			continue
		}
		out = append(out, SecretMask...)
		i += len(needles[best])
		n++
	}
	return out, n
}

func TestSecretScrubber(t *testing.T) {
	s := mustScrubber(t, "ghp_SECRETtoken123", "sk/live+key=1&2<3")
	for _, c := range []struct{ name, in, want string }{
		{"raw", "token ghp_SECRETtoken123 end", "token [REDACTED:secret] end"},
		{"twice, adjacent", "ghp_SECRETtoken123ghp_SECRETtoken123", "[REDACTED:secret][REDACTED:secret]"},
		{"json escaped as Go does", `{"k":"sk/live+key=1\u00262\u003c3"}`, `{"k":"[REDACTED:secret]"}`},
		{"php escaped", `{"k":"sk\/live+key=1&2<3"}`, `{"k":"[REDACTED:secret]"}`},
		{"query escaped", "?k=sk%2Flive%2Bkey%3D1%262%3C3", "?k=[REDACTED:secret]"},
		{"path escaped", "/sk%2Flive+key=1&2%3C3", "/[REDACTED:secret]"},
		{"prefix only", "ghp_SECRETtoken12", "ghp_SECRETtoken12"},
		{"nothing", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, n := s.Scrub([]byte(c.in))
			if string(out) != c.want {
				t.Errorf("Scrub(%q) = %q, want %q", c.in, out, c.want)
			}
			if n != strings.Count(c.want, SecretMask) {
				t.Errorf("count %d", n)
			}
			if str, _ := s.ScrubString(c.in); str != c.want {
				t.Errorf("ScrubString(%q) = %q", c.in, str)
			}
		})
	}
}

func TestSecretScrubberLongestFirst(t *testing.T) {
	s := mustScrubber(t, "abcdefgh", "abcdefghijkl")
	if out, _ := s.Scrub([]byte("xabcdefghijkly")); string(out) != "x"+SecretMask+"y" {
		t.Errorf("got %q", out)
	}
}

func TestSecretScrubberRejects(t *testing.T) {
	for _, c := range []struct {
		name   string
		values []string
		want   string
	}{
		{"short", []string{"long-enough-secret", "pass"}, "secret #1 is 4 bytes; secrets shorter than 8 bytes"},
		{"empty", []string{""}, "secret #0 is 0 bytes"},
		{"inside the mask", []string{"REDACTED"}, "occurs in the replacement text"},
	} {
		values := make([][]byte, len(c.values))
		for i, v := range c.values {
			values[i] = []byte(v)
		}
		_, err := NewSecretScrubber(values)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "long-enough") {
			t.Errorf("%s: the error repeats a secret", c.name)
		}
	}
}

func TestSecretScrubberNil(t *testing.T) {
	var s *SecretScrubber
	b := []byte("anything")
	if out, n := s.Scrub(b); n != 0 || &out[0] != &b[0] {
		t.Error("nil scrubber changed bytes")
	}
	if n := s.Headers(http.Header{"A": {"b"}}); n != 0 {
		t.Error("nil scrubber changed headers")
	}
	got, err := io.ReadAll(s.Reader(strings.NewReader("anything")))
	if err != nil || string(got) != "anything" {
		t.Errorf("nil scrubber reader: %q %v", got, err)
	}
	empty := mustScrubber(t)
	if out, n := empty.Scrub(b); n != 0 || string(out) != "anything" {
		t.Error("empty scrubber changed bytes")
	}
}

func TestSecretScrubberHeaders(t *testing.T) {
	s := mustScrubber(t, "ghp_SECRETtoken123")
	h := http.Header{"X-Echo": {"Bearer ghp_SECRETtoken123", "none"}}
	if n := s.Headers(h); n != 1 || h.Get("X-Echo") != "Bearer "+SecretMask {
		t.Errorf("%d %v", n, h)
	}
}

// scrubbersUnderTest covers both search strategies: one Index per form for
// a few secrets, the hashed prefix filter for many.
type namedScrubber struct {
	name string
	*SecretScrubber
}

func scrubbersUnderTest(t testing.TB) []namedScrubber {
	few := mustScrubber(t, "ghp_SECRETtoken123", "s3cr3t-value", "s3cr3t-value-longer")
	var many []string
	for i := range 20 {
		many = append(many, fmt.Sprintf("tok-%02d-secret", i))
	}
	many = append(many, "s3cr3t-value", "s3cr3t-value-longer", "aaaaaaaa")
	return []namedScrubber{{"few", few}, {"many", mustScrubber(t, many...)}}
}

func TestSecretScrubberMatchesReference(t *testing.T) {
	inputs := []string{
		"", "s3cr3t-valu", "s3cr3t-value", "s3cr3t-value-longer", "xs3cr3t-value-longerx",
		"s3cr3t-values3cr3t-value-longer tok-07-secret tok-19-secret",
		"aaaaaaaaaaaaaaaaaaa", "tok-00-secrettok-01-secret", strings.Repeat("tok-1", 100) + "tok-13-secret",
	}
	for _, s := range scrubbersUnderTest(t) {
		name := s.name
		if name == "many" && s.index == nil || name == "few" && s.index != nil {
			t.Fatalf("%s scrubber uses the wrong strategy", name)
		}
		for _, in := range inputs {
			want, wantN := naiveScrub([]byte(in), s.needles)
			got, n := s.Scrub([]byte(in))
			if !bytes.Equal(got, want) || n != wantN {
				t.Errorf("%s: Scrub(%q) = %q, %d; want %q, %d", name, in, got, n, want, wantN)
			}
		}
	}
}

func TestScrubReaderSplitsSecrets(t *testing.T) {
	// Secrets straddle every possible read boundary.
	var in strings.Builder
	for i := range 2000 {
		fmt.Fprintf(&in, "line %d s3cr3t-value-longer and tok-%02d-secret and s3cr3t-value|", i, i%20)
	}
	for _, s := range scrubbersUnderTest(t) {
		name := s.name
		want, wantN := s.Scrub([]byte(in.String()))
		for _, r := range []struct {
			name string
			wrap func(io.Reader) io.Reader
		}{
			{"whole", func(r io.Reader) io.Reader { return r }},
			{"one byte", iotest.OneByteReader},
			{"half", iotest.HalfReader},
			{"data and EOF", iotest.DataErrReader},
		} {
			z := s.Reader(r.wrap(strings.NewReader(in.String())))
			got, err := io.ReadAll(iotest.OneByteReader(z))
			if err != nil || !bytes.Equal(got, want) || z.Count() != wantN {
				t.Errorf("%s/%s: reader output differs from Scrub (len %d vs %d, count %d vs %d, %v)",
					name, r.name, len(got), len(want), z.Count(), wantN, err)
			}
		}
	}
}

func TestScrubReaderPassesErrors(t *testing.T) {
	s := mustScrubber(t, "s3cr3t-value")
	boom := fmt.Errorf("boom")
	z := s.Reader(io.MultiReader(strings.NewReader("abc s3cr3t-value"), iotest.ErrReader(boom)))
	got, err := io.ReadAll(z)
	if err != boom || string(got) != "abc "+SecretMask {
		t.Errorf("got %q, %v", got, err)
	}
}

// A reader fed tiny reads keeps one fixed buffer instead of growing it.
func TestScrubReaderMemoryBounded(t *testing.T) {
	s := mustScrubber(t, "s3cr3t-value")
	in := strings.Repeat("0123456789abcdef s3cr3t-value ", 8<<10) // 240 KiB
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n, err := io.Copy(io.Discard, s.Reader(iotest.OneByteReader(strings.NewReader(in))))
	runtime.ReadMemStats(&after)
	if err != nil || n == 0 {
		t.Fatal(n, err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<10 {
		t.Errorf("streaming %d bytes allocated %d bytes", len(in), alloc)
	}
}
