package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Scenario ids, as --scenarios takes them.
const (
	scenarioIdleTunnels     = "idle-tunnels"
	scenarioSmall           = "small"
	scenarioSmallPaired     = "small-paired"
	scenarioLarge           = "large"
	scenarioTunnel          = "tunnel"
	scenarioTunnelLarge     = "tunnel-large"
	scenarioNewTunnels      = "new-tunnels"
	scenarioHalfLoad        = "half-load"
	scenarioInspected       = "inspected"
	scenarioInspectedHooked = "inspected-hooked"
	scenarioSSE             = "sse"
	scenarioSSERedacted     = "sse-redacted"
	scenarioSSEPaced        = "sse-paced"
	scenarioSSEPacedRedact  = "sse-paced-redacted"
)

// Figure ids: the keys of the JSON output and of every table row.
const (
	figSmallRPS         = "small_rps"
	figSmallP50         = "small_p50_ms"
	figSmallP99         = "small_p99_ms"
	figSmallCPU         = "small_proxy_cpu_us_per_request"
	figSmallPairedRatio = "small_rps_vs_bare_goproxy_paired"
	figLargeMiBps       = "large_mib_per_s"
	figLargeCPU         = "large_proxy_cpu_us_per_mib"
	figTunnelMiBps      = "tunnel_mib_per_s"
	figTunnelCPU        = "tunnel_proxy_cpu_us_per_mib"
	figTunnelLargeMiBps = "tunnel_large_mib_per_s"
	figTunnelLargeCPU   = "tunnel_large_proxy_cpu_us_per_mib"
	figNewTunnels       = "new_tunnels_per_s"
	figIdleTunnelKiB    = "idle_tunnel_rss_kib"
	figHalfLoadRate     = "half_load_rate"
	figHalfLoadP99      = "half_load_p99_ms"
	figHalfLoadAdded    = "half_load_p99_added_ms"
	figHalfLoadSliced   = "half_load_p99_added_sliced_ms"
	figInspectedRPS     = "inspected_rps"
	figInspectedHooked  = "inspected_hooked_rps"
	figSSEEvents        = "sse_events_per_s"
	figSSERedacted      = "sse_redacted_events_per_s"
	figSSERedactedRatio = "sse_redacted_vs_inspected_paired"
)

// The figures of the paced event streams, without and with redaction.
var (
	figsSSEPaced = timeToEventFigures{
		p50: "sse_time_to_event_p50_ms", p99: "sse_time_to_event_p99_ms",
		addedP50: "sse_time_to_event_p50_added_ms", addedP99: "sse_time_to_event_p99_added_ms",
	}
	figsSSEPacedRedacted = timeToEventFigures{
		p50: "sse_redacted_time_to_event_p50_ms", p99: "sse_redacted_time_to_event_p99_ms",
		addedP50: "sse_redacted_time_to_event_p50_added_ms", addedP99: "sse_redacted_time_to_event_p99_added_ms",
	}
)

// figureSpec says what a figure is and which way is better.
type figureSpec struct {
	id             string
	title          string
	unit           string
	higherIsBetter bool
	// mayBeNonPositive marks figures that noise or coarse clocks can push to
	// zero or below (differences; CPU time in 10 ms ticks over a short
	// window); every other figure must be positive to be sane.
	mayBeNonPositive bool
	// difference marks a figure that is already relative to direct, whose
	// ratios would mean nothing (and flip sign with noise).
	difference bool
}

// scenario is one kind of load, run the same way against every target.
type scenario struct {
	id      string
	figures []figureSpec
	// only lists the targets the scenario applies to; nil means all.
	only []string
	run  func(ctx context.Context, s *session, t *runningTarget) (outcome, error)
}

// outcome is what one scenario measured on one target in one run.
type outcome struct {
	values   map[string]float64
	problems []string // failed operations and the like; the figures are kept but flagged
	// without says why a figure of the scenario has no value for this
	// target (e.g. proxy CPU time of direct, which has no proxy).
	without map[string]string
}

// noProxyProcess is why direct has no proxy figures.
const noProxyProcess = "no proxy process to measure"

