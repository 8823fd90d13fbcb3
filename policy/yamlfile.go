package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ConfigError is one problem found in a config file. Line is 0 when the
// problem concerns the file as a whole.
type ConfigError struct {
	File string
	Line int
	Msg  string
	// decodedRest marks a decoding error that skipped only what it is
	// about (an unknown key, a second document) and left the rest of the
	// file decoded in full.
	decodedRest bool
	// wholeFile marks a problem with the file as a whole (refused
	// unread), which has no line.
	wholeFile bool
}

func (e ConfigError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// LoadError lists every problem that stopped a config from loading, in file
// order, so an admin can fix them all in one pass.
type LoadError struct {
	Errors []ConfigError
}

func (e *LoadError) Error() string {
	lines := make([]string, len(e.Errors))
	for i, ce := range e.Errors {
		lines[i] = ce.Error()
	}
	return strings.Join(lines, "\n")
}

// yamlDoc is one decoded file. Its node tree, which points semantic errors
// at their line, is parsed only when an error needs it: a valid config is
// parsed once.
type yamlDoc struct {
	file   string
	data   []byte
	parsed bool
	root   *yaml.Node // the top-level mapping; nil for an empty file
}

var (
	yamlLinePrefix  = regexp.MustCompile(`(?s)^line (\d+): (.*)$`)
	yamlSyntaxLine  = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)
	yamlUnknownKey  = regexp.MustCompile(`(?s)^field (.+) not found in type \S+$`) // a key may hold spaces and line breaks
	yamlFieldTwice  = regexp.MustCompile(`(?s)^field (.+) already set in type \S+$`)
	yamlDuplicate   = regexp.MustCompile(`^mapping key "(.*)" already defined at line (\d+)$`)
	yamlWrongType   = regexp.MustCompile("(?s)^cannot unmarshal !!(\\w+)(?: `(.*)`)? into (.+)$") // no value for a list or mapping
	goTypeToEnglish = map[string]string{
		"int": "a whole number", "int64": "a whole number", "uint16": "a whole number",
		"float64": "a number", "string": "a string", "bool": "true or false",
	}
)

// decodeStrict decodes data into out, refusing unknown keys, duplicate keys,
// wrong types and multiple documents, and returns every problem with its line.
func decodeStrict(file string, data []byte, out any) (*yamlDoc, []ConfigError) {
	doc := &yamlDoc{file: file, data: data}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, io.EOF) {
			return doc, nil // empty file: every key takes its default
		}
		return doc, yamlErrors(file, data, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return doc, []ConfigError{{File: file, Line: extra.Line, Msg: "only one YAML document per file", decodedRest: true}}
	}
	return doc, nil
}

// yamlErrors turns the decoder's errors into ConfigErrors with friendlier
// wording; the line numbers are the decoder's own.
func yamlErrors(file string, data []byte, err error) []ConfigError {
	var typeErr *yaml.TypeError
	if errors.As(err, &typeErr) {
		// A type error means the YAML itself parsed: its tree tells which
		// key a wrong value belongs to.
		var root yaml.Node
		if yaml.Unmarshal(data, &root) != nil {
			root = yaml.Node{}
		}
		out := make([]ConfigError, 0, len(typeErr.Errors))
		for _, msg := range typeErr.Errors {
			ce := parseYAMLMessage(file, msg, yamlLinePrefix)
			if rest, ok := strings.CutPrefix(ce.Msg, "wrong type: "); ok {
				if key := quoteKey(keyAtLine(&root, ce.Line)); key != "" {
					ce.Msg = "wrong type for key" + key + ": " + rest
				}
			}
			out = append(out, ce)
		}
		return out
	}
	return []ConfigError{parseYAMLMessage(file, err.Error(), yamlSyntaxLine)}
}

