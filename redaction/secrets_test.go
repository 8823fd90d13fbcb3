package redaction

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"
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

// naiveScrub is the reference: at each position, the longest exact form or
// escaped echo (escapedAt) of a value; leftmost first.
func naiveScrub(b []byte, s *SecretScrubber) ([]byte, int) {
	var out []byte
	n := 0
	for i := 0; i < len(b); {
		end := -1
		for _, needle := range s.needles {
			if bytes.HasPrefix(b[i:], needle) {
				end = max(end, i+len(needle))
			}
		}
		for _, v := range s.values {
			end = max(end, escapedAt(b, i, v))
		}
		if end < 0 {
			out = append(out, b[i])
			i++
			continue
		}
		out = append(out, SecretMask...)
		i = end
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
	few := mustScrubber(t, "s3cr3t-value")
	several := mustScrubber(t, "ghp_SECRETtoken123", "s3cr3t-value", "s3cr3t-value-longer")
	var many []string
	for i := range 20 {
		many = append(many, fmt.Sprintf("tok-%02d-secret", i))
	}
	many = append(many, "s3cr3t-value", "s3cr3t-value-longer", "aaaaaaaa")
	return []namedScrubber{{"few", few}, {"several", several}, {"many", mustScrubber(t, many...)}}
}

func TestSecretScrubberMatchesReference(t *testing.T) {
	inputs := []string{
		"", "s3cr3t-valu", "s3cr3t-value", "s3cr3t-value-longer", "xs3cr3t-value-longerx",
		"s3cr3t-values3cr3t-value-longer tok-07-secret tok-19-secret",
		"aaaaaaaaaaaaaaaaaaa", "tok-00-secrettok-01-secret", strings.Repeat("tok-1", 100) + "tok-13-secret",
	}
	for _, s := range scrubbersUnderTest(t) {
		name := s.name
		for _, in := range inputs {
			want, wantN := naiveScrub([]byte(in), s.SecretScrubber)
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

// echoEncodings are the ways an upstream echoes a value it was sent.
var echoEncodings = []struct {
	name   string
	encode func(v []byte) []byte
}{
	{"plain", func(v []byte) []byte { return v }},
	{"upper", func(v []byte) []byte { return bytes.ToUpper(v) }},
	{"lower", func(v []byte) []byte { return bytes.ToLower(v) }},
	{"hex", func(v []byte) []byte { return []byte(hex.EncodeToString(v)) }},
	{"HEX", func(v []byte) []byte { return []byte(strings.ToUpper(hex.EncodeToString(v))) }},
	{"base64", func(v []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(v)) }},
	{"base64 raw", func(v []byte) []byte { return []byte(base64.RawStdEncoding.EncodeToString(v)) }},
	{"base64url", func(v []byte) []byte { return []byte(base64.URLEncoding.EncodeToString(v)) }},
	{"base64url raw", func(v []byte) []byte { return []byte(base64.RawURLEncoding.EncodeToString(v)) }},
	{"base64 after 1 byte", func(v []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(append([]byte("x"), v...))) }},
	{"base64 after 2 bytes", func(v []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(append([]byte("xy"), v...))) }},
	{"base64url after 1 byte, unpadded", func(v []byte) []byte {
		return []byte(base64.RawURLEncoding.EncodeToString(append([]byte("{"), v...)))
	}},
	{"query", func(v []byte) []byte { return []byte(url.QueryEscape(string(v))) }},
	{"percent, every byte", func(v []byte) []byte { return percentAll(v, "%%%02X") }},
	{"percent, every byte, lower", func(v []byte) []byte { return percentAll(v, "%%%02x") }},
	{"json", func(v []byte) []byte { b, _ := json.Marshal(string(v)); return b[1 : len(b)-1] }},
	{"json, every character", func(v []byte) []byte { return percentAll(v, `\u%04x`) }},
	{"json, every character, upper hex", func(v []byte) []byte { return percentAll(v, `\u%04X`) }},
	{"json, every other character", func(v []byte) []byte {
		var out []byte
		for i, c := range v {
			if i%2 == 0 {
				out = fmt.Appendf(out, `\u%04x`, c)
			} else {
				out = append(out, c)
			}
		}
		return out
	}},
	{"json, slashes escaped", func(v []byte) []byte { return bytes.ReplaceAll(v, []byte("/"), []byte(`\/`)) }},
}

func percentAll(v []byte, format string) []byte {
	var out []byte
	for _, c := range v {
		out = fmt.Appendf(out, format, c)
	}
	return out
}

// recoverable reports whether the middle of secret (all but two bytes at
// either end, which an encoding's edges may leave) can be read back from
// out by any decoding an echo uses: as it is, in any case, hex, base64 at
// every alignment in either alphabet, percent- or JSON-decoded.
func recoverable(out, secret []byte) bool {
	mid := bytes.ToLower(secret[2 : len(secret)-2])
	var readings [][]byte
	readings = append(readings, out)
	if s, err := url.PathUnescape(string(out)); err == nil {
		readings = append(readings, []byte(s))
	}
	if s, err := url.QueryUnescape(string(out)); err == nil {
		readings = append(readings, []byte(s))
	}
	readings = append(readings, jsonUnescapeLenient(out))
	for _, run := range alphabetRuns(out, "0123456789abcdefABCDEF") {
		for off := range 2 {
			if len(run) > off {
				d, _ := hex.DecodeString(string(run[off : off+(len(run)-off)/2*2]))
				readings = append(readings, d)
			}
		}
	}
	for _, alphabet := range []string{"+/", "-_"} {
		enc := base64.StdEncoding
		if alphabet == "-_" {
			enc = base64.URLEncoding
		}
		for _, run := range alphabetRuns(out, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"+alphabet) {
			for off := range 4 {
				if len(run)-off >= 4 {
					part := run[off : off+(len(run)-off)/4*4]
					d := make([]byte, enc.DecodedLen(len(part)))
					n, _ := enc.Decode(d, part)
					readings = append(readings, d[:n])
				}
			}
		}
	}
	for _, r := range readings {
		if bytes.Contains(bytes.ToLower(r), mid) {
			return true
		}
	}
	return false
}

func alphabetRuns(b []byte, alphabet string) [][]byte {
	var runs [][]byte
	start := -1
	for i := 0; i <= len(b); i++ {
		in := i < len(b) && strings.IndexByte(alphabet, b[i]) >= 0
		if in && start < 0 {
			start = i
		}
		if !in && start >= 0 {
			runs = append(runs, b[start:i])
			start = -1
		}
	}
	return runs
}

// jsonUnescapeLenient decodes the JSON string escapes it finds and keeps
// every other byte.
func jsonUnescapeLenient(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+1 < len(b) {
			if b[i+1] == 'u' && i+6 <= len(b) {
				if n, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 16); err == nil {
					out = utf8.AppendRune(out, rune(n))
					i += 5
					continue
				}
			}
			if c := jsonShortEscape(b[i+1]); c != 0 {
				out = append(out, c)
				i++
				continue
			}
		}
		out = append(out, b[i])
	}
	return out
}

