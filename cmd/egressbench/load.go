package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// window is how long a load runs: warmup (connections open, pools fill,
// nothing counted) and then measure (everything counted). A closed-loop
// window is stretched, by at most maxStretch, until minOps operations have
// completed in it, so that a machine busy with other work yields a slow
// figure rather than none.
type window struct {
	warmup  time.Duration
	measure time.Duration
	minOps  int64
}

func (w window) total() time.Duration { return w.warmup + w.measure }

// Bounds that hold whatever the flags say: no load runs longer than its
// window plus maxStretch plus stopGrace, sends more than maxOpsPerLoad
// operations, or keeps more than maxSamplesPerLoad latencies.
const (
	maxOpsPerLoad     = 20_000_000
	maxSamplesPerLoad = 2_000_000
	stopGrace         = 30 * time.Second
	maxStretch        = 20 * time.Second
	errorBackoff      = 10 * time.Millisecond
)

// meter counts what the operations of one load have done. Operations add
// bytes as they move them, so a stream cut by the end of the window still
// counts what it delivered inside it.
type meter struct {
	ops      atomic.Int64
	bytes    atomic.Int64
	errors   atomic.Int64
	errOnce  sync.Once
	firstErr string
}

func (m *meter) fail(err error) {
	m.errors.Add(1)
	m.errOnce.Do(func() { m.firstErr = err.Error() })
}

// operation is one unit of load (a request, a new tunnel, a stream). It
// honours ctx and adds the bytes it receives to m.bytes.
type operation func(ctx context.Context, worker int, m *meter) error

// loadResult is what one load measured inside its window.
type loadResult struct {
	ops       int64 // completed in the window
	bytes     int64 // received in the window
	errors    int64 // over warmup and window
	firstErr  string
	elapsed   time.Duration
	latencies []time.Duration // of operations that started and ended in the window, sorted
	// cpuSeconds is the CPU time the proxy process used in the window; NaN
	// when there is no process (direct) or it could not be read.
	cpuSeconds float64
}

func (r loadResult) opsPerSecond() float64 { return float64(r.ops) / r.elapsed.Seconds() }

func (r loadResult) mibPerSecond() float64 {
	return float64(r.bytes) / (1 << 20) / r.elapsed.Seconds()
}

// percentileMS is the p-th percentile latency (0 < p <= 100, nearest rank)
// in milliseconds; NaN without samples.
func (r loadResult) percentileMS(p float64) float64 {
	if len(r.latencies) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(r.latencies))))
	rank = min(max(rank, 1), len(r.latencies))
	return float64(r.latencies[rank-1]) / float64(time.Millisecond)
}

// errorSummary is "" or how many operations failed and the first reason.
func (r loadResult) errorSummary() string {
	if r.errors == 0 {
		return ""
	}
	return fmt.Sprintf("%d failed (first: %s)", r.errors, r.firstErr)
}

// cpuClock reads the CPU time of the process under load, or NaN.
type cpuClock func() float64

// processCPU is the clock of t's proxy process; NaN for direct.
func processCPU(t *runningTarget) cpuClock {
	return func() float64 {
		if t.process == nil {
			return math.NaN()
		}
		s, err := cpuSeconds(t.process.pid())
		if err != nil {
			return math.NaN()
		}
		return s
	}
}

// runClosedLoop runs workers that each start an operation as soon as their
// previous one ends: the throughput a fixed number of clients gets. cpu is
// read at the window's edges.
func runClosedLoop(ctx context.Context, workers int, w window, cpu cpuClock, op operation) loadResult {
	ctx, cancel := context.WithTimeout(ctx, w.total()+maxStretch+stopGrace)
	defer cancel()
	start := time.Now()
	measureStart := start.Add(w.warmup)
	m := &meter{}
	samples := make([][]timedSample, workers)
	perWorker := maxSamplesPerLoad / workers
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && m.ops.Load()+m.errors.Load() < maxOpsPerLoad {
				began := time.Now()
				if err := op(ctx, i, m); err != nil {
					if ctx.Err() == nil {
						m.fail(err)
						sleepCtx(ctx, errorBackoff)
					}
					continue
				}
				ended := time.Now()
				m.ops.Add(1)
				if !began.Before(measureStart) && len(samples[i]) < perWorker {
					samples[i] = append(samples[i], timedSample{ended: ended, latency: ended.Sub(began)})
				}
			}
		}()
	}
	sleepCtx(ctx, time.Until(measureStart))
	opsBefore, bytesBefore, cpuBefore := m.ops.Load(), m.bytes.Load(), cpu()
	sleepCtx(ctx, w.measure)
	for stretchEnd := time.Now().Add(maxStretch); m.ops.Load()-opsBefore < w.minOps && time.Now().Before(stretchEnd) && ctx.Err() == nil; {
		sleepCtx(ctx, 10*time.Millisecond)
	}
	measureEnd := time.Now()
	ops, bytes, errs, cpuUsed := m.ops.Load()-opsBefore, m.bytes.Load()-bytesBefore, m.errors.Load(), cpu()-cpuBefore
	cancel()
	wg.Wait()
	return loadResult{
		ops: ops, bytes: bytes, errors: errs, firstErr: m.firstErr,
		elapsed:    measureEnd.Sub(measureStart),
		latencies:  endedBy(samples, measureEnd),
		cpuSeconds: cpuUsed,
	}
}

