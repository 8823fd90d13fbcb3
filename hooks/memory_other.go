//go:build !linux

package hooks

import (
	"errors"
	"os"
	"syscall"
)

// Hook workers need Linux: RLIMIT_DATA bounding every private writable
// mapping is what enforces max_memory (see memory_linux.go). Elsewhere a
// worker refuses to start, and so does a Runtime, rather than run scripts
// unbounded.
var errNoMemoryLimit = errors.New("hooks: running hooks needs Linux, whose RLIMIT_DATA enforces max_memory")

type memoryGuard struct{ applied int64 }

func newMemoryGuard() (*memoryGuard, error)   { return nil, errNoMemoryLimit }
func (*memoryGuard) roomFor(int64) bool       { return false }
func (*memoryGuard) apply(int64) error        { return errNoMemoryLimit }
func workerSysProcAttr() *syscall.SysProcAttr { return nil }
func lowerThreadStacks()                      {}

func workerExecutable() (workerImage, error) {
	exe, err := os.Executable()
	return workerImage{path: exe}, err
}

func maxRSS(*os.ProcessState) int64 { return 0 }
func growPipe(*os.File)             {}
