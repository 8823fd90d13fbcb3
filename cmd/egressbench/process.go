package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// childProcess is a proxy the harness runs: egressgw, tinyproxy, or the
// harness itself in bare-goproxy mode. It dies with the harness (parent
// death signal), so an interrupted benchmark leaves nothing running.
type childProcess struct {
	name    string
	cmd     *exec.Cmd
	stdout  *outputTail
	stderr  *outputTail
	exited  chan struct{}
	waitErr error // valid once exited is closed
}

// startChild starts cmd, on the proxies' CPUs when pin is not nil. Unless
// the caller set them, its environment is the harness's without proxy
// variables, and its output is kept (the last few KiB) for error messages.
func startChild(name string, cmd *exec.Cmd, pin *cpuPinning) (*childProcess, error) {
	if cmd.Env == nil {
		cmd.Env = childEnv()
	}
	c := &childProcess{name: name, cmd: cmd, stdout: newOutputTail(), stderr: newOutputTail(), exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.stdout, c.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := pin.start(cmd, c.exited); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *childProcess) pid() int { return c.cmd.Process.Pid }

// exitError is non-nil once the process has ended, with its output.
func (c *childProcess) exitError() error {
	select {
	case <-c.exited:
		return fmt.Errorf("%s exited (%v); output:\n%s", c.name, c.waitErr, c.output())
	default:
		return nil
	}
}

func (c *childProcess) output() string {
	return strings.TrimSpace(c.stdout.String() + "\n" + c.stderr.String())
}

// waitReady polls probe until it succeeds, the process exits or timeout
// passes.
func (c *childProcess) waitReady(ctx context.Context, timeout time.Duration, probe func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := c.exitError(); err != nil {
			return err
		}
		probeCtx, cancel := context.WithTimeout(ctx, time.Second)
		err := probe(probeCtx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w; output:\n%s", c.name, timeout, err, c.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop asks the process to end (SIGTERM) and kills it if it has not after
// grace.
func (c *childProcess) stop(grace time.Duration) error {
	select {
	case <-c.exited:
		return nil
	default:
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", c.name, err)
	}
	select {
	case <-c.exited:
		return nil
	case <-time.After(grace):
	}
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", c.name, err)
	}
	<-c.exited
	return nil
}

// rssKiB reads the resident set size of a process from /proc.
func rssKiB(pid int) (float64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("read RSS of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fields := strings.Fields(rest) // "1234 kB"
			if len(fields) == 2 && fields[1] == "kB" {
				n, err := strconv.ParseFloat(fields[0], 64)
				if err == nil {
					return n, nil
				}
			}
			return 0, fmt.Errorf("pid %d: unexpected VmRSS line %q", pid, line)
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in /proc status", pid)
}

// clockTicksPerSecond is the unit of the CPU times in /proc/PID/stat
// (USER_HZ, 100 on every Linux this runs on).
const clockTicksPerSecond = 100

// cpuSeconds reads the user plus system CPU time a process (all its
// threads, live and exited) has used so far.
func cpuSeconds(pid int) (float64, error) {
	user, system, err := cpuTimes(pid)
	return user + system, err
}

// cpuTimes returns the CPU seconds pid has spent in user space and in the
// kernel.
func cpuTimes(pid int) (user, system float64, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("read CPU time of pid %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from the last ')'. After it come state (field 3) ... utime (14) and
	// stime (15).
	text := string(data)
	fields := strings.Fields(text[strings.LastIndexByte(text, ')')+1:])
	if len(fields) < 13 {
		return 0, 0, fmt.Errorf("pid %d: short /proc stat line", pid)
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("pid %d: unexpected /proc stat line", pid)
	}
	return utime / clockTicksPerSecond, stime / clockTicksPerSecond, nil
}

// childEnv is the harness's environment without proxy variables, so no
// child (nor goproxy's environment-following defaults) sends traffic
// anywhere but where the harness points it.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", childRoleEnv, childUpstreamCAEnv:
			continue
		}
		env = append(env, kv)
	}
	return env
}

// raiseOpenFileLimit lifts the soft limit on open files to the hard one:
// a thousand idle tunnels need two thousand descriptors in the proxy and as
// many in the harness. Children inherit the raised limit.
func raiseOpenFileLimit() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read open file limit: %w", err)
	}
	if lim.Cur >= lim.Max {
		return nil
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise open file limit: %w", err)
	}
	return nil
}

// outputTail keeps the last outputTailBytes of what a process writes, and
// hands its first line to whoever waits for it (the bare-goproxy child
// announces its address that way).
type outputTail struct {
	mu        sync.Mutex
	buf       []byte
	firstLine chan string
	announced bool
}

const outputTailBytes = 16 << 10

func newOutputTail() *outputTail { return &outputTail{firstLine: make(chan string, 1)} }

func (o *outputTail) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	if !o.announced {
		if i := bytes.IndexByte(o.buf, '\n'); i >= 0 {
			o.firstLine <- string(o.buf[:i])
			o.announced = true
		}
	}
	if len(o.buf) > 2*outputTailBytes {
		o.buf = append(o.buf[:0], o.buf[len(o.buf)-outputTailBytes:]...)
		o.announced = true
	}
	return len(p), nil
}

func (o *outputTail) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return string(o.buf)
}
