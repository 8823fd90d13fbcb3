// Package configs holds the configuration that ships inside the binary:
// the quickstart policy that `egressgw serve` runs with no --config.
package configs

import (
	"embed"
	"io/fs"
)

//go:embed quickstart
var quickstart embed.FS

// QuickstartTenant and QuickstartToken are the demo credentials of the
// quickstart policy; the token is public, which is why the quickstart
// listens on loopback only.
const (
	QuickstartTenant = "demo"
	QuickstartToken  = "egressgw-demo-token"
	// QuickstartAdminToken is the quickstart's admin token (role admin),
	// public too.
	QuickstartAdminToken = "egressgw-demo-admin-token"
	// QuickstartURL is a destination the quickstart policy allows.
	QuickstartURL = "https://example.com/"
)

// Quickstart returns the quickstart config directory.
func Quickstart() fs.FS {
	sub, err := fs.Sub(quickstart, "quickstart")
	if err != nil {
		panic(err) // the directory is embedded at build time; it cannot be missing
	}
	return sub
}
