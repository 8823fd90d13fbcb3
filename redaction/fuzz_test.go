package redaction

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// fuzzProfiles has every detector, two custom patterns (one of which also
// matches inside masks, "REDACTED"), field paths, headers and parameters,
// once per action.
func fuzzProfiles(t testing.TB) [3]*Profile {
	var ps [3]*Profile
	for i, action := range []string{"mask", "hash", "drop"} {
		ps[i] = mustProfile(t, ProfileConfig{
			Name:        action,
			Detectors:   DetectorNames(),
			Patterns:    []Pattern{{Name: "shout", Regex: `[A-Z]{8,}`}, {Name: "ticket", Regex: `TCK-[0-9]{6}`}},
			JSONFields:  []string{"password", "*.ssn", "user.date_of_birth", "a.*.c"},
			QueryParams: []string{"token"},
			Action:      action,
		})
	}
	return ps
}

var jsonSeeds = []string{
	`{"user":{"email":"jane@example.com","date_of_birth":"1990-01-01","ssn":"123-45-6789"},"password":"x"}`,
	`[{"card":"4111 1111 1111 1111"},{"phone":"+1 415 555 2671"},null,true,1.5e3]`,
	`{"a":{"b":{"c":[1,{"c":2}]}},"p":"\u0040\"\\\/\n","s":"a\u0040b.com"}`,
	`{"password":"x","password":{"a":1},"b":[],"c":{}}`,
	`"Bearer abc123def456ghi789 AKIAIOSFODNN7EXAMPLE"`,
	`{"k":"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"}`,
	`{"t":"eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. DE89370400440532013000 TCK-123456 ABCDEFGHIJ"}`,
	`{"x":"[REDACTED:email] hmac:0123456789abcdef 4111111111111111-123-45-6789"}`,
	`{"bad":`, `[1,]`, `{"\ud800":"\udc00"}`,
}

// jsonDepth is the deepest nesting of objects and arrays in valid JSON.
func jsonDepth(b []byte) int {
	depth, deepest, inString := 0, 0, false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case inString:
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}