// TestSecretScrubberEncodings: an upstream that echoes the injected header
// value in any common encoding gives nothing of the secret back, whole or
// streamed in small reads.
func TestSecretScrubberEncodings(t *testing.T) {
	const secret = "s3cr3t-injected-4f1e9a7c0b2d"
	s := mustScrubber(t, secret, "sk/live+key=1&2<3 ok")
	for _, value := range []string{"Bearer " + secret, secret, "token=" + secret + "&x=1", "sk/live+key=1&2<3 ok"} {
		for _, e := range echoEncodings {
			echo := e.encode([]byte(value))
			in := append(append([]byte(`{"echo":"`), echo...), `","n":1}`...)
			if !recoverable(in, []byte(secret)) && !recoverable(in, []byte("sk/live+key=1&2<3 ok")) {
				t.Fatalf("%s of %q: the oracle cannot read the secret back from %q", e.name, value, in)
			}
			out, n := s.Scrub(in)
			streamed, err := io.ReadAll(s.Reader(&chunkReader{data: in, size: 3}))
			if err != nil {
				t.Fatal(err)
			}
			for _, got := range [][]byte{out, streamed} {
				if n == 0 || recoverable(got, []byte(secret)) || recoverable(got, []byte("sk/live+key=1&2<3 ok")) {
					t.Errorf("%s of %q: %q scrubbed to %q (%d replaced)", e.name, value, in, got, n)
				}
			}
			if !bytes.Equal(out, streamed) {
				t.Errorf("%s of %q: streamed %q, whole %q", e.name, value, streamed, out)
			}
		}
	}
}
