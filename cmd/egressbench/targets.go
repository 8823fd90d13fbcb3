package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/egressgw/egressgw/internal/freeport"
)

// Target names, as they appear in flags, tables and JSON.
const (
	targetDirect      = "direct"
	targetBareGoproxy = "bare-goproxy"
	targetEgressgw    = "egressgw"
	targetTinyproxy   = "tinyproxy"
	targetSmokescreen = "smokescreen"
	targetSquid       = "squid"
)

// targetKinds lists every way of reaching the upstreams, in table order.
// Each prepares once per benchmark and starts a fresh process per run.
var targetKinds = []struct {
	name    string
	prepare func(ctx context.Context, env *benchEnv) (*preparedTarget, error)
}{
	{targetDirect, prepareDirect},
	{targetBareGoproxy, prepareBareGoproxy},
	{targetEgressgw, prepareEgressgw},
	{targetTinyproxy, prepareTinyproxy},
	{targetSmokescreen, prepareSmokescreen},
	{targetSquid, prepareSquid},
}

// errSkipped marks a target that cannot run on this machine; the benchmark
// goes on without it and says why.
var errSkipped = errors.New("skipped")

func skipTarget(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errSkipped, fmt.Sprintf(format, args...))
}

// preparedTarget is a target ready to be started for each run.
type preparedTarget struct {
	name  string
	notes []string // printed under the table: what differs from the goals' setup
	// unavailable maps a scenario id to why this target cannot run it; the
	// report prints the reason instead of a figure.
	unavailable map[string]string
	start       func(ctx context.Context) (*runningTarget, error)
}

// runningTarget is one target serving during one run.
type runningTarget struct {
	name      string
	proxyAddr string        // host:port of the proxy; "" for direct
	adminAddr string        // egressgw's admin listener; "" for the others
	process   *childProcess // the proxy process whose RSS is measured; nil for direct
	// verify, if set, checks after the process has stopped that it did
	// what the benchmark relies on (egressgw: it wrote its audit log).
	verify func() error
}

// proxied reports whether requests go through a proxy.
func (t *runningTarget) proxied() bool { return t.proxyAddr != "" }

// proxyURL is the proxy with c's credentials, as HTTP_PROXY holds it in a
// sandbox; nil for direct. Proxies without authentication ignore them.
func (t *runningTarget) proxyURL(c credentials) *url.URL {
	if !t.proxied() {
		return nil
	}
	return &url.URL{Scheme: "http", Host: t.proxyAddr, User: url.UserPassword(c.tenant, c.token)}
}

// stop ends the target's process, if it has one.
func (t *runningTarget) stop() error {
	if t.process == nil {
		return nil
	}
	if err := t.process.stop(5 * time.Second); err != nil {
		return err
	}
	if t.verify != nil {
		return t.verify()
	}
	return nil
}

// readyTimeout bounds a proxy's start-up; wrappedReadyTimeout one started
// under a wrapper (callgrind), which runs it tens of times slower: loading
// the benchmark's 100 tenants there took close to 15 s, and sometimes more.
const (
	readyTimeout        = 15 * time.Second
	wrappedReadyTimeout = 2 * time.Minute
)

// probeThrough fetches the small upstream body through t and fails unless
// it arrives whole: a target is ready when it forwards, not when it listens.
func probeThrough(ctx context.Context, env *benchEnv, t *runningTarget) error {
	transport := &http.Transport{Proxy: http.ProxyURL(t.proxyURL(env.loadTenants[0])), DisableKeepAlives: true}
	defer transport.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, env.up.plainURL(pathSmall), nil)
	if err != nil {
		return err
	}
	resp, err := transport.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return fmt.Errorf("reading probe body: %w", err)
	}
	if resp.StatusCode != http.StatusOK || n != smallBodySize {
		return fmt.Errorf("probe through %s: status %d, %d bytes", t.name, resp.StatusCode, n)
	}
	return nil
}

