//go:build linux

package hooks

import (
	"bytes"
	"fmt"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"syscall"

	"github.com/d5/tengo/v2"
)

// memoryGuard enforces max_memory inside a worker, in three layers:
//
//  1. RLIMIT_DATA, the kernel's cap on the process's private writable
//     mappings (the Go heap, goroutine stacks, the runtime's metadata), set
//     to the worker's size at start plus max_memory plus slack. Go never
//     returns heap mappings, so this bounds everything a run can hold; an
//     allocation past it fails inside the Go runtime, which ends the
//     worker with "out of memory", and the gateway reports memory_limit.
//     Nothing a script does can allocate around it.
//  2. A soft limit (debug.SetMemoryLimit) at max_memory above the start
//     size, so the garbage collector works harder before the hard cap, and
//     a run that merely churns through garbage is not killed for it.
//  3. tengo.MaxStringLen and MaxBytesLen set to max_memory, so a single
//     oversized string or bytes value (text.repeat, s + s, bytes(n)) is a
//     clean script error with its line instead of a dead worker.
//
// The settings are per process, which is why each worker runs one script
// at a time.
type memoryGuard struct {
	baseData  uint64 // VmData when the worker started, bytes
	baseGo    uint64 // memory the Go runtime had mapped when the worker started
	rlimitMax uint64 // the hard RLIMIT_DATA the gateway was started with
	applied   int64  // the max_memory the current limits were set for

	// The last reading of the data size, and the Go runtime's mapped
	// memory then: reading /proc costs a few microseconds, so roomFor
	// reads it again only when the runtime has mapped more since, or
	// every dataRecheckRuns runs (threads and C allocations grow the data
	// size without the Go runtime knowing).
	lastData      uint64
	lastGoMapped  uint64
	runsSinceRead int
}

const dataRecheckRuns = 64

// memorySlack is what a worker may hold beyond max_memory before the
// kernel refuses it: the runtime's own structures grow with the heap, and
// between the soft and the hard limit the collector needs room to work.
func memorySlack(maxMemory int64) int64 { return 16<<20 + maxMemory/4 }

func newMemoryGuard() (*memoryGuard, error) {
	data, err := processDataBytes()
	if err != nil {
		return nil, err
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_DATA, &lim); err != nil {
		return nil, fmt.Errorf("reading RLIMIT_DATA: %w", err)
	}
	return &memoryGuard{baseData: data, baseGo: goMappedBytes(), rlimitMax: lim.Max}, nil
}

// retireHeadroom is the room a worker keeps below its hard limit: for a
// new thread's stack, a new heap chunk, the next run's input. A worker
// with less (a run grew its heap near the limit, and Go keeps heap
// mappings) retires rather than fail the next, innocent run.
const retireHeadroom = 8 << 20

// roomFor reports whether the worker has room below the hard limit a run
// with maxMemory gets: false after a run that came close to its limit, or
// when an earlier run under a larger max_memory grew the heap past what
// this run may use (mapped heap is reused without the kernel seeing an
// allocation).
func (g *memoryGuard) roomFor(maxMemory int64) bool {
	mapped := goMappedBytes()
	g.runsSinceRead++
	if g.lastData == 0 || mapped > g.lastGoMapped || g.runsSinceRead >= dataRecheckRuns {
		data, err := processDataBytes()
		if err != nil {
			return false
		}
		g.lastData, g.lastGoMapped, g.runsSinceRead = data, mapped, 0
	}
	return g.lastData+retireHeadroom <= g.hardLimit(maxMemory)
}

func (g *memoryGuard) hardLimit(maxMemory int64) uint64 {
	return g.baseData + uint64(maxMemory+memorySlack(maxMemory))
}

func (g *memoryGuard) apply(maxMemory int64) error {
	if maxMemory == g.applied {
		return nil
	}
	hard := g.hardLimit(maxMemory)
	if hard > g.rlimitMax {
		return fmt.Errorf("max_memory %d needs RLIMIT_DATA %d, above the hard limit %d", maxMemory, hard, g.rlimitMax)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_DATA, &syscall.Rlimit{Cur: hard, Max: g.rlimitMax}); err != nil {
		return fmt.Errorf("setting RLIMIT_DATA: %w", err)
	}
	debug.SetMemoryLimit(int64(g.baseGo) + maxMemory)
	tengo.MaxStringLen = int(maxMemory)
	tengo.MaxBytesLen = int(maxMemory)
	g.applied = maxMemory
	return nil
}

