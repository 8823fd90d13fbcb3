package redaction

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func mustProfile(t testing.TB, cfg ProfileConfig) *Profile {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "t"
	}
	p, err := NewProfile(cfg, testKey)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewProfileRejects(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  ProfileConfig
		key  []byte
		want string // part of the error message
	}{
		{"bad name", ProfileConfig{Name: "p i i", Detectors: []string{"email"}}, nil, `redaction profile name "p i i"`},
		{"nothing to do", ProfileConfig{Name: "p"}, nil, "would redact nothing"},
		{"unknown detector", ProfileConfig{Name: "p", Detectors: []string{"emial"}}, nil, `unknown detector "emial" (known: email, credit_card`},
		{"duplicate detector", ProfileConfig{Name: "p", Detectors: []string{"email", "email"}}, nil, `detector "email" is listed twice`},
		{"unknown action", ProfileConfig{Name: "p", Detectors: []string{"email"}, Action: "erase"}, nil, `action "erase": use mask, hash or drop`},
		{"hash without key", ProfileConfig{Name: "p", Detectors: []string{"email"}, Action: "hash"}, nil, "needs redaction.hmac_key of at least 16 bytes (it has 0)"},
		{"hash with short key", ProfileConfig{Name: "p", Detectors: []string{"email"}, Action: "hash"}, []byte("short"), "(it has 5)"},
		{"unknown on_unsupported_body", ProfileConfig{Name: "p", Detectors: []string{"email"}, OnUnsupportedBody: "skip"}, nil, `on_unsupported_body "skip"`},
		{"bad regex", ProfileConfig{Name: "p", Patterns: []Pattern{{Name: "x", Regex: "a(b"}}}, nil, `pattern "x": error parsing regexp`},
		{"regex matching nothing", ProfileConfig{Name: "p", Patterns: []Pattern{{Name: "x", Regex: "a*"}}}, nil, `pattern "x" matches the empty string`},
		{"pattern named like a detector", ProfileConfig{Name: "p", Patterns: []Pattern{{Name: "email", Regex: "x"}}}, nil, "name of a built-in detector"},
		{"pattern twice", ProfileConfig{Name: "p", Patterns: []Pattern{{Name: "x", Regex: "x"}, {Name: "x", Regex: "y"}}}, nil, `pattern "x" is defined twice`},
		{"pattern without name", ProfileConfig{Name: "p", Patterns: []Pattern{{Regex: "x"}}}, nil, `pattern name ""`},
		{"empty field", ProfileConfig{Name: "p", JSONFields: []string{""}}, nil, "empty field"},
		{"empty segment", ProfileConfig{Name: "p", JSONFields: []string{"user..ssn"}}, nil, "empty segment"},
		{"partial star", ProfileConfig{Name: "p", JSONFields: []string{"pass*"}}, nil, `"*" must be a whole segment`},
		{"only stars", ProfileConfig{Name: "p", JSONFields: []string{"*.*"}}, nil, "match every field"},
		{"quote in field", ProfileConfig{Name: "p", JSONFields: []string{`a"b`}}, nil, "is not allowed"},
		{"field twice", ProfileConfig{Name: "p", JSONFields: []string{"password", "Password"}}, nil, "listed twice"},
		{"bad header", ProfileConfig{Name: "p", Headers: []string{"X Api Key"}}, nil, "not a valid header name"},
		{"framing header", ProfileConfig{Name: "p", Headers: []string{"content-length"}}, nil, `header "Content-Length" cannot be redacted`},
		{"header twice", ProfileConfig{Name: "p", Headers: []string{"X-Api-Key", "x-api-key"}}, nil, "listed twice"},
		{"empty query param", ProfileConfig{Name: "p", QueryParams: []string{""}}, nil, "not a valid parameter name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewProfile(c.cfg, c.key)
			if err == nil {
				t.Fatalf("NewProfile accepted %+v", c.cfg)
			}
			if p != nil {
				t.Error("a profile came back with the error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
		})
	}
}

func TestNewProfileDefaults(t *testing.T) {
	p := mustProfile(t, ProfileConfig{Detectors: []string{"email"}})
	if p.action != actionMask || p.passOther {
		t.Errorf("defaults: action %v, pass %v; want mask and block", p.action, p.passOther)
	}
	if p.Name() != "t" {
		t.Errorf("Name() = %q", p.Name())
	}
}

