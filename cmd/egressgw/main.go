// Command egressgw is the egress gateway: a forward proxy that decides, per
// tenant, what may leave a sandbox, and records it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/egressgw/egressgw/configs"
	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/policy"
)

// Exit codes (docs/reference.md, "Commands").
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

const usage = `egressgw: an egress gateway for sandboxes.

Usage:
  egressgw serve [--config DIR_OR_FILE] [--listen ADDR] [--admin-listen ADDR] [--log-format json|text] [--watch=false]
  egressgw check --config DIR
  egressgw explain (--config DIR | --admin-url URL) --tenant ID [--method M] [--json] [--resolve] URL
  egressgw hook test --script FILE [--request REQ.json] [--response RESP.json] [--events STREAM]
  egressgw ca init --out DIR
  egressgw token new
  egressgw healthcheck [--admin-listen ADDR]
  egressgw access list [--admin-url URL] [--tenant ID] [--status S] [--json]
  egressgw access approve [--admin-url URL] --for DURATION [--host PATTERN] [--ports P,..] [--methods M,..] [--paths P,..] [--note TEXT] [--json] ID
  egressgw access deny [--admin-url URL] [--json] ID
  egressgw grant list [--admin-url URL] [--tenant ID] [--json]
  egressgw grant add [--admin-url URL] --tenant ID --host PATTERN --for DURATION [--ports P,..] [--methods M,..] [--paths P,..] [--note TEXT] [--json]
  egressgw grant revoke [--admin-url URL] [--json] ID
  egressgw grant rule [--admin-url URL] [--json] ID
  egressgw usage [--admin-url URL] --tenant ID [--period hour|day|month] [--at DATE] [--json]
  egressgw version

With no --config, serve runs the embedded quickstart policy.
access, grant and usage talk to a running gateway; they send the admin
token in $EGRESSGW_ADMIN_TOKEN.
`

func main() {
	// Hook scripts run in worker processes started from this executable;
	// in such a process this becomes the worker and never returns.
	hooks.WorkerMain()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(rest, stdout, stderr)
	case "check":
		return check(rest, stdout, stderr)
	case "explain":
		return explain(rest, stdout, stderr)
	case "token":
		if len(rest) == 1 && rest[0] == "new" {
			return tokenNew(stdout, stderr)
		}
		fmt.Fprint(stderr, "usage: egressgw token new\n")
		return exitUsage
	case "hook":
		if len(rest) >= 1 && rest[0] == "test" {
			return hookTest(rest[1:], stdout, stderr)
		}
		fmt.Fprintln(stderr, hookTestUsage)
		return exitUsage
	case "ca":
		if len(rest) >= 1 && rest[0] == "init" {
			return caInit(rest[1:], stdout, stderr)
		}
		fmt.Fprint(stderr, "usage: egressgw ca init --out DIR\n")
		return exitUsage
	case "healthcheck":
		return healthcheck(rest, stdout, stderr)
	case "access":
		return accessCommand(rest, stdout, stderr)
	case "grant":
		return grantCommand(rest, stdout, stderr)
	case "usage":
		return usageCommand(rest, stdout, stderr)
	case "version", "--version", "-version":
		return printVersion(stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "egressgw: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
}

// newFlags makes a flag set that reports usage errors to stderr and lets
// the caller turn them into exit code 2.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("egressgw "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseInterspersed parses flags that may stand before or after the
// positional arguments, as in `explain URL --json`.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// configSource is a config directory as a file system, plus a name for
// messages. A file argument means its gateway.yaml's directory.
type configSource struct {
	fsys fs.FS
	name string
	dir  string // the directory on disk; empty for the embedded quickstart
}

func openConfig(path string) (configSource, error) {
	if path == "" {
		return configSource{fsys: configs.Quickstart(), name: "embedded quickstart"}, nil
	}
	info, err := os.Stat(path)
	if err != nil {
		return configSource{}, fmt.Errorf("config: %w", err)
	}
	dir := path
	if !info.IsDir() {
		if filepath.Base(path) != policy.GatewayFileName {
			return configSource{}, fmt.Errorf("config: %s is a file; give the config directory or its %s", path, policy.GatewayFileName)
		}
		dir = filepath.Dir(path)
	}
	return configSource{fsys: policy.DirFS(dir), name: dir, dir: dir}, nil
}

func (c configSource) load() (*policy.Snapshot, error) {
	return policy.Load(c.fsys, time.Now())
}

// reload loads the config again, taking over from prev, the live policy,
// what it compiled from files that did not change.
func (c configSource) reload(prev *policy.Snapshot) (*policy.Snapshot, error) {
	return policy.Reload(c.fsys, time.Now(), prev)
}

// printLoadError prints every config problem as FILE:LINE: message.
func printLoadError(w io.Writer, err error) {
	var le *policy.LoadError
	if errors.As(err, &le) {
		for _, ce := range le.Errors {
			fmt.Fprintln(w, ce.Error())
		}
		return
	}
	fmt.Fprintln(w, strings.TrimSpace(err.Error()))
}
