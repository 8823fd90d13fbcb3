package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// options are the benchmark's settings, from flags.
type options struct {
	runs              int
	window            window
	concurrency       int   // small requests, inspected requests
	streams           int   // 1 MiB bodies, tunnel streams
	newTunnelWorkers  int   // new tunnels
	idleTunnels       int   // idle tunnels held open for the RSS figure
	tunnelBytes       int64 // size of one streamed response through a tunnel
	tenants           int
	rules             int
	targets           []string
	scenarios         []string
	inspected         bool
	egressgwBinary    string
	tinyproxyBinary   string
	smokescreenBinary string
	squidBinary       string
	gatewayPprof      string
	proxyCPUs         string
	callgrind         int // requests per callgrind measurement; 0: the load benchmark instead
	perfCount         int // requests per perf stat measurement; 0: the load benchmark instead
	pprofOut          string
	timeout           time.Duration
	keepTemp          bool
	smoke             bool
}

// smokeTargets are what --smoke runs and checks.
var smokeTargets = []string{targetDirect, targetBareGoproxy, targetEgressgw}

// applySmoke shrinks o to a few seconds in total: one short run of every
// scenario against direct, bare goproxy and egressgw.
func applySmoke(o options) options {
	o.smoke = true
	o.runs = 1
	o.window = window{warmup: 100 * time.Millisecond, measure: 300 * time.Millisecond, minOps: 20}
	o.concurrency = 4
	o.streams = 2
	o.newTunnelWorkers = 2
	o.idleTunnels = 100
	o.tunnelBytes = 4 << 20
	o.targets = smokeTargets
	o.timeout = 3 * time.Minute
	return o
}

func allTargetNames() []string {
	var names []string
	for _, k := range targetKinds {
		names = append(names, k.name)
	}
	return names
}

func allScenarioIDs() []string {
	var ids []string
	for _, sc := range scenarios(options{}) {
		ids = append(ids, sc.id)
	}
	return ids
}

// outputFormat is how the result is printed on stdout.
type outputFormat int

const (
	formatText outputFormat = iota
	formatJSON
	formatMarkdown
)

