package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPolicyShapeHasTheRequestedSize(t *testing.T) {
	shape := policyShape{tenants: 100, rules: 500, plainPort: 1080, tlsPort: 1443, auditPath: "/tmp/audit.log", maxConns: 10000}
	files := shape.files()
	var connectors, tenants, tenantRules, upstreamRules int
	for name, content := range files {
		switch {
		case strings.HasPrefix(name, "connectors/"):
			connectors++
		case strings.HasPrefix(name, "tenants/"):
			tenants++
			tenantRules += strings.Count(content, "  - name: ")
			upstreamRules += strings.Count(content, "bench-upstreams")
		}
	}
	if connectors+tenantRules != 500 || tenants != 100 {
		t.Errorf("%d connectors + %d tenant rules, %d tenants; want 500 rules over 100 tenants", connectors, tenantRules, tenants)
	}
	if upstreamRules != loadTenantCount {
		t.Errorf("%d tenants may reach the upstreams, want the %d load tenants", upstreamRules, loadTenantCount)
	}
	if strings.Contains(files["gateway.yaml"], "quota") || strings.Contains(files["tenants/tenant-000.yaml"], "quota") {
		t.Error("quotas rendered although the shape has none")
	}

	shape.quotas = true
	shape.inspect = &interceptFiles{caCert: "ca.pem", caKey: "ca-key.pem", upstreamRoot: "root.pem"}
	if files = shape.files(); files["tenants/inspect-hooked.yaml"] != "" || strings.Contains(files["gateway.yaml"], "redaction") {
		t.Error("the plain inspected path should come without hooks and redaction")
	}
	shape.redactsResponses = true
	files = shape.files()
	if !strings.Contains(files["connectors/bench-sse-redacted.yaml"], "redact: { response: [pii] }") || files["tenants/sse-redacted.yaml"] == "" ||
		!strings.Contains(files["gateway.yaml"], "pii:") {
		t.Errorf("the redacted event streams need their connector, tenant and the pii profile:\n%s", files["gateway.yaml"])
	}
	shape.redactsResponses = false
	shape.hooked = true
	files = shape.files()
	for _, want := range []string{"tenants/inspect-plain.yaml", "tenants/inspect-hooked.yaml", "connectors/bench-inspect-hooked.yaml", headerHookScript} {
		if files[want] == "" {
			t.Errorf("inspected path: %s missing", want)
		}
	}
	if strings.Contains(files["gateway.yaml"], "allow_paths") {
		t.Errorf("allow_paths for CA files inside the config directory:\n%s", files["gateway.yaml"])
	}
	shape.inspect = &interceptFiles{caCert: "/bench/ca.pem", caKey: "/bench/ca-key.pem", upstreamRoot: "/bench/root.pem"}
	if got := shape.files()["gateway.yaml"]; !strings.Contains(got, "config:\n  allow_paths: [\"/bench\"]\n") {
		t.Errorf("CA files outside the config directory need their directory in config.allow_paths:\n%s", got)
	}
	if !strings.Contains(files["tenants/tenant-042.yaml"], "requests_per_second: 1000000") {
		t.Errorf("tenant file lacks its quota:\n%s", files["tenants/tenant-042.yaml"])
	}
}

func TestPercentilesAndMedian(t *testing.T) {
	r := loadResult{}
	for i := 1; i <= 100; i++ {
		r.latencies = append(r.latencies, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want float64
	}{{50, 50}, {99, 99}, {100, 100}, {0.1, 1}} {
		if got := r.percentileMS(tc.p); got != tc.want {
			t.Errorf("p%v = %v ms, want %v", tc.p, got, tc.want)
		}
	}
	if got := (loadResult{}).percentileMS(99); !math.IsNaN(got) {
		t.Errorf("p99 without samples = %v, want NaN", got)
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median of 3 values = %v", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median of 4 values = %v", got)
	}
}