// goMappedBytes is all memory the Go runtime has mapped read-write,
// including heap pages it has returned to the kernel but keeps mapped.
func goMappedBytes() uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

// processDataBytes reads the process's data size from /proc/self/statm
// (VmData plus the main stack, which is small and fixed): what
// RLIMIT_DATA is checked against. One short read, a few microseconds.
func processDataBytes() (uint64, error) {
	statm, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	// size resident shared text lib data dt, in pages
	fields := bytes.Fields(statm)
	if len(fields) < 6 {
		return 0, fmt.Errorf("unexpected /proc/self/statm: %q", statm)
	}
	pages, err := strconv.ParseUint(string(fields[5]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unexpected /proc/self/statm: %q", statm)
	}
	return pages * uint64(os.Getpagesize()), nil
}

// workerThreadStack is the stack size a worker's C threads get. A Go
// program linked with cgo starts its threads with pthread_create, whose
// default stack is RLIMIT_STACK (often 8 MiB) of private writable memory:
// it counts against RLIMIT_DATA like heap, so a worker that needed a new
// thread near its limit would die of it. Go code never runs on those
// stacks beyond the runtime's own small system-stack work.
const workerThreadStack = 1 << 20

// workerStackLoweredVar marks a worker that already re-executed itself
// with the smaller stack limit.
const workerStackLoweredVar = "EGRESSGW_HOOKS_WORKER_STACK"

// lowerThreadStacks re-executes the worker with RLIMIT_STACK at
// workerThreadStack, because the C library reads the limit once, at
// program start. It returns only if no re-execution was needed or possible.
func lowerThreadStacks() {
	if os.Getenv(workerStackLoweredVar) != "" {
		return
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_STACK, &lim); err != nil || lim.Cur <= workerThreadStack {
		return
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_STACK, &syscall.Rlimit{Cur: workerThreadStack, Max: lim.Max}); err != nil {
		return
	}
	env := append(os.Environ(), workerStackLoweredVar+"=1")
	// The pipes (descriptors 3 and 4) and the executable (5) are inherited
	// without close-on-exec.
	_ = syscall.Exec(workerImagePath, os.Args, env) // returns only on failure: carry on with big stacks
}

// selfExe is the running executable's file, even if it was replaced or
// deleted on disk since (an upgrade in place): workers must run the same
// code as the gateway that speaks to them.
const selfExe = "/proc/self/exe"

// workerImagePath is where a starting worker finds the executable: the
// gateway opens selfExe once and hands it down as descriptor 5, and the
// worker is executed from that descriptor (as fexecve does). Executing
// selfExe itself would run whatever the kernel calls this process's
// executable when the worker starts, which under a program loader such as
// valgrind is the loader, not the gateway.
const workerImagePath = "/proc/self/fd/5"

func workerExecutable() (workerImage, error) {
	f, err := os.Open(selfExe)
	if err != nil {
		return workerImage{}, err
	}
	return workerImage{path: workerImagePath, file: f}, nil
}

// workerSysProcAttr kills a worker when the gateway dies, should the
// worker be busy rather than reading (it exits on its own at end of input).
func workerSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// maxRSS is a reaped process's peak resident set in bytes.
func maxRSS(state *os.ProcessState) int64 {
	if ru, ok := state.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss << 10 // Linux reports KiB
	}
	return 0
}

// growPipe asks for a 1 MiB pipe buffer (the unprivileged maximum by
// default), so a body up to that size crosses in one write and one wake-up
// instead of sixteen 64 KiB rounds. Best effort: the default still works.
func growPipe(f *os.File) {
	if raw, err := f.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) {
			_, _, _ = syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_SETPIPE_SZ, 1<<20)
		})
	}
}
