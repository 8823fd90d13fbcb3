package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
)

// collector gathers the figures of every run, cell by cell (a cell is one
// figure of one target).
type collector struct {
	specs   []figureSpec
	targets []string
	cells   map[cellKey]*cell
}

type cellKey struct{ figure, target string }

type cell struct {
	byRun       map[int]float64
	problems    []string
	unavailable string
}

func newCollector(plan []scenario, targets []*preparedTarget) *collector {
	c := &collector{cells: map[cellKey]*cell{}}
	for _, sc := range plan {
		c.specs = append(c.specs, sc.figures...)
	}
	for _, t := range targets {
		c.targets = append(c.targets, t.name)
	}
	return c
}

func (c *collector) cell(figure, target string) *cell {
	k := cellKey{figure, target}
	if c.cells[k] == nil {
		c.cells[k] = &cell{byRun: map[int]float64{}}
	}
	return c.cells[k]
}

// add records the outcome of sc on target in run.
func (c *collector) add(run int, sc scenario, target string, out outcome) {
	for _, f := range sc.figures {
		cl := c.cell(f.id, target)
		if reason, ok := out.without[f.id]; ok {
			cl.unavailable = reason
			continue
		}
		v, ok := out.values[f.id]
		if !ok {
			cl.problems = append(cl.problems, "a run produced no value")
			continue
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			cl.problems = append(cl.problems, "a run produced no value (no operation completed in the window)")
			continue
		}
		cl.byRun[run] = v
		cl.problems = append(cl.problems, out.problems...)
	}
}

// unavailable records why target does not run sc.
func (c *collector) unavailable(sc scenario, target, reason string) {
	for _, f := range sc.figures {
		c.cell(f.id, target).unavailable = reason
	}
}

// failed records a run of sc on target that produced nothing.
func (c *collector) failed(sc scenario, target, reason string) {
	for _, f := range sc.figures {
		cl := c.cell(f.id, target)
		cl.problems = append(cl.problems, reason)
	}
}

// benchResult is the whole outcome of a benchmark, as --json prints it.
type benchResult struct {
	Settings settingsView   `json:"settings"`
	Machine  machineView    `json:"machine"`
	Targets  []string       `json:"targets"`
	Figures  []figureResult `json:"figures"`
	Goals    []goalResult   `json:"goals"`
	Notes    []string       `json:"notes"`
}

type settingsView struct {
	Runs             int      `json:"runs"`
	WarmupSeconds    float64  `json:"warmup_seconds"`
	MeasureSeconds   float64  `json:"measure_seconds"`
	Concurrency      int      `json:"concurrency"`
	Streams          int      `json:"streams"`
	NewTunnelWorkers int      `json:"new_tunnel_workers"`
	IdleTunnels      int      `json:"idle_tunnels"`
	TunnelBytes      int64    `json:"tunnel_stream_bytes"`
	Tenants          int      `json:"tenants"`
	Rules            int      `json:"rules"`
	Scenarios        []string `json:"scenarios"`
	Smoke            bool     `json:"smoke"`
}

type machineView struct {
	CPUs        int    `json:"cpus"`
	CPUModel    string `json:"cpu_model"`
	GoVersion   string `json:"go_version"`
	Kernel      string `json:"kernel"`
	LoadAverage string `json:"load_average_at_start"`
}

type figureResult struct {
	ID             string         `json:"id"`
	Title          string         `json:"title"`
	Unit           string         `json:"unit"`
	HigherIsBetter bool           `json:"higher_is_better"`
	Targets        []targetFigure `json:"targets"`

	mayBeNonPositive bool
}

// targetFigure is one figure of one target: every run's value (null for a
// run that produced none), their median and spread, and the ratios to
// direct and to bare goproxy. A ratio is the median of the per-run ratios,
// each between figures measured seconds apart in the same run, which
// cancels most of what a busy machine does to both; it is absent where
// the two never have a value in the same run.
type targetFigure struct {
	Target        string     `json:"target"`
	Runs          []*float64 `json:"runs,omitempty"`
	Median        *float64   `json:"median,omitempty"`
	Min           *float64   `json:"min,omitempty"`
	Max           *float64   `json:"max,omitempty"`
	VsDirect      *float64   `json:"vs_direct,omitempty"`
	VsBareGoproxy *float64   `json:"vs_bare_goproxy,omitempty"`
	Problems      []string   `json:"problems,omitempty"`
	Unavailable   string     `json:"unavailable,omitempty"`
}

