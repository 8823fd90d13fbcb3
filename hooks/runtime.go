package hooks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// RuntimeConfig is gateway.yaml's hooks section (docs/reference.md).
type RuntimeConfig struct {
	// MaxConcurrent is how many hook runs may execute at once in the whole
	// gateway: one worker process each. 0 means 2 × GOMAXPROCS.
	MaxConcurrent int
	// Defaults fill the zero fields of the Limits given to each run; their
	// own zero fields come from DefaultLimits.
	Defaults Limits
}

// Runtime runs hook scripts in a pool of worker processes, at most
// MaxConcurrent at once, shared fairly between tenants. Build one per
// gateway (it outlives config reloads); it is safe for concurrent use.
type Runtime struct {
	defaults Limits
	exe      workerImage
	slots    []*slot
	sched    *scheduler
	closed   atomic.Bool
	// peakWorkerRSS is the largest peak resident set of a worker that has
	// ended, and retired counts the workers ended; for tests and
	// diagnostics.
	peakWorkerRSS atomic.Int64
	retired       atomic.Int64

	reaped atomic.Int64 // idle workers stopped, for tests

	// idleTTL is how long a worker may sit idle before it is stopped,
	// all but the warmest keepWarm; reaperDone ends the reaper.
	idleTTL    time.Duration
	reaperStop chan struct{}
	reaperDone sync.WaitGroup
}

// Idle workers: after a burst has started max_concurrent workers (about
// 7 MiB each), those idle for workerIdleTTL are stopped, all but the
// keepWarmWorkers most recently used, so memory follows the load; a run
// that needs a stopped slot starts a worker again (6–15 ms).
const (
	workerIdleTTL   = time.Minute
	keepWarmWorkers = 1
)

// slot is one place in the pool: the worker process in it, if started.
// Only the run holding the slot touches it, or the reaper while it has
// taken the slot out of the idle stack.
type slot struct {
	proc      *workerProcess
	tenant    string    // whose run holds the slot; the scheduler's to set
	idleSince time.Time // when it last became idle; the scheduler's to set
}

// NewRuntime builds a runtime and starts its first worker, so a program
// that cannot host workers (it does not call WorkerMain, or the system
// does not allow the memory limit) fails at start-up, not on the first
// request. Other workers start when first needed.
func NewRuntime(cfg RuntimeConfig) (*Runtime, error) {
	return newRuntime(cfg, workerIdleTTL)
}

func newRuntime(cfg RuntimeConfig, idleTTL time.Duration) (*Runtime, error) {
	if os.Getenv(workerEnvVar) != "" {
		return nil, errors.New("hooks: this process is a hook worker but ran main: call hooks.WorkerMain first in main (and in TestMain)")
	}
	defaults := cfg.Defaults.Or(DefaultLimits())
	if err := defaults.Validate(); err != nil {
		return nil, fmt.Errorf("hooks defaults: %w", err)
	}
	n := cfg.MaxConcurrent
	if n < 0 {
		return nil, fmt.Errorf("hooks: max_concurrent %d: must not be negative", n)
	}
	if n == 0 {
		n = 2 * runtime.GOMAXPROCS(0)
	}
	exe, err := workerExecutable()
	if err != nil {
		return nil, fmt.Errorf("hooks: finding the executable to start workers from: %w", err)
	}
	rt := &Runtime{defaults: defaults, exe: exe, slots: make([]*slot, n), idleTTL: idleTTL, reaperStop: make(chan struct{})}
	for i := range rt.slots {
		rt.slots[i] = &slot{}
	}
	first, err := startWorker(exe)
	if err != nil {
		return nil, err
	}
	rt.slots[n-1].proc = first // on top of the idle stack: the first run takes it
	rt.sched = newScheduler(rt.slots)
	rt.reaperDone.Add(1)
	go rt.reapIdleWorkers()
	return rt, nil
}

// reapIdleWorkers stops, every quarter of idleTTL, the workers idle for
// longer than idleTTL, until Close.
func (rt *Runtime) reapIdleWorkers() {
	defer rt.reaperDone.Done()
	tick := time.NewTicker(rt.idleTTL / 4)
	defer tick.Stop()
	for {
		select {
		case <-rt.reaperStop:
			return
		case now := <-tick.C:
			stale := rt.sched.takeStale(now.Add(-rt.idleTTL), keepWarmWorkers)
			if len(stale) == 0 {
				continue
			}
			// The slots go back at once, empty; their workers are
			// stopped after, so no run waits on an exit.
			procs := make([]*workerProcess, len(stale))
			for i, sl := range stale {
				procs[i], sl.proc = sl.proc, nil
			}
			rt.sched.returnStale(stale)
			for _, p := range procs {
				p.finish() // an idle worker exits at end of input
				rt.reaped.Add(1)
			}
		}
	}
}

// MaxConcurrent is the number of runs that may execute at once.
func (rt *Runtime) MaxConcurrent() int { return len(rt.slots) }

