package jsonstr

import (
	"bytes"
	"encoding/json"
	"math"
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

// TestAppendEveryByteEverywhere puts each byte value at each position of
// a plain string, at its start, middle and end, against encoding/json.
func TestAppendEveryByteEverywhere(t *testing.T) {
	for c := 0; c < 256; c++ {
		for pos := 0; pos < 19; pos++ {
			b := bytes.Repeat([]byte("a"), 19)
			b[pos] = byte(c)
			s := string(b)
			for _, escapeHTML := range []bool{false, true} {
				if got, want := Append(nil, s, escapeHTML), encodingJSON(t, s, escapeHTML); !bytes.Equal(got, want) {
					t.Fatalf("Append(%q, escapeHTML=%v) = %s, want %s", s, escapeHTML, got, want)
				}
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

// FuzzAppendFloat holds AppendFloat to encoding/json for every finite
// float64.
func FuzzAppendFloat(f *testing.F) {
	for _, v := range []float64{0, math.Copysign(0, -1), 1, -2.5, 12.345, 1e-6, 9.99e-7, 1e-7, 1e20, 1e21, 123456789e15, math.MaxFloat64, math.SmallestNonzeroFloat64} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			t.Skip("encoding/json refuses it, and so do AppendFloat's callers")
		}
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendFloat(nil, v); !bytes.Equal(got, want) {
			t.Fatalf("AppendFloat(%v) = %s, want %s", v, got, want)
		}
	})
}