// parseYAMLMessage words one decoder message. A file that fails to decode
// may be anything (a secret, or a system file a link led to), so the result
// quotes at most a key name, never a value: the decoder's own messages that
// would quote more are replaced by their kind (docs/admins.md).
func parseYAMLMessage(file, msg string, linePattern *regexp.Regexp) ConfigError {
	ce := ConfigError{File: file, Msg: strings.TrimPrefix(msg, "yaml: ")}
	if m := linePattern.FindStringSubmatch(msg); m != nil {
		ce.Line, _ = strconv.Atoi(m[1])
		ce.Msg = m[2]
	}
	switch {
	case yamlUnknownKey.MatchString(ce.Msg):
		ce.Msg = "unknown key" + quoteKey(yamlUnknownKey.FindStringSubmatch(ce.Msg)[1])
		ce.decodedRest = true
	case yamlDuplicate.MatchString(ce.Msg):
		m := yamlDuplicate.FindStringSubmatch(ce.Msg)
		ce.Msg = fmt.Sprintf("duplicate key%s (first set at line %s)", quoteKey(m[1]), m[2])
	case yamlWrongType.MatchString(ce.Msg):
		m := yamlWrongType.FindStringSubmatch(ce.Msg)
		want, ok := goTypeToEnglish[m[3]]
		switch {
		case ok:
		case strings.HasPrefix(m[3], "[]"):
			want = "a list"
		default:
			want = "a mapping"
		}
		got := map[string]string{"seq": "a list", "map": "a mapping", "str": "a string", "int": "a whole number",
			"float": "a number", "bool": "true or false", "null": "nothing", "binary": "binary data", "timestamp": "a timestamp"}[m[1]]
		if got == "" {
			got = "a value"
		}
		ce.Msg = fmt.Sprintf("wrong type: got %s, want %s", got, want)
	case yamlFieldTwice.MatchString(ce.Msg):
		ce.Msg = "duplicate key" + quoteKey(yamlFieldTwice.FindStringSubmatch(ce.Msg)[1])
	case ownDecodeMessage(ce.Msg), yamlSyntaxProblems[ce.Msg], yamlCountedProblem.MatchString(ce.Msg):
	default:
		// Anchors, tags, map keys, or a message this package does not know:
		// it may quote the file, so only its kind and line are told.
		ce.Msg = "not valid here (the value is not quoted: this file did not decode)"
	}
	return ce
}

// yamlSyntaxProblems are the decoder's messages that are fixed phrases,
// quoting nothing from the file; any other message is replaced. A decoder
// update that adds a phrase makes that message less specific, never leaky.
var yamlSyntaxProblems = map[string]bool{
	"block sequence entries are not allowed in this context": true, "control characters are not allowed": true,
	"could not find expected ':'": true, "could not find expected directive name": true,
	"did not find URI escaped octet": true, "did not find expected '!'": true,
	"did not find expected ',' or ']'": true, "did not find expected ',' or '}'": true,
	"did not find expected '-' indicator": true, "did not find expected <document start>": true,
	"did not find expected <stream-start>": true, "did not find expected alphabetic or numeric character": true,
	"did not find expected comment or line break": true, "did not find expected digit or '.' character": true,
	"did not find expected hexdecimal number": true, "did not find expected key": true,
	"did not find expected node content": true, "did not find expected tag URI": true,
	"did not find expected version number": true, "did not find expected whitespace or line break": true,
	"did not find expected whitespace": true, "did not find the expected '>'": true,
	"expected low surrogate area": true, "found a tab character that violates indentation": true,
	"found a tab character where an indentation space is expected": true, "found an incorrect leading UTF-8 octet": true,
	"found an incorrect trailing UTF-8 octet": true, "found an indentation indicator equal to 0": true,
	"found character that cannot start any token": true, "found duplicate %TAG directive": true,
	"found duplicate %YAML directive": true, "found extremely long version number": true,
	"found incompatible YAML document": true, "found invalid Unicode character escape code": true,
	"found undefined tag handle": true, "found unexpected document indicator": true,
	"found unexpected end of stream": true, "found unexpected non-alphabetical character": true,
	"found unknown directive name": true, "found unknown escape character": true,
	"incomplete UTF-16 character": true, "incomplete UTF-16 surrogate pair": true,
	"incomplete UTF-8 octet sequence": true, "invalid Unicode character": true,
	"invalid leading UTF-8 octet": true, "invalid length of a UTF-8 sequence": true,
	"invalid trailing UTF-8 octet": true, "mapping keys are not allowed in this context": true,
	"mapping values are not allowed in this context": true, "unexpected low surrogate area": true,
	"unknown problem parsing YAML content": true, "document contains excessive aliasing": true,
	"map merge requires map or sequence of maps as the value": true, "!!binary value contains invalid base64 data": true,
	"attempted to go past the end of stream; corrupted value?": true,
}

