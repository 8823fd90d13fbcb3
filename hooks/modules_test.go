//go:build linux

package hooks

import (
	"context"
	"strings"
	"testing"
)

func TestAllowedModulesCompile(t *testing.T) {
	src := `
text := import("text")
math := import("math")
times := import("times")
json := import("json")
base64 := import("base64")
hex := import("hex")
enum := import("enum")
fmt := import("fmt")
request.headers["X-All"] = [
	text.to_upper("a"), string(math.abs(-2)), string(times.second),
	string(json.encode({b: 1, a: [1, 2]})), base64.encode("hi"), hex.encode("hi"),
	string(enum.all([1, 2], func(k, v) { return v > 0 })), fmt.sprintf("%d-%s", 7, "x"),
	string(json.decode("[1, 2.5, null]"))
]`
	s := mustCompile(t, "hooks/all.tengo", src)
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 1})
	out, _, err := rt.RunRequest(context.Background(), s, sampleMeta, sampleRequest(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"A", "2", "1000000000", `{"a":[1,2],"b":1}`, "aGk=", "6869", "true", "7-x", "[1, 2.5, <undefined>]"}
	got := out.Headers["X-All"]
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("X-All = %q, want %q", got, want)
	}
}

// Functions with side effects in allowed modules fail at run time, with
// the line and what to use instead.
func TestUnavailableFunctions(t *testing.T) {
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 1})
	tests := []struct{ src, message string }{
		{"fmt := import(\"fmt\")\nfmt.println(\"hi\")", "fmt.println is not available in hooks"},
		{"fmt := import(\"fmt\")\nfmt.printf(\"%d\", 1)", "fmt.printf is not available in hooks"},
		{"times := import(\"times\")\ntimes.sleep(1000000000)", "times.sleep is not available in hooks"},
	}
	for _, tt := range tests {
		s := mustCompile(t, "hooks/fx.tengo", tt.src)
		_, _, err := rt.RunRequest(context.Background(), s, sampleMeta, sampleRequest(), Limits{})
		re := runError(t, err, FailRuntime)
		if re.Line != 2 || !strings.Contains(re.Message, tt.message) {
			t.Errorf("error %q at line %d, want line 2 and %q", re, re.Line, tt.message)
		}
	}
}

func TestRuntimeErrorHasLine(t *testing.T) {
	rt := newTestRuntime(t, RuntimeConfig{MaxConcurrent: 1})
	s := mustCompile(t, "hooks/oops.tengo", "x := 1\ny := \"a\"\nz := x + y\n")
	_, _, err := rt.RunRequest(context.Background(), s, sampleMeta, sampleRequest(), Limits{})
	re := runError(t, err, FailRuntime)
	if got, want := re.Error(), "hooks/oops.tengo:3: invalid operation: int + string"; got != want {
		t.Errorf("error %q, want %q", got, want)
	}

	// Inside a function called through a standard module, the position is
	// still the script's own line.
	s = mustCompile(t, "hooks/oops.tengo", "enum := import(\"enum\")\nenum.each([1], func(k, v) {\n  x := v + \"a\"\n})\n")
	_, _, err = rt.RunRequest(context.Background(), s, sampleMeta, sampleRequest(), Limits{})
	if re := runError(t, err, FailRuntime); re.Line != 3 {
		t.Errorf("error %q at line %d, want 3", re, re.Line)
	}
}