// scenarios is the benchmark, in the order each run executes it: idle
// tunnels first, while every proxy process is fresh, so that its RSS
// growth is the tunnels' alone; half-load after small, whose throughput it
// takes half of.
func scenarios(o options) []scenario {
	return []scenario{
		{
			id:      scenarioIdleTunnels,
			figures: []figureSpec{{id: figIdleTunnelKiB, title: fmt.Sprintf("RSS per idle tunnel, %d open", o.idleTunnels), unit: "KiB"}},
			run:     runIdleTunnels,
		},
		{
			id: scenarioSmall,
			figures: []figureSpec{
				{id: figSmallRPS, title: fmt.Sprintf("small requests (200 B), %d concurrent, keep-alive", o.concurrency), unit: "req/s", higherIsBetter: true},
				{id: figSmallP50, title: "small requests: p50 latency", unit: "ms"},
				{id: figSmallP99, title: "small requests: p99 latency", unit: "ms"},
				{id: figSmallCPU, title: "small requests: proxy CPU time per request (user + system)", unit: "µs", mayBeNonPositive: true},
			},
			run: runSmallRequests,
		},
		{
			id: scenarioSmallPaired,
			figures: []figureSpec{{
				id:    figSmallPairedRatio,
				title: "small requests: req/s ÷ bare goproxy's, median over pairs of alternating slices of " + pairedSlice.String(),
				unit:  "×", higherIsBetter: true, difference: true,
			}},
			only: []string{targetEgressgw},
			run:  runSmallPaired,
		},
		{
			id: scenarioLarge,
			figures: []figureSpec{
				{id: figLargeMiBps, title: fmt.Sprintf("1 MiB bodies, plain HTTP, %d streams", o.streams), unit: "MiB/s", higherIsBetter: true},
				{id: figLargeCPU, title: "1 MiB bodies, plain HTTP: proxy CPU time per MiB", unit: "µs", mayBeNonPositive: true},
			},
			run: runLargeBodies,
		},
		{
			id: scenarioTunnel,
			figures: []figureSpec{
				{id: figTunnelMiBps, title: fmt.Sprintf("CONNECT tunnel, TLS stream, %d streams", o.streams), unit: "MiB/s", higherIsBetter: true},
				{id: figTunnelCPU, title: "CONNECT tunnel: proxy CPU time per MiB relayed", unit: "µs", mayBeNonPositive: true},
			},
			run: runTunnelStream,
		},
		{
			id: scenarioTunnelLarge,
			figures: []figureSpec{
				{id: figTunnelLargeMiBps, title: fmt.Sprintf("1 MiB bodies over CONNECT + TLS, keep-alive, %d streams", o.streams), unit: "MiB/s", higherIsBetter: true},
				{id: figTunnelLargeCPU, title: "1 MiB bodies over CONNECT + TLS: proxy CPU time per MiB", unit: "µs", mayBeNonPositive: true},
			},
			run: runTunnelLarge,
		},
		{
			id:      scenarioNewTunnels,
			figures: []figureSpec{{id: figNewTunnels, title: fmt.Sprintf("new tunnels (CONNECT + TLS + 1 request), %d concurrent", o.newTunnelWorkers), unit: "tunnels/s", higherIsBetter: true}},
			run:     runNewTunnels,
		},
		{
			id: scenarioHalfLoad,
			figures: []figureSpec{
				{id: figHalfLoadRate, title: "half load: offered rate (50% of the target's small req/s)", unit: "req/s", higherIsBetter: true},
				{id: figHalfLoadP99, title: "half load: p99 latency", unit: "ms"},
				{id: figHalfLoadAdded, title: "half load: p99 added over direct at the same rate", unit: "ms", mayBeNonPositive: true, difference: true},
				{id: figHalfLoadSliced, title: "half load: p99 added over direct, median over slices of " + halfLoadSlice.String(), unit: "ms", mayBeNonPositive: true, difference: true},
			},
			run: runHalfLoad,
		},
		{
			id:      scenarioInspected,
			figures: []figureSpec{{id: figInspectedRPS, title: fmt.Sprintf("inspected HTTPS, small POST, %d concurrent", o.concurrency), unit: "req/s", higherIsBetter: true}},
			only:    []string{targetEgressgw},
			run: func(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
				return runInspected(ctx, s, t, inspectPlainTenant, figInspectedRPS)
			},
		},
		{
			id:      scenarioInspectedHooked,
			figures: []figureSpec{{id: figInspectedHooked, title: "inspected + header-edit hook + pii redaction, same load", unit: "req/s", higherIsBetter: true}},
			only:    []string{targetEgressgw},
			run: func(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
				return runInspected(ctx, s, t, inspectHookedTenant, figInspectedHooked)
			},
		},
		{
			id: scenarioSSE,
			figures: []figureSpec{{
				id:    figSSEEvents,
				title: fmt.Sprintf("server-sent events (1 KiB JSON) over HTTPS, as fast as read, %d streams; egressgw: an inspecting connector", o.streams),
				unit:  "events/s", higherIsBetter: true,
			}},
			only: []string{targetDirect, targetEgressgw},
			run: func(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
				return runEventFlood(ctx, s, sseSideOf(t, inspectPlainTenant, false), figSSEEvents)
			},
		},
		{
			id: scenarioSSERedacted,
			figures: []figureSpec{
				{id: figSSERedacted, title: "server-sent events, same load, pii redaction of responses (alternating slices with the inspected path)", unit: "events/s", higherIsBetter: true},
				{
					id:    figSSERedactedRatio,
					title: "server-sent events: pii-redacted events/s ÷ inspected, median over pairs of alternating slices of " + pairedSlice.String(),
					unit:  "×", higherIsBetter: true, difference: true,
				},
			},
			only: []string{targetEgressgw},
			run:  runEventFloodPaired,
		},
		{
			id:      scenarioSSEPaced,
			figures: timeToEventSpecs(figsSSEPaced, fmt.Sprintf("server-sent events, one every %v, %d streams", pacedEventInterval, o.streams)),
			only:    []string{targetDirect, targetEgressgw},
			run: func(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
				return runTimeToEvent(ctx, s, sseSideOf(t, inspectPlainTenant, false), figsSSEPaced)
			},
		},
		{
			id:      scenarioSSEPacedRedact,
			figures: timeToEventSpecs(figsSSEPacedRedacted, "paced server-sent events, pii redaction of responses"),
			only:    []string{targetEgressgw},
			run: func(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
				return runTimeToEvent(ctx, s, sseSideOf(t, sseRedactedTenant, true), figsSSEPacedRedacted)
			},
		},
	}
}

