package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// The callgrind mode (--callgrind N) counts the user-space instructions
// the bare goproxy and egressgw each spend on a small request, under
// valgrind's callgrind. On a shared machine CPU time per request moves by
// ±15% between runs minutes apart; an instruction count is the same for
// the same binary and load whatever else the machine does, so a change of
// a few hundred instructions per request can be measured. It leaves out
// the kernel's share and what instructions cost in cycles; --perf-count
// measures those (the system calls are the same for both: five reads and
// two writes per request).

// callgrindTargets are the targets the mode compares.
var callgrindTargets = []string{targetBareGoproxy, targetEgressgw}

const (
	callgrindMeasurements = 3   // each figure is their median
	callgrindWarmup       = 500 // requests before the first measurement
)

// callgrindTools are the valgrind commands the mode needs.
type callgrindTools struct{ valgrind, control string }

func findCallgrind() (callgrindTools, error) {
	var t callgrindTools
	var err1, err2 error
	t.valgrind, err1 = exec.LookPath("valgrind")
	t.control, err2 = exec.LookPath("callgrind_control")
	if err := errors.Join(err1, err2); err != nil {
		return t, fmt.Errorf("--callgrind needs valgrind and callgrind_control (Debian package valgrind): %w", err)
	}
	return t, nil
}

// wrap makes cmd run under callgrind with instrumentation off until asked,
// writing its dumps to out.1, out.2, ... Go's asynchronous preemption
// signals trip an assertion in callgrind, so they are turned off, and so is
// the runtime's use of RDTSCP, an instruction this valgrind does not know.
// Children are followed so that egressgw's hook workers, executed from the
// gateway's own file, start under the same loader.
func (t callgrindTools) wrap(cmd *exec.Cmd, out string) {
	cmd.Args = append([]string{t.valgrind, "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes", "--callgrind-out-file=" + out}, cmd.Args...)
	cmd.Path = t.valgrind
	if cmd.Env == nil {
		cmd.Env = childEnv()
	}
	cmd.Env = append(cmd.Env, "GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off")
}

func (t callgrindTools) command(ctx context.Context, pid int, args ...string) error {
	out, err := exec.CommandContext(ctx, t.control, append(args, strconv.Itoa(pid))...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("callgrind_control %v: %w: %s", args, err, bytes.TrimSpace(out))
	}
	return nil
}

// callgrindFigure is one target's instructions per request, one value per
// measurement.
type callgrindFigure struct {
	target     string
	perRequest []float64
}

// runCallgrind measures every target in callgrindTargets that --targets
// names and prints the figures and their ratio to the bare goproxy.
func runCallgrind(ctx context.Context, opts options, stdout, progress io.Writer) error {
	tools, err := findCallgrind()
	if err != nil {
		return err
	}
	var figures []callgrindFigure
	err = eachWarmedTarget(ctx, opts, progress, func(env *benchEnv, p *preparedTarget) func(*exec.Cmd) {
		outFile := filepath.Join(env.dir, "callgrind-"+p.name+".out")
		return func(cmd *exec.Cmd) { tools.wrap(cmd, outFile) }
	}, func(env *benchEnv, t *runningTarget, load func(n int) error) error {
		f, err := measureInstructions(ctx, env, tools, t, load)
		figures = append(figures, f)
		return err
	})
	if err != nil {
		return err
	}
	return writeCallgrind(stdout, opts, figures)
}

