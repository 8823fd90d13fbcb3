package hooks

import "fmt"

// CompileError is a script that does not compile: a syntax error, an
// unknown variable, or an import of a module hooks may not use. Error()
// reads FILE:LINE: message, the form `egressgw check` prints.
type CompileError struct {
	File    string
	Line    int // 1-based; 0 when the compiler gave no position
	Column  int // 1-based; 0 when unknown
	Message string
}

func (e *CompileError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Message)
}

// FailureKind says why a hook run failed. Every kind means the same to a
// client (502 hook_failed); the kinds exist for metrics, logs and tests.
type FailureKind int

// The ways a run can fail.
const (
	// FailRuntime: the script raised a runtime error (bad operand, call of
	// undefined, stack overflow) or crashed the VM.
	FailRuntime FailureKind = iota + 1
	// FailAllocLimit: the script allocated more than max_allocs objects.
	FailAllocLimit
	// FailMemoryLimit: the run tried to hold more than max_memory bytes.
	FailMemoryLimit
	// FailTimeout: the run took longer than its timeout.
	FailTimeout
	// FailInvalidOutput: the script left a value the gateway cannot send:
	// a header with a line break, a non-string body, a body over
	// max_body_bytes, a JSON value that cannot be encoded, deny not a string.
	FailInvalidOutput
	// FailUnavailable: the script never ran to an answer: the runtime is
	// closed, a worker could not start or crashed, or the caller's context
	// ended while the run waited for its turn.
	FailUnavailable
)

// String returns a short snake_case name, usable as a metric label.
func (k FailureKind) String() string {
	switch k {
	case FailRuntime:
		return "runtime_error"
	case FailAllocLimit:
		return "alloc_limit"
	case FailMemoryLimit:
		return "memory_limit"
	case FailTimeout:
		return "timeout"
	case FailInvalidOutput:
		return "invalid_output"
	case FailUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("failure_kind_%d", int(k))
}

// RunError is a hook run that failed closed: the proxy answers 502
// hook_failed with Error() as the message. The message names the script
// and, when the VM knew it, the line; it never holds a Go stack trace.
type RunError struct {
	Script  string
	Line    int // 0 when unknown (limits enforced outside the VM, crashes)
	Column  int
	Kind    FailureKind
	Message string
	Err     error // the cause when it came from outside the script, e.g. ctx.Err()
}

func (e *RunError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.Script, e.Line, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Script, e.Message)
}

func (e *RunError) Unwrap() error { return e.Err }

// BodyTooLargeError is a body larger than max_body_bytes: the script did
// not run, and the proxy answers 413 body_too_large (docs/reference.md, "What clients see"), because a
// hook that cannot see the whole body must not pass it on unseen.
type BodyTooLargeError struct {
	Script string
	Size   int64
	Limit  int64
}

func (e *BodyTooLargeError) Error() string {
	return fmt.Sprintf("%s: body of %d bytes is larger than the hook's max_body_bytes (%d)",
		e.Script, e.Size, e.Limit)
}