// startProxy starts cmd, learns the address it serves on from addrOf,
// waits until it forwards a request (and, if given, until ready succeeds)
// and returns it as a running target.
func startProxy(ctx context.Context, env *benchEnv, name string, cmd *exec.Cmd, addrOf func(*childProcess) (string, error), ready func(ctx context.Context) error) (*runningTarget, error) {
	timeout := readyTimeout
	if env.wrapChild != nil {
		env.wrapChild(cmd)
		timeout = wrappedReadyTimeout
	}
	proc, err := startChild(name, cmd, env.pinning)
	if err != nil {
		return nil, err
	}
	addr, err := addrOf(proc)
	if err != nil {
		_ = proc.stop(time.Second)
		return nil, err
	}
	t := &runningTarget{name: name, proxyAddr: addr, process: proc}
	probe := func(ctx context.Context) error {
		if ready != nil {
			if err := ready(ctx); err != nil {
				return err
			}
		}
		return probeThrough(ctx, env, t)
	}
	if err := proc.waitReady(ctx, timeout, probe); err != nil {
		_ = proc.stop(time.Second)
		return nil, err
	}
	return t, nil
}

// listensOn is the addrOf of a proxy told its address on the command line
// or in its config.
func listensOn(addr string) func(*childProcess) (string, error) {
	return func(*childProcess) (string, error) { return addr, nil }
}

// announcedAddr is the addrOf of the bare-goproxy child, which picks a free
// port and prints it as its first line.
func announcedAddr(proc *childProcess) (string, error) {
	select {
	case line := <-proc.stdout.firstLine:
		addr, ok := strings.CutPrefix(line, bareListeningPrefix)
		if !ok {
			return "", fmt.Errorf("bare goproxy announced %q, want %q", line, bareListeningPrefix+"ADDR")
		}
		return addr, nil
	case <-proc.exited:
		return "", proc.exitError()
	case <-time.After(readyTimeout):
		return "", fmt.Errorf("bare goproxy did not announce its address in %v", readyTimeout)
	}
}

// prepareDirect is the baseline: clients talk to the upstreams themselves.
func prepareDirect(context.Context, *benchEnv) (*preparedTarget, error) {
	return &preparedTarget{
		name: targetDirect,
		unavailable: map[string]string{
			scenarioIdleTunnels: noProxyProcess,
		},
		start: func(context.Context) (*runningTarget, error) {
			return &runningTarget{name: targetDirect}, nil
		},
	}, nil
}

// prepareBareGoproxy runs the library floor in a re-executed copy of the
// harness (see baregoproxy.go), so its RSS is its own.
func prepareBareGoproxy(_ context.Context, env *benchEnv) (*preparedTarget, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the harness executable to re-run as bare goproxy: %w", err)
	}
	return &preparedTarget{
		name: targetBareGoproxy,
		start: func(ctx context.Context) (*runningTarget, error) {
			cmd := exec.Command(self)
			cmd.Env = append(childEnv(), childRoleEnv+"="+childRoleBare, childUpstreamCAEnv+"="+env.upstreamCAFile)
			return startProxy(ctx, env, targetBareGoproxy, cmd, announcedAddr, nil)
		},
	}, nil
}

// prepareEgressgw builds (or takes) the gateway binary, writes a realistic
// policy and finds out with `egressgw check` which optional features this
// build accepts.
func prepareEgressgw(ctx context.Context, env *benchEnv) (*preparedTarget, error) {
	binary := env.opts.egressgwBinary
	if binary == "" {
		var err error
		if binary, err = buildEgressgw(ctx, env.dir, env.progress); err != nil {
			return nil, err
		}
	}
	policy, err := writeGatewayPolicy(ctx, env, binary)
	if err != nil {
		return nil, err
	}
	p := &preparedTarget{name: targetEgressgw, notes: policy.notes, unavailable: map[string]string{}}
	if policy.inspectUnavailable != "" {
		p.unavailable[scenarioInspected] = policy.inspectUnavailable
	}
	if policy.hookedUnavailable != "" {
		p.unavailable[scenarioInspectedHooked] = policy.hookedUnavailable
	}
	for _, sc := range []string{scenarioSSE, scenarioSSEPaced} {
		if policy.inspectUnavailable != "" {
			p.unavailable[sc] = policy.inspectUnavailable
		}
	}
	for _, sc := range []string{scenarioSSERedacted, scenarioSSEPacedRedact} {
		if policy.redactedUnavailable != "" {
			p.unavailable[sc] = policy.redactedUnavailable
		}
	}
	p.start = func(ctx context.Context) (*runningTarget, error) {
		listen, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		admin, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		// A fresh audit log per run, so the file does not grow with --runs.
		if err := os.Remove(policy.auditPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove the previous run's audit log: %w", err)
		}
		cmd := exec.Command(binary, "serve", "--config", policy.dir, "--listen", listen, "--admin-listen", admin, "--log-format", "json")
		cmd.Env = append(childEnv(), policy.env...)
		readyz := func(ctx context.Context) error { return expectOK(ctx, "http://"+admin+"/readyz") }
		t, err := startProxy(ctx, env, targetEgressgw, cmd, listensOn(listen), readyz)
		if err != nil {
			return nil, err
		}
		t.adminAddr = admin
		t.verify = func() error {
			info, err := os.Stat(policy.auditPath)
			if err != nil || info.Size() == 0 {
				return fmt.Errorf("egressgw wrote no audit log to %s (%v): the benchmark assumes audit is on", policy.auditPath, err)
			}
			return nil
		}
		return t, nil
	}
	return p, nil
}

