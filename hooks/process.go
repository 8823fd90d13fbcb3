package hooks

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// workerStartTimeout bounds a worker's start-up (exec, Go runtime
	// init, package init) on a loaded machine.
	workerStartTimeout = 10 * time.Second
	// stderrKept is how much of a worker's stderr the gateway keeps: the
	// first lines of a Go fatal error say why it died.
	stderrKept = 4 << 10
)

// workerProcess is the gateway's side of one worker: its pipes, and what
// it has been told. Only the holder of its slot uses it.
type workerProcess struct {
	cmd     *exec.Cmd
	toProc  *os.File
	from    *bufio.Reader
	fromRaw *os.File
	stderr  *headBuffer
	// known mirrors the worker's compiled-script cache, so a script's
	// source crosses the pipe once per worker.
	known   map[scriptKey]struct{}
	killed  atomic.Bool // by the gateway, past the hard deadline
	sendBuf []byte      // the last run frame (its head, for a large body)
}

// workerDeath is what the gateway learnt when a worker ended.
type workerDeath struct {
	killedByDeadline bool
	stderr           string
	state            *os.ProcessState
}

// workerImage is what workers are executed from: path, and the open file
// it names when path is a descriptor (which a worker gets as descriptor 5,
// after its two pipes).
type workerImage struct {
	path string
	file *os.File // nil when path is an ordinary file name
}

// startWorker starts a worker from the running executable and waits for
// its hello.
func startWorker(exe workerImage) (*workerProcess, error) {
	runsRead, runsWrite, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	resultsRead, resultsWrite, err := os.Pipe()
	if err != nil {
		runsRead.Close()
		runsWrite.Close()
		return nil, err
	}
	growPipe(runsWrite)
	growPipe(resultsRead)
	p := &workerProcess{
		// argv[0] names the process in ps. "-test.run=^$" matters only in a
		// test binary whose TestMain forgot WorkerMain: it then runs no
		// tests and exits, and the missing hello says what is wrong.
		cmd: &exec.Cmd{
			Path:        exe.path,
			Args:        []string{"egressgw-hooks-worker", "-test.run=^$"},
			Env:         workerEnv(),
			ExtraFiles:  []*os.File{runsRead, resultsWrite, exe.file},
			SysProcAttr: workerSysProcAttr(),
		},
		toProc:  runsWrite,
		fromRaw: resultsRead,
		from:    bufio.NewReaderSize(resultsRead, 64<<10),
		stderr:  &headBuffer{max: stderrKept},
		known:   make(map[scriptKey]struct{}),
	}
	p.cmd.Stderr = p.stderr
	err = p.cmd.Start()
	runsRead.Close()
	resultsWrite.Close()
	if err != nil {
		runsWrite.Close()
		resultsRead.Close()
		return nil, fmt.Errorf("hooks: starting a worker: %w", err)
	}

	timer := time.AfterFunc(workerStartTimeout, p.kill)
	hello, err := readFrame(p.from, len(workerHello))
	timer.Stop()
	if err != nil || string(hello) != workerHello {
		death := p.finish()
		detail := strings.TrimSpace(death.stderr)
		if detail == "" {
			detail = fmt.Sprint(err)
		}
		return nil, fmt.Errorf("hooks: a worker did not start (the program must call hooks.WorkerMain first in main, and in TestMain of tests): %s", detail)
	}
	return p, nil
}

// workerEnv is the environment of a worker: nothing of the gateway's (it
// holds secrets a worker has no use for), but the marker and the settings
// of Go tooling that a test or race build needs.
func workerEnv() []string {
	env := []string{workerEnvVar + "=" + workerHello, "GOTRACEBACK=none"}
	for _, name := range []string{"GORACE", "GOCOVERDIR", "GODEBUG", "TMPDIR"} {
		if v, ok := os.LookupEnv(name); ok {
			env = append(env, name+"="+v)
		}
	}
	return env
}

// roundTrip sends one run (head, then body) and reads the reply; sent
// says whether the worker took the whole frame. Past deadline the worker
// is killed, which also ends a blocked write or read.
func (p *workerProcess) roundTrip(head, body []byte, deadline time.Duration, maxReply int) (reply *replyFrame, sent bool, err error) {
	timer := time.AfterFunc(deadline, p.kill)
	defer timer.Stop()
	if len(body) <= 64<<10 {
		// One write, one wake-up of the worker, for the common small run.
		head = append(head, body...)
		p.sendBuf = head
		body = nil
	}
	if _, err := p.toProc.Write(head); err != nil {
		return nil, false, err
	}
	if len(body) > 0 {
		if _, err := p.toProc.Write(body); err != nil {
			return nil, false, err
		}
	}
	payload, err := readFrame(p.from, maxReply)
	if err != nil {
		return nil, true, err
	}
	if p.killed.Load() {
		return nil, true, errors.New("hooks: worker killed at its deadline")
	}
	reply, err = decodeReplyFrame(payload)
	return reply, true, err
}

func (p *workerProcess) kill() {
	p.killed.Store(true)
	_ = p.cmd.Process.Kill() // the only error is "already finished"
}

// finish ends the worker (if it still runs), reaps it and reports why it
// ended.
func (p *workerProcess) finish() workerDeath {
	p.toProc.Close() // a live worker reads end of input and exits
	wasKilled := p.killed.Load()
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(time.Second):
			_ = p.cmd.Process.Kill()
		}
	}()
	_ = p.cmd.Wait() // the exit status is in ProcessState
	close(done)
	p.fromRaw.Close()
	return workerDeath{killedByDeadline: wasKilled, stderr: p.stderr.String(), state: p.cmd.ProcessState}
}

// peakRSS is the worker's peak resident set in bytes, from the kernel's
// accounting of the reaped process; 0 when unknown.
func (d workerDeath) peakRSS() int64 {
	if d.state == nil {
		return 0
	}
	return maxRSS(d.state)
}

// failure turns a worker's death during a run into the run's error.
func (d workerDeath) failure(script string, lim Limits) *RunError {
	e := &RunError{Script: script}
	switch {
	case d.killedByDeadline:
		e.Kind = FailTimeout
		e.Message = fmt.Sprintf("did not finish within its timeout (%s); its worker was stopped", lim.Timeout)
	case mentionsAny(d.stderr, "out of memory", "cannot allocate memory", "failed to allocate", "pthread_create failed"),
		// Near its limit the Go runtime can also fail in ways that do not
		// say so (a thread it could not create, a fault in the collector);
		// a worker that had grown past max_memory died of memory.
		d.peakRSS() > lim.MaxMemory:
		e.Kind = FailMemoryLimit
		e.Message = fmt.Sprintf("tried to hold more than max_memory (%s)", formatBytes(lim.MaxMemory))
	case mentionsAny(d.stderr, "stack exceeds", "stack overflow"):
		e.Kind = FailRuntime
		e.Message = "stack overflow"
	default:
		e.Kind = FailRuntime
		e.Message = "the hook worker crashed while running the script"
		if d.state != nil {
			e.Message += " (" + d.state.String() + ")"
		}
	}
	return e
}

func mentionsAny(s string, words ...string) bool {
	for _, w := range words {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// headBuffer keeps the first max bytes written to it and discards the
// rest: a Go crash prints the reason first and then a long trace.
type headBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *headBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *headBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