// yamlCountedProblem matches the decoder's messages that hold only numbers
// and words of its own.
var yamlCountedProblem = regexp.MustCompile(`^(exceeded max depth of \d+|invalid array: want \d+ elements but got \d+|expected [a-z ]+ event but got [a-z ]+)$`)

// keyAtLine returns the innermost mapping key whose value holds a node on
// line, or "" when there is none: the key a decoder error on that line is
// about. Only the key is returned, never the value.
func keyAtLine(n *yaml.Node, line int) string {
	if n == nil || line <= 0 {
		return ""
	}
	// The decoder gives no column: where two entries share the line (flow
	// style), the error could be either's, so none is named.
	var found []*yaml.Node
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k, v := n.Content[i], n.Content[i+1]; k.Line == line || holdsLine(v, line) {
				found = append(found, k, v)
			}
		}
		if len(found) != 2 {
			return ""
		}
		if inner := keyAtLine(found[1], line); inner != "" {
			return inner
		}
		return found[0].Value
	}
	for _, c := range n.Content {
		if holdsLine(c, line) {
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		return ""
	}
	return keyAtLine(found[0], line)
}

// holdsLine reports whether n or a node below it is on line.
func holdsLine(n *yaml.Node, line int) bool {
	if n.Line == line {
		return true
	}
	for _, c := range n.Content {
		if holdsLine(c, line) {
			return true
		}
	}
	return false
}

// quoteKey quotes a key name for a message when it looks like one of ours,
// and leaves out anything else a file could hold in a key's place.
func quoteKey(key string) string {
	if keyName.MatchString(key) {
		return fmt.Sprintf(" %q", key)
	}
	return ""
}

var keyName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,39}$`)

// ownDecodeMessage reports whether msg is one this package's decoders
// (Size, Duration) wrote, which quote no value.
func ownDecodeMessage(msg string) bool {
	return strings.HasPrefix(msg, "invalid size:") || strings.HasPrefix(msg, "invalid duration:") || strings.HasPrefix(msg, "want a ")
}

// line returns the line of the value at path (map keys as strings, list
// indices as ints), or of the deepest ancestor that exists, so an error about
// a missing key points at the mapping that lacks it.
func (d *yamlDoc) line(path ...any) int {
	d.parse()
	n := d.root
	if n == nil {
		return 0
	}
	for _, step := range path {
		next := child(n, step)
		if next == nil {
			break
		}
		n = next
	}
	return n.Line
}

// section returns the top-level key whose value holds line, or "" when
// that is unknown: the file does not parse (a syntax error), its top-level
// mapping is written in flow style ({...}, several keys to a line), or the
// line is not inside it.
func (d *yamlDoc) section(line int) string {
	d.parse()
	if d.root == nil || d.root.Kind != yaml.MappingNode || d.root.Style&yaml.FlowStyle != 0 || line <= 0 {
		return ""
	}
	section := ""
	for i := 0; i+1 < len(d.root.Content); i += 2 {
		if d.root.Content[i].Line > line {
			break
		}
		section = d.root.Content[i].Value
	}
	return section
}

func (d *yamlDoc) parse() {
	if d.parsed {
		return
	}
	d.parsed = true
	var root yaml.Node
	if yaml.Unmarshal(d.data, &root) == nil && len(root.Content) > 0 {
		d.root = root.Content[0]
	}
}

func child(n *yaml.Node, step any) *yaml.Node {
	switch s := step.(type) {
	case string:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == s {
				return n.Content[i+1]
			}
		}
	case int:
		if n.Kind == yaml.SequenceNode && s >= 0 && s < len(n.Content) {
			return n.Content[s]
		}
	}
	return nil
}