// timeToEventSpecs are the figures of a paced event scenario: time from
// the upstream writing an event to the client reading it, and what the
// proxy adds to it over direct, measured in the same run.
func timeToEventSpecs(f timeToEventFigures, what string) []figureSpec {
	return []figureSpec{
		{id: f.p50, title: what + ": time to event, p50", unit: "ms"},
		{id: f.p99, title: what + ": time to event, p99", unit: "ms"},
		{id: f.addedP50, title: what + ": time to event added over direct, p50", unit: "ms", mayBeNonPositive: true, difference: true},
		{id: f.addedP99, title: what + ": time to event added over direct, p99", unit: "ms", mayBeNonPositive: true, difference: true},
	}
}

// session is one run of the benchmark: its index, the shared environment,
// and what earlier scenarios of the run measured.
type session struct {
	env      *benchEnv
	run      int
	targets  map[string]*runningTarget // every target running in this run, by name
	mu       sync.Mutex
	smallRPS map[string]float64 // target → this run's small req/s
}

func (s *session) window() window { return s.env.opts.window }

// profileGateway reports whether this run profiles t: the first run's
// egressgw, when --gateway-pprof is given.
func (s *session) profileGateway(t *runningTarget) bool {
	return s.env.profiler != nil && s.run == 0 && t.name == targetEgressgw
}

// profileWindow fetches a CPU profile of t into file over the measured part
// of the window that starts now, when this run profiles t (profileGateway);
// the returned func waits for it and notes where it went, as what.
func (s *session) profileWindow(ctx context.Context, t *runningTarget, file, what string) (wait func()) {
	if !s.profileGateway(t) {
		return func() {}
	}
	env := s.env
	done := make(chan struct{})
	go func() {
		defer close(done)
		sleepCtx(ctx, s.window().warmup)
		if path, err := env.profiler.cpu(ctx, t, s.window().measure, file); err != nil {
			env.addNote("egressgw CPU profile not taken: " + err.Error())
		} else {
			env.addNote("egressgw CPU profile under " + what + " (first run): " + path)
		}
	}()
	return func() { <-done }
}

// perTenant spreads workers over the load tenants' pools.
func perTenant(workers, tenants int) int { return max(1, (workers+tenants-1)/tenants) }

func problemsOf(r loadResult) []string {
	if s := r.errorSummary(); s != "" {
		return []string{s}
	}
	return nil
}

