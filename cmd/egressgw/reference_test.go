package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReferenceListsEveryCommandAndFlag: docs/reference.md's "Commands"
// section names every command of the usage and every flag each defines,
// as the flag package itself lists them under -h.
func TestReferenceListsEveryCommandAndFlag(t *testing.T) {
	raw, err := os.ReadFile("../../docs/reference.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(raw), "\n## Commands\n")
	if !ok {
		t.Fatal("docs/reference.md has no ## Commands section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	commands := regexp.MustCompile(`(?m)^  egressgw ([a-z]+(?: [a-z]+)?)`).FindAllStringSubmatch(usage, -1)
	if len(commands) < 8 {
		t.Fatalf("found only %d commands in the usage", len(commands))
	}
	flagName := regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`)
	for _, c := range commands {
		name := c[1]
		row := ""
		for _, line := range strings.Split(section, "\n") {
			if strings.HasPrefix(line, "| `egressgw "+name+"`") {
				row = line
			}
		}
		if row == "" {
			t.Errorf("docs/reference.md Commands has no row for `egressgw %s`", name)
			continue
		}
		var out bytes.Buffer
		run(append(strings.Fields(name), "-h"), &out, &out)
		flags := flagName.FindAllStringSubmatch(out.String(), -1)
		if name != "token new" && name != "version" && len(flags) == 0 {
			t.Errorf("`egressgw %s -h` lists no flags:\n%s", name, out.String())
		}
		for _, f := range flags {
			if !strings.Contains(row, "`--"+f[1]) {
				t.Errorf("docs/reference.md: `egressgw %s` defines --%s, which its row does not name", name, f[1])
			}
		}
	}
}

// `egressgw` alone is a usage error: the usage on stderr, exit 2.
func TestRunWithoutArgumentsIsAUsageError(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(nil, &stdout, &stderr); code != exitUsage || stdout.Len() != 0 || !strings.HasPrefix(stderr.String(), "egressgw: an egress gateway") || !strings.Contains(stderr.String(), "egressgw serve") {
		t.Errorf("exit %d, stdout %q, stderr %q; want 2 and the usage on stderr", code, stdout.String(), stderr.String())
	}
}
