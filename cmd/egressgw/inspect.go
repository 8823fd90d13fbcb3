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

// explain prints how a tenant's policy decides one request, without
// sending it.
func explain(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("explain", stderr)
	configPath := fs.String("config", "", "config directory")
	tenantID := fs.String("tenant", "", "tenant id")
	method := fs.String("method", "GET", "request method")
	asJSON := fs.Bool("json", false, "print the trace as JSON")
	resolve := fs.Bool("resolve", false, "resolve the host with the configured dns_servers (or the system resolver) and check every address")
	positional, err := parseInterspersed(fs, args)
	if err != nil || len(positional) != 1 || *configPath == "" || *tenantID == "" {
		fmt.Fprintln(stderr, "usage: egressgw explain --config DIR --tenant ID [--method M] [--json] [--resolve] URL")
		return exitUsage
	}
	source, err := openConfig(*configPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFail
	}
	snap, err := source.load()
	if err != nil {
		printLoadError(stderr, err)
		return exitFail
	}
	tenant, ok := snap.Tenant(*tenantID)
	if !ok {
		fmt.Fprintf(stderr, "egressgw: no tenant %q in %s (tenants: %v)\n", *tenantID, source.name, snap.TenantIDs())
		return exitFail
	}
	// Network safety as the gateway applies it on this host: its own
	// addresses and configured listeners are never dialled either.
	local, err := allowlist.NewHostAddrs(allowlist.LocalAddrs)
	if err != nil {
		local = nil
	}
	network := policy.Network{Addresses: snap.Gateway.AddressPolicy(local, snap.Gateway.ListenerAddrs())}
	if *resolve {
		network.Resolver = snap.Gateway.Resolver()
	}
	trace, err := tenant.ExplainRequest(context.Background(), *method, positional[0], snap.Gateway, network)
	if err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	if *asJSON {
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
