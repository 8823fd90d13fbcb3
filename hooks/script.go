package hooks

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/d5/tengo/v2"
	"github.com/d5/tengo/v2/parser"
)

// Script is a compiled hook: safe to share between goroutines and runs,
// immutable. Build it once at config load with Compile.
type Script struct {
	name   string
	source []byte
	// key names this exact script (name, source and whether it has the
	// event variable) to the workers, which compile it once and keep the
	// bytecode.
	key scriptKey
	// events: compiled by CompileEventHook, so it may run per event.
	events bool
}

type scriptKey [sha256.Size]byte

// Name is the file name the script was compiled under; errors and
// positions use it.
func (s *Script) Name() string { return s.name }

// PerEvent reports whether the script was compiled by CompileEventHook,
// so Runtime.NewEventHook accepts it.
func (s *Script) PerEvent() bool { return s.events }

// The variables the gateway sets before a run (docs/connector-authors.md, "Hooks"). Their order is
// their global index in every compiled script.
const (
	globalRequest = iota
	globalResponse
	globalTenant
	globalConnector
	globalDeny
	// globalEvent exists only in scripts compiled by CompileEventHook, so
	// that it does not take the name from an ordinary hook's own variables.
	globalEvent
)

var globalNames = [...]string{
	globalRequest:   "request",
	globalResponse:  "response",
	globalTenant:    "tenant",
	globalConnector: "connector",
	globalDeny:      "deny",
	globalEvent:     "event",
}

// Compile checks src and returns the script. name is the script's file as
// the config names it (hooks/github_request.tengo); errors and runtime
// positions use it. A syntax error, an undefined name or an import of a
// module outside text, math, times, json, base64, hex, enum and fmt is a
// *CompileError with the line.
func Compile(name string, src []byte) (*Script, error) {
	return compile(name, src, false)
}

// CompileEventHook is Compile for a response script that also runs once
// per event of a streamed body (Runtime.NewEventHook): the script has one
// more variable, event, which is undefined when it runs on a whole
// response (docs/connector-authors.md, "Hooks on streamed responses").
func CompileEventHook(name string, src []byte) (*Script, error) {
	return compile(name, src, true)
}

func compile(name string, src []byte, events bool) (*Script, error) {
	if _, err := compileProgram(name, src, events); err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{0})
	if events {
		h.Write([]byte{1})
	}
	h.Write(src)
	s := &Script{name: name, source: append([]byte(nil), src...), events: events}
	h.Sum(s.key[:0])
	return s, nil
}

// program is a script compiled to bytecode, ready for a VM. Only workers
// hold programs; the gateway compiles just to check.
type program struct {
	name       string
	events     bool // has the event variable
	bytecode   *tengo.Bytecode
	numGlobals int
}

func compileProgram(name string, src []byte, events bool) (*program, error) {
	if len(src) > tengo.MaxStringLen {
		return nil, &CompileError{File: name, Message: "script too large"}
	}
	fileSet := parser.NewFileSet()
	srcFile := fileSet.AddFile(name, -1, len(src))
	file, err := parser.NewParser(srcFile, src, nil).ParseFile()
	if err != nil {
		return nil, parseError(name, err)
	}

	symbols := tengo.NewSymbolTable()
	for idx, fn := range tengo.GetAllBuiltinFunctions() {
		symbols.DefineBuiltin(idx, fn.Name)
	}
	for i, g := range globalNames {
		if i == globalEvent && !events {
			continue
		}
		symbols.Define(g)
	}
	c := tengo.NewCompiler(srcFile, symbols, nil, allowedModules(), nil)
	if err := c.Compile(file); err != nil {
		return nil, compilerError(name, err)
	}
	bytecode := c.Bytecode()
	bytecode.RemoveDuplicates()
	return &program{name: name, events: events, bytecode: bytecode, numGlobals: symbols.MaxSymbols() + 1}, nil
}

// parseError turns the parser's error list into one CompileError at the
// first error, which is the one to fix first.
func parseError(name string, err error) error {
	var list parser.ErrorList
	if errors.As(err, &list) && len(list) > 0 {
		first := list[0]
		msg := first.Msg
		if len(list) > 1 {
			msg = fmt.Sprintf("%s (and %d more errors)", msg, len(list)-1)
		}
		return &CompileError{File: name, Line: first.Pos.Line, Column: first.Pos.Column, Message: msg}
	}
	return &CompileError{File: name, Message: err.Error()}
}

func compilerError(name string, err error) error {
	var ce *tengo.CompilerError
	if !errors.As(err, &ce) {
		return &CompileError{File: name, Message: err.Error()}
	}
	pos := ce.FileSet.Position(ce.Node.Pos())
	msg := ce.Err.Error()
	if imp, ok := ce.Node.(*parser.ImportExpr); ok && strings.Contains(msg, "not found") {
		msg = fmt.Sprintf("module %q may not be imported by a hook (allowed: %s)",
			imp.ModuleName, strings.Join(allowedModuleNames, ", "))
	}
	if pos.Filename != "" && pos.Filename != name {
		// The error sits inside a standard module the script imported.
		msg = fmt.Sprintf("%s (in module %s, line %d)", msg, pos.Filename, pos.Line)
		return &CompileError{File: name, Message: msg}
	}
	return &CompileError{File: name, Line: pos.Line, Column: pos.Column, Message: msg}
}
