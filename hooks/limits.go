package hooks

import (
	"errors"
	"fmt"
	"time"
)

// Limits bound one hook run (docs/connector-authors.md, "Hooks"). A zero field means "not set here":
// Or fills it from the next level (connector → gateway defaults →
// DefaultLimits).
type Limits struct {
	// MaxAllocs is Tengo's own limit: objects the VM may allocate (every
	// operator result, literal and call return), whatever their size.
	MaxAllocs int64
	// MaxMemory is the bytes the run may hold: the request or response as
	// the script sees it (body, decoded JSON), everything the script
	// builds, and the result. Enforced by the operating system on the
	// worker process that runs the script; see the package comment.
	MaxMemory int64
	// Timeout bounds the script's own run. The worker is killed if it has
	// not answered by HardDeadline.
	Timeout time.Duration
	// MaxBodyBytes is the largest body a hook accepts (larger: a
	// *BodyTooLargeError, 413) and the largest it may produce (larger:
	// FailInvalidOutput).
	MaxBodyBytes int64
}

// DefaultLimits are the defaults of gateway.yaml's hooks.defaults (docs/reference.md).
func DefaultLimits() Limits {
	return Limits{
		MaxAllocs:    200_000,
		MaxMemory:    32 << 20,
		Timeout:      50 * time.Millisecond,
		MaxBodyBytes: 1 << 20,
	}
}

// Bounds a config may choose within. Below minMaxMemory a worker cannot
// hold its own JSON conversion of a small body; the upper bounds keep a
// typo (a missing unit) from turning a limit off.
const (
	minMaxMemory = 4 << 20
	maxMaxMemory = 16 << 30
	maxMaxAllocs = 1 << 40
	maxTimeout   = time.Minute
)

// Or returns l with each zero field taken from d.
func (l Limits) Or(d Limits) Limits {
	if l.MaxAllocs == 0 {
		l.MaxAllocs = d.MaxAllocs
	}
	if l.MaxMemory == 0 {
		l.MaxMemory = d.MaxMemory
	}
	if l.Timeout == 0 {
		l.Timeout = d.Timeout
	}
	if l.MaxBodyBytes == 0 {
		l.MaxBodyBytes = d.MaxBodyBytes
	}
	return l
}

// Validate reports a limit a run cannot work with, naming the config key.
// Call it on complete limits (after Or), at config load.
func (l Limits) Validate() error {
	var errs []error
	if l.MaxAllocs < 1 || l.MaxAllocs > maxMaxAllocs {
		errs = append(errs, fmt.Errorf("max_allocs %d: must be between 1 and %d", l.MaxAllocs, int64(maxMaxAllocs)))
	}
	if l.MaxMemory < minMaxMemory || l.MaxMemory > maxMaxMemory {
		errs = append(errs, fmt.Errorf("max_memory %d: must be between 4MiB and 16GiB", l.MaxMemory))
	}
	if l.Timeout < time.Millisecond || l.Timeout > maxTimeout {
		errs = append(errs, fmt.Errorf("timeout %s: must be between 1ms and %s", l.Timeout, maxTimeout))
	}
	// A run holds the body several times over (as received, as a script
	// string, decoded as JSON, as the result), all within max_memory.
	if l.MaxBodyBytes < 1 || l.MaxBodyBytes > l.MaxMemory/4 {
		errs = append(errs, fmt.Errorf("max_body_bytes %d: must be between 1 and a quarter of max_memory (%d)",
			l.MaxBodyBytes, l.MaxMemory/4))
	}
	return errors.Join(errs...)
}

// HardDeadline is how long the gateway waits for a worker's answer before
// it kills the worker: the script's timeout is enforced inside the VM
// between instructions, but a single builtin call (a regexp over a large
// string, say) cannot be interrupted there. The margin absorbs the
// conversions around the script and a loaded machine.
func (l Limits) HardDeadline() time.Duration {
	return 2*l.Timeout + 2*time.Second
}
