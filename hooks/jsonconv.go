package hooks

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/d5/tengo/v2"

	"github.com/egressgw/egressgw/internal/jsonstr"
)

// maxJSONDepth is encoding/json's nesting limit, which decodeJSON relies
// on through json.Valid; encoding and hashing stop at the same depth, so
// a cyclic value fails instead of recursing until the stack overflows.
const maxJSONDepth = 10000

var (
	errJSONTooDeep  = errors.New("json: value nested more than 10000 levels deep, or containing itself")
	errJSONTooLarge = errors.New("json: encoded value too large")
)

// decodeJSON converts a JSON document to Tengo values with the meaning
// Tengo's json.decode gives them: objects → map, arrays → array, null →
// undefined, numbers without fraction or exponent → int (float when they
// do not fit), other numbers → float. Unlike Tengo's decoder it is safe on
// any input: json.Valid (whose scanner stops at 10000 levels) runs first,
// so the recursive conversion below is bounded.
func decodeJSON(data []byte) (tengo.Object, error) {
	if !json.Valid(data) {
		// Unmarshal into a RawMessage only runs the validity scan again,
		// to get encoding/json's message with its offset.
		if err := json.Unmarshal(data, new(json.RawMessage)); err != nil {
			return nil, fmt.Errorf("json: %w", err)
		}
		return nil, errors.New("json: invalid document")
	}
	d := jsonDecoder{data: data}
	d.skipSpace()
	v, err := d.value(0)
	if err != nil {
		return nil, err
	}
	d.skipSpace()
	if d.pos != len(d.data) {
		return nil, d.syntaxError()
	}
	return v, nil
}

// jsonDecoder walks a document json.Valid accepted. It still checks every
// index, so a disagreement with encoding/json is an error, never a panic.
type jsonDecoder struct {
	data []byte
	pos  int
	// keys interns object keys: an API listing repeats the same few keys
	// in every element.
	keys map[string]string
	// Values are carved from small slabs rather than allocated one by
	// one: a document is thousands of small objects that live and die
	// together.
	strings slab[tengo.String]
	ints    slab[tengo.Int]
	floats  slab[tengo.Float]
	maps    slab[tengo.Map]
	arrays  slab[tengo.Array]
}

// slab hands out pointers into chunks of T; a chunk stays alive while
// any of its values does, which for one decoded document is fine.
type slab[T any] struct{ free []T }

func (s *slab[T]) next() *T {
	if len(s.free) == 0 {
		s.free = make([]T, 64)
	}
	v := &s.free[0]
	s.free = s.free[1:]
	return v
}

func (d *jsonDecoder) syntaxError() error {
	return fmt.Errorf("json: unexpected input at offset %d", d.pos)
}

func (d *jsonDecoder) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *jsonDecoder) value(depth int) (tengo.Object, error) {
	if depth > maxJSONDepth {
		return nil, errJSONTooDeep
	}
	if d.pos >= len(d.data) {
		return nil, d.syntaxError()
	}
	switch c := d.data[d.pos]; {
	case c == '{':
		return d.object(depth)
	case c == '[':
		return d.array(depth)
	case c == '"':
		s, err := d.str()
		if err != nil {
			return nil, err
		}
		v := d.strings.next()
		v.Value = s
		return v, nil
	case c == 't':
		return d.literal("true", tengo.TrueValue)
	case c == 'f':
		return d.literal("false", tengo.FalseValue)
	case c == 'n':
		return d.literal("null", tengo.UndefinedValue)
	case c == '-' || (c >= '0' && c <= '9'):
		return d.number()
	}
	return nil, d.syntaxError()
}

func (d *jsonDecoder) literal(word string, v tengo.Object) (tengo.Object, error) {
	if len(d.data)-d.pos < len(word) || string(d.data[d.pos:d.pos+len(word)]) != word {
		return nil, d.syntaxError()
	}
	d.pos += len(word)
	return v, nil
}

