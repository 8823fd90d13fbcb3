package hooks

import (
	"fmt"
	"maps"
	"mime"
	"net/textproto"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/d5/tengo/v2"
	"golang.org/x/net/http/httpguts"
)

// Request is the HTTP request a hook sees and returns (docs/connector-authors.md, "Hooks"). Method,
// Path, Query, Headers and Body are what a request hook may change; URL is
// rebuilt from them; Scheme, Host and Port are the destination the policy
// already allowed, and edits to them are dropped.
type Request struct {
	Method string
	URL    string // absolute: scheme://host[:port]/path?query
	Scheme string
	Host   string
	Port   int
	Path   string // as sent on the wire (escaped), starting with /
	Query  string // raw query, without the ?
	// Headers maps canonical names (textproto.CanonicalMIMEHeaderKey) to
	// values. Pass it without Proxy-Authorization and before injecting
	// credentials: a script sees what the sandbox sent.
	Headers map[string][]string
	Body    []byte
}

// Response is the upstream response a response hook sees and returns.
type Response struct {
	Status  int
	Headers map[string][]string
	Body    []byte
}

// Meta says whose request a hook runs for; the script sees it as tenant
// {id} and connector {name, version}. Tenant also decides whose turn it is
// when runs wait for a worker.
type Meta struct {
	Tenant           string
	Connector        string
	ConnectorVersion int
}

// Outcome is what a run decided besides the new request or response.
type Outcome struct {
	// Denied is set when the script set deny to a string; DenyReason is
	// that string (at most maxDenyReasonBytes bytes), for 403 hook_denied.
	Denied     bool
	DenyReason string
	// BodyChanged is set when Body differs from the input (edited, or
	// re-encoded from json): the proxy must send the new body and compute
	// Content-Length itself.
	BodyChanged bool
	// EventDropped is set by a per-event run whose script set event to
	// undefined: the event is not passed on (EventHook.Run).
	EventDropped bool
	// DroppedEdits names edits the gateway ignored: framing and hop-by-hop
	// headers ("request.headers.Content-Length") and read-only fields
	// ("request.host"). For logs and `egressgw hook test`.
	DroppedEdits []string
}

const (
	// maxDenyReasonBytes bounds the deny message that reaches the client.
	maxDenyReasonBytes = 1024
	// maxOutputHeaderBytes bounds the headers a script may produce, like
	// Go's default limit on response headers.
	maxOutputHeaderBytes = 1 << 20
)

// isProtectedHeader reports the framing and hop-by-hop headers a script
// may not set (docs/connector-authors.md, "Hooks"): the gateway computes them from what it sends, and
// a script-chosen Content-Length or Transfer-Encoding would let the body
// be framed differently than the gateway checked it (request smuggling).
func isProtectedHeader(canonical string) bool {
	switch canonical {
	case "Content-Length", "Transfer-Encoding", "Connection", "Host",
		"Keep-Alive", "Te", "Trailer", "Upgrade":
		return true
	}
	return strings.HasPrefix(canonical, "Proxy-")
}

// isJSONContentType reports an application/json or any +json media type.
func isJSONContentType(headers map[string][]string) bool {
	values := headers["Content-Type"]
	if len(values) == 0 {
		return false
	}
	mediaType, _, err := mime.ParseMediaType(values[0])
	if err != nil {
		return false
	}
	return mediaType == "application/json" || strings.HasSuffix(mediaType, "+json")
}

// jsonView is the decoded body the script saw, kept to tell afterwards
// whether the script assigned or changed it.
type jsonView struct {
	value  tengo.Object // UndefinedValue when the body is not JSON
	hash   uint64
	hashOK bool
}

func newJSONView(headers map[string][]string, body []byte, hasher valueHasher) jsonView {
	if len(body) == 0 || !isJSONContentType(headers) {
		return jsonView{value: tengo.UndefinedValue}
	}
	v, err := decodeJSON(body)
	if err != nil {
		// Not valid JSON despite its type: the script sees body only.
		return jsonView{value: tengo.UndefinedValue}
	}
	h, ok := hasher.hash(v, 0)
	return jsonView{value: v, hash: h, hashOK: ok}
}

// changed reports whether the script assigned a new value to json or
// edited the decoded value in place. Assigning undefined means "leave the
// body alone".
func (j jsonView) changed(now tengo.Object, hasher valueHasher) bool {
	if now == nil || now == tengo.UndefinedValue {
		return false
	}
	if now != j.value || !j.hashOK {
		return true
	}
	h, ok := hasher.hash(now, 0)
	return !ok || h != j.hash
}

func headersObject(headers map[string][]string, readOnly bool) tengo.Object {
	m := make(map[string]tengo.Object, len(headers))
	for name, values := range headers {
		canonical := textproto.CanonicalMIMEHeaderKey(name)
		elems := make([]tengo.Object, 0, len(values))
		if prev, ok := m[canonical]; ok { // two spellings of one name: merge
			elems = append(elems, arrayElems(prev)...)
		}
		for _, v := range values {
			elems = append(elems, &tengo.String{Value: v})
		}
		if readOnly {
			m[canonical] = &tengo.ImmutableArray{Value: elems}
		} else {
			m[canonical] = &tengo.Array{Value: elems}
		}
	}
	if readOnly {
		return &tengo.ImmutableMap{Value: m}
	}
	return &tengo.Map{Value: m}
}