// sameShape checks that out has in's structure: the same keys and array
// lengths, and every value either unchanged or replaced by a marker (in a
// string: containing one). drop may remove members.
func sameShape(in, out any, drop bool) error {
	if s, ok := out.(string); ok && isMarker([]byte(s)) {
		return nil
	}
	switch a := in.(type) {
	case map[string]any:
		b, ok := out.(map[string]any)
		if !ok {
			return fmt.Errorf("object became %T", out)
		}
		for k, v := range a {
			w, ok := b[k]
			if !ok {
				if drop {
					continue
				}
				return fmt.Errorf("key %q disappeared", k)
			}
			if err := sameShape(v, w, drop); err != nil {
				return fmt.Errorf("%q: %w", k, err)
			}
		}
		if len(b) > len(a) {
			return fmt.Errorf("keys appeared")
		}
	case []any:
		b, ok := out.([]any)
		if !ok || len(a) != len(b) {
			return fmt.Errorf("array became %T of another length", out)
		}
		for i := range a {
			if err := sameShape(a[i], b[i], drop); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
	case string:
		b, ok := out.(string)
		if !ok || (a != b && !strings.Contains(b, maskPrefix) && !strings.Contains(b, hashPrefix)) {
			return fmt.Errorf("string changed without a marker")
		}
	default:
		if fmt.Sprint(in) != fmt.Sprint(out) {
			return fmt.Errorf("%v became %v", in, out)
		}
	}
	return nil
}

func FuzzRedactJSON(f *testing.F) {
	for _, s := range jsonSeeds {
		for action := range uint8(3) {
			f.Add([]byte(s), action)
		}
	}
	profiles := fuzzProfiles(f)
	f.Fuzz(func(t *testing.T, data []byte, action uint8) {
		if len(data) == 0 {
			return // an empty body has nothing to redact and is passed as it is
		}
		p := profiles[action%3]
		out, rep, err := p.Body("application/json", data)
		valid := json.Valid(data)
		if err != nil {
			var ube *UnsupportedBodyError
			if !errors.As(err, &ube) {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			if valid && jsonDepth(data) <= maxJSONDepth {
				t.Fatalf("valid JSON refused: %v", err)
			}
			return
		}
		if !valid {
			t.Fatalf("invalid JSON accepted: %q", data)
		}
		if !json.Valid(out) {
			t.Fatalf("output is not valid JSON:\n in %q\nout %q", data, out)
		}
		if rep.Total() == 0 && !bytes.Equal(out, data) {
			t.Fatalf("output changed without a finding")
		}
		var in, got any
		if json.Unmarshal(data, &in) == nil && json.Unmarshal(out, &got) == nil {
			if err := sameShape(in, got, p.action == actionDrop); err != nil {
				t.Fatalf("structure changed: %v\n in %q\nout %q", err, data, out)
			}
		}
		again, rep2, err := p.Body("application/json", out)
		if err != nil || !bytes.Equal(again, out) || rep2.Total() != 0 {
			t.Fatalf("not idempotent (%v, %v):\n in %q\nout %q\nthen %q", rep2, err, data, out, again)
		}
	})
}

func FuzzRedactText(f *testing.F) {
	for _, s := range append([]string{
		"mail jane@example.com or +44 20 7946 0958, card 4111-1111-1111-1111",
		"john+415-555-2671@example.com 4111111111111111-123-45-6789",
		"GB82 WEST 1234 5698 7654 32 AKIAIOSFODNN7EXAMPLE ghp_0123456789abcdefghijABCDEFGHIJ012345",
		"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. -----BEGIN PRIVATE KEY-----\nx",
		"[REDACTED:email]x@y.zz hmac:4111111111111111 [REDACTED:THISISLOUD]",
		"(415) 555-2671 1 (800) 555-0199 +1 (415) 555 2671 123 45 6789",
	}, jsonSeeds...) {
		for action := range uint8(3) {
			f.Add([]byte(s), action)
		}
	}
	profiles := fuzzProfiles(f)
	f.Fuzz(func(t *testing.T, data []byte, action uint8) {
		p := profiles[action%3]
		out := p.newRun().text(data)
		r := p.newRun()
		again := r.text(out)
		if !bytes.Equal(again, out) || r.report().Total() != 0 {
			t.Fatalf("not idempotent (%v):\n in %q\nout %q\nthen %q", r.report(), data, out, again)
		}
	})
}

func FuzzRedactURLEncoded(f *testing.F) {
	for _, s := range []string{
		"a=1&token=abc&b=2", "password=hunter2&e=jane%40example.com", "q=to+jane%40example.com&&x",
		"token&token=&token=%5BREDACTED%3Atoken%5D", "bad=100%&%zz=1", "=&=&", "c=4111+1111+1111+1111",
	} {
		for action := range uint8(3) {
			f.Add(s, action)
		}
	}
	profiles := fuzzProfiles(f)
	f.Fuzz(func(t *testing.T, raw string, action uint8) {
		p := profiles[action%3]
		out, _ := p.Query(raw)
		again, rep := p.Query(out)
		if again != out || rep.Total() != 0 {
			t.Fatalf("query not idempotent (%v):\n in %q\nout %q\nthen %q", rep, raw, out, again)
		}
		if strings.Count(out, "&") > strings.Count(raw, "&") {
			t.Fatalf("pairs appeared: %q -> %q", raw, out)
		}
		form, _, err := p.Body("application/x-www-form-urlencoded", []byte(raw))
		if err != nil || string(form) != out {
			t.Fatalf("form body %q differs from query %q (%v)", form, out, err)
		}
	})
}

func FuzzSecretScrubber(f *testing.F) {
	for _, s := range []string{
		"s3cr3t-value-longer s3cr3t-value tok-07-secret", "aaaaaaaaaaaaaaaa", "s3cr3t-valu", "",
		"ghp_SECRETtoken123ghp_SECRETtoken12", "tok-00-secrettok-01-secre",
	} {
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(7))
	}
	scrubbers := scrubbersUnderTest(f)
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		if len(data) > 4<<10 {
			// The reference is quadratic and the reader is fed tiny reads;
			// larger inputs only slow the fuzzer's minimisation down.
			data = data[:4<<10]
		}
		for _, s := range scrubbers {
			name := s.name
			want, wantN := naiveScrub(data, s.SecretScrubber)
			got, n := s.Scrub(data)
			if !bytes.Equal(got, want) || n != wantN {
				t.Fatalf("%s: Scrub(%q) = %q, %d; want %q, %d", name, data, got, n, want, wantN)
			}
			z := s.Reader(iotest.HalfReader(&chunkReader{data: data, size: int(chunk%16) + 1}))
			streamed, err := io.ReadAll(z)
			if err != nil || !bytes.Equal(streamed, want) || z.Count() != wantN {
				t.Fatalf("%s: Reader gave %q, %d, %v; want %q", name, streamed, z.Count(), err, want)
			}
		}
		// An echo of the secret in any encoding, between the fuzzer's bytes,
		// cannot be read back from what the scrubber lets through (an
		// oracle that decodes rather than re-encodes: recoverable).
		secret := []byte("s3cr3t-value")
		if recoverable(data, secret) {
			return
		}
		e := echoEncodings[int(chunk)%len(echoEncodings)]
		cut := len(data) / 2
		in := slices.Concat(data[:cut], []byte{0}, e.encode(append([]byte("Bearer "), secret...)), []byte{0}, data[cut:])
		for _, s := range scrubbers {
			out, _ := s.Scrub(in)
			streamed, err := io.ReadAll(s.Reader(&chunkReader{data: in, size: int(chunk%16) + 1}))
			if err != nil || !bytes.Equal(out, streamed) {
				t.Fatalf("%s: %s echo: streamed %q, %v; whole %q", s.name, e.name, streamed, err, out)
			}
			if recoverable(out, secret) {
				t.Fatalf("%s: %s echo: %q scrubbed to %q, which still holds the secret", s.name, e.name, in, out)
			}
		}
	})
}

// chunkReader returns data in reads of at most size bytes.
type chunkReader struct {
	data []byte
	size int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.size)], c.data)
	c.data = c.data[n:]
	return n, nil
}
