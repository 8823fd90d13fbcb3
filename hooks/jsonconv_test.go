package hooks

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/d5/tengo/v2"
)

// sameJSONValue compares a decoded Tengo value with encoding/json's
// decoding (with UseNumber) of the same document.
func sameJSONValue(got tengo.Object, want any) error {
	switch w := want.(type) {
	case nil:
		if got != tengo.UndefinedValue {
			return fmt.Errorf("null decoded as %s", got.TypeName())
		}
	case bool:
		b, ok := got.(*tengo.Bool)
		if !ok || b.IsFalsy() == w {
			return fmt.Errorf("%v decoded as %s", w, got)
		}
	case string:
		s, ok := got.(*tengo.String)
		if !ok || s.Value != w {
			return fmt.Errorf("string %q decoded as %s", w, got)
		}
	case json.Number:
		text := string(w)
		switch g := got.(type) {
		case *tengo.Int:
			n, err := strconv.ParseInt(text, 10, 64)
			if strings.ContainsAny(text, ".eE") || err != nil || n != g.Value {
				return fmt.Errorf("number %s decoded as int %d", text, g.Value)
			}
		case *tengo.Float:
			f, err := w.Float64()
			if err != nil || f != g.Value {
				return fmt.Errorf("number %s decoded as float %v", text, g.Value)
			}
		default:
			return fmt.Errorf("number %s decoded as %s", text, got.TypeName())
		}
	case []any:
		a, ok := got.(*tengo.Array)
		if !ok || len(a.Value) != len(w) {
			return fmt.Errorf("array of %d decoded as %s", len(w), got)
		}
		for i := range w {
			if err := sameJSONValue(a.Value[i], w[i]); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
	case map[string]any:
		m, ok := got.(*tengo.Map)
		if !ok || len(m.Value) != len(w) {
			return fmt.Errorf("object of %d decoded as %s", len(w), got)
		}
		for k, v := range w {
			if err := sameJSONValue(m.Value[k], v); err != nil {
				return fmt.Errorf("%q: %w", k, err)
			}
		}
	default:
		return fmt.Errorf("unexpected %T", want)
	}
	return nil
}

func stdlibDecode(t testing.TB, data []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("encoding/json: %v", err)
	}
	return v
}

func TestDecodeJSON(t *testing.T) {
	docs := []string{
		`{"a": 1, "b": [true, false, null], "c": {"d": "e"}}`,
		`[1, -2, 3.5, 1e3, -0, 0.000001, 9223372036854775807, 9223372036854775808, 1E-7]`,
		`"\u00e9\ud83d\ude00 \"quoted\" \\ \/ \b\f\n\r\t"`,
		`"bad \ud800 surrogate \udc00 and \ud800\u0041"`,
		"\"raw invalid utf-8: \xff\xfe\"",
		` { "dup": 1, "dup": 2 } `,
		`[]`, `{}`, `0`, `null`,
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	}
	for _, doc := range docs {
		got, err := decodeJSON([]byte(doc))
		if err != nil {
			t.Errorf("%.60q: %v", doc, err)
			continue
		}
		if err := sameJSONValue(got, stdlibDecode(t, []byte(doc))); err != nil {
			t.Errorf("%.60q: %v", doc, err)
		}
	}
	for _, doc := range []string{``, `{`, `[1,]`, `{"a" 1}`, `01`, `"\x01"`, `1 2`, strings.Repeat("[", 10001) + strings.Repeat("]", 10001)} {
		if _, err := decodeJSON([]byte(doc)); err == nil {
			t.Errorf("%.60q decoded, want an error", doc)
		}
	}
}

func TestEncodeJSON(t *testing.T) {
	when := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	tests := []struct {
		value tengo.Object
		want  string
	}{
		{&tengo.Map{Value: map[string]tengo.Object{"b": &tengo.Int{Value: 1}, "a": tengo.UndefinedValue, "c": tengo.TrueValue}}, `{"a":null,"b":1,"c":true}`},
		{&tengo.ImmutableArray{Value: []tengo.Object{&tengo.Float{Value: 1.5}, &tengo.Float{Value: 1e21}, &tengo.Float{Value: 1e-7}, &tengo.Float{Value: 2}}}, `[1.5,1e+21,1e-7,2]`},
		{&tengo.String{Value: "<a href=\"x\">\n\u2028\xff</a>"}, `"<a href=\"x\">\n\u2028\ufffd</a>"`},
		{&tengo.Bytes{Value: []byte("hi")}, `"aGk="`},
		{&tengo.Char{Value: 'A'}, `65`},
		{&tengo.Time{Value: when}, `"2024-05-06T07:08:09Z"`},
	}
	for _, tt := range tests {
		got, err := encodeJSON(nil, tt.value)
		if err != nil || string(got) != tt.want {
			t.Errorf("encode %s = %s, %v; want %s", tt.value, got, err, tt.want)
		}
		if !json.Valid(got) {
			t.Errorf("encode %s gave invalid JSON %s", tt.value, got)
		}
	}

	cyclic := &tengo.Map{Value: map[string]tengo.Object{}}
	cyclic.Value["self"] = cyclic
	if _, err := encodeJSON(nil, cyclic); err == nil {
		t.Error("a map containing itself encoded")
	}
	if _, err := encodeJSON(nil, &tengo.Map{Value: map[string]tengo.Object{"f": &tengo.UserFunction{Name: "f"}}}); err == nil {
		t.Error("a function encoded")
	}
	if _, err := encodeJSON(nil, &tengo.Float{Value: math.Inf(1)}); err == nil {
		t.Error("+Inf encoded")
	}
	long := &tengo.Array{Value: []tengo.Object{&tengo.String{Value: strings.Repeat("x", 100)}, &tengo.String{Value: "y"}}}
	if _, err := encodeJSONLimited(nil, long, 50); err == nil {
		t.Error("output over the limit")
	}
}