// timedSample is one operation's latency and when it ended.
type timedSample struct {
	ended   time.Time
	latency time.Duration
}

// endedBy returns, sorted, the latencies of the operations that ended by
// end.
func endedBy(samples [][]timedSample, end time.Time) []time.Duration {
	var all []time.Duration
	for _, worker := range samples {
		for _, s := range worker {
			if !s.ended.After(end) {
				all = append(all, s.latency)
			}
		}
	}
	slices.Sort(all)
	return all
}

// runOpenLoop starts operations at a fixed rate, whether or not earlier
// ones have finished (up to maxInFlight at once), and measures each one's
// latency from the moment it was due: queueing inside the target counts,
// as it does for a sandbox that does not wait for its neighbours.
func runOpenLoop(ctx context.Context, rate float64, maxInFlight int, w window, op operation) loadResult {
	ctx, cancel := context.WithTimeout(ctx, w.total()+stopGrace)
	defer cancel()
	total := min(int64(rate*w.total().Seconds()), maxOpsPerLoad)
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	measureStart, measureEnd := start.Add(w.warmup), start.Add(w.total())
	m := &meter{}
	var measured atomic.Int64
	jobs := make(chan time.Time, maxInFlight)
	samples := make([][]time.Duration, maxInFlight)
	perWorker := maxSamplesPerLoad / maxInFlight
	var wg sync.WaitGroup
	for i := range maxInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for due := range jobs {
				if err := op(ctx, i, m); err != nil {
					if ctx.Err() == nil {
						m.fail(err)
					}
					continue
				}
				m.ops.Add(1)
				if !due.Before(measureStart) && due.Before(measureEnd) {
					measured.Add(1)
					if len(samples[i]) < perWorker {
						samples[i] = append(samples[i], time.Since(due))
					}
				}
			}
		}()
	}
dispatch:
	for n := range total {
		due := start.Add(time.Duration(n) * interval)
		sleepCtx(ctx, time.Until(due))
		select {
		case jobs <- due:
		case <-ctx.Done():
			break dispatch
		}
	}
	close(jobs)
	wg.Wait()
	return loadResult{ops: measured.Load(), errors: m.errors.Load(), firstErr: m.firstErr, elapsed: measureEnd.Sub(measureStart), latencies: merge(samples), cpuSeconds: math.NaN()}
}

// merge adds the results of another slice of the same load.
func (r loadResult) merge(o loadResult) loadResult {
	firstErr := r.firstErr
	if firstErr == "" {
		firstErr = o.firstErr
	}
	return loadResult{
		ops:        r.ops + o.ops,
		bytes:      r.bytes + o.bytes,
		errors:     r.errors + o.errors,
		firstErr:   firstErr,
		elapsed:    r.elapsed + o.elapsed,
		latencies:  merge([][]time.Duration{r.latencies, o.latencies}),
		cpuSeconds: r.cpuSeconds + o.cpuSeconds,
	}
}

