package main

import (
	"bytes"
	"strings"
	"testing"
)

// check warns, and still passes, when a rule names an address the gateway
// never dials: the rule looks like access but every request is refused.
func TestCheckWarnsAboutAddressesNeverDialled(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"gateway.yaml": "network:\n  allow_cidrs: [\"127.0.0.1/32\"]\n",
		"tenants/t.yaml": "id: t\nauth: { token_sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }\n" +
			"rules:\n  - name: r\n    hosts: [\"169.254.169.254\", \"127.0.0.1\", \"api.example.com\"]\n" +
			"quota: { requests_per_second: 10, burst: 20 }\n",
	}
	writeFiles(t, dir, files)
	var stdout, stderr bytes.Buffer
	code := run([]string{"check", "--config", dir}, &stdout, &stderr)
	want := `warning: tenants/t.yaml:5: host "169.254.169.254": the gateway never dials it (in special-purpose range 169.254.0.0/16`
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if code != exitOK || len(lines) != 2 || !strings.HasPrefix(lines[0], want) ||
		!strings.Contains(lines[0], "network.allow_cidrs") || lines[1] != "ok: 1 tenants, 0 connectors" {
		t.Errorf("check: exit %d, output:\n%s%s\nwant exit 0, one warning starting %q and saying what to change, then ok", code, stdout.String(), stderr.String(), want)
	}
}
