package hooks

import (
	"fmt"
	"maps"

	"github.com/d5/tengo/v2"
	"github.com/d5/tengo/v2/stdlib"
)

// allowedModuleNames are the modules a hook may import (docs/connector-authors.md, "Hooks"): all
// free of side effects. os, rand and file imports are not among them.
var allowedModuleNames = []string{"text", "math", "times", "json", "base64", "hex", "enum", "fmt"}

// allowedModules builds the module map scripts compile against. Modules
// are imported at compile time, so a forbidden import is a compile error
// with its line. A few functions of allowed modules are replaced:
//   - times.sleep would hold a worker idle and cannot be interrupted;
//   - fmt.print, printf and println write to the worker's stdout;
//   - json.decode and json.encode recurse without a depth limit in Tengo
//     (deep nesting or a cyclic map overflows the Go stack, which no
//     recover catches); ours check depth and cycles and sort keys.
//
// The replacements fail with a runtime error that names what to use
// instead, so a script author sees the line.
func allowedModules() *tengo.ModuleMap {
	modules := stdlib.GetModuleMap("text", "math", "base64", "hex", "enum")

	times := maps.Clone(stdlib.BuiltinModules["times"])
	times["sleep"] = unavailable("times.sleep", "a hook may not wait; it has a timeout of a few milliseconds")
	modules.AddBuiltinModule("times", times)

	modules.AddBuiltinModule("fmt", map[string]tengo.Object{
		"sprintf": stdlib.BuiltinModules["fmt"]["sprintf"],
		"print":   unavailable("fmt.print", "hooks have no output; use fmt.sprintf"),
		"printf":  unavailable("fmt.printf", "hooks have no output; use fmt.sprintf"),
		"println": unavailable("fmt.println", "hooks have no output; use fmt.sprintf"),
	})

	jsonModule := maps.Clone(stdlib.BuiltinModules["json"])
	jsonModule["decode"] = &tengo.UserFunction{Name: "decode", Value: scriptJSONDecode}
	jsonModule["encode"] = &tengo.UserFunction{Name: "encode", Value: scriptJSONEncode}
	modules.AddBuiltinModule("json", jsonModule)
	return modules
}

func unavailable(name, why string) tengo.Object {
	err := fmt.Errorf("%s is not available in hooks: %s", name, why)
	return &tengo.UserFunction{Name: name, Value: func(...tengo.Object) (tengo.Object, error) {
		return nil, err
	}}
}

// scriptJSONDecode is json.decode for scripts: like Tengo's (an error
// value for bad input, null as undefined, integers as int), but through
// decodeJSON, which is depth-limited.
func scriptJSONDecode(args ...tengo.Object) (tengo.Object, error) {
	if len(args) != 1 {
		return nil, tengo.ErrWrongNumArguments
	}
	var data []byte
	switch o := args[0].(type) {
	case *tengo.String:
		data = []byte(o.Value)
	case *tengo.Bytes:
		data = o.Value
	default:
		return nil, tengo.ErrInvalidArgumentType{Name: "first", Expected: "bytes/string", Found: o.TypeName()}
	}
	v, err := decodeJSON(data)
	if err != nil {
		return &tengo.Error{Value: &tengo.String{Value: err.Error()}}, nil
	}
	return v, nil
}

// scriptJSONEncode is json.encode for scripts: bytes, like Tengo's, but
// with sorted keys, and an error value rather than a crash for a cycle.
func scriptJSONEncode(args ...tengo.Object) (tengo.Object, error) {
	if len(args) != 1 {
		return nil, tengo.ErrWrongNumArguments
	}
	b, err := encodeJSON(nil, args[0])
	if err != nil {
		return &tengo.Error{Value: &tengo.String{Value: err.Error()}}, nil
	}
	if len(b) > tengo.MaxBytesLen {
		return nil, tengo.ErrBytesLimit
	}
	return &tengo.Bytes{Value: b}, nil
}