func jsonBody(t *testing.T, p *Profile, in string) (string, Report) {
	t.Helper()
	out, rep, err := p.Body("application/json", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(out) {
		t.Fatalf("output is not valid JSON: %s", out)
	}
	return string(out), rep
}

func TestJSONFieldPaths(t *testing.T) {
	for _, c := range []struct {
		name, field, in, want string
	}{
		{"bare name at top", "password", `{"password":"x"}`, `{"password":"[REDACTED:password]"}`},
		{"bare name deep", "password", `{"a":{"b":[{"password":"x"}]}}`, `{"a":{"b":[{"password":"[REDACTED:password]"}]}}`},
		{"case-insensitive", "password", `{"Password":"x","PASSWORD":"y"}`, `{"Password":"[REDACTED:password]","PASSWORD":"[REDACTED:password]"}`},
		{"escaped key", "password", `{"pass\u0077ord":"x"}`, `{"pass\u0077ord":"[REDACTED:password]"}`},
		{"dotted path", "user.date_of_birth", `{"user":{"date_of_birth":"1990-01-01"},"date_of_birth":"keep"}`, `{"user":{"date_of_birth":"[REDACTED:user.date_of_birth]"},"date_of_birth":"keep"}`},
		{"dotted path deeper", "user.date_of_birth", `{"data":{"user":{"date_of_birth":1}}}`, `{"data":{"user":{"date_of_birth":"[REDACTED:user.date_of_birth]"}}}`},
		{"dotted path through array", "users.ssn", `{"users":[{"ssn":"1"},{"ssn":"2"}]}`, `{"users":[{"ssn":"[REDACTED:users.ssn]"},{"ssn":"[REDACTED:users.ssn]"}]}`},
		{"star needs a parent", "*.ssn", `{"ssn":"top","a":{"ssn":"x"},"b":{"c":{"ssn":"y"}}}`, `{"ssn":"top","a":{"ssn":"[REDACTED:*.ssn]"},"b":{"c":{"ssn":"[REDACTED:*.ssn]"}}}`},
		{"star in the middle", "a.*.c", `{"a":{"x":{"c":1},"c":2}}`, `{"a":{"x":{"c":"[REDACTED:a.*.c]"},"c":2}}`},
		{"object value", "secret", `{"secret":{"a":[1,2]},"n":1}`, `{"secret":"[REDACTED:secret]","n":1}`},
		{"number and bool", "pin", `[{"pin":1234},{"pin":true}]`, `[{"pin":"[REDACTED:pin]"},{"pin":"[REDACTED:pin]"}]`},
		{"null stays", "password", `{"password":null}`, `{"password":null}`},
		{"empty string is masked", "password", `{"password":""}`, `{"password":"[REDACTED:password]"}`},
		{"keys are never changed", "password", `{"a":"password"}`, `{"a":"password"}`},
		{"whitespace kept", "password", "{\n  \"password\" : \"x\" ,\n  \"a\" : 1\n}", "{\n  \"password\" : \"[REDACTED:password]\" ,\n  \"a\" : 1\n}"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := mustProfile(t, ProfileConfig{JSONFields: []string{c.field}})
			got, _ := jsonBody(t, p, c.in)
			if got != c.want {
				t.Errorf("json_fields %q over %s\n got %s\nwant %s", c.field, c.in, got, c.want)
			}
		})
	}
}

func TestJSONDrop(t *testing.T) {
	p := mustProfile(t, ProfileConfig{JSONFields: []string{"p"}, Detectors: []string{"email"}, Action: "drop"})
	for _, c := range []struct{ in, want string }{
		{`{"p":1}`, `{}`},
		{`{"p":1,"a":2}`, `{"a":2}`},
		{`{"a":1,"p":2}`, `{"a":1}`},
		{`{"a":1,"p":2,"b":3}`, `{"a":1,"b":3}`},
		{`{"p":1,"q":{"p":2},"p":3}`, `{"q":{}}`},
		{`{ "p" : 1 , "a" : 2 }`, `{ "a" : 2 }`},
		{`[{"p":1},{"a":"x@example.com","p":{"deep":[1]}}]`, `[{},{"a":"[REDACTED:email]"}]`},
	} {
		got, _ := jsonBody(t, p, c.in)
		if got != c.want {
			t.Errorf("drop over %s\n got %s\nwant %s", c.in, got, c.want)
		}
	}
}

