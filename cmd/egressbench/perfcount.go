package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
)

// The perf mode (--perf-count N) counts what callgrind leaves out: the
// system calls, context switches and CPU time each proxy spends per small
// request, under `perf stat` attached to the running proxy with its
// counters enabled only while the harness makes exactly N requests. Unlike
// a timed window, the number of requests counted is known, so a difference
// of one system call per request shows.

// perfEvents are the counters read per request: CPU time, scheduling, all
// system calls, then the ones a Go network server makes.
var perfEvents = []string{
	"task-clock",
	"context-switches",
	"cpu-migrations",
	"raw_syscalls:sys_enter",
	"syscalls:sys_enter_read",
	"syscalls:sys_enter_write",
	"syscalls:sys_enter_writev",
	"syscalls:sys_enter_epoll_pwait",
	"syscalls:sys_enter_epoll_ctl",
	"syscalls:sys_enter_futex",
	"syscalls:sys_enter_nanosleep",
	"syscalls:sys_enter_sched_yield",
	"syscalls:sys_enter_tgkill",
	"syscalls:sys_enter_setsockopt",
	"syscalls:sys_enter_madvise",
}

// userTime and systemTime are the CPU milliseconds /proc counts in user
// space and in the kernel (in clock ticks of 10 ms: count enough requests).
const (
	userTime   = "user"
	systemTime = "system"
)

// perfFigure is one target's counts per request, one map per measurement.
type perfFigure struct {
	target     string
	perRequest []map[string]float64
}

// runPerfCount measures every target in callgrindTargets that --targets
// names and prints each counter per request with its ratio to the bare
// goproxy.
func runPerfCount(ctx context.Context, opts options, stdout, progress io.Writer) error {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return fmt.Errorf("--perf-count needs perf (Debian package linux-perf): %w", err)
	}
	var figures []perfFigure
	err = eachWarmedTarget(ctx, opts, progress, nil, func(env *benchEnv, t *runningTarget, load func(int) error) error {
		f, err := measurePerf(ctx, env, perf, t, load)
		figures = append(figures, f)
		return err
	})
	if err != nil {
		return err
	}
	return writePerfCount(stdout, opts, figures)
}

// measurePerf attaches perf stat to t with its counters disabled and
// enables them around each run of opts.perfCount requests.
func measurePerf(ctx context.Context, env *benchEnv, perf string, t *runningTarget, load func(int) error) (perfFigure, error) {
	fig := perfFigure{target: t.name}
	n := env.opts.perfCount
	for i := 1; i <= callgrindMeasurements; i++ {
		out := filepath.Join(env.dir, fmt.Sprintf("perf-%s.%d.csv", t.name, i))
		counts, err := perfAround(ctx, perf, t.process.pid(), out, func() error { return load(n) })
		if err != nil {
			return fig, err
		}
		per := make(map[string]float64, len(counts))
		for k, v := range counts {
			per[k] = v / float64(n)
		}
		fig.perRequest = append(fig.perRequest, per)
		env.progressf("perf %d/%d %-12s %.1f µs, %.2f system calls, %.2f context switches per request",
			i, callgrindMeasurements, t.name, per["task-clock"]*1e3, per["raw_syscalls:sys_enter"], per["context-switches"])
	}
	return fig, nil
}

// perfAround runs load with perf stat's counters on pid enabled, and
// returns the counters' totals.
func perfAround(ctx context.Context, perf string, pid int, out string, load func() error) (map[string]float64, error) {
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer ctlW.Close()
	ackR, ackW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		return nil, err
	}
	defer ackR.Close()
	cmd := exec.CommandContext(ctx, perf, "stat", "-x", ",", "-o", out, "-D", "-1", "--control", "fd:3,4",
		"-e", strings.Join(perfEvents, ","), "-p", strconv.Itoa(pid))
	cmd.ExtraFiles = []*os.File{ctlR, ackW}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Start()
	ctlR.Close()
	ackW.Close()
	if err != nil {
		return nil, err
	}
	ack := bufio.NewReader(ackR)
	command := func(c string) error {
		if _, err := io.WriteString(ctlW, c+"\n"); err != nil {
			return err
		}
		line, err := ack.ReadString('\n')
		if err != nil {
			return fmt.Errorf("perf stat did not acknowledge %q: %w: %s", c, err, bytes.TrimSpace(stderr.Bytes()))
		}
		if strings.Trim(line, "\x00 \n") != "ack" { // perf sends "ack\n" with its C string's NUL
			return fmt.Errorf("perf stat answered %q to %q", line, c)
		}
		return nil
	}
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGINT)
		return cmd.Wait()
	}
	if err := command("enable"); err != nil {
		stop()
		return nil, err
	}
	user0, system0, err0 := cpuTimes(pid)
	loadErr := load()
	user1, system1, err1 := cpuTimes(pid)
	if err := command("disable"); err != nil {
		stop()
		return nil, err
	}
	// perf stat exits on SIGINT with the status of an interrupted process.
	_ = stop()
	if err := errors.Join(loadErr, err0, err1); err != nil {
		return nil, err
	}
	counts, err := readPerfCSV(out)
	if err != nil {
		return nil, err
	}
	counts[userTime], counts[systemTime] = (user1-user0)*1e3, (system1-system0)*1e3
	return counts, nil
}

// readPerfCSV reads perf stat's -x , output: value,unit,event,...
func readPerfCSV(path string) (map[string]float64, error) {
	// perfAround reads it after perf stat has exited: it is complete.
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	counts := map[string]float64{}
	for line := range bytes.Lines(data) {
		fields := strings.Split(strings.TrimSpace(string(line)), ",")
		if len(fields) < 3 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("perf stat counted no %s (%q): is it allowed here (kernel.perf_event_paranoid)?", fields[2], fields[0])
		}
		counts[fields[2]] = v
	}
	if len(counts) != len(perfEvents) {
		return nil, fmt.Errorf("perf stat wrote %d of %d counters to %s", len(counts), len(perfEvents), path)
	}
	return counts, nil
}

func writePerfCount(w io.Writer, opts options, figures []perfFigure) error {
	fmt.Fprintf(w, "per small request (perf stat): median of %d measurements of %d requests, %d concurrent, after %d of warm-up\n",
		callgrindMeasurements, opts.perfCount, opts.concurrency, callgrindWarmup)
	medianOf := func(f perfFigure, event string) float64 {
		var vs []float64
		for _, m := range f.perRequest {
			vs = append(vs, m[event])
		}
		return median(vs)
	}
	var base *perfFigure
	for i := range figures {
		if figures[i].target == targetBareGoproxy {
			base = &figures[i]
		}
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	header := "  counter"
	for _, f := range figures {
		header += "\t" + f.target
	}
	if base != nil {
		header += "\t× bare-goproxy"
	}
	fmt.Fprintln(tw, header)
	for _, event := range append([]string{userTime, systemTime}, perfEvents...) {
		row := "  " + strings.TrimPrefix(event, "syscalls:sys_enter_")
		scale := 1.0
		switch event {
		case "task-clock", userTime, systemTime:
			row += " µs"
			scale = 1e3 // counted in ms
		}
		for _, f := range figures {
			row += fmt.Sprintf("\t%.3f", medianOf(f, event)*scale)
		}
		if base != nil && len(figures) > 1 {
			last := figures[len(figures)-1]
			if b := medianOf(*base, event); b > 0 && last.target != base.target {
				row += fmt.Sprintf("\t%.2f×", medianOf(last, event)/b)
			} else {
				row += "\t–"
			}
		}
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}
