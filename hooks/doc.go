// Package hooks compiles and runs transform hooks: Tengo scripts that a
// connector attaches to the requests it allows and to their responses
// (docs/connector-authors.md, "Hooks").
//
// # Use
//
// The policy loader calls Compile for every script when the config loads;
// a *CompileError (syntax, unknown name, an import outside text, math,
// times, json, base64, hex, enum and fmt) names the file and line. The
// gateway builds one Runtime at start-up, from gateway.yaml's
// hooks.max_concurrent and hooks.defaults, and keeps it across reloads. For
// each request the proxy calls Runtime.RunRequest with the plain request;
// for each response, Runtime.RunResponse. The result is the request or
// response to send on, an Outcome (denied and why, whether the body
// changed, which edits were dropped), or an error: *BodyTooLargeError
// (413 body_too_large) or *RunError (502 hook_failed). Programs that build
// a Runtime must call WorkerMain first thing in main (and in TestMain).
//
// Before a run the script finds request {method, url, scheme, host, port,
// path, query, headers, body, json}, response {status, headers, body,
// json} in response hooks, tenant {id}, connector {name, version}, and
// deny undefined. It edits the maps in place. Afterwards: method, path,
// query, headers and body of a request (status, headers and body of a
// response) are read back, and a field deleted or set to undefined keeps
// its value; url follows path and query; scheme, host and port are the
// destination the policy allowed, so edits to them are dropped, as are
// edits to framing and hop-by-hop headers (Content-Length,
// Transfer-Encoding, Connection, Host, Keep-Alive, TE, Trailer, Upgrade,
// Proxy-*). If json was assigned or changed, the body is re-encoded from
// it (keys sorted) and Content-Type kept a JSON type; json wins over an
// edit of body. deny set to a string refuses the request with that reason.
// Anything the gateway cannot send (a header value with a line break, a
// body over max_body_bytes, deny set to a number) fails the run.
//
// # Per-event runs
//
// A response script compiled by CompileEventHook may also run once per
// event of a streamed body (SSE, NDJSON): Runtime.NewEventHook encodes
// the stream's fixed part (limits, meta, request and response head, no
// bodies) once, and EventHook.Run sends it with each event, so a run
// costs the pipe round trip and a fresh VM, not the head again. The
// script finds event {data, json, event, id} besides request and response
// (both read-only, response without body); it may edit event.data or
// event.json (json wins), drop the event (event = undefined) or set deny,
// which the proxy turns into the end of the stream. event and id are
// read-only. Data that would not stay one event (a line break in NDJSON,
// a carriage return in SSE) fails the run. The variable exists only in
// such scripts, so an ordinary hook may name its own variable event; a
// per-event script run on a whole response finds event undefined.
//
// A JSON body is checked with encoding/json's scanner (which stops at
// 10000 levels of nesting) and then converted to Tengo values by this
// package, never by Tengo's decoder, which recurses without a limit. The
// script's json.decode and json.encode are replaced the same way.
//
// # Isolation and limits
//
// Scripts run in worker processes: the running executable started again
// (see WorkerMain), talking to the gateway over two pipes, one run at a
// time each, at most max_concurrent workers. A worker gets none of the
// gateway's environment, so no secret from it. Each limit fails the run
// closed, with a RunError the proxy answers with 502 hook_failed:
//
//   - max_allocs: Tengo's own counter of objects allocated.
//   - timeout: the VM is aborted between instructions when it passes
//     (a spinning script stops within milliseconds). A single builtin
//     call cannot be interrupted there, so the gateway kills a worker
//     that has not answered by Limits.HardDeadline (2 × timeout + 2s).
//   - max_body_bytes: checked before the run (a larger body is a
//     *BodyTooLargeError, 413), and on what the script produces.
//   - max_memory: the bytes a run holds, enforced by the kernel. Tengo
//     counts objects, not bytes (one text.repeat call can allocate 256
//     MiB), and no check inside the gateway's process could see every
//     allocation path of the VM and its builtins, or stop one in time; a
//     process-wide heap measurement cannot tell concurrent runs apart.
//     So each worker sets RLIMIT_DATA, the cap on its private writable
//     memory (Go heap, stacks, runtime structures), to its size at start
//     plus max_memory plus a slack of 16 MiB + max_memory/4, before each
//     run. Any allocation past it fails in the Go runtime and the worker
//     dies; the gateway sees it die, answers memory_limit, and starts a
//     new worker before it frees the slot, so the tenant whose script did
//     it, not the next one, waits for the start. In front of that
//     backstop: tengo.MaxStringLen and MaxBytesLen are set to max_memory
//     inside the worker (a single oversized string is a clean script
//     error with its line), and a soft limit (debug.SetMemoryLimit) makes
//     the collector work before garbage, rather than live data, reaches
//     the cap. A worker left with less than 8 MiB of room retires after
//     its reply, so the next run has its whole max_memory.
//
// Measured with max_memory 32 MiB and a worker starting at about 7 MiB
// resident, scripts that try to hold 1 GiB (1024 strings of 1 MiB, s = s +
// s, text.repeat, append and range arrays, a map of 32M keys, bytes(n),
// json.encode of a huge array) each failed with memory_limit within
// 0.1–2.5 s; the worker's peak resident set grew by at most about 60 MiB
// and the gateway's heap not at all (TestMemoryBombsFailClosed logs the
// figures). Under the race detector the resident set is larger by the
// detector's shadow memory, which the limit does not count.
//
// A crash of the VM (Tengo panics on bytes(-1), text.repeat("x", -1), deep
// recursion) is recovered inside the worker; a fatal error (stack
// overflow, out of memory) ends only the worker. Nothing a script does
// reaches the gateway's own process.
//
// # Fairness
//
// When every worker is busy, runs wait in a queue per tenant, and a freed
// worker goes to the waiting tenant that holds the fewest workers (round
// robin among equals): a tenant flooding slow scripts delays another
// tenant's run by at most one of its runs, and waiting ends with the
// caller's context.
//
// # Cost
//
// Per run, on top of the script: the queue, a goroutine, a pipe round
// trip, building the variables and a fresh VM (about 80 KB, zeroed: a
// reused VM would keep the previous run's values reachable, charging one
// tenant's leftovers to the next run's max_memory), and reading the edits
// back. The gateway never compiles on the request path; each worker
// compiles a script once and keeps it. Measured on a shared, busy 2-core
// machine: a header-editing run (BenchmarkHeaderEditHook) took 60–90 µs,
// about 26 µs of CPU in the gateway and 29 µs in the worker; a per-event
// run of a trivial script on a 45-byte event (BenchmarkEventHook) went at
// 1.0–1.4 times the rate of the same script run on a whole response of
// that size, about 10,000 runs a second on one worker, with 10
// allocations in the gateway against 24; editing one
// field of a 64 KiB JSON body (BenchmarkJSONEdit64K) about 3 ms, 0.25 ms
// of CPU in the gateway and 1.8 ms in the worker, mostly decoding,
// fingerprinting and re-encoding the JSON. A worker costs about 7 MiB
// resident when idle and 6–15 ms to start; workers idle for a minute are
// stopped, all but the one runs take first, so a burst does not hold its
// workers' memory afterwards.
//
// # What it does not do
//
// It does not decide what is allowed, inject credentials or redact: a
// script sees the request as the sandbox sent it, minus what the proxy
// strips before. It does not fetch bodies or stream them: the proxy reads
// at most max_body_bytes and passes them in. It does not read files or
// config, and it gives scripts no file, network, clock-sleeping or output
// access. It does not enforce max_memory outside Linux: there NewRuntime
// fails rather than run scripts unbounded. The kernel limit counts
// address space the worker has mapped, not pages it touches, so a run may
// hold somewhat less than max_memory when the worker's own mapped memory
// or fragmentation takes part of the slack; and CPU time is bounded only
// through the timeout, not by a CPU quota.
package hooks
