package main

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// TestFastestPeerGoal judges egressgw against the best peer of each run,
// whichever that is, and only in runs where both have a figure.
func TestFastestPeerGoal(t *testing.T) {
	tunnel := scenario{id: scenarioTunnel, figures: []figureSpec{{id: figTunnelMiBps, higherIsBetter: true}}}
	type runs map[string][]float64 // target → value per run; 0 = no value that run
	cases := []struct {
		name       string
		runs       runs
		wantStatus string
		wantRatio  string
	}{
		{"the best peer changes from run to run", runs{
			targetEgressgw:    {900, 1000, 1100},
			targetSmokescreen: {1000, 800, 1000},
			targetSquid:       {800, 1250, 900},
		}, goalNotMet, "0.900×"}, // ratios 0.9, 0.8, 1.1
		{"ahead of every peer", runs{
			targetEgressgw:  {1200, 1200, 1200},
			targetTinyproxy: {300, 300, 300},
			targetSquid:     {1000, 1100, 1150},
		}, goalMet, "1.091×"},
		{"a run without egressgw's figure is left out", runs{
			targetEgressgw:    {0, 1000, 1000},
			targetSmokescreen: {100, 1000, 1000},
		}, goalMet, "1.000×"},
		{"no peer ran", runs{
			targetEgressgw: {1000, 1000, 1000},
		}, goalNotMeasured, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var targets []*preparedTarget
			for _, name := range append([]string{targetEgressgw}, peerTargets...) {
				targets = append(targets, &preparedTarget{name: name})
			}
			c := newCollector([]scenario{tunnel}, targets)
			for target, values := range tc.runs {
				for run, v := range values {
					if v != 0 {
						c.add(run, tunnel, target, outcome{values: map[string]float64{figTunnelMiBps: v}})
					}
				}
			}
			g := fastestPeerGoal(c.result(options{runs: 3}, machineView{}, nil), "goal", figTunnelMiBps, 1.0)
			if g.Status != tc.wantStatus || !strings.HasPrefix(g.Detail, tc.wantRatio) {
				t.Errorf("got %s %q, want %s %q", g.Status, g.Detail, tc.wantStatus, tc.wantRatio)
			}
		})
	}
}

// TestPeersForward starts each peer the way the benchmark does and sends
// a plain request (startProxy's readiness probe) and a TLS request inside
// a CONNECT tunnel through it. A peer that cannot run here (not
// installed, Smokescreen not buildable) is skipped with the reason.
func TestPeersForward(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Smokescreen and starts every installed peer")
	}
	opts, _, err := parseFlags([]string{"--idle-tunnels", "10", "--concurrency", "4"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", t.TempDir())
	env, closeEnv, err := newBenchEnv(opts, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer closeEnv()
	for _, kind := range targetKinds {
		if !strings.Contains(strings.Join(peerTargets, ","), kind.name) {
			continue
		}
		t.Run(kind.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			p, err := kind.prepare(ctx, env)
			if errors.Is(err, errSkipped) {
				t.Skip(err)
			}
			if err != nil {
				t.Fatalf("prepare: %v", err)
			}
			running, err := p.start(ctx)
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			defer func() {
				if err := running.stop(); err != nil {
					t.Errorf("stop: %v", err)
				}
			}()
			conn, err := openIdleTunnel(ctx, running, env.loadTenants[0], env.up.tlsAddr, env.clientTLS)
			if err != nil {
				t.Fatalf("a request inside a CONNECT tunnel through %s: %v", kind.name, err)
			}
			conn.Close()
		})
	}
}