func TestJSONHash(t *testing.T) {
	p := mustProfile(t, ProfileConfig{JSONFields: []string{"email"}, Detectors: []string{"email"}, Action: "hash"})
	got, rep := jsonBody(t, p, `{"email":"jane@example.com","note":"from jane@example.com","escaped":"jane\u0040example.com"}`)
	// The same value hashes the same whether a field rule or a detector
	// found it, escaped or not, and with this key on every replica.
	const h = "hmac:e54ecd8285defd5c"
	want := `{"email":"` + h + `","note":"from ` + h + `","escaped":"` + h + `"}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if rep.Total() != 3 {
		t.Errorf("report %v", rep)
	}
	other, err := NewProfile(ProfileConfig{Name: "t", Detectors: []string{"email"}, Action: "hash"}, []byte("another key of 16+ bytes"))
	if err != nil {
		t.Fatal(err)
	}
	if out, _, _ := other.Body("text/plain", []byte("jane@example.com")); string(out) == h {
		t.Error("a different key gave the same hash")
	}
}

func TestJSONStrings(t *testing.T) {
	p := mustProfile(t, ProfileConfig{Detectors: []string{"email", "private_key"}})
	for _, c := range []struct{ name, in, want string }{
		{"untouched bytes", `{"a" : [ 1.50e3 , "x" , true ] , "b":"jane@example.com"}`, `{"a" : [ 1.50e3 , "x" , true ] , "b":"[REDACTED:email]"}`},
		{"escapes kept where nothing matched", `{"a":"\u00e9\/","b":"\u0041"}`, `{"a":"\u00e9\/","b":"\u0041"}`},
		{"escaped match", `{"a":"\"jane\u0040example.com\"\ttab"}`, `{"a":"\"[REDACTED:email]\"\ttab"}`},
		{"escaped PEM", `{"k":"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"}`, `{"k":"[REDACTED:private_key]\n"}`},
		{"top-level string", `"jane@example.com"`, `"[REDACTED:email]"`},
		{"keys untouched", `{"jane@example.com":1}`, `{"jane@example.com":1}`},
		{"numbers untouched", `{"card":4111111111111111}`, `{"card":4111111111111111}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, _ := jsonBody(t, p, c.in)
			if got != c.want {
				t.Errorf("\n got %s\nwant %s", got, c.want)
			}
		})
	}
}

func TestJSONNothingToDoReturnsInput(t *testing.T) {
	p := piiProfile(t)
	in := []byte(`{"a":[1,2,{"b":"plain text"}]}`)
	out, rep, err := p.Body("application/json; charset=utf-8", in)
	if err != nil || rep != nil || &out[0] != &in[0] {
		t.Errorf("Body copied or reported on a clean document: %v %v", rep, err)
	}
}

func TestBodyDispatch(t *testing.T) {
	block := mustProfile(t, ProfileConfig{Detectors: []string{"email"}, JSONFields: []string{"password"}})
	pass := mustProfile(t, ProfileConfig{Detectors: []string{"email"}, JSONFields: []string{"password"}, OnUnsupportedBody: "pass"})
	for _, c := range []struct {
		name, ct, in string
		blockWant    string // "" with blocked: the error is expected
		blocked      bool
		passWant     string
	}{
		{"json", "application/json", `{"password":"x"}`, `{"password":"[REDACTED:password]"}`, false, `{"password":"[REDACTED:password]"}`},
		{"json suffix", "application/vnd.api+json", `{"password":"x"}`, `{"password":"[REDACTED:password]"}`, false, `{"password":"[REDACTED:password]"}`},
		{"invalid json", "application/json", `{"password":"x", a@example.com`, "", true, `{"password":"x", [REDACTED:email]`},
		{"too deep", "application/json", strings.Repeat("[", 1001) + strings.Repeat("]", 1001), "", true, strings.Repeat("[", 1001) + strings.Repeat("]", 1001)},
		{"json labelled as text", "text/plain", ` {"password":"x"}`, ` {"password":"[REDACTED:password]"}`, false, ` {"password":"[REDACTED:password]"}`},
		{"text", "text/plain; charset=utf-8", "hi a@example.com", "hi [REDACTED:email]", false, "hi [REDACTED:email]"},
		{"xml", "application/soap+xml", "<m>a@example.com</m>", "<m>[REDACTED:email]</m>", false, "<m>[REDACTED:email]</m>"},
		{"form", "application/x-www-form-urlencoded", "password=x&to=a%40example.com", "password=%5BREDACTED%3Apassword%5D&to=%5BREDACTED%3Aemail%5D", false, "password=%5BREDACTED%3Apassword%5D&to=%5BREDACTED%3Aemail%5D"},
		{"no content type, json", "", `{"password":"x"}`, `{"password":"[REDACTED:password]"}`, false, `{"password":"[REDACTED:password]"}`},
		{"no content type, text", "", "a@example.com", "[REDACTED:email]", false, "[REDACTED:email]"},
		{"no content type, binary", "", "\xff\xfea@example.com", "", true, "\xff\xfea@example.com"},
		{"binary", "image/png", "\x89PNG a@example.com", "", true, "\x89PNG a@example.com"},
		{"multipart", "multipart/form-data; boundary=x", "--x\r\n\r\na@example.com", "", true, "--x\r\n\r\na@example.com"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, _, err := block.Body(c.ct, []byte(c.in))
			var ube *UnsupportedBodyError
			switch {
			case c.blocked && !errors.As(err, &ube):
				t.Errorf("block: got %q, %v; want an *UnsupportedBodyError", out, err)
			case c.blocked && out != nil:
				t.Errorf("block: a body came back with the error")
			case !c.blocked && (err != nil || string(out) != c.blockWant):
				t.Errorf("block: got %q, %v; want %q", out, err, c.blockWant)
			}
			out, _, err = pass.Body(c.ct, []byte(c.in))
			if err != nil || string(out) != c.passWant {
				t.Errorf("pass: got %q, %v; want %q", out, err, c.passWant)
			}
		})
	}
}