func (d *jsonDecoder) object(depth int) (tengo.Object, error) {
	d.pos++ // {
	m := make(map[string]tengo.Object)
	d.skipSpace()
	if d.pos < len(d.data) && d.data[d.pos] == '}' {
		d.pos++
		return d.newMap(m), nil
	}
	for {
		d.skipSpace()
		if d.pos >= len(d.data) || d.data[d.pos] != '"' {
			return nil, d.syntaxError()
		}
		key, err := d.key()
		if err != nil {
			return nil, err
		}
		d.skipSpace()
		if d.pos >= len(d.data) || d.data[d.pos] != ':' {
			return nil, d.syntaxError()
		}
		d.pos++
		d.skipSpace()
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		m[key] = v // a repeated key: the last wins, as in encoding/json
		d.skipSpace()
		if d.pos >= len(d.data) {
			return nil, d.syntaxError()
		}
		switch d.data[d.pos] {
		case ',':
			d.pos++
		case '}':
			d.pos++
			return d.newMap(m), nil
		default:
			return nil, d.syntaxError()
		}
	}
}

func (d *jsonDecoder) array(depth int) (tengo.Object, error) {
	d.pos++ // [
	var elems []tengo.Object
	d.skipSpace()
	if d.pos < len(d.data) && d.data[d.pos] == ']' {
		d.pos++
		return d.newArray([]tengo.Object{}), nil
	}
	for {
		d.skipSpace()
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		elems = append(elems, v)
		d.skipSpace()
		if d.pos >= len(d.data) {
			return nil, d.syntaxError()
		}
		switch d.data[d.pos] {
		case ',':
			d.pos++
		case ']':
			d.pos++
			return d.newArray(elems), nil
		default:
			return nil, d.syntaxError()
		}
	}
}

func (d *jsonDecoder) newMap(m map[string]tengo.Object) *tengo.Map {
	v := d.maps.next()
	v.Value = m
	return v
}

func (d *jsonDecoder) newArray(elems []tengo.Object) *tengo.Array {
	v := d.arrays.next()
	v.Value = elems
	return v
}

func (d *jsonDecoder) number() (tengo.Object, error) {
	start := d.pos
	isFloat := false
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		if c == '.' || c == 'e' || c == 'E' {
			isFloat = true
		} else if c != '-' && c != '+' && (c < '0' || c > '9') {
			break
		}
		d.pos++
	}
	text := string(d.data[start:d.pos])
	if !isFloat {
		if n, err := strconv.ParseInt(text, 10, 64); err == nil {
			v := d.ints.next()
			v.Value = n
			return v, nil
		}
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return nil, fmt.Errorf("json: bad number %q", text)
	}
	if math.IsInf(f, 0) {
		return nil, fmt.Errorf("json: number %q out of range", text)
	}
	v := d.floats.next()
	v.Value = f
	return v, nil
}

// key reads an object key, reusing an earlier copy of the same key: an
// API listing repeats the same few keys in every element.
func (d *jsonDecoder) key() (string, error) {
	raw, plain, err := d.rawString()
	if err != nil {
		return "", err
	}
	if !plain {
		return string(unquoteJSON(raw)), nil
	}
	if k, ok := d.keys[string(raw)]; ok { // the lookup does not allocate
		return k, nil
	}
	if d.keys == nil {
		d.keys = make(map[string]string)
	}
	k := string(raw)
	d.keys[k] = k
	return k, nil
}

// str reads a string literal at d.pos.
func (d *jsonDecoder) str() (string, error) {
	raw, plain, err := d.rawString()
	if err != nil {
		return "", err
	}
	if plain {
		return string(raw), nil
	}
	return string(unquoteJSON(raw)), nil
}

// rawString reads a string literal at d.pos and returns what is between
// the quotes; plain means it needs no unquoting (no escapes, valid UTF-8).
func (d *jsonDecoder) rawString() (raw []byte, plain bool, err error) {
	d.pos++ // opening quote
	start := d.pos
	plain = true
	for d.pos < len(d.data) {
		switch c := d.data[d.pos]; {
		case c == '"':
			raw = d.data[start:d.pos]
			d.pos++
			return raw, plain && utf8.Valid(raw), nil
		case c == '\\':
			plain = false
			d.pos += 2
		default:
			d.pos++
		}
	}
	return nil, false, d.syntaxError()
}