// goalResult is one of the project's performance goals (BENCHMARKS.md), judged on this
// run's figures.
type goalResult struct {
	Goal   string `json:"goal"`
	Status string `json:"status"` // met, not met, not measured
	Detail string `json:"detail"`
}

const (
	goalMet         = "met"
	goalNotMet      = "not met"
	goalNotMeasured = "not measured"
)

func (c *collector) result(opts options, machine machineView, notes []string) *benchResult {
	r := &benchResult{
		Settings: settingsView{
			Runs: opts.runs, WarmupSeconds: opts.window.warmup.Seconds(), MeasureSeconds: opts.window.measure.Seconds(),
			Concurrency: opts.concurrency, Streams: opts.streams, NewTunnelWorkers: opts.newTunnelWorkers,
			IdleTunnels: opts.idleTunnels, TunnelBytes: opts.tunnelBytes, Tenants: opts.tenants, Rules: opts.rules,
			Scenarios: opts.scenarios, Smoke: opts.smoke,
		},
		Machine: machine,
		Targets: c.targets,
		Notes:   notes,
	}
	for _, spec := range c.specs {
		fr := figureResult{ID: spec.id, Title: spec.title, Unit: spec.unit, HigherIsBetter: spec.higherIsBetter, mayBeNonPositive: spec.mayBeNonPositive}
		for _, target := range c.targets {
			tf := targetFigure{Target: target}
			if cl := c.cells[cellKey{spec.id, target}]; cl != nil {
				tf.Unavailable, tf.Problems = cl.unavailable, compactProblems(cl.problems)
				if len(cl.byRun) > 0 {
					tf.Runs = make([]*float64, opts.runs)
					for run, v := range cl.byRun {
						tf.Runs[run] = &v
					}
				}
			}
			if values := present(tf.Runs); len(values) > 0 {
				med, lo, hi := median(values), slices.Min(values), slices.Max(values)
				tf.Median, tf.Min, tf.Max = &med, &lo, &hi
			}
			fr.Targets = append(fr.Targets, tf)
		}
		for i := range fr.Targets {
			if spec.difference {
				break
			}
			tf := &fr.Targets[i]
			tf.VsDirect = pairedRatio(tf.Runs, fr.runsOf(targetDirect))
			tf.VsBareGoproxy = pairedRatio(tf.Runs, fr.runsOf(targetBareGoproxy))
		}
		r.Figures = append(r.Figures, fr)
	}
	r.Goals = evaluateGoals(r)
	return r
}

// runsOf is target's per-run values of f.
func (f *figureResult) runsOf(target string) []*float64 {
	for _, tf := range f.Targets {
		if tf.Target == target {
			return tf.Runs
		}
	}
	return nil
}

// present drops the runs without a value.
func present(runs []*float64) []float64 {
	var values []float64
	for _, v := range runs {
		if v != nil {
			values = append(values, *v)
		}
	}
	return values
}

// pairedRatio is the median over runs of a/b, taking only runs where both
// have a value and b is not zero; nil when there is none.
func pairedRatio(a, b []*float64) *float64 {
	var ratios []float64
	for i := range min(len(a), len(b)) {
		if a[i] != nil && b[i] != nil && *b[i] != 0 {
			ratios = append(ratios, *a[i] / *b[i])
		}
	}
	if len(ratios) == 0 {
		return nil
	}
	q := median(ratios)
	return &q
}