// eachWarmedTarget is what the per-request counting modes (--callgrind,
// --perf-count) share: it prepares the targets, then one at a time starts
// each (under the command wrap returns, if any), warms it with
// callgrindWarmup small requests and hands it to measure with a load that
// makes exactly n more.
func eachWarmedTarget(ctx context.Context, opts options, progress io.Writer,
	wrap func(*benchEnv, *preparedTarget) func(*exec.Cmd),
	measure func(env *benchEnv, t *runningTarget, load func(n int) error) error) error {
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	if err := raiseOpenFileLimit(); err != nil {
		return err
	}
	env, closeEnv, err := newBenchEnv(opts, progress)
	if err != nil {
		return err
	}
	defer closeEnv()
	targets, err := prepareTargets(ctx, env)
	if err != nil {
		return err
	}
	for _, p := range targets {
		if wrap != nil {
			env.wrapChild = wrap(env, p)
		}
		if err := measureWarmed(ctx, env, p, measure); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	return nil
}

func measureWarmed(ctx context.Context, env *benchEnv, p *preparedTarget, measure func(*benchEnv, *runningTarget, func(int) error) error) error {
	t, err := p.start(ctx)
	if err != nil {
		return err
	}
	defer t.stop()
	workers := env.opts.concurrency
	clients, op := smallLoad(env, t, workers)
	defer clients.close()
	if err := runCount(ctx, workers, callgrindWarmup, op); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	return measure(env, t, func(n int) error { return runCount(ctx, workers, n, op) })
}

// measureInstructions counts t's instructions over opts.callgrind
// requests, callgrindMeasurements times.
func measureInstructions(ctx context.Context, env *benchEnv, tools callgrindTools, t *runningTarget, load func(int) error) (callgrindFigure, error) {
	fig := callgrindFigure{target: t.name}
	outFile := filepath.Join(env.dir, "callgrind-"+t.name+".out")
	pid, n := t.process.pid(), env.opts.callgrind
	for i := 1; i <= callgrindMeasurements; i++ {
		if err := tools.command(ctx, pid, "--zero"); err != nil {
			return fig, err
		}
		if err := tools.command(ctx, pid, "--instr=on"); err != nil {
			return fig, err
		}
		if err := load(n); err != nil {
			return fig, err
		}
		if err := tools.command(ctx, pid, "--instr=off"); err != nil {
			return fig, err
		}
		if err := tools.command(ctx, pid, "--dump"); err != nil {
			return fig, err
		}
		total, err := readCallgrindTotal(ctx, outFile+"."+strconv.Itoa(i))
		if err != nil {
			return fig, err
		}
		fig.perRequest = append(fig.perRequest, float64(total)/float64(n))
		env.progressf("callgrind %d/%d %-12s %.0f instructions per request", i, callgrindMeasurements, t.name, fig.perRequest[i-1])
	}
	return fig, nil
}

// runCount makes n requests with op from workers concurrent workers.
func runCount(ctx context.Context, workers, n int, op operation) error {
	var left atomic.Int64
	left.Store(int64(n))
	m := &meter{}
	done := make(chan struct{}, workers)
	for w := range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for left.Add(-1) >= 0 && ctx.Err() == nil {
				if err := op(ctx, w, m); err != nil {
					m.fail(err)
				}
			}
		}()
	}
	for range workers {
		<-done
	}
	if m.errors.Load() > 0 {
		return fmt.Errorf("%d of %d requests failed, first: %s", m.errors.Load(), n, m.firstErr)
	}
	return ctx.Err()
}

// readCallgrindTotal waits for a dump file to be complete and returns its
// "totals:" figure (instructions, the only event collected).
func readCallgrindTotal(ctx context.Context, path string) (int64, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			for line := range bytes.Lines(data) {
				if rest, ok := bytes.CutPrefix(line, []byte("totals:")); ok {
					return strconv.ParseInt(string(bytes.TrimSpace(rest)), 10, 64)
				}
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no complete callgrind dump at %s", path)
		}
		sleepCtx(ctx, 100*time.Millisecond)
		if err := ctx.Err(); err != nil {
			return 0, err
		}
	}
}

func writeCallgrind(w io.Writer, opts options, figures []callgrindFigure) error {
	fmt.Fprintf(w, "user-space instructions per small request (callgrind): median of %d measurements of %d requests, %d concurrent, after %d of warm-up\n",
		callgrindMeasurements, opts.callgrind, opts.concurrency, callgrindWarmup)
	var base float64
	for _, f := range figures {
		if f.target == targetBareGoproxy {
			base = median(f.perRequest)
		}
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "  target\tmedian\tspread\t× bare-goproxy")
	for _, f := range figures {
		ratio := "–"
		if base > 0 {
			ratio = fmt.Sprintf("%.3f×", median(f.perRequest)/base)
		}
		fmt.Fprintf(tw, "  %s\t%.0f\t%.0f–%.0f\t%s\n", f.target, median(f.perRequest), slices.Min(f.perRequest), slices.Max(f.perRequest), ratio)
	}
	return tw.Flush()
}