func arrayElems(o tengo.Object) []tengo.Object {
	switch o := o.(type) {
	case *tengo.Array:
		return o.Value
	case *tengo.ImmutableArray:
		return o.Value
	}
	return nil
}

func mapValue(o tengo.Object) (map[string]tengo.Object, bool) {
	switch o := o.(type) {
	case *tengo.Map:
		return o.Value, true
	case *tengo.ImmutableMap:
		return o.Value, true
	}
	return nil, false
}

// requestObject builds the script's request variable. In a response hook
// it is read-only: edits would change nothing, so they fail loudly.
func requestObject(r *Request, json tengo.Object, readOnly bool) tengo.Object {
	fields := map[string]tengo.Object{
		"method":  &tengo.String{Value: r.Method},
		"url":     &tengo.String{Value: r.URL},
		"scheme":  &tengo.String{Value: r.Scheme},
		"host":    &tengo.String{Value: r.Host},
		"port":    &tengo.Int{Value: int64(r.Port)},
		"path":    &tengo.String{Value: r.Path},
		"query":   &tengo.String{Value: r.Query},
		"headers": headersObject(r.Headers, readOnly),
		"body":    &tengo.String{Value: string(r.Body)},
		"json":    json,
	}
	if readOnly {
		return &tengo.ImmutableMap{Value: fields}
	}
	return &tengo.Map{Value: fields}
}

func responseObject(r *Response, json tengo.Object) tengo.Object {
	return &tengo.Map{Value: map[string]tengo.Object{
		"status":  &tengo.Int{Value: int64(r.Status)},
		"headers": headersObject(r.Headers, false),
		"body":    &tengo.String{Value: string(r.Body)},
		"json":    json,
	}}
}

// readBack collects a script's edits of a request or response map. A
// field the script deleted or set to undefined keeps its input value.
type readBack struct {
	variable string // "request" or "response", for messages
	fields   map[string]tengo.Object
	dropped  []string
}

func newReadBack(variable string, o tengo.Object) (*readBack, error) {
	fields, ok := mapValue(o)
	if !ok {
		return nil, fmt.Errorf("%s must stay a map, not %s", variable, o.TypeName())
	}
	return &readBack{variable: variable, fields: fields}, nil
}

func (rb *readBack) field(name string) (tengo.Object, bool) {
	v, ok := rb.fields[name]
	if !ok || v == tengo.UndefinedValue {
		return nil, false
	}
	return v, true
}

func (rb *readBack) str(name, current string) (string, error) {
	v, ok := rb.field(name)
	if !ok {
		return current, nil
	}
	s, isString := v.(*tengo.String)
	if !isString {
		return "", fmt.Errorf("%s.%s must be a string, not %s", rb.variable, name, v.TypeName())
	}
	return s.Value, nil
}

// readOnlyStr drops an edit of a field the script may not change.
func (rb *readBack) readOnlyStr(name, current string) {
	v, ok := rb.field(name)
	if !ok {
		return
	}
	if s, isString := v.(*tengo.String); !isString || s.Value != current {
		rb.dropped = append(rb.dropped, rb.variable+"."+name)
	}
}

func (rb *readBack) readOnlyInt(name string, current int) {
	v, ok := rb.field(name)
	if !ok {
		return
	}
	if n, isInt := v.(*tengo.Int); !isInt || n.Value != int64(current) {
		rb.dropped = append(rb.dropped, rb.variable+"."+name)
	}
}

// headers returns the edited headers: the script's for every ordinary
// name, the input's for every protected one (edits to those are dropped).
func (rb *readBack) headers(input map[string][]string) (map[string][]string, error) {
	v, ok := rb.field("headers")
	if !ok {
		return input, nil
	}
	m, isMap := mapValue(v)
	if !isMap {
		return nil, fmt.Errorf("%s.headers must be a map, not %s", rb.variable, v.TypeName())
	}
	out := make(map[string][]string, len(m))
	total := 0
	// Sorted, so two spellings of one name merge in a stable order.
	for _, name := range slices.Sorted(maps.Keys(m)) {
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, fmt.Errorf("%s.headers: invalid header name %s", rb.variable, quoteShort(name))
		}
		canonical := textproto.CanonicalMIMEHeaderKey(name)
		values, err := headerValues(m[name])
		if err != nil {
			return nil, fmt.Errorf("%s.headers[%s]: %w", rb.variable, quoteShort(name), err)
		}
		for _, value := range values {
			if !httpguts.ValidHeaderFieldValue(value) {
				return nil, fmt.Errorf("%s.headers[%s]: value with a control character or line break", rb.variable, quoteShort(name))
			}
			total += len(canonical) + len(value) + 4
		}
		if total > maxOutputHeaderBytes {
			return nil, fmt.Errorf("%s.headers: more than %d bytes", rb.variable, maxOutputHeaderBytes)
		}
		if len(values) > 0 {
			out[canonical] = append(out[canonical], values...)
		}
	}
	return rb.keepProtected(input, out), nil
}

