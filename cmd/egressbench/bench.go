package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// benchEnv is what every target and scenario of one benchmark shares: the
// temporary directory, the upstreams, the CAs and the client identities.
type benchEnv struct {
	opts     options
	dir      string
	progress io.Writer

	up               *upstreams
	upstreamCAFile   string // signs the TLS upstream's certificate
	interceptCAFile  string // egressgw's signing CA for the inspected path
	interceptKeyFile string
	clientTLS        *tls.Config // trusts both CAs, nothing else
	loadTenants      []credentials
	profiler         *gatewayProfiler // nil without --gateway-pprof
	pinning          *cpuPinning      // nil without --proxy-cpus
	wrapChild        func(*exec.Cmd)  // rewrites a proxy's command before it starts (--callgrind); may be nil

	notesMu sync.Mutex
	notes   []string
}

// addNote records something the report should say, from any goroutine.
func (e *benchEnv) addNote(note string) {
	e.notesMu.Lock()
	defer e.notesMu.Unlock()
	e.notes = append(e.notes, note)
}

func (e *benchEnv) progressf(format string, args ...any) {
	fmt.Fprintf(e.progress, format+"\n", args...)
}

// newBenchEnv makes the temporary directory, the CAs and the upstreams.
// close removes all of it (the directory unless --keep-temp); on an error
// newBenchEnv has removed it already.
func newBenchEnv(opts options, progress io.Writer) (*benchEnv, func(), error) {
	dir, err := os.MkdirTemp("", "egressbench-")
	if err != nil {
		return nil, nil, fmt.Errorf("temporary directory: %w", err)
	}
	env := &benchEnv{opts: opts, dir: dir, progress: progress}
	closeEnv := func() {
		if env.up != nil {
			_ = env.up.Close()
		}
		if opts.keepTemp {
			env.progressf("kept %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	}
	if err := env.setUp(); err != nil {
		closeEnv()
		return nil, nil, err
	}
	return env, closeEnv, nil
}

// setUp pins the harness (--proxy-cpus), makes the CAs and starts the
// upstreams, in env's directory.
func (env *benchEnv) setUp() error {
	opts, dir := env.opts, env.dir
	if opts.proxyCPUs != "" {
		pinning, err := newCPUPinning(opts.proxyCPUs)
		if err != nil {
			return err
		}
		if err := pinning.pinHarness(); err != nil {
			return err
		}
		env.pinning = pinning
		env.addNote(pinning.describe())
	}

	upstreamCA, err := newAuthority("egressbench upstream CA")
	if err != nil {
		return err
	}
	interceptCA, err := newAuthority(interceptCAName)
	if err != nil {
		return err
	}
	env.upstreamCAFile = filepath.Join(dir, "upstream-ca.pem")
	if err := upstreamCA.writeFiles(env.upstreamCAFile, filepath.Join(dir, "upstream-ca-key.pem")); err != nil {
		return err
	}
	env.interceptCAFile, env.interceptKeyFile = filepath.Join(dir, "intercept-ca.pem"), filepath.Join(dir, "intercept-ca-key.pem")
	if err := interceptCA.writeFiles(env.interceptCAFile, env.interceptKeyFile); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(upstreamCA.cert)
	roots.AddCert(interceptCA.cert)
	env.clientTLS = &tls.Config{RootCAs: roots, NextProtos: []string{"http/1.1"}}

	if env.up, err = startUpstreams(upstreamCA); err != nil {
		return err
	}
	for i := range min(loadTenantCount, opts.tenants) {
		env.loadTenants = append(env.loadTenants, tenantCredentials(i))
	}
	if opts.gatewayPprof != "" {
		env.profiler = &gatewayProfiler{base: opts.gatewayPprof, outDir: opts.pprofOut}
	}
	return nil
}

// runBenchmark prepares the selected targets, then runs every selected
// scenario against every target, opts.runs times, each run on freshly
// started proxies, and returns the collected figures.
func runBenchmark(ctx context.Context, opts options, progress io.Writer) (*benchResult, error) {
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	if err := raiseOpenFileLimit(); err != nil {
		return nil, err
	}
	env, closeEnv, err := newBenchEnv(opts, progress)
	if err != nil {
		return nil, err
	}
	defer closeEnv()

	targets, err := prepareTargets(ctx, env)
	if err != nil {
		return nil, err
	}
	plan := selectScenarios(opts)
	col := newCollector(plan, targets)
	for run := range opts.runs {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("stopped before run %d: %w", run+1, err)
		}
		if err := runOnce(ctx, env, run, targets, plan, col); err != nil {
			return nil, fmt.Errorf("run %d: %w", run+1, err)
		}
	}
	notes := append([]string(nil), env.notes...)
	for _, t := range targets {
		notes = append(notes, t.notes...)
	}
	return col.result(opts, machineInfo(), notes), nil
}

// prepareTargets prepares the targets --targets names, in table order;
// one that cannot run here is left out with a note.
func prepareTargets(ctx context.Context, env *benchEnv) ([]*preparedTarget, error) {
	var prepared []*preparedTarget
	for _, kind := range targetKinds {
		if !slices.Contains(env.opts.targets, kind.name) {
			continue
		}
		p, err := kind.prepare(ctx, env)
		if errors.Is(err, errSkipped) {
			note := fmt.Sprintf("%s left out: %s", kind.name, strings.TrimPrefix(err.Error(), errSkipped.Error()+": "))
			env.progressf("%s", note)
			env.addNote(note)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("prepare %s: %w", kind.name, err)
		}
		prepared = append(prepared, p)
	}
	if len(prepared) == 0 {
		return nil, errors.New("no target can run")
	}
	return prepared, nil
}

func selectScenarios(opts options) []scenario {
	var plan []scenario
	for _, sc := range scenarios(opts) {
		if slices.Contains(opts.scenarios, sc.id) {
			plan = append(plan, sc)
		}
	}
	return plan
}

// runOnce starts every target, runs the plan and stops them. Targets take
// turns scenario by scenario, so that noise from the machine falls on all
// of them alike, and the order rotates from run to run.
func runOnce(ctx context.Context, env *benchEnv, run int, targets []*preparedTarget, plan []scenario, col *collector) (err error) {
	var running []*runningTarget
	defer func() {
		for _, t := range running {
			if stopErr := t.stop(); stopErr != nil && err == nil {
				err = stopErr
			}
		}
	}()
	for _, p := range targets {
		t, err := p.start(ctx)
		if err != nil {
			return fmt.Errorf("start %s: %w", p.name, err)
		}
		running = append(running, t)
	}
	s := &session{env: env, run: run, targets: map[string]*runningTarget{}, smallRPS: map[string]float64{}}
	for _, t := range running {
		s.targets[t.name] = t
	}
	order := rotate(running, run)
	for _, sc := range plan {
		for _, t := range order {
			prepared := targets[slices.IndexFunc(targets, func(p *preparedTarget) bool { return p.name == t.name })]
			if reason := unavailableReason(sc, prepared); reason != "" {
				col.unavailable(sc, t.name, reason)
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if t.process != nil {
				if err := t.process.exitError(); err != nil {
					return err
				}
			}
			out, err := sc.run(ctx, s, t)
			if err != nil {
				col.failed(sc, t.name, err.Error())
				env.progressf("run %d/%d %-16s %-12s FAILED: %v", run+1, env.opts.runs, sc.id, t.name, err)
				continue
			}
			col.add(run, sc, t.name, out)
			env.progressf("run %d/%d %-16s %-12s %s", run+1, env.opts.runs, sc.id, t.name, describe(sc, out))
		}
	}
	return nil
}

// unavailableReason says why target p cannot run sc, or "".
func unavailableReason(sc scenario, p *preparedTarget) string {
	if sc.only != nil && !slices.Contains(sc.only, p.name) {
		return "applies to " + strings.Join(sc.only, ", ") + " only"
	}
	return p.unavailable[sc.id]
}

func rotate[T any](s []T, by int) []T {
	if len(s) == 0 {
		return s
	}
	by %= len(s)
	return append(append([]T(nil), s[by:]...), s[:by]...)
}

// describe is a progress line's summary of an outcome.
func describe(sc scenario, out outcome) string {
	var parts []string
	for _, f := range sc.figures {
		if v, ok := out.values[f.id]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", formatValue(v), f.unit))
		}
	}
	line := strings.Join(parts, ", ")
	if len(out.problems) > 0 {
		line += " [" + strings.Join(out.problems, "; ") + "]"
	}
	return line
}