func TestValueHasherSeesEdits(t *testing.T) {
	h := newValueHasher()
	doc := []byte(`{"a": [1, 2, {"b": "c"}], "d": 1.5, "e": null}`)
	v, _ := decodeJSON(doc)
	same, _ := decodeJSON(doc)
	base, ok := h.hash(v, 0)
	if again, _ := h.hash(same, 0); !ok || again != base {
		t.Fatal("equal documents hash differently")
	}
	edits := []func(m map[string]tengo.Object){
		func(m map[string]tengo.Object) { m["d"] = &tengo.Int{Value: 1} },
		func(m map[string]tengo.Object) { delete(m, "e") },
		func(m map[string]tengo.Object) { m["e"] = &tengo.String{Value: ""} },
		func(m map[string]tengo.Object) {
			inner := m["a"].(*tengo.Array).Value[2].(*tengo.Map)
			inner.Value["b"] = &tengo.String{Value: "C"}
		},
		func(m map[string]tengo.Object) {
			a := m["a"].(*tengo.Array)
			a.Value[0], a.Value[1] = a.Value[1], a.Value[0]
		},
	}
	for i, edit := range edits {
		v, _ := decodeJSON(doc)
		edit(v.(*tengo.Map).Value)
		if got, _ := h.hash(v, 0); got == base {
			t.Errorf("edit %d not seen", i)
		}
	}
	cyclic := &tengo.Array{Value: []tengo.Object{nil}}
	cyclic.Value[0] = cyclic
	if _, ok := h.hash(cyclic, 0); ok {
		t.Error("a cyclic value hashed")
	}
}

// FuzzConvertJSON checks the JSON conversion on any input: it never
// panics, accepts exactly what encoding/json accepts (valid, and numbers
// within float64), decodes to the same values, and encodes to valid JSON
// that decodes back to the same value.
func FuzzConvertJSON(f *testing.F) {
	f.Add([]byte(`{"a": [1, 2.5, null, true, "x\u00e9"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeJSON(data)
		var std any
		if stdErr := json.Unmarshal(data, &std); (stdErr == nil) != (err == nil) {
			t.Fatalf("decodeJSON error %v, but encoding/json's %v", err, stdErr)
		}
		if err != nil {
			return
		}
		if err := sameJSONValue(v, stdlibDecode(t, data)); err != nil {
			t.Fatalf("differs from encoding/json: %v", err)
		}
		encoded, err := encodeJSON(nil, v)
		if err != nil {
			t.Fatalf("encoding a decoded value: %v", err)
		}
		if err := sameJSONValue(v, stdlibDecode(t, encoded)); err != nil {
			// Re-encoding may turn 2.0 into 2; compare numbers by value.
			again, _ := decodeJSON(encoded)
			if !sameNumbersAside(v, again) {
				t.Fatalf("round trip through %s changed the value: %v", encoded, err)
			}
		}
	})
}

// sameNumbersAside compares two decoded values treating an int and a
// float of equal value as equal.
func sameNumbersAside(a, b tengo.Object) bool {
	switch a := a.(type) {
	case *tengo.Int:
		switch b := b.(type) {
		case *tengo.Int:
			return a.Value == b.Value
		case *tengo.Float:
			return float64(a.Value) == b.Value
		}
		return false
	case *tengo.Float:
		switch b := b.(type) {
		case *tengo.Int:
			return a.Value == float64(b.Value)
		case *tengo.Float:
			return a.Value == b.Value
		}
		return false
	case *tengo.Array:
		bb, ok := b.(*tengo.Array)
		if !ok || len(a.Value) != len(bb.Value) {
			return false
		}
		for i := range a.Value {
			if !sameNumbersAside(a.Value[i], bb.Value[i]) {
				return false
			}
		}
		return true
	case *tengo.Map:
		bb, ok := b.(*tengo.Map)
		if !ok || len(a.Value) != len(bb.Value) {
			return false
		}
		for k, v := range a.Value {
			w, ok := bb.Value[k]
			if !ok || !sameNumbersAside(v, w) {
				return false
			}
		}
		return true
	}
	return a.Equals(b)
}