func TestUnsupportedBodyError(t *testing.T) {
	p := mustProfile(t, ProfileConfig{Name: "pii", Detectors: []string{"email"}})
	_, _, err := p.Body("Image/PNG; q=1", []byte("secret a@example.com"))
	want := `redaction profile "pii" cannot inspect this body (image/png): only JSON, form and text bodies can be redacted; the profile says on_unsupported_body: block`
	if err == nil || err.Error() != want {
		t.Errorf("error %v\nwant %s", err, want)
	}
	if strings.Contains(err.Error(), "a@example.com") {
		t.Error("the error repeats body content")
	}
}

func TestProfileWithoutBodyRules(t *testing.T) {
	p := mustProfile(t, ProfileConfig{Headers: []string{"X-Api-Key"}})
	if p.InspectsBody() || (Chain{p}).InspectsBody() {
		t.Error("a header-only profile claims to inspect bodies")
	}
	out, rep, err := p.Body("image/png", []byte("x"))
	if err != nil || rep != nil || string(out) != "x" {
		t.Errorf("header-only profile touched a body: %q %v %v", out, rep, err)
	}
}

func TestQuery(t *testing.T) {
	mask := mustProfile(t, ProfileConfig{Detectors: []string{"email"}, JSONFields: []string{"password"}, QueryParams: []string{"token"}})
	drop := mustProfile(t, ProfileConfig{Detectors: []string{"email"}, QueryParams: []string{"token"}, Action: "drop"})
	for _, c := range []struct {
		name     string
		p        *Profile
		in, want string
		count    int
	}{
		{"named", mask, "a=1&token=abc&b=2", "a=1&token=%5BREDACTED%3Atoken%5D&b=2", 1},
		{"named case-insensitive and encoded", mask, "TOK%45N=abc", "TOK%45N=%5BREDACTED%3Atoken%5D", 1},
		{"bare json field", mask, "user=x&password=hunter2", "user=x&password=%5BREDACTED%3Apassword%5D", 1},
		{"detector in value", mask, "q=to+jane%40example.com&page=2", "q=to+%5BREDACTED%3Aemail%5D&page=2", 1},
		{"keys untouched", mask, "jane@example.com=1", "jane@example.com=1", 0},
		{"no value", mask, "token&x", "token&x", 0},
		{"bad escape kept", mask, "q=100%&e=a@example.com", "q=100%&e=%5BREDACTED%3Aemail%5D", 1},
		{"already redacted", mask, "token=%5BREDACTED%3Atoken%5D", "token=%5BREDACTED%3Atoken%5D", 0},
		{"drop first", drop, "token=1&a=2", "a=2", 1},
		{"drop middle", drop, "a=1&token=2&b=3", "a=1&b=3", 1},
		{"drop last", drop, "a=1&token=2", "a=1", 1},
		{"drop all", drop, "token=1&token=2", "", 2},
		{"drop masks detectors", drop, "e=jane@example.com", "e=%5BREDACTED%3Aemail%5D", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, rep := c.p.Query(c.in)
			if got != c.want || rep.Total() != c.count {
				t.Errorf("Query(%q) = %q, %v; want %q, %d", c.in, got, rep, c.want, c.count)
			}
		})
	}
}