func median(values []float64) float64 {
	s := slices.Clone(values)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// compactProblems drops repeats, keeping the first occurrence's order.
func compactProblems(problems []string) []string {
	var out []string
	for _, p := range problems {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// figure returns the result for id, or nil when it was not measured.
func (r *benchResult) figure(id string) *figureResult {
	for i := range r.Figures {
		if r.Figures[i].ID == id {
			return &r.Figures[i]
		}
	}
	return nil
}

// medianOf is target's median of figure id.
func (r *benchResult) medianOf(id, target string) (float64, bool) {
	f := r.figure(id)
	if f == nil {
		return 0, false
	}
	for _, tf := range f.Targets {
		if tf.Target == target && tf.Median != nil {
			return *tf.Median, true
		}
	}
	return 0, false
}

// unavailableOf says why target has no figure id, if it says anything.
func (r *benchResult) unavailableOf(id, target string) string {
	if f := r.figure(id); f != nil {
		for _, tf := range f.Targets {
			if tf.Target == target {
				return tf.Unavailable
			}
		}
	}
	return ""
}

// evaluateGoals judges the performance goals on the medians of this run;
// ratios compare figures measured in the same run on the same machine.
func evaluateGoals(r *benchResult) []goalResult {
	type operand struct{ figure, target string }
	// compare judges a against b on the median of per-run ratios: met when
	// ok(ratio) holds.
	compare := func(goal string, a, b operand, ok func(ratio float64) bool) goalResult {
		fa, fb := r.figure(a.figure), r.figure(b.figure)
		var q *float64
		if fa != nil && fb != nil {
			q = pairedRatio(fa.runsOf(a.target), fb.runsOf(b.target))
		}
		if q == nil {
			why := orDefault(r.unavailableOf(a.figure, a.target), fmt.Sprintf("needs %s of %s and %s of %s in the same run", a.figure, a.target, b.figure, b.target))
			return goalResult{Goal: goal, Status: goalNotMeasured, Detail: why}
		}
		va, _ := r.medianOf(a.figure, a.target)
		vb, _ := r.medianOf(b.figure, b.target)
		status := goalNotMet
		if ok(*q) {
			status = goalMet
		}
		return goalResult{Goal: goal, Status: status, Detail: fmt.Sprintf("%.3f× (median of per-run ratios; medians %s vs %s)", *q, formatValue(va), formatValue(vb))}
	}
	atLeast := func(goal string, a, b operand, want float64) goalResult {
		return compare(goal, a, b, func(q float64) bool { return q >= want })
	}
	atMostRatio := func(goal string, a, b operand, limit float64) goalResult {
		return compare(goal, a, b, func(q float64) bool { return q <= limit })
	}
	// atMost: a ≤ limit.
	atMost := func(goal string, a operand, limit float64, unit string) goalResult {
		v, ok := r.medianOf(a.figure, a.target)
		if !ok {
			return goalResult{Goal: goal, Status: goalNotMeasured, Detail: "needs " + a.figure + " of " + a.target}
		}
		status := goalNotMet
		if v <= limit {
			status = goalMet
		}
		return goalResult{Goal: goal, Status: status, Detail: formatValue(v) + " " + unit}
	}
	// atLeastValue: a ≥ want, for a figure that is a ratio already.
	atLeastValue := func(goal string, a operand, want float64, unit string) goalResult {
		v, ok := r.medianOf(a.figure, a.target)
		if !ok {
			return goalResult{Goal: goal, Status: goalNotMeasured, Detail: orDefault(r.unavailableOf(a.figure, a.target), "needs "+a.figure+" of "+a.target)}
		}
		status := goalNotMet
		if v >= want {
			status = goalMet
		}
		return goalResult{Goal: goal, Status: status, Detail: fmt.Sprintf("%.3f%s (median over runs)", v, unit)}
	}
	gw := func(figure string) operand { return operand{figure, targetEgressgw} }
	return []goalResult{
		atLeast("egressgw small-request throughput ≥ 0.9 × bare goproxy", gw(figSmallRPS), operand{figSmallRPS, targetBareGoproxy}, 0.9),
		atLeastValue("the same, per pair of alternating "+pairedSlice.String()+" slices (median over pairs; outside load falls on both sides of a pair)", gw(figSmallPairedRatio), 0.9, "×"),
		atMostRatio("the same, read as CPU (machine-independent): egressgw CPU per small request ≤ 1/0.9 × bare goproxy's", gw(figSmallCPU), operand{figSmallCPU, targetBareGoproxy}, 1/0.9),
		atLeast("egressgw small-request throughput ≥ 1.0 × tinyproxy", gw(figSmallRPS), operand{figSmallRPS, targetTinyproxy}, 1.0),
		atMost("egressgw p99 latency added over direct ≤ 1 ms at half of its maximum throughput", gw(figHalfLoadAdded), 1, "ms"),
		atMost("the same, per "+halfLoadSlice.String()+" slice (median over slices; a stall of the machine falls on few of them)", gw(figHalfLoadSliced), 1, "ms"),
		atLeast("egressgw tunnel MB/s ≥ 0.9 × direct", gw(figTunnelMiBps), operand{figTunnelMiBps, targetDirect}, 0.9),
		atLeast("egressgw tunnel MB/s ≥ 0.6 × direct", gw(figTunnelMiBps), operand{figTunnelMiBps, targetDirect}, 0.6),
		fastestPeerGoal(r, "egressgw tunnel MB/s ≥ 1.0 × the fastest peer", figTunnelMiBps, 1.0),
		atLeast("egressgw 1 MiB bodies over CONNECT + TLS ≥ 0.6 × direct", gw(figTunnelLargeMiBps), operand{figTunnelLargeMiBps, targetDirect}, 0.6),
		fastestPeerGoal(r, "egressgw 1 MiB bodies over CONNECT + TLS ≥ 1.0 × the fastest peer", figTunnelLargeMiBps, 1.0),
		atMost("egressgw idle tunnel ≤ 32 KiB RSS", gw(figIdleTunnelKiB), 32, "KiB per tunnel"),
		{
			Goal:   "policy decision (auth + match + quota admit) ≤ 2 µs and 0 allocs with 10,000 rules",
			Status: goalNotMeasured,
			Detail: "a micro-benchmark, not load: go test -run '^$' -bench PolicyDecision -benchmem ./proxy",
		},
		atLeast("egressgw inspected + hook + redaction ≥ 0.5 × plain inspected", gw(figInspectedHooked), gw(figInspectedRPS), 0.5),
		atMost("egressgw time to event added over direct ≤ 1 ms at the median, server-sent events under pii redaction", gw(figsSSEPacedRedacted.addedP50), 1, "ms"),
		atLeastValue("egressgw server-sent events/s under pii redaction ≥ 0.5 × inspected without (median over pairs of alternating "+pairedSlice.String()+" slices)", gw(figSSERedactedRatio), 0.5, "×"),
	}
}

// fastestPeerGoal judges egressgw's figure id against the best peer's of
// the same run, run by run (higher is better): met when the median of the
// per-run ratios is at least want.
func fastestPeerGoal(r *benchResult, goal, id string, want float64) goalResult {
	f := r.figure(id)
	if f == nil {
		return goalResult{Goal: goal, Status: goalNotMeasured, Detail: "needs " + id}
	}
	best := make([]*float64, r.Settings.Runs)
	var measured []string
	for _, peer := range peerTargets {
		runs := f.runsOf(peer)
		if len(present(runs)) > 0 {
			measured = append(measured, peer)
		}
		for i := range min(len(runs), len(best)) {
			if runs[i] != nil && (best[i] == nil || *runs[i] > *best[i]) {
				best[i] = runs[i]
			}
		}
	}
	q := pairedRatio(f.runsOf(targetEgressgw), best)
	if q == nil {
		return goalResult{Goal: goal, Status: goalNotMeasured, Detail: "needs " + id + " of egressgw and of a peer (" + strings.Join(peerTargets, ", ") + ") in the same run"}
	}
	status := goalNotMet
	if *q >= want {
		status = goalMet
	}
	var medians []string
	for _, t := range append([]string{targetEgressgw}, measured...) {
		if v, ok := r.medianOf(id, t); ok {
			medians = append(medians, t+" "+formatValue(v))
		}
	}
	return goalResult{Goal: goal, Status: status, Detail: fmt.Sprintf("%.3f× (median of per-run ratios to the best peer of each run; medians %s)", *q, strings.Join(medians, ", "))}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// sanityProblems lists figures that are not sane: for every target in
// required (which must all have run), each figure it can produce has one
// finite value per run, positive unless it is a difference, and no run had
// failed operations. Timing is not judged.
func (r *benchResult) sanityProblems(required []string) []string {
	var problems []string
	for _, target := range required {
		if !slices.Contains(r.Targets, target) {
			problems = append(problems, target+": did not run")
		}
	}
	for _, f := range r.Figures {
		for _, tf := range f.Targets {
			if !slices.Contains(required, tf.Target) || tf.Unavailable != "" {
				continue
			}
			where := f.ID + " of " + tf.Target
			for _, p := range tf.Problems {
				problems = append(problems, where+": "+p)
			}
			values := present(tf.Runs)
			if len(values) != r.Settings.Runs {
				problems = append(problems, fmt.Sprintf("%s: %d values for %d runs", where, len(values), r.Settings.Runs))
			}
			for _, v := range values {
				if math.IsNaN(v) || math.IsInf(v, 0) || (!f.mayBeNonPositive && v <= 0) {
					problems = append(problems, fmt.Sprintf("%s: value %v", where, v))
				}
			}
		}
	}
	return problems
}

// machineInfo describes the machine for the report.
func machineInfo() machineView {
	m := machineView{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "model name" {
				m.CPUModel = strings.TrimSpace(value)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		if fields := strings.Fields(string(data)); len(fields) >= 3 {
			m.LoadAverage = strings.Join(fields[:3], " ")
		}
	}
	return m
}

// formatValue prints a figure with three significant digits or so.
func formatValue(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return fmt.Sprint(v)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func formatRatio(q *float64) string {
	if q == nil {
		return "–"
	}
	return fmt.Sprintf("%.2f×", *q)
}

// row is one target's line of a figure, in printable form.
type row struct {
	target, median, spread, vsDirect, vsBare, note string
}

func rowsOf(f figureResult) []row {
	var rows []row
	for _, tf := range f.Targets {
		r := row{target: tf.Target, median: "–", spread: "–", vsDirect: formatRatio(tf.VsDirect), vsBare: formatRatio(tf.VsBareGoproxy)}
		if tf.Median != nil {
			r.median = formatValue(*tf.Median)
			r.spread = formatValue(*tf.Min) + "–" + formatValue(*tf.Max)
		}
		switch {
		case tf.Unavailable != "":
			r.note = tf.Unavailable
		case len(tf.Problems) > 0:
			r.note = "⚠ " + strings.Join(tf.Problems, "; ")
		}
		rows = append(rows, r)
	}
	return rows
}

func direction(f figureResult) string {
	if f.HigherIsBetter {
		return "higher is better"
	}
	return "lower is better"
}

// writeText prints the result as aligned tables for a terminal.
func writeText(w io.Writer, r *benchResult) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	s := r.Settings
	fmt.Fprintf(tw, "egressbench: %d run(s), each figure measured for %gs after %gs of warm-up; median and spread (min–max) over runs; ratios are medians of per-run ratios\n",
		s.Runs, s.MeasureSeconds, s.WarmupSeconds)
	fmt.Fprintf(tw, "machine: %d CPUs (%s), %s, kernel %s, load average at start %s\n",
		r.Machine.CPUs, r.Machine.CPUModel, r.Machine.GoVersion, r.Machine.Kernel, r.Machine.LoadAverage)
	for _, f := range r.Figures {
		fmt.Fprintf(tw, "\n%s [%s, %s]\n", f.Title, f.Unit, direction(f))
		fmt.Fprintln(tw, "  target\tmedian\tspread\t× direct\t× bare-goproxy\t")
		for _, row := range rowsOf(f) {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", row.target, row.median, row.spread, row.vsDirect, row.vsBare, row.note)
		}
	}
	fmt.Fprintln(tw, "\ngoals (ratios within this run):")
	for _, g := range r.Goals {
		fmt.Fprintf(tw, "  [%s]\t%s\t%s\n", g.Status, g.Goal, g.Detail)
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(tw, "\nnotes:")
		for _, n := range r.Notes {
			fmt.Fprintf(tw, "  - %s\n", n)
		}
	}
	return tw.Flush()
}

// writeMarkdown prints the result as the tables BENCHMARKS.md holds.
func writeMarkdown(w io.Writer, r *benchResult) error {
	var b strings.Builder
	s, m := r.Settings, r.Machine
	fmt.Fprintf(&b, "Machine: %d CPUs (%s), %s, kernel %s, load average at start %s.\n\n", m.CPUs, m.CPUModel, m.GoVersion, m.Kernel, m.LoadAverage)
	fmt.Fprintf(&b, "%d runs; each figure measured for %gs after %gs of warm-up; median and spread (min–max) over runs; "+
		"ratios are medians of per-run ratios.\n\n", s.Runs, s.MeasureSeconds, s.WarmupSeconds)
	b.WriteString("| figure | target | median | spread (min–max) | × direct | × bare goproxy | note |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---|\n")
	for _, f := range r.Figures {
		for i, row := range rowsOf(f) {
			title := ""
			if i == 0 {
				title = fmt.Sprintf("%s (%s, %s)", f.Title, f.Unit, direction(f))
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", title, row.target, row.median, row.spread, row.vsDirect, row.vsBare, markdownEscape(row.note))
		}
	}
	b.WriteString("\n| goal | status | measured |\n|---|---|---|\n")
	for _, g := range r.Goals {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", g.Goal, g.Status, markdownEscape(g.Detail))
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func markdownEscape(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

// writeJSON prints the whole result.
func writeJSON(w io.Writer, r *benchResult) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