func merge(samples [][]time.Duration) []time.Duration {
	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	slices.Sort(all)
	return all
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// clientGroup is how a set of sandboxes reaches one target: one HTTP
// client per tenant, each with its own connection pool (as separate
// sandboxes have), workers spread over them.
type clientGroup struct {
	clients    []*http.Client
	transports []*http.Transport
}

// connectionReuse says whether clients keep connections (and so tunnels)
// open between requests.
type connectionReuse bool

const (
	keepAlive       connectionReuse = true
	newConnEachTime connectionReuse = false
)

// newClientGroup makes clients for t with the tenants' credentials that
// trust tlsConf's roots and keep up to perTenant idle connections each.
func newClientGroup(t *runningTarget, tenants []credentials, tlsConf *tls.Config, perTenant int, reuse connectionReuse) *clientGroup {
	g := &clientGroup{}
	for _, c := range tenants {
		tr := &http.Transport{
			Proxy:                 http.ProxyURL(t.proxyURL(c)),
			TLSClientConfig:       tlsConf.Clone(), // no session cache: every new tunnel is a full handshake
			MaxIdleConns:          perTenant * len(tenants),
			MaxIdleConnsPerHost:   perTenant,
			DisableKeepAlives:     !bool(reuse),
			DisableCompression:    true,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			IdleConnTimeout:       time.Minute,
		}
		g.transports = append(g.transports, tr)
		g.clients = append(g.clients, &http.Client{Transport: tr})
	}
	return g
}

func (g *clientGroup) client(worker int) *http.Client { return g.clients[worker%len(g.clients)] }

// close drops every pooled connection, so the next load starts cold.
func (g *clientGroup) close() {
	for _, tr := range g.transports {
		tr.CloseIdleConnections()
	}
}

// bodyBuffers are per-worker read buffers, so reading bodies allocates
// nothing in the load generator.
type bodyBuffers [][]byte

func newBodyBuffers(workers int) bodyBuffers {
	b := make(bodyBuffers, workers)
	for i := range b {
		b[i] = make([]byte, 64<<10)
	}
	return b
}

// fetchOp GETs (or, with a body, POSTs) url and reads the whole answer,
// counting bytes as they arrive; wantBytes (if > 0) is the body size the
// upstream sends, so a proxy that truncates or replaces it is caught, and
// check (if set) vets the response further.
func fetchOp(clients *clientGroup, bufs bodyBuffers, method, url string, body []byte, wantBytes int64, check func(*http.Response) error) operation {
	return func(ctx context.Context, worker int, m *meter) error {
		var reqBody io.Reader
		if body != nil {
			reqBody = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, url, reqBody)
		if err != nil {
			return err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := clients.client(worker).Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		n, err := countBody(resp.Body, bufs[worker], m)
		if err != nil {
			return fmt.Errorf("reading body after %d bytes: %w", n, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d (%s)", resp.StatusCode, resp.Header.Get("X-Egressgw-Error"))
		}
		if wantBytes > 0 && n != wantBytes {
			return fmt.Errorf("body of %d bytes, want %d", n, wantBytes)
		}
		if check != nil {
			return check(resp)
		}
		return nil
	}
}

// countBody reads r to the end, adding to m.bytes as it goes.
func countBody(r io.Reader, buf []byte, m *meter) (int64, error) {
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		m.bytes.Add(int64(n))
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// openIdleTunnel opens a tunnel the way a sandbox's HTTPS client does
// (CONNECT with proxy credentials, TLS handshake, one request) and leaves
// it open and idle; direct targets get a TLS connection to the upstream.
func openIdleTunnel(ctx context.Context, t *runningTarget, c credentials, upstreamAddr string, tlsConf *tls.Config) (net.Conn, error) {
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	addr := upstreamAddr
	if t.proxied() {
		addr = t.proxyAddr
	}
	conn, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	raw := conn
	if t.proxied() {
		if conn, err = sendConnect(conn, upstreamAddr, c); err != nil {
			raw.Close()
			return nil, err
		}
	}
	conf := tlsConf.Clone()
	conf.ServerName, _, _ = net.SplitHostPort(upstreamAddr)
	tlsConn := tls.Client(conn, conf)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake inside the tunnel: %w", err)
	}
	if _, err := io.WriteString(tlsConn, "GET "+pathSmall+" HTTP/1.1\r\nHost: "+upstreamAddr+"\r\n\r\n"); err != nil {
		raw.Close()
		return nil, fmt.Errorf("request inside the tunnel: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tlsConn), nil)
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("response inside the tunnel: %w", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || n != smallBodySize {
		raw.Close()
		return nil, fmt.Errorf("response inside the tunnel: status %d, %d bytes, %v", resp.StatusCode, n, err)
	}
	_ = raw.SetDeadline(time.Time{})
	return tlsConn, nil
}

// sendConnect asks the proxy on conn for a tunnel to authority and returns
// the tunnel (with any bytes read past the proxy's answer).
func sendConnect(conn net.Conn, authority string, c credentials) (net.Conn, error) {
	raw := "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\nProxy-Authorization: " + basicAuth(c) + "\r\n\r\n"
	if _, err := io.WriteString(conn, raw); err != nil {
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return nil, fmt.Errorf("read CONNECT response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("CONNECT %s: status %d (%s)", authority, resp.StatusCode, resp.Header.Get("X-Egressgw-Error"))
	}
	return &bufferedConn{Conn: conn, reader: reader}, nil
}

// bufferedConn reads through the reader that parsed the CONNECT answer.
type bufferedConn struct {
	net.Conn
	reader *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.reader.Read(p) }
