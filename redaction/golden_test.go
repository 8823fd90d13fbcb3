package redaction

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.out from the current output")

var allDetectors = DetectorNames()

// goldenCases says how each testdata/golden/NAME.in is redacted into
// NAME.out. A query_* input goes through Profile.Query, the others through
// Profile.Body with the content type given.
var goldenCases = map[string]struct {
	cfg         ProfileConfig
	contentType string
}{
	"json_pii": {ProfileConfig{
		Name: "pii", Detectors: []string{"email", "credit_card", "us_ssn", "phone"},
		JSONFields: []string{"password", "*.ssn", "user.date_of_birth"},
	}, "application/json"},
	"json_all_hash": {ProfileConfig{
		Name: "all", Detectors: allDetectors, Patterns: []Pattern{{Name: "ticket", Regex: `TCK-[0-9]{6}`}},
		JSONFields: []string{"api_key"}, Action: "hash",
	}, "application/json"},
	"json_drop": {ProfileConfig{
		Name: "drop", Detectors: []string{"email"}, JSONFields: []string{"password", "token", "items.secret"}, Action: "drop",
	}, "application/json"},
	"form_pii": {ProfileConfig{
		Name: "pii", Detectors: []string{"email", "credit_card", "us_ssn", "phone"}, JSONFields: []string{"password"},
	}, "application/x-www-form-urlencoded"},
	"query_pii": {ProfileConfig{
		Name: "pii", Detectors: []string{"email", "phone"}, QueryParams: []string{"token"},
	}, ""},
	"text_all": {ProfileConfig{
		Name: "all", Detectors: allDetectors,
	}, "text/plain"},
}

func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "golden", "*.in"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".in")
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			c, ok := goldenCases[name]
			if !ok {
				t.Fatalf("%s has no entry in goldenCases", in)
			}
			p, err := NewProfile(c.cfg, testKey)
			if err != nil {
				t.Fatal(err)
			}
			body, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			var rep Report
			if strings.HasPrefix(name, "query_") {
				var q string
				q, rep = p.Query(string(body))
				got = []byte(q)
			} else if got, rep, err = p.Body(c.contentType, body); err != nil {
				t.Fatal(err)
			}
			if rep.Total() == 0 {
				t.Error("nothing was redacted")
			}
			if c.contentType == "application/json" && !json.Valid(got) {
				t.Errorf("output is not valid JSON:\n%s", got)
			}
			outPath := strings.TrimSuffix(in, ".in") + ".out"
			if *update {
				if err := os.WriteFile(outPath, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(outPath)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("output differs from %s (run with -update after checking the diff):\n got:\n%s\nwant:\n%s", outPath, got, want)
			}
		})
	}
	for name := range goldenCases {
		if !seen[name] {
			t.Errorf("goldenCases has %q but testdata/golden/%s.in is missing", name, name)
		}
	}
}