// buildEgressgw compiles cmd/egressgw of the module the harness is run in.
func buildEgressgw(ctx context.Context, dir string, progress io.Writer) (string, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD (to build egressgw; or pass --egressgw PATH): %w", err)
	}
	modFile := strings.TrimSpace(string(gomod))
	if modFile == "" || modFile == os.DevNull {
		return "", errors.New("not inside the egressgw module, so egressgw cannot be built: run from the repository or pass --egressgw PATH")
	}
	root := filepath.Dir(modFile)
	bin := filepath.Join(dir, "egressgw")
	fmt.Fprintf(progress, "building egressgw in %s\n", root)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/egressgw/egressgw/cmd/egressgw")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build egressgw: %w\n%s", err, out)
	}
	return bin, nil
}

// prepareTinyproxy finds the tinyproxy binary (Debian package tinyproxy)
// and skips the target when there is none.
func prepareTinyproxy(_ context.Context, env *benchEnv) (*preparedTarget, error) {
	binary := env.opts.tinyproxyBinary
	if binary == "" {
		var err error
		if binary, err = exec.LookPath("tinyproxy"); err != nil {
			return nil, skipTarget("tinyproxy is not installed (Debian package tinyproxy)")
		}
	}
	return &preparedTarget{
		name:  targetTinyproxy,
		notes: []string{"tinyproxy forwards without authentication: the Proxy-Authorization the clients send is not checked"},
		start: func(ctx context.Context) (*runningTarget, error) {
			listen, err := freeLoopbackAddr()
			if err != nil {
				return nil, err
			}
			conf := filepath.Join(env.dir, "tinyproxy.conf")
			if err := os.WriteFile(conf, []byte(tinyproxyConfig(env, portOf(listen))), 0o644); err != nil {
				return nil, fmt.Errorf("write tinyproxy config: %w", err)
			}
			return startProxy(ctx, env, targetTinyproxy, exec.Command(binary, "-d", "-c", conf), listensOn(listen), nil)
		},
	}, nil
}

// tinyproxyConfig is a forward proxy on port with no upstream, enough
// client slots for the idle-tunnel scenario, and CONNECT allowed to the
// TLS upstream only.
func tinyproxyConfig(env *benchEnv, port int) string {
	_, tlsPort := env.up.ports()
	maxClients := env.opts.idleTunnels + 4*env.opts.concurrency + 256
	return fmt.Sprintf(`# written by egressbench
Port %d
Listen 127.0.0.1
Timeout 600
MaxClients %d
Allow 127.0.0.1
ConnectPort %d
DisableViaHeader Yes
LogLevel Critical
`, port, maxClients, tlsPort)
}

// freeLoopbackAddr returns 127.0.0.1:P for a port that was free a moment
// ago, for a proxy the harness starts to bind (see freeport).
func freeLoopbackAddr() (string, error) {
	addr, err := freeport.Loopback()
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	return addr, nil
}

// expectOK GETs url directly (never through a proxy) and fails unless the
// answer is 200.
func expectOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	transport := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	resp, err := transport.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return nil
}