// runIdleTunnels opens idleTunnels tunnels to the TLS upstream (each with
// one request done, as a sandbox's pooled HTTPS connection is), leaves
// them idle and reads how much the proxy's RSS grew per tunnel.
func runIdleTunnels(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
	env, n := s.env, s.env.opts.idleTunnels
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	open := func(count int) ([]net.Conn, error) {
		conns := make([]net.Conn, count)
		errs := make([]error, count)
		forEachParallel(count, 16, func(i int) {
			conns[i], errs[i] = openIdleTunnel(ctx, t, env.loadTenants[i%len(env.loadTenants)], env.up.tlsAddr, env.clientTLS)
		})
		return conns, firstOf(errs)
	}
	closeAll := func(conns []net.Conn) {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	// A few tunnels first, so one-time costs (code paths paged in, pools
	// created) land before the baseline.
	warm, err := open(min(16, n))
	closeAll(warm)
	if err != nil {
		return outcome{}, fmt.Errorf("warm-up tunnels: %w", err)
	}
	time.Sleep(200 * time.Millisecond)
	before, err := rssKiB(t.process.pid())
	if err != nil {
		return outcome{}, err
	}
	conns, err := open(n)
	defer closeAll(conns)
	if err != nil {
		return outcome{}, fmt.Errorf("opening %d idle tunnels: %w", n, err)
	}
	time.Sleep(500 * time.Millisecond) // let the proxy settle into idleness
	after, err := rssKiB(t.process.pid())
	if err != nil {
		return outcome{}, err
	}
	var problems []string
	if s.profileGateway(t) {
		if path, err := env.profiler.heap(ctx, t); err != nil {
			env.addNote("egressgw heap profile not taken: " + err.Error())
		} else {
			env.addNote(fmt.Sprintf("egressgw heap profile with %d idle tunnels open: %s", n, path))
		}
	}
	var closed atomic.Int64
	forEachParallel(len(conns), 16, func(i int) {
		if !stillOpen(conns[i]) {
			closed.Add(1)
		}
	})
	if n := closed.Load(); n > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d tunnels were closed by the proxy while idle", n, len(conns)))
	}
	return outcome{values: map[string]float64{figIdleTunnelKiB: (after - before) / float64(n)}, problems: problems}, nil
}

// firstOf summarizes errs: nil when all are nil, else how many failed and
// the first.
func firstOf(errs []error) error {
	var first error
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	if first == nil {
		return nil
	}
	return fmt.Errorf("%d of %d failed, first: %w", failed, len(errs), first)
}

// forEachParallel calls fn(0..n-1) on up to workers goroutines.
func forEachParallel(n, workers int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// stillOpen reports whether an idle connection is still open: a short read
// times out on an open one and ends at once on one the peer has closed.
func stillOpen(c net.Conn) bool {
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Millisecond)); err != nil {
		return false
	}
	_, err := c.Read(make([]byte, 1))
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// smallLoad is the small-request load on t that several scenarios share:
// 200 B plain GETs from workers spread over the load tenants' keep-alive
// clients. The caller closes the clients.
func smallLoad(env *benchEnv, t *runningTarget, workers int) (*clientGroup, operation) {
	clients := newClientGroup(t, env.loadTenants, env.clientTLS, perTenant(workers, len(env.loadTenants)), keepAlive)
	return clients, fetchOp(clients, newBodyBuffers(workers), "GET", env.up.plainURL(pathSmall), nil, smallBodySize, nil)
}

// runSmallRequests measures throughput and latency of 200 B GETs over
// keep-alive connections at fixed concurrency.
func runSmallRequests(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
	env, c := s.env, s.env.opts.concurrency
	clients, op := smallLoad(env, t, c)
	defer clients.close()
	profiled := s.profileWindow(ctx, t, cpuProfileFile, "small-request load")
	r := runClosedLoop(ctx, c, s.window(), processCPU(t), op)
	profiled()
	rps := r.opsPerSecond()
	s.mu.Lock()
	s.smallRPS[t.name] = rps
	s.mu.Unlock()
	out := outcome{
		values:   map[string]float64{figSmallRPS: rps, figSmallP50: r.percentileMS(50), figSmallP99: r.percentileMS(99)},
		problems: problemsOf(r),
	}
	setPerUnit(&out, t, figSmallCPU, r.cpuSeconds*1e6, float64(r.ops))
	return out, nil
}

// setPerUnit records total/units as figure, or why there is none: direct
// has no proxy process.
func setPerUnit(out *outcome, t *runningTarget, figure string, total, units float64) {
	if !t.proxied() {
		out.without = map[string]string{figure: noProxyProcess}
		return
	}
	out.values[figure] = total / units
}