func TestHeaders(t *testing.T) {
	p := mustProfile(t, ProfileConfig{Name: "h", Detectors: []string{"email", "bearer_token"}, Headers: []string{"x-api-key"}})
	h := http.Header{
		"X-Api-Key":     {"k1", "k2"},
		"Authorization": {"Bearer abc123def456ghi789"},
		"From":          {"jane@example.com"},
		"Content-Type":  {"text/plain; a@example.com"},
		"Accept":        {"*/*"},
	}
	rep := p.Headers(h)
	want := http.Header{
		"X-Api-Key":     {"[REDACTED:X-Api-Key]", "[REDACTED:X-Api-Key]"},
		"Authorization": {"Bearer [REDACTED:bearer_token]"},
		"From":          {"[REDACTED:email]"},
		"Content-Type":  {"text/plain; a@example.com"},
		"Accept":        {"*/*"},
	}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("got %v\nwant %v", h, want)
	}
	if rep.Total() != 4 {
		t.Errorf("report %v", rep)
	}
	if again := p.Headers(h); again != nil {
		t.Errorf("redacting again reported %v", again)
	}

	drop := mustProfile(t, ProfileConfig{Headers: []string{"X-Api-Key"}, Action: "drop"})
	h = http.Header{"X-Api-Key": {"k"}, "Accept": {"*/*"}}
	if rep := drop.Headers(h); rep.Total() != 1 || len(h) != 1 || h.Get("Accept") != "*/*" {
		t.Errorf("drop: %v, %v", h, rep)
	}
}

func TestChain(t *testing.T) {
	first := mustProfile(t, ProfileConfig{Name: "fields", JSONFields: []string{"password"}})
	second := mustProfile(t, ProfileConfig{Name: "hashed", Detectors: []string{"email"}, Patterns: []Pattern{{Name: "caps", Regex: `[A-Z]{4,}`}}, Action: "hash"})
	c := Chain{first, second}
	out, rep, err := c.Body("application/json", []byte(`{"password":"x","mail":"jane@example.com","shout":"HELLO"}`))
	if err != nil {
		t.Fatal(err)
	}
	// The second profile leaves the first one's marker alone, although its
	// pattern matches "REDACTED".
	want := `{"password":"[REDACTED:password]","mail":"hmac:e54ecd8285defd5c","shout":"hmac:8bde4cff85617118"}`
	if string(out) != want {
		t.Errorf("got  %s\nwant %s", out, want)
	}
	wantRep := Report{{"fields", "password", 1}, {"hashed", "email", 1}, {"hashed", "caps", 1}}
	if !reflect.DeepEqual(rep, wantRep) {
		t.Errorf("report %v, want %v", rep, wantRep)
	}
	if got := rep.Strings(); !reflect.DeepEqual(got, []string{"fields:password=1", "hashed:email=1", "hashed:caps=1"}) {
		t.Errorf("Strings() = %q", got)
	}
	again, rep2, _ := c.Body("application/json", out)
	if string(again) != string(out) || rep2.Total() != 0 {
		t.Errorf("second pass changed %s into %s (%v)", out, again, rep2)
	}

	blocking := mustProfile(t, ProfileConfig{Name: "b", Detectors: []string{"email"}})
	if out, _, err := (Chain{first, blocking}).Body("image/png", []byte("x")); err == nil || out != nil {
		t.Errorf("chain with a blocking profile passed an unsupported body: %q %v", out, err)
	}
	q, qrep := c.Query("password=1&m=jane%40example.com")
	if q != "password=%5BREDACTED%3Apassword%5D&m=hmac%3Ae54ecd8285defd5c" || qrep.Total() != 2 {
		t.Errorf("Query: %q %v", q, qrep)
	}
}

func TestReportNeverHoldsValues(t *testing.T) {
	p := mustProfile(t, ProfileConfig{Detectors: DetectorNames(), JSONFields: []string{"password"}})
	_, rep, err := p.Body("application/json", []byte(`{"password":"hunter2hunter2","e":"jane@example.com"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(rep)
	if strings.Contains(string(b), "hunter2") || strings.Contains(string(b), "jane") {
		t.Errorf("report holds a value: %s", b)
	}
}

// Profiles and scrubbers are built once per policy and shared by every
// request: concurrent calls must not disturb each other (run with -race).
func TestConcurrentUse(t *testing.T) {
	profiles := fuzzProfiles(t)
	scrubber := mustScrubber(t, "s3cr3t-value-longer")
	body := benchJSON(16 << 10)
	var want [3][]byte
	for i, p := range profiles {
		out, _, err := p.Body("application/json", body)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = out
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			p := profiles[g%3]
			for range 20 {
				out, _, err := p.Body("application/json", body)
				if err != nil || string(out) != string(want[g%3]) {
					t.Errorf("%s: concurrent output differs", p.Name())
					return
				}
				h := http.Header{"Authorization": {"Bearer abc123def456ghi789"}}
				p.Headers(h)
				p.Query("e=jane%40example.com&token=1")
				scrubber.Scrub([]byte("x s3cr3t-value-longer y"))
			}
		})
	}
	wg.Wait()
}
