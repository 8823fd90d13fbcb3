package main

import (
	"bytes"
	"strings"
	"testing"
)

// explain applies network safety as the gateway does: IP literals always,
// names with --resolve; the rules alone would allow every case here.
func TestExplainRefusesAddressesNeverDialled(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"gateway.yaml": "listen: \"127.0.0.1:3128\"\nnetwork:\n  allow_cidrs: [\"127.0.0.1/32\"]\n",
		"tenants/t.yaml": "id: t\nauth: { token_sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }\n" +
			"rules:\n  - name: r\n    hosts: [\"127.0.0.0/8\", \"localhost\", \"8.8.8.8\"]\n    ports: [80, 3128]\n",
	}
	writeFiles(t, dir, files)
	cases := []struct {
		name string
		args []string
		want []string // lines of the output
	}{
		{"loopback literal", []string{"http://127.0.0.2/"}, []string{"decision: DENY (destination_ip_denied)", "127.0.0.2:80 (in special-purpose range 127.0.0.0/8"}},
		{"literal reopened by allow_cidrs", []string{"http://127.0.0.1/"}, []string{`decision: ALLOW (ok) by "r"`, "network:  127.0.0.1 may be dialled: 127.0.0.1:80"}},
		{"the gateway's own listener", []string{"http://127.0.0.1:3128/"}, []string{"decision: DENY (destination_ip_denied)", "the gateway's own listener"}},
		{"public literal", []string{"http://8.8.8.8/"}, []string{`decision: ALLOW (ok) by "r"`}},
		{"name without --resolve", []string{"http://localhost:3128/"}, []string{`decision: ALLOW (ok) by "r"`, "not resolved (use --resolve"}},
		{"name with --resolve", []string{"--resolve", "http://localhost:3128/"}, []string{"decision: DENY (destination_ip_denied)", "localhost:3128"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"explain", "--config", dir, "--tenant", "t"}, c.args...), &stdout, &stderr)
			if code != exitOK {
				t.Fatalf("exit %d\n%s%s", code, stdout.String(), stderr.String())
			}
			for _, w := range c.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("output has no %q:\n%s", w, stdout.String())
				}
			}
		})
	}
}