// unquoteJSON decodes the body of a JSON string literal (without quotes).
func unquoteJSON(s []byte) []byte {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			switch s[i] {
			case '"', '\\', '/':
				out = append(out, s[i])
				i++
			case 'b':
				out = append(out, '\b')
				i++
			case 'f':
				out = append(out, '\f')
				i++
			case 'n':
				out = append(out, '\n')
				i++
			case 'r':
				out = append(out, '\r')
				i++
			case 't':
				out = append(out, '\t')
				i++
			case 'u':
				r, ok := hex4(s[i+1:])
				if !ok {
					out = utf8.AppendRune(out, utf8.RuneError)
					i++
					continue
				}
				i += 5
				if utf16.IsSurrogate(r) {
					if i+1 < len(s) && s[i] == '\\' && s[i+1] == 'u' {
						if r2, ok := hex4(s[i+2:]); ok {
							if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
								out = utf8.AppendRune(out, dec)
								i += 6
								continue
							}
						}
					}
					r = utf8.RuneError
				}
				out = utf8.AppendRune(out, r)
			default:
				out = utf8.AppendRune(out, utf8.RuneError)
				i++
			}
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, size := utf8.DecodeRune(s[i:])
			out = utf8.AppendRune(out, r) // RuneError for invalid UTF-8
			i += size
		}
	}
	return out
}

func hex4(s []byte) (rune, bool) {
	if len(s) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range s[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// encodeJSON appends the JSON encoding of o to dst: map keys sorted, so
// the same value always gives the same bytes; strings escaped as
// encoding/json does, without HTML escaping (as Tengo's encoder); bytes as
// base64; times as RFC 3339; chars as numbers and undefined as null, as
// in Tengo. It fails instead of looping on a value that contains itself,
// and once the output passes maxLen bytes.
func encodeJSON(dst []byte, o tengo.Object) ([]byte, error) {
	return encodeJSONLimited(dst, o, tengo.MaxBytesLen)
}

func encodeJSONLimited(dst []byte, o tengo.Object, maxLen int) ([]byte, error) {
	e := jsonEncoder{buf: dst, maxLen: maxLen}
	if err := e.value(o, 0); err != nil {
		return nil, err
	}
	return e.buf, nil
}

type jsonEncoder struct {
	buf    []byte
	maxLen int
	// keys is a stack of the map keys being written, one sorted run per
	// open map, so sorting does not allocate per map.
	keys []string
}

func (e *jsonEncoder) value(o tengo.Object, depth int) error {
	if depth > maxJSONDepth {
		return errJSONTooDeep
	}
	if len(e.buf) > e.maxLen {
		return errJSONTooLarge
	}
	switch o := o.(type) {
	case *tengo.Map:
		return e.object(o.Value, depth)
	case *tengo.ImmutableMap:
		return e.object(o.Value, depth)
	case *tengo.Array:
		return e.array(o.Value, depth)
	case *tengo.ImmutableArray:
		return e.array(o.Value, depth)
	case *tengo.String:
		e.buf = jsonstr.Append(e.buf, o.Value, false)
	case *tengo.Int:
		e.buf = strconv.AppendInt(e.buf, o.Value, 10)
	case *tengo.Float:
		return e.float(o.Value)
	case *tengo.Bool:
		e.buf = strconv.AppendBool(e.buf, !o.IsFalsy())
	case *tengo.Undefined:
		e.buf = append(e.buf, "null"...)
	case *tengo.Char:
		e.buf = strconv.AppendInt(e.buf, int64(o.Value), 10)
	case *tengo.Bytes:
		e.buf = append(e.buf, '"')
		e.buf = base64.StdEncoding.AppendEncode(e.buf, o.Value)
		e.buf = append(e.buf, '"')
	case *tengo.Time:
		b, err := o.Value.MarshalJSON()
		if err != nil {
			return fmt.Errorf("json: %w", err)
		}
		e.buf = append(e.buf, b...)
	default:
		return fmt.Errorf("json: cannot encode a value of type %s", o.TypeName())
	}
	return nil
}

func (e *jsonEncoder) object(m map[string]tengo.Object, depth int) error {
	start := len(e.keys)
	for k := range m {
		e.keys = append(e.keys, k)
	}
	end := len(e.keys)
	slices.Sort(e.keys[start:end])
	e.buf = append(e.buf, '{')
	for i := start; i < end; i++ {
		if i > start {
			e.buf = append(e.buf, ',')
		}
		// Index, not a range over a subslice: nested maps may grow e.keys.
		k := e.keys[i]
		e.buf = jsonstr.Append(e.buf, k, false)
		e.buf = append(e.buf, ':')
		if err := e.value(m[k], depth+1); err != nil {
			return err
		}
	}
	e.keys = e.keys[:start]
	e.buf = append(e.buf, '}')
	return nil
}

func (e *jsonEncoder) array(elems []tengo.Object, depth int) error {
	e.buf = append(e.buf, '[')
	for i, v := range elems {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		if err := e.value(v, depth+1); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, ']')
	return nil
}

// float formats as ECMAScript does, like encoding/json and Tengo.
func (e *jsonEncoder) float(f float64) error {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return fmt.Errorf("json: cannot encode %v", f)
	}
	e.buf = jsonstr.AppendFloat(e.buf, f)
	return nil
}

// valueHasher fingerprints a Tengo value so a run can tell whether the
// script changed the decoded JSON in place, without keeping a deep copy.
// Strings go through hash/maphash with a seed random per worker, so a
// script cannot aim for a collision (which would only lose that script's
// own edit); the rest is combined with a 64-bit multiply-mix.
type valueHasher struct {
	seed maphash.Seed
}

func newValueHasher() valueHasher { return valueHasher{seed: maphash.MakeSeed()} }

// mix folds b into a (the 128-bit multiply-and-fold of wyhash).
func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a^0xa0761d6478bd642f, b^0xe7037ed1a0b428db)
	return hi ^ lo
}

