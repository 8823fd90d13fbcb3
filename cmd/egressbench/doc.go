// Command egressbench is the load harness of egressgw. It talks through an
// HTTP proxy the way a sandbox does (Basic proxy credentials, keep-alive,
// CONNECT) to upstreams it starts itself on 127.0.0.1, and compares side by
// side, in one run:
//
//   - direct: no proxy, the ceiling;
//   - bare-goproxy: goproxy.NewProxyHttpServer() with nothing added, the
//     floor the gateway's library gives, run as a re-executed copy of this
//     binary so that its RSS is its own;
//   - egressgw: the gateway binary with a realistic policy (authentication,
//     100 tenants, 500 rules, audit log to a file, quotas when this build
//     accepts them);
//   - the peers: tinyproxy and Squid when installed (Debian packages),
//     and Smokescreen, built with go install from the Go module proxy;
//     each is left out with a note where it cannot run.
//
// Figures: small-request throughput and latency at fixed concurrency, and
// egressgw's throughput against bare goproxy's in alternating slices; MiB/s
// of 1 MiB bodies over plain HTTP and of a TLS stream through a CONNECT
// tunnel; new tunnels per second; RSS per idle tunnel; the p99 latency
// egressgw adds over direct at half of its maximum throughput; and the
// inspected path with and without a hook and redaction, once egressgw
// accepts it; server-sent events through an inspecting connector, with
// and without pii redaction of responses: events per second, and the time
// from the upstream writing an event to the client reading it that
// egressgw adds over direct. Each figure is the median of several runs, with its spread
// and ratios to direct and to bare goproxy.
//
// Every load is bounded in time and operation count, and every byte goes
// to 127.0.0.1. It does not measure the policy decision in isolation: that
// is a micro-benchmark next to the code (go test -bench PolicyDecision ./proxy).
//
// --proxy-cpus pins the proxies to some CPUs and the harness to the rest,
// so that a proxy's cost shows as its own CPU rather than as CPU taken
// from the load. --callgrind N counts, instead of timing, the user-space
// instructions bare goproxy and egressgw spend per small request, under
// valgrind: a figure this shared machine's noise does not move.
// --perf-count N counts what callgrind leaves out, under perf stat over
// exactly N small requests: CPU time in user space and in the kernel,
// system calls by kind and context switches per request.
//
// --smoke runs every scenario for a moment and checks that the figures are
// sane, without judging timing; smoke_test.go runs it.
package main
