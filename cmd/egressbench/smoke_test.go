package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"slices"
	"testing"
	"time"
)

// TestMain lets the test binary play the bare-goproxy child when the
// harness re-executes it, exactly as the egressbench binary does.
func TestMain(m *testing.M) {
	if handled, code := runChildRole(); handled {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestSmoke runs `egressbench --smoke` against a freshly built egressgw:
// every scenario, briefly, against direct, bare goproxy and egressgw. It
// asserts that the figures are sane (present, finite, positive, no failed
// operations, idle tunnels stayed open), never how fast anything is.
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	gateway, err := buildEgressgw(ctx, t.TempDir(), &bytes.Buffer{})
	if err != nil {
		t.Fatalf("building egressgw: %v", err)
	}

	var stdout, stderr bytes.Buffer
	code := run([]string{"--smoke", "--json", "--egressgw", gateway}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("egressbench --smoke exited %d; stderr:\n%s", code, stderr.String())
	}
	t.Logf("progress:\n%s", stderr.String())

	var result struct {
		Targets []string `json:"targets"`
		Figures []struct {
			ID      string `json:"id"`
			Targets []struct {
				Target      string     `json:"target"`
				Runs        []*float64 `json:"runs"`
				Median      *float64   `json:"median"`
				Unavailable string     `json:"unavailable"`
			} `json:"targets"`
		} `json:"figures"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &result); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, stdout.String())
	}
	for _, want := range smokeTargets {
		if !slices.Contains(result.Targets, want) {
			t.Errorf("target %s missing from the result: %v", want, result.Targets)
		}
	}
	if len(result.Figures) != len(figureIDs()) {
		t.Errorf("%d figures in the result, want every scenario's %d", len(result.Figures), len(figureIDs()))
	}
	for _, f := range result.Figures {
		for _, tf := range f.Targets {
			switch {
			case tf.Target == targetDirect && tf.Unavailable != "":
				// figures of the proxy process, and the baseline itself
			case f.ID == figInspectedRPS || f.ID == figInspectedHooked:
				// The egressgw under test is built from this tree, so a
				// refusal by its check is the harness's policy gone stale.
				if tf.Target == targetEgressgw && tf.Median == nil {
					t.Errorf("%s of egressgw: no figure (unavailable: %q)", f.ID, tf.Unavailable)
				}
			case f.ID == figSmallPairedRatio && tf.Target != targetEgressgw:
				// egressgw against bare goproxy: one figure, egressgw's
			case !figureAppliesTo(f.ID, tf.Target):
				if tf.Unavailable == "" {
					t.Errorf("%s of %s: the scenario does not apply to it, yet it is not marked unavailable", f.ID, tf.Target)
				}
			case f.ID == figIdleTunnelKiB && tf.Target == targetDirect:
				if tf.Unavailable == "" {
					t.Errorf("idle tunnel RSS of direct should be unavailable, got %v", tf.Runs)
				}
			default:
				if tf.Median == nil {
					t.Errorf("%s of %s: no figure (%q)", f.ID, tf.Target, tf.Unavailable)
				}
			}
		}
	}
}

// figureAppliesTo reports whether the scenario of figure id runs on
// target (its only list names it, or it has none).
func figureAppliesTo(id, target string) bool {
	for _, sc := range scenarios(options{}) {
		for _, f := range sc.figures {
			if f.id == id {
				return sc.only == nil || slices.Contains(sc.only, target)
			}
		}
	}
	return false
}

func figureIDs() []string {
	var ids []string
	for _, sc := range scenarios(options{}) {
		for _, f := range sc.figures {
			ids = append(ids, f.id)
		}
	}
	return ids
}
