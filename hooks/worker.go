package hooks

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/d5/tengo/v2"
)

// workerEnvVar marks a process started by a Runtime as a hook worker; its
// value is the protocol string, so an unrelated variable cannot match.
const workerEnvVar = "EGRESSGW_HOOKS_WORKER"

// Worker file descriptors: exec.Cmd.ExtraFiles start at 3.
const (
	workerRunsFD    = 3
	workerResultsFD = 4
)

const (
	// maxKeptPrograms bounds the compiled scripts a worker keeps; the
	// gateway mirrors the count and resets the cache past it.
	maxKeptPrograms = 256
	// workerMaxStack stops runaway Go recursion in a worker (there should
	// be none: our JSON code is depth-limited) long before Go's 1 GiB.
	workerMaxStack = 64 << 20
	// maxRunFrame bounds what a worker reads; the gateway is trusted, the
	// bound only turns a protocol bug into an error.
	maxRunFrame = 1 << 31
)

// WorkerMain makes this process a hook worker if a Runtime started it as
// one, and then never returns; otherwise it returns at once. Call it first
// thing in main, and in TestMain of any test binary that builds a Runtime:
// a Runtime runs scripts in worker processes started from the running
// executable (os.Executable), and they must not run the program's main.
func WorkerMain() {
	if os.Getenv(workerEnvVar) != workerHello {
		return
	}
	lowerThreadStacks()
	runs := os.NewFile(workerRunsFD, "hook-runs")
	results := os.NewFile(workerResultsFD, "hook-results")
	err := serveWorker(runs, results)
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(os.Stderr, "hooks worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// workerState is what a worker keeps between runs. A worker runs one
// script at a time, so nothing here needs a lock, and per-process settings
// (tengo.MaxStringLen, the memory limits) can change from run to run.
type workerState struct {
	programs map[scriptKey]*program
	hasher   valueHasher
	memory   *memoryGuard
	replyBuf []byte
}

func serveWorker(runs io.Reader, results io.Writer) error {
	// One script runs at a time. A second P lets the timeout timer fire
	// while the VM spins: with one, the timer waits for the runtime to
	// preempt the VM, which on a loaded machine took up to a second. It
	// costs about 13 µs of CPU per run in the scheduler.
	runtime.GOMAXPROCS(min(2, runtime.NumCPU()))
	debug.SetMaxStack(workerMaxStack)
	// A worker's live heap is small between runs, so at the default GOGC
	// it collects every few dozen runs, and each cycle keeps the idle P
	// busy marking: that was half of a worker's CPU. The soft memory limit
	// still starts a collection before garbage nears max_memory.
	debug.SetGCPercent(400)
	memory, err := newMemoryGuard()
	if err != nil {
		return err
	}
	w := &workerState{
		programs: make(map[scriptKey]*program),
		hasher:   newValueHasher(),
		memory:   memory,
	}
	hello := newFrame(nil)
	hello.buf = append(hello.buf, workerHello...)
	if _, err := results.Write(hello.finish()); err != nil {
		return err
	}
	in := bufio.NewReaderSize(runs, 64<<10)
	for {
		payload, err := readFrame(in, maxRunFrame)
		if err != nil {
			return err
		}
		run, err := decodeRunFrame(payload)
		if err != nil {
			return err
		}
		reply := w.handle(run)
		w.replyBuf = encodeReplyFrame(w.replyBuf, reply)
		if _, err := results.Write(w.replyBuf); err != nil {
			return err
		}
		if reply.status == replyRetire || reply.retiring {
			return nil
		}
		if cap(w.replyBuf) > 64<<10 {
			w.replyBuf = nil // do not keep a large body's buffer alive
		}
	}
}

// maxFailureMessage bounds a failure's message, which reaches the client:
// a message may quote what the script built.
const maxFailureMessage = 512

func failed(e *RunError) *replyFrame {
	msg := e.Message
	if len(msg) > maxFailureMessage {
		msg = strings.ToValidUTF8(msg[:maxFailureMessage], "") + "…"
	}
	return &replyFrame{status: replyFailed, kind: e.Kind, line: e.Line, column: e.Column, message: msg}
}

func (w *workerState) handle(run *runFrame) *replyFrame {
	if run.flags&flagResetCache != 0 {
		clear(w.programs)
	}
	if run.flags&flagSource != 0 {
		p, err := compileProgram(run.name, run.source, run.flags&flagEventScript != 0)
		if err != nil {
			return failed(&RunError{Kind: FailRuntime, Message: "does not compile: " + err.Error()})
		}
		w.programs[run.key] = p
	}
	p := w.programs[run.key]
	if p == nil {
		return failed(&RunError{Kind: FailUnavailable, Message: "hook worker does not have the script (protocol error)"})
	}
	if run.limits.MaxMemory != w.memory.applied && !w.memory.roomFor(run.limits.MaxMemory) {
		return &replyFrame{status: replyRetire}
	}
	if err := w.memory.apply(run.limits.MaxMemory); err != nil {
		return failed(&RunError{Kind: FailUnavailable, Message: "cannot limit the hook worker's memory: " + err.Error()})
	}
	var reply *replyFrame
	if run.flags&flagEvent != 0 {
		reply = w.executeEvent(p, run)
	} else {
		reply = w.execute(p, run)
	}
	reply.retiring = !w.memory.roomFor(run.limits.MaxMemory)
	return reply
}

// execute sets the variables, runs the script and reads its edits back.
func (w *workerState) execute(p *program, run *runFrame) *replyFrame {
	isResponse := run.flags&flagResponse != 0
	globals := make([]tengo.Object, p.numGlobals)

	reqJSON := newJSONView(run.req.Headers, run.req.Body, w.hasher)
	globals[globalRequest] = requestObject(&run.req, reqJSON.value, isResponse)
	var respJSON jsonView
	if isResponse {
		respJSON = newJSONView(run.resp.Headers, run.resp.Body, w.hasher)
		globals[globalResponse] = responseObject(&run.resp, respJSON.value)
	} else {
		globals[globalResponse] = tengo.UndefinedValue
	}
	setMetaGlobals(globals, run.meta)
	globals[globalDeny] = tengo.UndefinedValue
	if p.events {
		globals[globalEvent] = tengo.UndefinedValue // a whole response
	}

	if reply := runToDecision(p, globals, run.limits); reply != nil {
		return reply
	}

	var reply *replyFrame
	var err error
	if isResponse {
		reply, err = w.readResponse(globals[globalResponse], run, respJSON)
	} else {
		reply, err = w.readRequest(globals[globalRequest], run, reqJSON)
	}
	if err != nil {
		return failed(&RunError{Kind: FailInvalidOutput, Message: err.Error()})
	}
	return reply
}

// setMetaGlobals sets tenant and connector, read-only.
func setMetaGlobals(globals []tengo.Object, meta Meta) {
	globals[globalTenant] = &tengo.ImmutableMap{Value: map[string]tengo.Object{
		"id": &tengo.String{Value: meta.Tenant},
	}}
	globals[globalConnector] = &tengo.ImmutableMap{Value: map[string]tengo.Object{
		"name":    &tengo.String{Value: meta.Connector},
		"version": &tengo.Int{Value: int64(meta.ConnectorVersion)},
	}}
}

func (w *workerState) readRequest(o tengo.Object, run *runFrame, view jsonView) (*replyFrame, error) {
	rb, err := newReadBack("request", o)
	if err != nil {
		return nil, err
	}
	in := &run.req
	reply := &replyFrame{status: replyOK}
	if reply.method, err = rb.str("method", in.Method); err != nil {
		return nil, err
	}
	if reply.method != in.Method && !validToken(reply.method) {
		return nil, fmt.Errorf("request.method %s is not a valid HTTP method", quoteShort(reply.method))
	}
	if reply.path, err = rb.str("path", in.Path); err != nil {
		return nil, err
	}
	if reply.path != in.Path && !validPath(reply.path) {
		// Quoted up to a "?": what follows may be a query, which no
		// message holds (docs/connector-authors.md).
		return nil, fmt.Errorf("request.path %s must start with / and hold no spaces, control characters, ? or #", quoteShort(beforeQuery(reply.path)))
	}
	if reply.query, err = rb.str("query", in.Query); err != nil {
		return nil, err
	}
	if reply.query != in.Query && !validQuery(reply.query) {
		// Not quoted: a query's values never appear in a message.
		return nil, fmt.Errorf("request.query must hold no spaces, control characters or # (the one set has one at byte %d)", firstInvalidQueryByte(reply.query))
	}
	rb.readOnlyStr("url", in.URL)
	rb.readOnlyStr("scheme", in.Scheme)
	rb.readOnlyStr("host", in.Host)
	rb.readOnlyInt("port", in.Port)
	if err := w.readMessage(rb, reply, in.Headers, in.Body, view, run.limits.MaxBodyBytes); err != nil {
		return nil, err
	}
	return reply, nil
}

func (w *workerState) readResponse(o tengo.Object, run *runFrame, view jsonView) (*replyFrame, error) {
	rb, err := newReadBack("response", o)
	if err != nil {
		return nil, err
	}
	in := &run.resp
	reply := &replyFrame{status: replyOK, code: in.Status}
	if v, ok := rb.field("status"); ok {
		n, isInt := v.(*tengo.Int)
		if !isInt {
			return nil, fmt.Errorf("response.status must be an int, not %s", v.TypeName())
		}
		if n.Value < 100 || n.Value > 599 {
			return nil, fmt.Errorf("response.status %d is not between 100 and 599", n.Value)
		}
		reply.code = int(n.Value)
	}
	if err := w.readMessage(rb, reply, in.Headers, in.Body, view, run.limits.MaxBodyBytes); err != nil {
		return nil, err
	}
	return reply, nil
}

// readMessage reads back what requests and responses share: headers and
// body (re-encoded from json when the script assigned it), and the edits
// the gateway dropped.
func (w *workerState) readMessage(rb *readBack, reply *replyFrame, headers map[string][]string, body []byte, view jsonView, maxBody int64) error {
	var err error
	if reply.headers, err = rb.headers(headers); err != nil {
		return err
	}
	out, changed, reencoded, err := rb.body("body", body, view, w.hasher, maxBody)
	if err != nil {
		return err
	}
	if reencoded {
		reply.headers = markJSON(reply.headers)
	}
	reply.bodyChanged = changed
	if changed {
		reply.body = out
	}
	reply.dropped = rb.dropped
	return nil
}

// runVM runs the program once in a fresh VM. A fresh VM per run costs
// about 80 KB of zeroed memory (its value stack and frames), but a reused
// one would keep the previous run's values reachable from its stack,
// charging one tenant's garbage to the next run's max_memory, and Tengo
// does not reset a VM's error between runs.
// runToDecision runs p over globals and reads what it set in deny: the
// reply when the run failed or denied, nil when its edits are to be read.
// Whole-body and per-event runs end the same way.
func runToDecision(p *program, globals []tengo.Object, lim Limits) *replyFrame {
	if runErr := runVM(p, globals, lim); runErr != nil {
		return failed(runErr)
	}
	reason, denied, err := denyReason(globals[globalDeny])
	if err != nil {
		return failed(&RunError{Kind: FailInvalidOutput, Message: err.Error()})
	}
	if denied {
		return &replyFrame{status: replyDenied, reason: reason}
	}
	return nil
}

func runVM(p *program, globals []tengo.Object, lim Limits) *RunError {
	maxAllocs := lim.MaxAllocs
	vm := tengo.NewVM(p.bytecode, globals, maxAllocs)
	var timedOut atomic.Bool
	timer := time.AfterFunc(lim.Timeout, func() {
		timedOut.Store(true)
		vm.Abort() // checked before every instruction
	})
	err, crash := runRecovering(vm)
	timer.Stop()
	switch {
	case timedOut.Load():
		return &RunError{Kind: FailTimeout, Message: fmt.Sprintf("did not finish within its timeout (%s)", lim.Timeout)}
	case crash != "":
		return &RunError{Kind: FailRuntime, Message: crash}
	case err == nil:
		return nil
	}
	line, column := errorPosition(p.name, err)
	switch {
	case errors.Is(err, tengo.ErrObjectAllocLimit):
		return &RunError{Kind: FailAllocLimit, Line: line, Column: column,
			Message: fmt.Sprintf("allocated more than max_allocs (%d) objects", maxAllocs)}
	case errors.Is(err, tengo.ErrStringLimit), errors.Is(err, tengo.ErrBytesLimit):
		return &RunError{Kind: FailMemoryLimit, Line: line, Column: column,
			Message: fmt.Sprintf("built a value larger than max_memory (%s)", formatBytes(lim.MaxMemory))}
	}
	return &RunError{Kind: FailRuntime, Line: line, Column: column, Message: errorMessage(err)}
}

// runRecovering runs the VM and turns a panic into a message. Scripts can
// panic the VM (bytes(-1), text.repeat("x", -1), a value stack overflow
// from deep non-tail recursion); the VM is discarded afterwards anyway.
func runRecovering(vm *tengo.VM) (err error, crash string) {
	defer func() {
		if r := recover(); r != nil {
			crash = crashMessage(r)
		}
	}()
	return vm.Run(), ""
}

func crashMessage(r any) string {
	msg := fmt.Sprint(r)
	if re, ok := r.(runtime.Error); ok && strings.Contains(re.Error(), "index out of range") {
		return "stack overflow: recursion too deep for the VM"
	}
	return "the script crashed the VM: " + msg
}

// errorMessage is the first line of a Tengo runtime error, without the
// "Runtime Error: " prefix and the "at FILE:LINE" trailer.
func errorMessage(err error) string {
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return strings.TrimPrefix(msg, "Runtime Error: ")
}

// errorPosition finds the innermost frame of a Tengo runtime error inside
// the script itself ("\tat NAME:LINE:COL" lines, innermost first); frames
// inside standard modules (enum) are skipped.
func errorPosition(name string, err error) (line, column int) {
	for _, l := range strings.Split(err.Error(), "\n") {
		pos, ok := strings.CutPrefix(l, "\tat ")
		if !ok {
			continue
		}
		rest, ok := strings.CutPrefix(pos, name+":")
		if !ok {
			continue
		}
		lineText, columnText, _ := strings.Cut(rest, ":")
		line, _ = strconv.Atoi(lineText)
		column, _ = strconv.Atoi(columnText)
		return line, column
	}
	return 0, 0
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// quoteShort quotes s for an error message, cut to a readable length.
func quoteShort(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "…"
	}
	return strconv.Quote(s)
}

// validToken reports an RFC 9110 token, the syntax of a method.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			return false
		}
	}
	return true
}

func isTokenByte(c byte) bool {
	if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func validPath(s string) bool {
	return strings.HasPrefix(s, "/") && !strings.ContainsAny(s, "?#") && printableASCII(s)
}

// beforeQuery is s up to its first "?" or "#".
func beforeQuery(s string) string {
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		return s[:i] + "?…"
	}
	return s
}

// firstInvalidQueryByte is the offset of the first byte validQuery refuses.
func firstInvalidQueryByte(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '#' || s[i] <= ' ' || s[i] >= 0x7f {
			return i
		}
	}
	return -1
}

func validQuery(s string) bool {
	return !strings.Contains(s, "#") && printableASCII(s)
}

// printableASCII: a request target on the wire is visible ASCII; anything
// else must be percent-encoded by the script.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
