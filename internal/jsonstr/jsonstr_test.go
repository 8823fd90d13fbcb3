package jsonstr

import (
	"bytes"
	"encoding/json"
	"testing"
)

var samples = []string{
	"", "plain", `quote " and \ backslash`, "tab\tnew\nline\rcr\bbs\fff",
	"\x00\x01\x1f\x7f", "<script>&amp;</script>", "line\u2028para\u2029",
	"ünïcødé 日本 🙂", "bad \xff utf-8 \xc3", "\xed\xa0\x80 surrogate",
}

// encodingJSON is the reference: encoding/json with or without HTML
// escaping.
func encodingJSON(t *testing.T, s string, escapeHTML bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(escapeHTML)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func TestAppendMatchesEncodingJSON(t *testing.T) {
	for _, s := range samples {
		for _, escapeHTML := range []bool{false, true} {
			if got, want := Append(nil, s, escapeHTML), encodingJSON(t, s, escapeHTML); !bytes.Equal(got, want) {
				t.Errorf("Append(%q, escapeHTML=%v) = %s, want %s", s, escapeHTML, got, want)
			}
		}
	}
}

func FuzzAppend(f *testing.F) {
	for _, s := range samples {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, escapeHTML bool) {
		got := Append([]byte("prefix:"), s, escapeHTML)
		if want := encodingJSON(t, s, escapeHTML); !bytes.Equal(got[len("prefix:"):], want) {
			t.Fatalf("Append(%q, %v) = %s, want %s", s, escapeHTML, got, want)
		}
		if bytes.ContainsAny(got, "\n\r") {
			t.Fatalf("Append(%q) holds a line break: %s", s, got)
		}
	})
}