// RunRequest runs a request hook on req and returns the request to send.
//
// Results, in the order the proxy should check them:
//   - *BodyTooLargeError: req.Body is over max_body_bytes; answer 413
//     body_too_large. The script did not run.
//   - *RunError: the run failed closed (runtime error, a limit, a worker
//     crash, ctx ended first); answer 502 hook_failed with err.Error().
//   - Outcome.Denied: answer 403 hook_denied with Outcome.DenyReason.
//   - otherwise send the returned request: Method, URL, Path, Query and
//     Headers as returned, and Body (with Content-Length computed anew)
//     when Outcome.BodyChanged.
//
// lim's zero fields come from the runtime's defaults. meta.Tenant decides
// the turn in the queue when all workers are busy.
func (rt *Runtime) RunRequest(ctx context.Context, s *Script, meta Meta, req Request, lim Limits) (Request, Outcome, error) {
	lim, err := rt.limitsFor(s, lim, len(req.Body))
	if err != nil {
		return req, Outcome{}, err
	}
	reply, err := rt.run(ctx, s, &runFrame{meta: meta, req: req, limits: lim})
	if err != nil {
		return req, Outcome{}, err
	}
	if reply.status == replyDenied {
		return req, Outcome{Denied: true, DenyReason: reply.reason}, nil
	}
	out := req
	out.Method = reply.method
	out.Path = reply.path
	out.Query = reply.query
	out.URL = rebuildURL(req, reply.path, reply.query)
	out.Headers = reply.headers
	if reply.bodyChanged {
		out.Body = reply.body
	}
	return out, Outcome{BodyChanged: reply.bodyChanged, DroppedEdits: reply.dropped}, nil
}

// RunResponse runs a response hook on resp and returns the response to
// pass on. The script also sees req, read-only (its body may be empty if
// the proxy no longer has it). Errors and the outcome mean what they mean
// for RunRequest; a body over max_body_bytes is resp.Body's.
func (rt *Runtime) RunResponse(ctx context.Context, s *Script, meta Meta, req Request, resp Response, lim Limits) (Response, Outcome, error) {
	lim, err := rt.limitsFor(s, lim, len(resp.Body))
	if err != nil {
		return resp, Outcome{}, err
	}
	if int64(len(req.Body)) > lim.MaxBodyBytes {
		req.Body = nil // context only; not worth a 413
	}
	reply, err := rt.run(ctx, s, &runFrame{flags: flagResponse, meta: meta, req: req, resp: resp, limits: lim})
	if err != nil {
		return resp, Outcome{}, err
	}
	if reply.status == replyDenied {
		return resp, Outcome{Denied: true, DenyReason: reply.reason}, nil
	}
	out := resp
	out.Status = reply.code
	out.Headers = reply.headers
	if reply.bodyChanged {
		out.Body = reply.body
	}
	return out, Outcome{BodyChanged: reply.bodyChanged, DroppedEdits: reply.dropped}, nil
}

// limitsFor completes lim with the runtime's defaults and checks it, and
// refuses a body over its max_body_bytes before the script runs.
func (rt *Runtime) limitsFor(s *Script, lim Limits, body int) (Limits, error) {
	lim = lim.Or(rt.defaults)
	if err := lim.Validate(); err != nil {
		return lim, &RunError{Script: s.name, Kind: FailUnavailable, Message: "invalid limits: " + err.Error(), Err: err}
	}
	if int64(body) > lim.MaxBodyBytes {
		return lim, &BodyTooLargeError{Script: s.name, Size: int64(body), Limit: lim.MaxBodyBytes}
	}
	return lim, nil
}

// run waits for a slot in the tenant's turn, runs the frame there and
// returns a reply that is replyOK or replyDenied, or a *RunError.
func (rt *Runtime) run(ctx context.Context, s *Script, frame *runFrame) (*replyFrame, error) {
	// Encoded here, so the run holds nothing of the caller's after the
	// caller has gone.
	return rt.runEncoded(ctx, s, frame.flags, frame.meta.Tenant, encodeRunBody(nil, frame), frame.limits)
}

