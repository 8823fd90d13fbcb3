package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/debug"
	"time"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

// tokenNew prints a fresh random token and its token_sha256 line, for a
// tenant file or for admin.tokens in gateway.yaml.
func tokenNew(stdout, stderr io.Writer) int {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	token := base64.RawURLEncoding.EncodeToString(raw)
	sum := sha256.Sum256([]byte(token))
	fmt.Fprintf(stdout, "token: %s\n", token)
	fmt.Fprintf(stdout, "# paste into the tenant file under auth: (give the token to the sandbox runtime only),\n# or into an admin.tokens entry of gateway.yaml (give the token to that admin only)\n")
	fmt.Fprintf(stdout, "token_sha256: %q\n", hex.EncodeToString(sum[:]))
	return exitOK
}

// healthcheck asks a running gateway's /readyz; for container health
// checks, where there may be no shell or curl.
func healthcheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("healthcheck", stderr)
	admin := fs.String("admin-listen", "127.0.0.1:9128", "the gateway's admin address")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return exitUsage
	}
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get("http://" + *admin + "/readyz")
	if err != nil {
		fmt.Fprintln(stderr, "not ready:", err)
		return exitFail
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "not ready:", resp.Status)
		return exitFail
	}
	fmt.Fprintln(stdout, "ready")
	return exitOK
}

func printVersion(stdout io.Writer) int {
	commit := "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				commit = s.Value
			}
		}
	}
	fmt.Fprintf(stdout, "egressgw %s (commit %s, %s)\n", version, commit, runtime.Version())
	return exitOK
}