// runLargeBodies measures plain-HTTP throughput of 1 MiB responses.
func runLargeBodies(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
	env, c := s.env, s.env.opts.streams
	clients := newClientGroup(t, env.loadTenants, env.clientTLS, perTenant(c, len(env.loadTenants)), keepAlive)
	defer clients.close()
	profiled := s.profileWindow(ctx, t, largeCPUProfileFile, "1 MiB plain bodies")
	r := runClosedLoop(ctx, c, s.window(), processCPU(t), fetchOp(clients, newBodyBuffers(c), "GET", env.up.plainURL(pathLarge), nil, largeBodySize, nil))
	profiled()
	out := outcome{values: map[string]float64{figLargeMiBps: r.mibPerSecond()}, problems: problemsOf(r)}
	setPerUnit(&out, t, figLargeCPU, r.cpuSeconds*1e6, float64(r.bytes)/(1<<20))
	return out, nil
}

// runTunnelStream measures how fast a long TLS response flows through a
// CONNECT tunnel; the proxy only copies bytes.
func runTunnelStream(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
	env, c := s.env, s.env.opts.streams
	clients := newClientGroup(t, env.loadTenants, env.clientTLS, perTenant(c, len(env.loadTenants)), keepAlive)
	defer clients.close()
	size := env.opts.tunnelBytes
	url := env.up.tlsURL(pathStream + "?bytes=" + strconv.FormatInt(size, 10))
	w := s.window()
	w.minOps = 1 // one whole stream: bytes, not operations, are what this counts
	profiled := s.profileWindow(ctx, t, tunnelCPUProfileFile, "tunnel streams")
	r := runClosedLoop(ctx, c, w, processCPU(t), fetchOp(clients, newBodyBuffers(c), "GET", url, nil, size, nil))
	profiled()
	out := outcome{values: map[string]float64{figTunnelMiBps: r.mibPerSecond()}, problems: problemsOf(r)}
	setPerUnit(&out, t, figTunnelCPU, r.cpuSeconds*1e6, float64(r.bytes)/(1<<20))
	return out, nil
}

// runTunnelLarge measures 1 MiB responses one after another over
// keep-alive tunnels: the relay moves a burst per response and waits
// for the next request in between, where the tunnel scenario streams.
func runTunnelLarge(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
	env, c := s.env, s.env.opts.streams
	clients := newClientGroup(t, env.loadTenants, env.clientTLS, perTenant(c, len(env.loadTenants)), keepAlive)
	defer clients.close()
	profiled := s.profileWindow(ctx, t, tunnelLargeCPUProfileFile, "1 MiB bodies through tunnels")
	r := runClosedLoop(ctx, c, s.window(), processCPU(t), fetchOp(clients, newBodyBuffers(c), "GET", env.up.tlsURL(pathLarge), nil, largeBodySize, nil))
	profiled()
	out := outcome{values: map[string]float64{figTunnelLargeMiBps: r.mibPerSecond()}, problems: problemsOf(r)}
	setPerUnit(&out, t, figTunnelLargeCPU, r.cpuSeconds*1e6, float64(r.bytes)/(1<<20))
	return out, nil
}

// runNewTunnels measures tunnels set up per second: every request opens a
// new connection (CONNECT, a full TLS handshake, one small GET).
func runNewTunnels(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
	env, c := s.env, s.env.opts.newTunnelWorkers
	clients := newClientGroup(t, env.loadTenants, env.clientTLS, 1, newConnEachTime)
	defer clients.close()
	r := runClosedLoop(ctx, c, s.window(), processCPU(t), fetchOp(clients, newBodyBuffers(c), "GET", env.up.tlsURL(pathSmall), nil, smallBodySize, nil))
	return outcome{values: map[string]float64{figNewTunnels: r.opsPerSecond()}, problems: problemsOf(r)}, nil
}

// halfLoadSlice is how long each side of the half-load comparison runs
// before the other takes its turn; the target and direct alternate slice
// by slice, so that a burst of load from elsewhere on the machine falls on
// both rather than on one. A slice holds about a thousand requests at the
// rates this machine reaches, enough for its own p99.
const halfLoadSlice = 250 * time.Millisecond