// Type tags, so that "1", 1 and 1.0 differ.
const (
	tagMap = iota + 1
	tagImmutableMap
	tagArray
	tagImmutableArray
	tagString
	tagInt
	tagFloat
	tagTrue
	tagFalse
	tagUndefined
	tagChar
	tagBytes
)

// hash returns the fingerprint, or ok=false for a value too deep (or
// cyclic) to walk, or of a type JSON cannot have produced; the caller
// treats that as changed.
func (vh valueHasher) hash(o tengo.Object, depth int) (sum uint64, ok bool) {
	if depth > maxJSONDepth {
		return 0, false
	}
	switch o := o.(type) {
	case *tengo.Map:
		return vh.hashMap(tagMap, o.Value, depth)
	case *tengo.ImmutableMap:
		return vh.hashMap(tagImmutableMap, o.Value, depth)
	case *tengo.Array:
		return vh.hashArray(tagArray, o.Value, depth)
	case *tengo.ImmutableArray:
		return vh.hashArray(tagImmutableArray, o.Value, depth)
	case *tengo.String:
		return mix(tagString, maphash.String(vh.seed, o.Value)), true
	case *tengo.Int:
		return mix(tagInt, uint64(o.Value)), true
	case *tengo.Float:
		return mix(tagFloat, math.Float64bits(o.Value)), true
	case *tengo.Bool:
		if o.IsFalsy() {
			return mix(tagFalse, 0), true
		}
		return mix(tagTrue, 0), true
	case *tengo.Undefined:
		return mix(tagUndefined, 0), true
	case *tengo.Char:
		return mix(tagChar, uint64(o.Value)), true
	case *tengo.Bytes:
		return mix(tagBytes, maphash.Bytes(vh.seed, o.Value)), true
	}
	return 0, false
}

func (vh valueHasher) hashArray(tag uint64, elems []tengo.Object, depth int) (uint64, bool) {
	h := mix(tag, uint64(len(elems)))
	for _, e := range elems {
		eh, ok := vh.hash(e, depth+1)
		if !ok {
			return 0, false
		}
		h = mix(h, eh)
	}
	return h, true
}

// hashMap sums its entries' hashes, which does not depend on Go's random
// map order.
func (vh valueHasher) hashMap(tag uint64, m map[string]tengo.Object, depth int) (uint64, bool) {
	var sum uint64
	for k, v := range m {
		eh, ok := vh.hash(v, depth+1)
		if !ok {
			return 0, false
		}
		sum += mix(maphash.String(vh.seed, k), eh)
	}
	return mix(mix(tag, uint64(len(m))), sum), true
}