// keepProtected replaces the protected headers of edited with the input's
// and records every protected header the script added, changed or removed.
func (rb *readBack) keepProtected(input, edited map[string][]string) map[string][]string {
	original := make(map[string][]string)
	for name, values := range input {
		canonical := textproto.CanonicalMIMEHeaderKey(name)
		if isProtectedHeader(canonical) {
			original[canonical] = append(original[canonical], values...)
		}
	}
	scripts := make(map[string][]string)
	for name, values := range edited {
		if isProtectedHeader(name) {
			scripts[name] = values
			delete(edited, name)
		}
	}
	var touched []string
	for name := range original {
		if !slices.Equal(original[name], scripts[name]) {
			touched = append(touched, name)
		}
		edited[name] = original[name]
	}
	for name := range scripts {
		if _, inOriginal := original[name]; !inOriginal {
			touched = append(touched, name)
		}
	}
	slices.Sort(touched)
	for _, name := range touched {
		rb.dropped = append(rb.dropped, rb.variable+".headers."+name)
	}
	return edited
}

// headerValues accepts a string, an array of strings, or scalars that
// read naturally as text (numbers, bools); undefined removes the header.
func headerValues(o tengo.Object) ([]string, error) {
	switch o := o.(type) {
	case *tengo.Undefined:
		return nil, nil
	case *tengo.Array, *tengo.ImmutableArray:
		elems := arrayElems(o)
		values := make([]string, 0, len(elems))
		for _, e := range elems {
			s, err := headerScalar(e)
			if err != nil {
				return nil, err
			}
			values = append(values, s)
		}
		return values, nil
	}
	s, err := headerScalar(o)
	if err != nil {
		return nil, err
	}
	return []string{s}, nil
}

func headerScalar(o tengo.Object) (string, error) {
	switch o := o.(type) {
	case *tengo.String:
		return o.Value, nil
	case *tengo.Int, *tengo.Float, *tengo.Bool, *tengo.Char:
		s, _ := tengo.ToString(o)
		return s, nil
	}
	return "", fmt.Errorf("header values must be strings, not %s", o.TypeName())
}

// body returns the new body: re-encoded from json when the script
// assigned or edited json (which wins over a body edit), else the body
// field, else the input.
func (rb *readBack) body(field string, input []byte, view jsonView, hasher valueHasher, maxBody int64) (body []byte, changed, reencoded bool, err error) {
	if jv, ok := rb.field("json"); ok && view.changed(jv, hasher) {
		b, err := encodeJSONLimited(nil, jv, int(maxBody))
		if err != nil {
			return nil, false, false, fmt.Errorf("%s.json: %w", rb.variable, err)
		}
		if int64(len(b)) > maxBody {
			return nil, false, false, fmt.Errorf("%s.json encodes to more than max_body_bytes (%d)", rb.variable, maxBody)
		}
		return b, true, true, nil
	}
	v, ok := rb.field(field)
	if !ok {
		return input, false, false, nil
	}
	var s string
	switch v := v.(type) {
	case *tengo.String:
		if len(v.Value) == len(input) && v.Value == string(input) {
			return input, false, false, nil
		}
		s = v.Value
	case *tengo.Bytes:
		if string(v.Value) == string(input) {
			return input, false, false, nil
		}
		s = string(v.Value)
	default:
		return nil, false, false, fmt.Errorf("%s.%s must be a string or bytes, not %s", rb.variable, field, v.TypeName())
	}
	if int64(len(s)) > maxBody {
		return nil, false, false, fmt.Errorf("%s.%s of %d bytes is larger than max_body_bytes (%d)", rb.variable, field, len(s), maxBody)
	}
	return []byte(s), true, false, nil
}

// markJSON keeps a re-encoded body's Content-Type a JSON type.
func markJSON(headers map[string][]string) map[string][]string {
	if isJSONContentType(headers) {
		return headers
	}
	out := maps.Clone(headers)
	if out == nil {
		out = make(map[string][]string)
	}
	out["Content-Type"] = []string{"application/json"}
	return out
}

// denyReason reads the deny variable: undefined → not denied; a string →
// denied with it; anything else is a mistake that fails the run closed.
func denyReason(o tengo.Object) (reason string, denied bool, err error) {
	if o == nil || o == tengo.UndefinedValue {
		return "", false, nil
	}
	s, ok := o.(*tengo.String)
	if !ok {
		return "", false, fmt.Errorf("deny must be a string (the reason), not %s", o.TypeName())
	}
	reason = s.Value
	if reason == "" {
		reason = "denied by hook"
	}
	if len(reason) > maxDenyReasonBytes {
		cut := maxDenyReasonBytes
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	return strings.ToValidUTF8(reason, "\uFFFD"), true, nil
}