// runHalfLoad offers small requests at half the target's measured maximum
// (open loop) and compares the p99 latency with direct at the same rate,
// measured in alternating slices of the same window: the latency the proxy
// adds when it is not the bottleneck. It reports the difference of the
// whole window's p99s, and the median over slice pairs of the difference
// of their p99s: a stall of the machine lasting a few milliseconds falls
// on one slice and sets the whole window's p99 on a shared machine, while
// latency the proxy adds to every request shows in every slice.
func runHalfLoad(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
	s.mu.Lock()
	maxRPS, ok := s.smallRPS[t.name]
	s.mu.Unlock()
	if !ok || maxRPS <= 0 || math.IsNaN(maxRPS) {
		return outcome{}, errors.New("needs this run's small-request throughput: run the small scenario too")
	}
	env, rate := s.env, maxRPS/2
	inFlight := 4 * env.opts.concurrency
	type side struct {
		clients  *clientGroup
		op       operation
		result   loadResult
		sliceP99 []float64
	}
	newSide := func(target *runningTarget) *side {
		clients, op := smallLoad(env, target, inFlight)
		return &side{clients: clients, op: op}
	}
	sides := []*side{newSide(t)}
	if t.proxied() {
		sides = append(sides, newSide(&runningTarget{name: targetDirect}))
	}
	slices := max(2, int(s.window().measure/halfLoadSlice))
	for i := range slices {
		for _, sd := range sides {
			w := window{warmup: s.window().warmup, measure: s.window().measure / time.Duration(slices)}
			if i > 0 {
				w.warmup = 0 // connections are already open
			}
			slice := runOpenLoop(ctx, rate, inFlight, w, sd.op)
			sd.sliceP99 = append(sd.sliceP99, slice.percentileMS(99))
			sd.result = sd.result.merge(slice)
		}
	}
	for _, sd := range sides {
		sd.clients.close()
	}
	target := sides[0].result
	out := outcome{values: map[string]float64{figHalfLoadRate: rate, figHalfLoadP99: target.percentileMS(99)}, problems: problemsOf(target)}
	if len(sides) == 1 {
		out.without = map[string]string{figHalfLoadAdded: "baseline", figHalfLoadSliced: "baseline"}
		return out, nil
	}
	baseline := sides[1].result
	out.values[figHalfLoadAdded] = target.percentileMS(99) - baseline.percentileMS(99)
	added := make([]float64, slices)
	for i := range added {
		added[i] = sides[0].sliceP99[i] - sides[1].sliceP99[i]
	}
	out.values[figHalfLoadSliced] = median(added)
	if p := problemsOf(baseline); p != nil {
		out.problems = append(out.problems, "direct baseline: "+p[0])
	}
	return out, nil
}

// inspectedBody is a small JSON request with personal data in it, so the
// pii profile has something to find.
var inspectedBody = []byte(`{"user":{"name":"Ada","email":"` + sampleEmail + `","date_of_birth":"1815-12-10"},` +
	`"note":"call me on 555-010-4477","card":"4111 1111 1111 1111","ssn":"123-45-6789","password":"hunter2"}`)

// runInspected sends small POSTs through the gateway's inspected path,
// as tenant c (whose connector sets what runs: nothing, or a hook and
// redaction), over keep-alive tunnels. Every response is checked to have
// really taken that path: the certificate the client saw was made by the
// gateway, and the upstream saw (or did not see) the hook's header and the
// unredacted e-mail address, as the connector says.
func runInspected(ctx context.Context, s *session, t *runningTarget, c credentials, figure string) (outcome, error) {
	env, workers := s.env, s.env.opts.concurrency
	hooked := c == inspectHookedTenant
	check := func(resp *http.Response) error {
		if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 || resp.TLS.PeerCertificates[0].Issuer.CommonName != interceptCAName {
			return errors.New("the response did not come through the gateway's interception (certificate not issued by its CA)")
		}
		hookSeen, emailSeen := resp.Header.Get(headerHookSeen) == "yes", resp.Header.Get(headerEmailSeen) == "yes"
		if hookSeen != hooked || emailSeen == hooked {
			return fmt.Errorf("upstream saw hook header %v and unredacted e-mail %v; the connector has hook and redaction %v", hookSeen, emailSeen, hooked)
		}
		return nil
	}
	clients := newClientGroup(t, []credentials{c}, env.clientTLS, workers, keepAlive)
	defer clients.close()
	r := runClosedLoop(ctx, workers, s.window(), processCPU(t), fetchOp(clients, newBodyBuffers(workers), "POST", env.up.tlsURL(pathEcho), inspectedBody, smallBodySize, check))
	return outcome{values: map[string]float64{figure: r.opsPerSecond()}, problems: problemsOf(r)}, nil
}
