package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// peerTargets are the other egress proxies egressgw is compared with, in
// table order; each is left out with a note where it cannot run.
var peerTargets = []string{targetTinyproxy, targetSmokescreen, targetSquid}

// smokescreenModule is the Smokescreen release the harness builds when no
// --smokescreen binary is given: the newest tag at the time, which builds
// with the Go the harness is built with.
const smokescreenModule = "github.com/stripe/smokescreen@v0.1.0"

// prepareSmokescreen builds Smokescreen with `go install` into the
// benchmark's directory (or takes --smokescreen PATH), and leaves it out
// with the build's error when that fails, e.g. without access to the Go
// module proxy.
func prepareSmokescreen(ctx context.Context, env *benchEnv) (*preparedTarget, error) {
	binary := env.opts.smokescreenBinary
	if binary == "" {
		var err error
		if binary, err = buildSmokescreen(ctx, env); err != nil {
			return nil, skipTarget("%v", err)
		}
	}
	return &preparedTarget{
		name: targetSmokescreen,
		notes: []string{"smokescreen runs with its defaults (no ACL file: every destination allowed; statsd to 127.0.0.1:8200, which nothing reads) " +
			"plus --allow-range 127.0.0.0/8, without which it refuses the loopback upstreams; it does not check the Proxy-Authorization the clients send"},
		start: func(ctx context.Context) (*runningTarget, error) {
			listen, err := freeLoopbackAddr()
			if err != nil {
				return nil, err
			}
			cmd := exec.Command(binary, "--listen-ip", "127.0.0.1", "--listen-port", strconv.Itoa(portOf(listen)), "--allow-range", "127.0.0.0/8")
			return startProxy(ctx, env, targetSmokescreen, cmd, listensOn(listen), nil)
		},
	}, nil
}

// buildSmokescreen runs `go install` of smokescreenModule with GOBIN in the
// benchmark's directory, outside any module, and returns the binary.
func buildSmokescreen(ctx context.Context, env *benchEnv) (string, error) {
	gobin := filepath.Join(env.dir, "smokescreen-bin")
	if err := os.MkdirAll(gobin, 0o755); err != nil {
		return "", fmt.Errorf("smokescreen: %w", err)
	}
	env.progressf("building smokescreen (go install %s)", smokescreenModule)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", smokescreenModule)
	cmd.Dir = gobin // outside the egressgw module, so its go.mod plays no part
	cmd.Env = append(childEnv(), "GOBIN="+gobin, "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s failed (%v): %s", smokescreenModule, err, lastLines(string(out), 5))
	}
	return filepath.Join(gobin, "smokescreen"), nil
}

// lastLines is the end of a command's output, on one line, for a note.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

// prepareSquid finds Squid (Debian package squid) and leaves it out when
// it is not installed.
func prepareSquid(_ context.Context, env *benchEnv) (*preparedTarget, error) {
	binary := env.opts.squidBinary
	if binary == "" {
		var err error
		if binary, err = exec.LookPath("squid"); err != nil {
			if _, statErr := os.Stat("/usr/sbin/squid"); statErr != nil {
				return nil, skipTarget("squid is not installed (Debian package squid)")
			}
			binary = "/usr/sbin/squid"
		}
	}
	return &preparedTarget{
		name:  targetSquid,
		notes: []string{"squid runs with a minimal config of its own (loopback only, no cache, no access log, one worker): Debian's default refuses CONNECT to ports other than 443 and to localhost; it does not check the Proxy-Authorization the clients send"},
		start: func(ctx context.Context) (*runningTarget, error) {
			listen, err := freeLoopbackAddr()
			if err != nil {
				return nil, err
			}
			conf := filepath.Join(env.dir, "squid.conf")
			if err := os.WriteFile(conf, []byte(squidConfig(env, portOf(listen))), 0o644); err != nil {
				return nil, fmt.Errorf("write squid config: %w", err)
			}
			// -N: in the foreground, one process, so its RSS and CPU are the
			// process the harness started; -d 1: its errors on stderr, which
			// the harness keeps for its messages.
			return startProxy(ctx, env, targetSquid, exec.Command(binary, "-N", "-d", "1", "-f", conf), listensOn(listen), nil)
		},
	}, nil
}

// squidConfig is a forward proxy on 127.0.0.1:port for loopback clients
// only, with nothing cached or logged per request, in one process with
// descriptors enough for the idle tunnels. Squid started as root runs as
// an unprivileged user that cannot write into the benchmark's directory,
// so it writes no file at all: its log goes to stderr (-d 1), and no pid
// file, core directory or pinger helper.
func squidConfig(env *benchEnv, port int) string {
	fds := 2*env.opts.idleTunnels + 8*env.opts.concurrency + 1024
	return fmt.Sprintf(`# written by egressbench
http_port 127.0.0.1:%d
acl bench_clients src 127.0.0.1/32
http_access allow bench_clients
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log /dev/null
pid_filename none
coredump_dir none
pinger_enable off
workers 1
max_filedescriptors %d
shutdown_lifetime 1 seconds
visible_hostname egressbench
via off
forwarded_for delete
`, port, fds)
}
