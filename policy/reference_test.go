package policy

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestReferenceDocumentsEveryKey fails when a key the config decoder
// accepts is missing from docs/reference.md, in the section of its file:
// the reference is the users' contract, so it must never fall behind.
func TestReferenceDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../docs/reference.md")
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]string{}
	for _, part := range strings.Split(string(data), "\n## ")[1:] {
		title, body, _ := strings.Cut(part, "\n")
		sections[title] = body
	}
	for _, file := range []struct {
		section string
		typ     reflect.Type
	}{
		{"gateway.yaml", reflect.TypeFor[gatewayFile]()},
		{"tenants/ID.yaml", reflect.TypeFor[tenantFile]()},
		{"connectors/NAME.yaml", reflect.TypeFor[connectorFile]()},
	} {
		body, ok := sections[file.section]
		if !ok {
			t.Errorf("docs/reference.md has no section %q", file.section)
			continue
		}
		for _, key := range configKeys(file.typ, "") {
			if !documented(body, key) {
				t.Errorf("docs/reference.md, section %s: key %s is not documented", file.section, key)
			}
		}
	}
}

// documented reports whether key has a table row of its own in body, or
// an ancestor's row says its keys are the same as ones documented
// elsewhere ("same keys as").
func documented(body, key string) bool {
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		if strings.Contains(line, "`"+key+"`") {
			return true
		}
		for ancestor := key; strings.Contains(ancestor, "."); {
			ancestor = ancestor[:strings.LastIndex(ancestor, ".")]
			if strings.Contains(line, "`"+ancestor+"`") && strings.Contains(line, "same keys as") {
				return true
			}
		}
	}
	return false
}

// secretSourceType is documented as a value type of its own ("secret
// source"), not key by key.
var secretSourceType = reflect.TypeFor[secretSourceFile]()

// configKeys lists the dotted YAML keys of typ: map keys as NAME, list
// elements as [].
func configKeys(typ reflect.Type, prefix string) []string {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ == secretSourceType {
		return []string{prefix}
	}
	switch typ.Kind() {
	case reflect.Map:
		if elem := typ.Elem(); elem.Kind() != reflect.Struct && elem.Kind() != reflect.Pointer {
			return []string{prefix} // a map of plain values, such as headers
		}
		return configKeys(typ.Elem(), prefix+".NAME")
	case reflect.Slice:
		if elem := typ.Elem(); elem.Kind() == reflect.Struct {
			return configKeys(elem, prefix+"[]")
		}
		return []string{prefix}
	case reflect.Struct:
	default:
		return []string{prefix}
	}
	var keys []string
	for i := range typ.NumField() {
		field := typ.Field(i)
		name, opts, _ := strings.Cut(field.Tag.Get("yaml"), ",")
		if opts == "inline" {
			keys = append(keys, configKeys(field.Type, prefix)...)
			continue
		}
		if name == "" || name == "-" {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		keys = append(keys, configKeys(field.Type, path)...)
	}
	return keys
}