// runEncoded is run with the frame's body already encoded; body is the
// run's own, never written to by the caller afterwards.
func (rt *Runtime) runEncoded(ctx context.Context, s *Script, flags byte, tenant string, body []byte, lim Limits) (*replyFrame, error) {
	unavailable := func(msg string, cause error) error {
		return &RunError{Script: s.name, Kind: FailUnavailable, Message: msg, Err: cause}
	}
	if rt.closed.Load() {
		return nil, unavailable("the hook runtime is shut down", errRuntimeClosed)
	}
	if s.events {
		flags |= flagEventScript
	}
	head := runFrame{flags: flags, key: s.key, name: s.name, source: s.source}

	sl, err := rt.sched.acquire(ctx, tenant)
	if err != nil {
		return nil, unavailable("no hook worker became free in time", err)
	}
	type result struct {
		reply *replyFrame
		err   error
	}
	done := make(chan result, 1)
	go func() {
		reply, err := rt.exchange(sl, s.name, &head, body, lim)
		done <- result{reply, err}
		// A worker that died is replaced before the slot is freed, so the
		// run that killed it, not the next tenant, waits for the start.
		if sl.proc == nil && !rt.closed.Load() {
			sl.proc, _ = startWorker(rt.exe) // on failure the next run retries
		}
		rt.sched.release(sl)
	}()
	select {
	case r := <-done:
		return r.reply, r.err
	case <-ctx.Done():
		// The worker finishes (within the hard deadline) and frees the
		// slot by itself; the caller need not wait.
		return nil, unavailable("the request ended before its hook finished", ctx.Err())
	}
}

// exchange runs one frame on the slot's worker, starting one if needed.
// It tries a second worker only when the first could not take the run: it
// had died while idle, or must retire before a run with this max_memory.
func (rt *Runtime) exchange(sl *slot, script string, head *runFrame, body []byte, lim Limits) (*replyFrame, error) {
	// Bodies and headers the worker may return, plus room for the rest.
	maxReply := int(lim.MaxBodyBytes) + maxOutputHeaderBytes + 1<<20
	for attempt := 0; attempt < 2; attempt++ {
		if sl.proc == nil {
			p, err := startWorker(rt.exe)
			if err != nil {
				return nil, &RunError{Script: script, Kind: FailUnavailable, Message: "no hook worker could start", Err: err}
			}
			sl.proc = p
		}
		p := sl.proc
		head.flags &^= flagSource | flagResetCache
		if _, ok := p.known[head.key]; !ok {
			head.flags |= flagSource
			if len(p.known) >= maxKeptPrograms {
				head.flags |= flagResetCache
				clear(p.known)
			}
		}
		p.sendBuf = encodeRunHead(p.sendBuf, head, len(body))
		reply, sent, err := p.roundTrip(p.sendBuf, body, lim.HardDeadline(), maxReply)
		if err != nil {
			death := rt.retire(sl)
			if !sent && attempt == 0 {
				continue // it was dead before it saw the run
			}
			return nil, death.failure(script, lim)
		}
		p.known[head.key] = struct{}{}
		if reply.retiring || reply.status == replyRetire {
			rt.retire(sl) // replaced before the slot is freed, see run
		}
		switch reply.status {
		case replyOK, replyDenied, replyEvent:
			return reply, nil
		case replyFailed:
			return nil, &RunError{Script: script, Line: reply.line, Column: reply.column, Kind: reply.kind, Message: reply.message}
		case replyRetire:
			continue // a fresh worker, whose address space is small again
		}
		return nil, &RunError{Script: script, Kind: FailUnavailable, Message: fmt.Sprintf("hook worker answered with status %d", reply.status)}
	}
	return nil, &RunError{Script: script, Kind: FailUnavailable, Message: "no hook worker could take the run"}
}

// retire reaps the slot's worker and empties the slot.
func (rt *Runtime) retire(sl *slot) workerDeath {
	death := sl.proc.finish()
	sl.proc = nil
	rt.retired.Add(1)
	rss := death.peakRSS()
	for {
		old := rt.peakWorkerRSS.Load()
		if rss <= old || rt.peakWorkerRSS.CompareAndSwap(old, rss) {
			break
		}
	}
	return death
}

// Close stops the workers once the runs in progress end; later runs fail
// with FailUnavailable.
func (rt *Runtime) Close() error {
	if !rt.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(rt.reaperStop)
	rt.reaperDone.Wait()
	rt.sched.close()
	for _, sl := range rt.sched.waitIdle() {
		if sl.proc != nil {
			rt.retire(sl)
		}
	}
	// Every slot is idle and the scheduler closed: no worker starts again.
	if rt.exe.file != nil {
		rt.exe.file.Close()
	}
	return nil
}

// rebuildURL returns req's URL with a new path and query.
func rebuildURL(req Request, path, query string) string {
	if path == req.Path && query == req.Query {
		return req.URL
	}
	u, err := url.Parse(req.URL)
	if err != nil || u.Host == "" {
		u = &url.URL{Scheme: req.Scheme, Host: req.Host}
		if req.Port != 0 && !isDefaultPort(req.Scheme, req.Port) {
			u.Host = net.JoinHostPort(req.Host, strconv.Itoa(req.Port))
		}
	}
	if unescaped, err := url.PathUnescape(path); err == nil {
		u.Path, u.RawPath = unescaped, path
	} else {
		u.Path, u.RawPath = path, ""
	}
	u.RawQuery, u.ForceQuery = query, false
	return u.String()
}

func isDefaultPort(scheme string, port int) bool {
	return scheme == "http" && port == 80 || scheme == "https" && port == 443
}