func parseFlags(args []string, stderr io.Writer) (options, outputFormat, error) {
	fs := flag.NewFlagSet("egressbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var o options
	var targets, scenarioList string
	var asJSON, asMarkdown bool
	fs.IntVar(&o.runs, "runs", 5, "runs of every scenario; each figure is the median over them")
	fs.DurationVar(&o.window.measure, "duration", 3*time.Second, "measurement window of each scenario")
	fs.DurationVar(&o.window.warmup, "warmup", 500*time.Millisecond, "warm-up before each window (not counted)")
	fs.IntVar(&o.concurrency, "concurrency", 32, "concurrent clients for small and inspected requests")
	fs.IntVar(&o.streams, "streams", 4, "concurrent streams for 1 MiB bodies and tunnel throughput")
	fs.IntVar(&o.newTunnelWorkers, "new-tunnel-workers", 8, "concurrent clients opening new tunnels")
	fs.IntVar(&o.idleTunnels, "idle-tunnels", 1000, "idle tunnels held open to measure RSS per tunnel")
	fs.Int64Var(&o.tunnelBytes, "tunnel-bytes", 64<<20, "size of one response streamed through a tunnel")
	fs.IntVar(&o.tenants, "tenants", 100, "tenants in egressgw's policy")
	fs.IntVar(&o.rules, "rules", 500, "rules in egressgw's policy: one in five a connector, the rest tenants' own")
	fs.StringVar(&targets, "targets", strings.Join(allTargetNames(), ","), "targets to compare")
	fs.StringVar(&scenarioList, "scenarios", strings.Join(allScenarioIDs(), ","), "scenarios to run")
	fs.BoolVar(&o.inspected, "inspected", true, "try egressgw's inspected path (reported as not available when this build refuses it)")
	fs.StringVar(&o.egressgwBinary, "egressgw", "", "egressgw binary (default: go build ./cmd/egressgw of this module)")
	fs.StringVar(&o.tinyproxyBinary, "tinyproxy", "", "tinyproxy binary (default: tinyproxy on PATH; left out when missing)")
	fs.StringVar(&o.smokescreenBinary, "smokescreen", "", "smokescreen binary (default: go install "+smokescreenModule+" into the temporary directory; left out when that fails)")
	fs.StringVar(&o.squidBinary, "squid", "", "squid binary (default: squid on PATH or /usr/sbin/squid; left out when missing)")
	fs.StringVar(&o.gatewayPprof, "gateway-pprof", "", `base URL of egressgw's /debug/pprof/ endpoints, or "admin" for its admin listener; fetches a CPU profile during the first small-request window and a heap profile with the idle tunnels open`)
	fs.StringVar(&o.proxyCPUs, "proxy-cpus", "", `CPUs (e.g. "1" or "2-3") for the proxies under test; the harness, clients and upstreams, runs on the others. Default: no pinning, everything shares every CPU`)
	fs.IntVar(&o.perfCount, "perf-count", 0, "instead of the load benchmark: count bare goproxy's and egressgw's CPU time, system calls and context switches per small request under perf stat, over this many requests (e.g. 20000), three times")
	fs.IntVar(&o.callgrind, "callgrind", 0, "instead of the load benchmark: count bare goproxy's and egressgw's user-space instructions per small request under valgrind's callgrind, over this many requests (e.g. 2000), three times")
	fs.StringVar(&o.pprofOut, "pprof-out", ".", "directory for the profiles --gateway-pprof fetches")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "the whole benchmark stops after this long")
	fs.BoolVar(&o.keepTemp, "keep-temp", false, "keep the temporary directory (configs, audit log) for inspection")
	fs.BoolVar(&o.smoke, "smoke", false, "a few seconds of every scenario against direct, bare goproxy and egressgw, checking that figures are sane")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
	fs.BoolVar(&asMarkdown, "markdown", false, "print the result as Markdown tables")
	if err := fs.Parse(args); err != nil {
		return o, formatText, err
	}
	if fs.NArg() > 0 {
		return o, formatText, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.targets, o.scenarios = splitList(targets), splitList(scenarioList)
	o.window.minOps = 1
	if o.smoke {
		o = applySmoke(o)
	}
	format := formatText
	switch {
	case asJSON && asMarkdown:
		return o, format, errors.New("--json and --markdown exclude each other")
	case asJSON:
		format = formatJSON
	case asMarkdown:
		format = formatMarkdown
	}
	return o, format, o.validate()
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// validate keeps every setting within bounds that keep the benchmark
// finite and the policy well-formed.
func (o options) validate() error {
	check := func(name string, v, lo, hi int64) error {
		if v < lo || v > hi {
			return fmt.Errorf("--%s: %d is outside %d..%d", name, v, lo, hi)
		}
		return nil
	}
	err := errors.Join(
		check("runs", int64(o.runs), 1, 100),
		check("concurrency", int64(o.concurrency), 1, 4096),
		check("streams", int64(o.streams), 1, 256),
		check("new-tunnel-workers", int64(o.newTunnelWorkers), 1, 1024),
		check("idle-tunnels", int64(o.idleTunnels), 1, 20000),
		check("tunnel-bytes", o.tunnelBytes, 1, maxStreamBytes),
		check("tenants", int64(o.tenants), 1, 10000),
		check("rules", int64(o.rules), 1, 100000),
	)
	if err != nil {
		return err
	}
	if o.window.measure <= 0 || o.window.measure > 10*time.Minute || o.window.warmup < 0 || o.window.warmup > time.Minute {
		return errors.New("--duration must be in (0, 10m] and --warmup in [0, 1m]")
	}
	if o.timeout <= 0 {
		return errors.New("--timeout must be positive")
	}
	shape := policyShape{tenants: o.tenants, rules: o.rules}
	if o.rules-shape.connectorCount() < min(o.tenants, loadTenantCount) {
		return fmt.Errorf("--rules %d leaves too few tenant rules to allow the upstreams to %d load tenants", o.rules, min(o.tenants, loadTenantCount))
	}
	for _, t := range o.targets {
		if !slices.Contains(allTargetNames(), t) {
			return fmt.Errorf("--targets: unknown target %q (known: %s)", t, strings.Join(allTargetNames(), ", "))
		}
	}
	for _, s := range o.scenarios {
		if !slices.Contains(allScenarioIDs(), s) {
			return fmt.Errorf("--scenarios: unknown scenario %q (known: %s)", s, strings.Join(allScenarioIDs(), ", "))
		}
	}
	if o.callgrind != 0 {
		if err := check("callgrind", int64(o.callgrind), 100, 1_000_000); err != nil {
			return err
		}
		if o.smoke {
			return errors.New("--callgrind and --smoke exclude each other")
		}
	}
	if o.perfCount != 0 {
		if err := check("perf-count", int64(o.perfCount), 100, 10_000_000); err != nil {
			return err
		}
		if o.smoke || o.callgrind != 0 {
			return errors.New("--perf-count excludes --smoke and --callgrind")
		}
	}
	if o.proxyCPUs != "" {
		if _, err := parseCPUList(o.proxyCPUs); err != nil {
			return fmt.Errorf("--proxy-cpus: %w", err)
		}
	}
	if slices.Contains(o.scenarios, scenarioHalfLoad) && !slices.Contains(o.scenarios, scenarioSmall) {
		return errors.New("--scenarios: half-load needs small (it offers half of the measured maximum)")
	}
	return nil
}

const usage = `egressbench: load harness for egressgw.

Starts loopback upstreams (plain and TLS), then compares side by side:
direct, a bare goproxy, egressgw with a realistic policy, and the peers
tinyproxy and squid when installed and smokescreen when it builds. Every figure is the median of --runs runs, with its spread
and its ratio to direct and to bare goproxy.

Usage:
  egressbench [flags]            full benchmark (a few minutes)
  egressbench --smoke            a few seconds; exits 1 unless every figure is sane

Flags:
`

func main() {
	if handled, code := runChildRole(); handled {
		os.Exit(code)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	opts, format, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "egressbench:", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var countMode func(context.Context, options, io.Writer, io.Writer) error // per request, instead of under load
	switch {
	case opts.callgrind > 0:
		countMode = runCallgrind
	case opts.perfCount > 0:
		countMode = runPerfCount
	}
	if countMode != nil {
		opts.targets = slices.DeleteFunc(opts.targets, func(t string) bool { return !slices.Contains(callgrindTargets, t) })
		if err := countMode(ctx, opts, stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "egressbench:", err)
			return exitFail
		}
		return exitOK
	}
	result, err := runBenchmark(ctx, opts, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "egressbench:", err)
		return exitFail
	}
	switch format {
	case formatJSON:
		err = writeJSON(stdout, result)
	case formatMarkdown:
		err = writeMarkdown(stdout, result)
	default:
		err = writeText(stdout, result)
	}
	if err != nil {
		fmt.Fprintln(stderr, "egressbench: printing the result:", err)
		return exitFail
	}
	if opts.smoke {
		if problems := result.sanityProblems(smokeTargets); len(problems) > 0 {
			fmt.Fprintln(stderr, "egressbench: smoke check failed:\n  "+strings.Join(problems, "\n  "))
			return exitFail
		}
		fmt.Fprintln(stderr, "egressbench: smoke check passed: "+strconv.Itoa(len(result.Figures))+" figures sane for "+strings.Join(smokeTargets, ", "))
	}
	return exitOK
}
