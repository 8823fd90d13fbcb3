package redaction

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// UnsupportedBodyError is the error Body returns when a profile with
// on_unsupported_body: block meets a body it cannot parse. The body must
// not be forwarded. The message names the profile and the media type and
// never holds body content, so it can go to the client as it is.
type UnsupportedBodyError struct {
	Profile   string // the profile that refused the body
	MediaType string // the declared media type without parameters; "" when none was sent
	Reason    string // why the body cannot be redacted
}

// Error says which profile refused what kind of body, and why.
func (e *UnsupportedBodyError) Error() string {
	mt := e.MediaType
	if mt == "" {
		mt = "no content type"
	}
	return fmt.Sprintf("redaction profile %q cannot inspect this body (%s): %s; the profile says on_unsupported_body: block",
		e.Profile, mt, e.Reason)
}

type bodyKind uint8

const (
	kindOther bodyKind = iota
	kindNone           // no Content-Type
	kindJSON
	kindForm
	kindText
)

// maxMediaTypeInError bounds the client-supplied media type that an error
// message repeats.
const maxMediaTypeInError = 100

// mediaType returns the lower-cased type/subtype of a Content-Type value.
func mediaType(contentType string) string {
	if k := strings.IndexByte(contentType, ';'); k >= 0 {
		contentType = contentType[:k]
	}
	return strings.ToLower(strings.TrimSpace(contentType))
}

func classify(mt string) bodyKind {
	if mt == "" {
		return kindNone
	}
	top, sub, ok := strings.Cut(mt, "/")
	if !ok {
		return kindOther
	}
	switch {
	case sub == "json" || strings.HasSuffix(sub, "+json"):
		return kindJSON
	case top == "application" && sub == "x-www-form-urlencoded":
		return kindForm
	case top == "text", sub == "xml", strings.HasSuffix(sub, "+xml"):
		return kindText
	case top == "application":
		switch sub {
		case "x-ndjson", "ndjson", "jsonl", "x-jsonlines", "javascript", "x-javascript", "ecmascript",
			"graphql", "yaml", "x-yaml":
			return kindText
		}
	}
	return kindOther
}

// looksLikeJSON reports whether b starts, after white space, like a JSON
// object or array.
func looksLikeJSON(b []byte) bool {
	i := skipWS(b, 0)
	return i < len(b) && (b[i] == '{' || b[i] == '[')
}

// Body redacts a request or response body according to its Content-Type
// (the header's value; parameters are ignored). The caller passes the
// whole, decoded body: Content-Encoding undone, at most
// redaction.max_body_bytes.
//
//   - application/json and */*+json: JSON fields and detectors over string
//     values; the output is valid JSON and, apart from redacted values,
//     byte for byte the input.
//   - application/x-www-form-urlencoded: named fields and detectors over
//     decoded values.
//   - text/*, XML, NDJSON, JavaScript, GraphQL, YAML: detectors over the
//     text; a text body that parses as a JSON object or array is treated as
//     JSON, so json_fields cannot be dodged by a wrong Content-Type.
//   - no Content-Type: JSON if it parses, text if it is UTF-8.
//   - anything else, and JSON that does not parse, cannot be redacted: with
//     on_unsupported_body: block Body returns an *UnsupportedBodyError and
//     no body; with pass, invalid JSON is scanned as text and other bodies
//     go through untouched.
//
// out is body itself when nothing was redacted. Only the
// *UnsupportedBodyError is ever returned as an error.
func (p *Profile) Body(contentType string, body []byte) (out []byte, rep Report, err error) {
	if len(body) == 0 || !p.InspectsBody() {
		return body, nil, nil
	}
	mt := mediaType(contentType)
	r := p.newRun()
	refuse := func(reason string) ([]byte, Report, error) {
		if len(mt) > maxMediaTypeInError {
			mt = mt[:maxMediaTypeInError]
		}
		return nil, nil, &UnsupportedBodyError{Profile: p.name, MediaType: mt, Reason: reason}
	}
	switch classify(mt) {
	case kindJSON:
		if out, ok := r.json(body); ok {
			return out, r.report(), nil
		}
		if !p.passOther {
			return refuse("the body is not valid JSON")
		}
		r.resetCounts()
		return r.text(body), r.report(), nil
	case kindForm:
		out, _ := r.urlEncoded(body)
		return out, r.report(), nil
	case kindText:
		return r.textOrJSON(body), r.report(), nil
	case kindNone:
		if looksLikeJSON(body) || utf8.Valid(body) {
			return r.textOrJSON(body), r.report(), nil
		}
		if !p.passOther {
			return refuse("the body has no content type and is not text")
		}
		return body, nil, nil
	}
	if !p.passOther {
		return refuse("only JSON, form and text bodies can be redacted")
	}
	return body, nil, nil
}

func (r *run) textOrJSON(body []byte) []byte {
	if looksLikeJSON(body) {
		if out, ok := r.json(body); ok {
			return out
		}
		r.resetCounts()
	}
	return r.text(body)
}

func (r *run) text(body []byte) []byte {
	out, _ := r.redactText(body)
	return out
}
