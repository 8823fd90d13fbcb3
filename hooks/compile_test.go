package hooks

import (
	"errors"
	"strings"
	"testing"
)

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		wantLine int
		message  string // part of the message
	}{
		{"syntax error", "x := 1\n\ny := )\nz := 2\n", 3, "expected operand"},
		{"import of os", "text := import(\"text\")\nos := import(\"os\")\n", 2, `module "os" may not be imported`},
		{"import of rand", "r := import(\"rand\")", 1, `module "rand" may not be imported`},
		{"import of a file", "m := import(\"./other\")", 1, "may not be imported"},
		{"undefined name", "x := 1\n\nrequest.headers[\"A\"] = undefined_thing\n", 3, "unresolved reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile("hooks/bad.tengo", []byte(tt.src))
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T), want a *CompileError", err, err)
			}
			if ce.File != "hooks/bad.tengo" || ce.Line != tt.wantLine {
				t.Errorf("at %s:%d, want hooks/bad.tengo:%d", ce.File, ce.Line, tt.wantLine)
			}
			if !strings.Contains(ce.Message, tt.message) {
				t.Errorf("message %q does not mention %q", ce.Message, tt.message)
			}
			if prefix := "hooks/bad.tengo:" + itoa(tt.wantLine) + ": "; !strings.HasPrefix(ce.Error(), prefix) {
				t.Errorf("Error() = %q, want it to start with %q", ce.Error(), prefix)
			}
		})
	}
}

func itoa(n int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}
