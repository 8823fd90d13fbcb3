package main

import (
	"bytes"
	"strings"
	"testing"
)

// check warns, and passes (exit 0), about a config that loads but cannot
// work as written; each warning names FILE:LINE and what to change.
func TestCheckWarnsAboutPoliciesThatCannotWork(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		want  []string // the output's lines
	}{
		{
			name:  "an empty directory",
			files: map[string]string{},
			want:  []string{"warning: tenants/: no tenants: every request will be refused; add one file per tenant (docs/admins.md)", "ok: 0 tenants, 0 connectors"},
		},
		{
			name: "a shadowed rule, a deny with nothing to deny, no quota",
			files: map[string]string{
				"tenants/t.yaml": "id: t\nauth: { token_sha256: \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }\n" +
					"rules:\n  - name: all\n    hosts: [\"*.example.com\"]\n  - name: api\n    hosts: [\"api.example.com\"]\n" +
					"  - name: no-paste\n    action: deny\n    hosts: [\"pastebin.com\"]\n",
			},
			want: []string{
				`warning: tenants/t.yaml:6: rule "api" can never be the one that matches: the earlier rule "all" covers all its hosts, ports, methods and paths; remove it, or narrow or reorder the earlier one`,
				`warning: tenants/t.yaml:8: deny rule "no-paste" denies what is already denied: no allow rule or connector of this tenant covers its hosts; remove it, or allow something it is meant to carve out of`,
				`warning: tenants/t.yaml:1: tenant "t" has no request rate limit: set quota.requests_per_second and burst here, or tenant_defaults in gateway.yaml, so that one sandbox cannot flood the gateway and its upstreams`,
				"ok: 1 tenants, 0 connectors",
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, c.files)
			var stdout, stderr bytes.Buffer
			code := run([]string{"check", "--config", dir}, &stdout, &stderr)
			if got := strings.Split(strings.TrimSpace(stdout.String()), "\n"); code != exitOK || strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("check: exit %d, output:\n%s%s\nwant exit 0 and:\n%s", code, stdout.String(), stderr.String(), strings.Join(c.want, "\n"))
			}
		})
	}
}
