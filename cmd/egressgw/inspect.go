package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/policy"
)

// check loads and validates a config directory without serving it.
func check(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("check", stderr)
	configPath := fs.String("config", "", "config directory")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || *configPath == "" {
		fmt.Fprintln(stderr, "usage: egressgw check --config DIR")
		return exitUsage
	}
	source, err := openConfig(*configPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFail
	}
	snap, err := source.load()
	if err != nil {
		printLoadError(stdout, err)
		return exitFail
	}
	for _, w := range snap.Warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w.Error())
	}
	fmt.Fprintf(stdout, "ok: %d tenants, %d connectors\n", len(snap.TenantIDs()), snap.Connectors())
	return exitOK
}

// explainUsage is the usage line of explain.
const explainUsage = "usage: egressgw explain (--config DIR | --admin-url URL) --tenant ID [--method M] [--json] [--resolve] URL"

// grantsNotShown ends a trace made from the config directory alone: grants
// live in the state store, and only the running gateway decides with them
// (docs/reference.md, "Access requests and grants").
const grantsNotShown = "grants:   not shown: this reads the config directory alone; --admin-url URL asks the running gateway, which decides with its grants\n"

// explain prints how a tenant's policy decides one request, without
// sending it: from the config directory, or, with --admin-url, as the
// running gateway decides it, grants included.
func explain(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("explain", stderr)
	configPath := fs.String("config", "", "config directory")
	asJSON := fs.Bool("json", false, "print the trace as JSON")
	admin := &adminClient{jsonOut: asJSON}
	fs.StringVar(&admin.base, "admin-url", "", "ask the running gateway's admin listener instead of reading --config: its live policy and grants decide (token in "+adminTokenEnv+")")
	tenantID := fs.String("tenant", "", "tenant id")
	method := fs.String("method", "GET", "request method")
	resolve := fs.Bool("resolve", false, "resolve the host with the configured dns_servers (or the system resolver) and check every address")
	positional, err := parseInterspersed(fs, args)
	if err != nil || len(positional) != 1 || *tenantID == "" || (*configPath == "") == (admin.base == "") {
		if err == nil && *configPath != "" && admin.base != "" {
			fmt.Fprintln(stderr, "egressgw explain: --config and --admin-url exclude each other: the config directory, or the running gateway")
		}
		fmt.Fprintln(stderr, explainUsage)
		return exitUsage
	}
	if admin.base != "" {
		if err := admin.ready(); err != nil {
			fmt.Fprintf(stderr, "egressgw explain: %v\n%s\n", err, explainUsage)
			return exitUsage
		}
		trace, err := admin.explain(*tenantID, *method, positional[0], *resolve)
		if err != nil {
			fmt.Fprintln(stderr, "egressgw explain:", err)
			return exitFail
		}
		return printTrace(trace, *asJSON, stdout)
	}
	trace, code := explainConfig(*configPath, *tenantID, *method, positional[0], *resolve, stderr)
	if code != exitOK {
		return code
	}
	if code := printTrace(trace, *asJSON, stdout); code != exitOK {
		return code
	}
	// One line, where it does not spoil the JSON a script reads.
	note := stdout
	if *asJSON {
		note = stderr
	}
	if _, err := io.WriteString(note, grantsNotShown); err != nil {
		return exitFail
	}
	return exitOK
}

// explainConfig traces the request with the policy of the config
// directory at configPath; errors are printed.
func explainConfig(configPath, tenantID, method, rawURL string, resolve bool, stderr io.Writer) (policy.Trace, int) {
	source, err := openConfig(configPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return policy.Trace{}, exitFail
	}
	snap, err := source.load()
	if err != nil {
		printLoadError(stderr, err)
		return policy.Trace{}, exitFail
	}
	tenant, ok := snap.Tenant(tenantID)
	if !ok {
		fmt.Fprintf(stderr, "egressgw: no tenant %q in %s (tenants: %v)\n", tenantID, source.name, snap.TenantIDs())
		return policy.Trace{}, exitFail
	}
	// Network safety as the gateway applies it on this host: its own
	// addresses and configured listeners are never dialled either.
	local, err := allowlist.NewHostAddrs(allowlist.LocalAddrs)
	if err != nil {
		local = nil
	}
	network := policy.Network{Addresses: snap.Gateway.AddressPolicy(local, snap.Gateway.ListenerAddrs())}
	if resolve {
		network.Resolver = snap.Gateway.Resolver()
	}
	trace, err := tenant.ExplainRequest(context.Background(), method, rawURL, snap.Gateway, network)
	if err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return policy.Trace{}, exitFail
	}
	return trace, exitOK
}

// printTrace prints a trace, wherever it was made, in one format: the
// text for a person, or indented JSON.
func printTrace(trace policy.Trace, asJSON bool, stdout io.Writer) int {
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(trace); err != nil {
			return exitFail
		}
		return exitOK
	}
	if err := trace.WriteText(stdout); err != nil {
		return exitFail
	}
	return exitOK
}