func TestSanityProblems(t *testing.T) {
	small := scenario{id: scenarioSmall, figures: []figureSpec{{id: figSmallRPS}}}
	added := scenario{id: scenarioHalfLoad, figures: []figureSpec{{id: figHalfLoadAdded, mayBeNonPositive: true}}}
	targets := []*preparedTarget{{name: targetDirect}, {name: targetEgressgw}}
	cases := []struct {
		name    string
		record  func(c *collector)
		wantBad string // "" = sane
	}{
		{"sane", func(c *collector) {
			c.add(0, small, targetDirect, outcome{values: map[string]float64{figSmallRPS: 10}})
			c.add(0, small, targetEgressgw, outcome{values: map[string]float64{figSmallRPS: 5}})
			c.add(0, added, targetDirect, outcome{values: map[string]float64{}, without: map[string]string{figHalfLoadAdded: "baseline"}})
			c.add(0, added, targetEgressgw, outcome{values: map[string]float64{figHalfLoadAdded: -0.1}})
		}, ""},
		{"zero throughput", func(c *collector) {
			c.add(0, small, targetDirect, outcome{values: map[string]float64{figSmallRPS: 10}})
			c.add(0, small, targetEgressgw, outcome{values: map[string]float64{figSmallRPS: 0}})
		}, "small_rps of egressgw: value 0"},
		{"no samples", func(c *collector) {
			c.add(0, small, targetDirect, outcome{values: map[string]float64{figSmallRPS: 10}})
			c.add(0, small, targetEgressgw, outcome{values: map[string]float64{figSmallRPS: math.NaN()}})
		}, "no value"},
		{"failed operations", func(c *collector) {
			c.add(0, small, targetDirect, outcome{values: map[string]float64{figSmallRPS: 10}})
			c.add(0, small, targetEgressgw, outcome{values: map[string]float64{figSmallRPS: 5}, problems: []string{"3 failed"}})
		}, "3 failed"},
		{"scenario failed", func(c *collector) {
			c.add(0, small, targetDirect, outcome{values: map[string]float64{figSmallRPS: 10}})
			c.failed(small, targetEgressgw, "opening tunnels: refused")
		}, "opening tunnels: refused"},
		{"unavailable is not a failure", func(c *collector) {
			c.add(0, small, targetDirect, outcome{values: map[string]float64{figSmallRPS: 10}})
			c.unavailable(small, targetEgressgw, "not available in this build")
			c.unavailable(added, targetDirect, "not available in this build")
			c.unavailable(added, targetEgressgw, "not available in this build")
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCollector([]scenario{small, added}, targets)
			tc.record(c)
			opts := options{runs: 1}
			problems := c.result(opts, machineView{}, nil).sanityProblems([]string{targetDirect, targetEgressgw})
			joined := strings.Join(problems, "\n")
			switch {
			case tc.wantBad == "" && len(problems) > 0:
				t.Errorf("want sane, got:\n%s", joined)
			case tc.wantBad != "" && !strings.Contains(joined, tc.wantBad):
				t.Errorf("want a problem mentioning %q, got:\n%s", tc.wantBad, joined)
			}
		})
	}
}

func TestRatiosArePairedByRun(t *testing.T) {
	small := scenario{id: scenarioSmall, figures: []figureSpec{{id: figSmallRPS, higherIsBetter: true}}}
	c := newCollector([]scenario{small}, []*preparedTarget{{name: targetBareGoproxy}, {name: targetEgressgw}})
	// The machine was twice as busy in run 1; egressgw stays at 0.8× of
	// bare goproxy in every run, and run 2 of bare goproxy failed.
	for run, v := range []float64{1000, 500, 1000} {
		if run != 2 {
			c.add(run, small, targetBareGoproxy, outcome{values: map[string]float64{figSmallRPS: v}})
		}
		c.add(run, small, targetEgressgw, outcome{values: map[string]float64{figSmallRPS: 0.8 * v}})
	}
	r := c.result(options{runs: 3}, machineView{}, nil)
	got := r.figure(figSmallRPS).Targets[1]
	if got.VsBareGoproxy == nil || math.Abs(*got.VsBareGoproxy-0.8) > 1e-9 {
		t.Fatalf("egressgw vs bare goproxy = %v, want 0.8 from every run", got.VsBareGoproxy)
	}
	if len(got.Runs) != 3 || r.figure(figSmallRPS).Targets[0].Runs[2] != nil {
		t.Errorf("runs should keep their positions with null for the missing one: %v", r.figure(figSmallRPS).Targets[0].Runs)
	}
	if g := r.Goals[0]; g.Status != goalNotMet || !strings.HasPrefix(g.Detail, "0.800×") {
		t.Errorf("goal %q: %s %s, want not met at 0.80×", g.Goal, g.Status, g.Detail)
	}
}

