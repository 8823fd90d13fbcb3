package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cpuPinning splits the machine's CPUs between the proxy under test and
// the harness (clients and upstreams), so that on a small machine the
// proxy's cost shows as what it is — its own CPU keeping up or not —
// rather than as CPU taken from the load it serves. A nil *cpuPinning
// pins nothing.
type cpuPinning struct {
	proxy   []int // CPUs the proxies run on
	harness []int // every other CPU the harness was allowed
}

// parseCPUList reads a list such as "1", "2,3" or "0-3,6".
func parseCPUList(s string) ([]int, error) {
	var cpus []int
	for _, part := range splitList(s) {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		if err != nil || first < 0 {
			return nil, fmt.Errorf("CPU list %q: %q is not a CPU number", s, lo)
		}
		last := first
		if isRange {
			if last, err = strconv.Atoi(hi); err != nil || last < first {
				return nil, fmt.Errorf("CPU list %q: bad range %q", s, part)
			}
		}
		if last >= 1024 {
			return nil, fmt.Errorf("CPU list %q: CPU %d is out of range", s, last)
		}
		for c := first; c <= last; c++ {
			if !slices.Contains(cpus, c) {
				cpus = append(cpus, c)
			}
		}
	}
	if len(cpus) == 0 {
		return nil, fmt.Errorf("CPU list %q names no CPU", s)
	}
	slices.Sort(cpus)
	return cpus, nil
}

// newCPUPinning gives the proxies the CPUs in proxyList and the harness
// every other CPU it is allowed to run on; both sides must keep at least
// one.
func newCPUPinning(proxyList string) (*cpuPinning, error) {
	proxy, err := parseCPUList(proxyList)
	if err != nil {
		return nil, err
	}
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		return nil, fmt.Errorf("read the harness's CPU affinity: %w", err)
	}
	p := &cpuPinning{proxy: proxy}
	for c := range 1024 {
		if allowed.IsSet(c) && !slices.Contains(proxy, c) {
			p.harness = append(p.harness, c)
		}
	}
	for _, c := range proxy {
		if !allowed.IsSet(c) {
			return nil, fmt.Errorf("--proxy-cpus: CPU %d is not one this process may use", c)
		}
	}
	if len(p.harness) == 0 {
		return nil, errors.New("--proxy-cpus leaves no CPU for the harness")
	}
	return p, nil
}

func cpuSetOf(cpus []int) *unix.CPUSet {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	return &set
}

// pinHarness moves every thread of this process onto the harness's CPUs
// and sizes GOMAXPROCS to them. Threads the runtime starts later are
// cloned from these and inherit the mask.
func (p *cpuPinning) pinHarness() error {
	if p == nil {
		return nil
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("list the harness's threads: %w", err)
	}
	set := cpuSetOf(p.harness)
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pin harness thread %d: %w", tid, err)
		}
	}
	runtime.GOMAXPROCS(len(p.harness))
	return nil
}

// start starts cmd on the proxies' CPUs: from a thread locked to this
// goroutine whose mask is the proxies', so the child inherits that mask
// from its first instruction (a mask set after start would miss threads
// the child made meanwhile). The thread must outlive the child, whose
// parent-death signal fires when the thread that started it ends: the
// goroutine holds it until exited is closed, and then ends still locked,
// so the runtime retires the thread rather than reuse it with the wrong
// mask. Threads the runtime needs meanwhile come from its template thread.
func (p *cpuPinning) start(cmd *exec.Cmd, exited <-chan struct{}) error {
	if p == nil {
		return cmd.Start()
	}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.SchedSetaffinity(0, cpuSetOf(p.proxy)); err != nil {
			started <- fmt.Errorf("pin to CPUs %v: %w", p.proxy, err)
			return
		}
		err := cmd.Start()
		started <- err
		if err == nil {
			<-exited
		}
	}()
	return <-started
}

// describe is the note the report carries about the pinning.
func (p *cpuPinning) describe() string {
	return fmt.Sprintf("proxies pinned to CPU %s, the harness (clients and upstreams; direct's too) to CPU %s", formatCPUList(p.proxy), formatCPUList(p.harness))
}

func formatCPUList(cpus []int) string {
	parts := make([]string, len(cpus))
	for i, c := range cpus {
		parts[i] = strconv.Itoa(c)
	}
	return strings.Join(parts, ",")
}
