//go:build linux

package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func newBenchRuntime(b *testing.B) *Runtime {
	b.Helper()
	return newTestRuntime(b, RuntimeConfig{MaxConcurrent: 1})
}

// cpuTime is the user+system CPU time of this process and of the
// runtime's one worker. Wall time per op says little on a shared
// machine; CPU time per op is the cost a run puts on the host.
func cpuTime(b *testing.B, rt *Runtime) (gateway, worker time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	gateway = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	pid := workerPID(b, rt)
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces): utime and
	// stime are the 12th and 13th, in clock ticks of 10ms.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	worker = time.Duration(utime+stime) * 10 * time.Millisecond
	return gateway, worker
}

func reportCPU(b *testing.B, rt *Runtime, run func()) {
	// Warm the worker (script compiled and cached), then measure.
	run()
	gw0, wk0 := cpuTime(b, rt)
	b.ResetTimer()
	n := 0
	for b.Loop() {
		run()
		n++
	}
	b.StopTimer()
	gw1, wk1 := cpuTime(b, rt)
	b.ReportMetric(float64((gw1-gw0).Microseconds())/float64(n), "gateway-cpu-µs/op")
	b.ReportMetric(float64((wk1-wk0).Microseconds())/float64(n), "worker-cpu-µs/op")
}

// BenchmarkHeaderEditHook is the common hook: add a header to a typical
// request without a body. It measures the whole path a proxy pays: the
// queue, the pipe to the worker both ways, variables, VM and read-back.
func BenchmarkHeaderEditHook(b *testing.B) {
	rt := newBenchRuntime(b)
	s := mustCompile(b, "header.tengo", `request.headers["X-Tenant"] = tenant.id`)
	req := Request{
		Method: "GET", URL: "https://api.example.com/repos/a/b?page=2", Scheme: "https",
		Host: "api.example.com", Port: 443, Path: "/repos/a/b", Query: "page=2",
		Headers: map[string][]string{
			"Accept":     {"application/json"},
			"User-Agent": {"curl/8.5.0"},
			"X-Request":  {"01J00000000000000000000000"},
		},
	}
	meta := Meta{Tenant: "acme", Connector: "github", ConnectorVersion: 3}
	ctx := context.Background()
	b.ReportAllocs()
	reportCPU(b, rt, func() {
		out, _, err := rt.RunRequest(ctx, s, meta, req, Limits{})
		if err != nil || out.Headers["X-Tenant"][0] != "acme" {
			b.Fatal(out.Headers, err)
		}
	})
}

// jsonDocument64K is a JSON body of about 64 KiB shaped like an API
// listing: an array of small objects.
func jsonDocument64K(tb testing.TB) []byte {
	var items []map[string]any
	for i := 0; ; i++ {
		items = append(items, map[string]any{
			"id": i, "name": fmt.Sprintf("item-%d", i), "price": float64(i) * 1.25,
			"tags": []string{"a", "b"}, "active": i%2 == 0, "owner": map[string]any{"login": "octocat", "id": 1},
		})
		if i%50 == 0 {
			b, _ := json.Marshal(map[string]any{"items": items, "total": len(items)})
			if len(b) >= 64<<10 {
				return b
			}
		}
	}
}

// BenchmarkJSONEdit64K edits one field of a 64 KiB JSON request body: the
// body is decoded for the script, fingerprinted, edited and re-encoded.
func BenchmarkJSONEdit64K(b *testing.B) {
	rt := newBenchRuntime(b)
	s := mustCompile(b, "json.tengo", `request.json.total = 0`)
	body := jsonDocument64K(b)
	req := Request{
		Method: "POST", URL: "https://api.example.com/items", Scheme: "https",
		Host: "api.example.com", Port: 443, Path: "/items",
		Headers: map[string][]string{"Content-Type": {"application/json"}},
		Body:    body,
	}
	ctx := context.Background()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	reportCPU(b, rt, func() {
		out, oc, err := rt.RunRequest(ctx, s, Meta{Tenant: "acme"}, req, Limits{})
		if err != nil || !oc.BodyChanged || !strings.Contains(string(out.Body), `"total":0`) {
			b.Fatal(oc, err)
		}
	})
}

// BenchmarkEventHook measures per-event runs of a trivial script (append
// one character to an SSE event's data) against the same script run once
// on a whole response of the same size: what per-event hooks cost is
// their per-run overhead, paid once per event.
func BenchmarkEventHook(b *testing.B) {
	ctx := context.Background()
	meta := Meta{Tenant: "acme", Connector: "llm", ConnectorVersion: 1}
	req := Request{
		Method: "POST", URL: "https://api.example.com/v1/chat", Scheme: "https",
		Host: "api.example.com", Port: 443, Path: "/v1/chat",
		Headers: map[string][]string{"Accept": {"text/event-stream"}, "Content-Type": {"application/json"}},
	}
	resp := Response{Status: 200, Headers: map[string][]string{"Content-Type": {"text/event-stream"}, "Cache-Control": {"no-cache"}}}
	data := []byte(`{"choices":[{"delta":{"content":"Hello"}}]}`)
	b.Run("per-event", func(b *testing.B) {
		rt := newBenchRuntime(b)
		s := mustCompileEvents(b, "event.tengo", `event.data = event.data + " "`)
		h, err := rt.NewEventHook(s, meta, req, resp, EventFormatSSE, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		start := time.Now()
		reportCPU(b, rt, func() {
			ev, _, err := h.Run(ctx, Event{Data: data, Type: "delta", ID: "1"})
			if err != nil || len(ev.Data) != len(data)+1 {
				b.Fatal(err)
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "runs/s")
	})
	b.Run("whole-response", func(b *testing.B) {
		rt := newBenchRuntime(b)
		s := mustCompile(b, "whole.tengo", `response.body = response.body + " "`)
		whole := resp
		whole.Body = data
		b.ReportAllocs()
		start := time.Now()
		reportCPU(b, rt, func() {
			out, _, err := rt.RunResponse(ctx, s, meta, req, whole, Limits{})
			if err != nil || len(out.Body) != len(data)+1 {
				b.Fatal(err)
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "runs/s")
	})
}