func TestFlagsAreBounded(t *testing.T) {
	for _, args := range [][]string{
		{"--runs", "0"},
		{"--idle-tunnels", "1000000"},
		{"--targets", "varnish"},
		{"--scenarios", "half-load"},
		{"--rules", "5", "--tenants", "100"},
		{"--json", "--markdown"},
		{"--proxy-cpus", "1-0"},
		{"--proxy-cpus", "x"},
		{"--callgrind", "10"},
		{"--callgrind", "2000", "--smoke"},
		{"--perf-count", "10"},
		{"--perf-count", "20000", "--smoke"},
		{"--perf-count", "20000", "--callgrind", "2000"},
	} {
		if _, _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted", args)
		}
	}
	opts, _, err := parseFlags([]string{"--smoke"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if opts.runs != 1 || opts.window.total() > time.Second {
		t.Errorf("--smoke: %d runs of %v; want one short run", opts.runs, opts.window.total())
	}
}

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"1", []int{1}},
		{"3,1", []int{1, 3}},
		{"0-2,2,5", []int{0, 1, 2, 5}},
		{" 4 - 5 ", nil},
		{"", nil},
		{"-1", nil},
		{"2-1", nil},
		{"1024", nil},
	} {
		got, err := parseCPUList(tc.in)
		if tc.want == nil {
			if err == nil {
				t.Errorf("parseCPUList(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("parseCPUList(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// A setup that fails returns its error and leaves no temporary directory
// behind (its cleanup once ran on results the failure had cleared).
func TestBenchEnvFailureCleansUp(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	opts, _, err := parseFlags([]string{"--proxy-cpus", "1000"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if env, closeEnv, err := newBenchEnv(opts, io.Discard); err == nil {
		closeEnv()
		t.Fatalf("newBenchEnv pinned to CPU 1000: %+v", env)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestSliceLetsOperationsInFlightFinish checks that a slice counts only
// what ended inside it and never cancels an operation in flight: a
// cancelled request would close its keep-alive connection, which the next
// slice would pay for.
func TestSliceLetsOperationsInFlightFinish(t *testing.T) {
	var finished, cancelled atomic.Int64
	op := func(ctx context.Context, worker int, m *meter) error {
		select {
		case <-time.After(30 * time.Millisecond):
			finished.Add(1)
			return nil
		case <-ctx.Done():
			cancelled.Add(1)
			return ctx.Err()
		}
	}
	r := runSlice(context.Background(), 3, 100*time.Millisecond, op)
	if cancelled.Load() != 0 {
		t.Errorf("%d operations were cancelled", cancelled.Load())
	}
	// Every worker's last operation ends after the slice: finished but
	// not counted.
	if r.ops <= 0 || r.ops >= finished.Load() {
		t.Errorf("counted %d of %d finished operations; want some, and fewer than all", r.ops, finished.Load())
	}
	if r.errors != 0 || r.elapsed != 100*time.Millisecond {
		t.Errorf("errors %d, elapsed %v", r.errors, r.elapsed)
	}
}

func TestReadPerfCSV(t *testing.T) {
	dir := t.TempDir()
	var all strings.Builder
	all.WriteString("# started on Mon Dec  7 04:04:20 2026\n\n")
	for i, e := range perfEvents {
		fmt.Fprintf(&all, "%d,,%s,1000000,100.00,,\n", (i+1)*10, e)
	}
	full := filepath.Join(dir, "full.csv")
	if err := os.WriteFile(full, []byte(all.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	counts, err := readPerfCSV(full)
	if err != nil {
		t.Fatal(err)
	}
	if got := counts[perfEvents[3]]; got != 40 {
		t.Errorf("%s = %v, want 40", perfEvents[3], got)
	}
	notCounted := filepath.Join(dir, "refused.csv")
	refused := strings.Replace(all.String(), "10,,task-clock", "<not supported>,,task-clock", 1)
	if err := os.WriteFile(notCounted, []byte(refused), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readPerfCSV(notCounted); err == nil || !strings.Contains(err.Error(), "task-clock") {
		t.Errorf("a counter perf could not read: err = %v, want one naming it", err)
	}
}
