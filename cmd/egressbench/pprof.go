package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// gatewayProfiler fetches pprof profiles from egressgw while the benchmark
// loads it: a CPU profile over the first run's small-request window,
// others over its plain 1 MiB and tunnel windows, and a heap profile while the idle
// tunnels are open.
type gatewayProfiler struct {
	// base is the URL the /debug/pprof/ paths hang off, or "admin" for the
	// admin listener of the egressgw the harness started.
	base   string
	outDir string
}

// profileFiles are the names written into outDir.
const (
	cpuProfileFile            = "egressgw-cpu.pprof"
	largeCPUProfileFile       = "egressgw-large-cpu.pprof"
	tunnelCPUProfileFile      = "egressgw-tunnel-cpu.pprof"
	tunnelLargeCPUProfileFile = "egressgw-tunnel-large-cpu.pprof"
	heapProfileFile           = "egressgw-heap.pprof"
)

func (p *gatewayProfiler) baseURL(t *runningTarget) (string, error) {
	if p.base != "admin" {
		return strings.TrimSuffix(p.base, "/"), nil
	}
	if t.adminAddr == "" {
		return "", errors.New("the target has no admin listener")
	}
	return "http://" + t.adminAddr, nil
}

// cpu records d (whole seconds, at least one) of CPU profile into file
// and returns its path.
func (p *gatewayProfiler) cpu(ctx context.Context, t *runningTarget, d time.Duration, file string) (string, error) {
	seconds := max(1, int(d.Round(time.Second)/time.Second))
	return p.fetch(ctx, t, fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), file)
}

// heap records the live heap and returns the file it wrote.
func (p *gatewayProfiler) heap(ctx context.Context, t *runningTarget) (string, error) {
	return p.fetch(ctx, t, "/debug/pprof/heap", heapProfileFile)
}

func (p *gatewayProfiler) fetch(ctx context.Context, t *runningTarget, path, file string) (string, error) {
	base, err := p.baseURL(t)
	if err != nil {
		return "", err
	}
	url := base + path
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: status %d (does the gateway expose pprof there yet?)", url, resp.StatusCode)
	}
	out := filepath.Join(p.outDir, file)
	f, err := os.Create(out)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", out, err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return "", fmt.Errorf("save %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("save %s: %w", out, err)
	}
	return out, nil
}
