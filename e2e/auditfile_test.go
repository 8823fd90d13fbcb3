package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var auditor = credentials{tenant: "auditor", token: "auditor-token-3b9e61c0f2"}

// auditedPaths returns the request paths of the audit lines in file, in
// order; a missing file holds none.
func auditedPaths(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return pathsOfLines(t, string(data))
}

func pathsOfLines(t *testing.T, text string) []string {
	t.Helper()
	var paths []string
	for _, line := range strings.Split(text, "\n") {
		if line == "" {
			continue
		}
		var rec struct {
			Path string `json:"path"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			continue // the operational log shares stdout in no test here, but be safe
		}
		if rec.Path != "" {
			paths = append(paths, rec.Path)
		}
	}
	return paths
}

// auditTraffic sends numbered requests, each with its own path.
type auditTraffic struct {
	g    *gateway
	url  func(path string) string
	sent []string
}

func (a *auditTraffic) send(t *testing.T) string {
	t.Helper()
	path := fmt.Sprintf("/audited/%d", len(a.sent))
	a.g.expectAllowedGET(t, auditor, a.url(path))
	a.sent = append(a.sent, path)
	return path
}

// sendUntilIn sends requests until the last one shows in file.
func (a *auditTraffic) sendUntilIn(t *testing.T, file string) {
	t.Helper()
	eventually(t, 5*time.Second, func() error {
		last := a.send(t)
		time.Sleep(50 * time.Millisecond)
		for _, p := range auditedPaths(t, file) {
			if p == last {
				return nil
			}
		}
		return fmt.Errorf("%s does not hold the line of %s", file, last)
	})
}

// assertEachOnce checks that the files together hold every request sent,
// each exactly once.
func (a *auditTraffic) assertEachOnce(t *testing.T, files ...string) {
	t.Helper()
	seen := map[string]int{}
	eventually(t, 5*time.Second, func() error {
		clear(seen)
		for _, f := range files {
			for _, p := range auditedPaths(t, f) {
				seen[p]++
			}
		}
		for _, p := range a.sent {
			if seen[p] != 1 {
				return fmt.Errorf("request %s has %d audit lines in %v, want 1", p, seen[p], files)
			}
		}
		return nil
	})
}

// TestAuditFileRotation rotates the audit file the ways logrotate does,
// without copytruncate: the gateway goes on writing at the path, and no
// line is lost or written twice.
func TestAuditFileRotation(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	logs := t.TempDir()
	file := filepath.Join(logs, "audit.log")
	g := startGateway(t, configFiles{
		"gateway.yaml":         gatewayYAML(fmt.Sprintf("audit:\n  output: %q\n", file)),
		"tenants/auditor.yaml": tenantYAML(auditor, allowRule("api", []string{hostAPI}, origin.port)),
	})
	traffic := &auditTraffic{g: g, url: func(p string) string { return origin.url(hostAPI, p) }}
	traffic.sendUntilIn(t, file)

	t.Run("rename, no signal", func(t *testing.T) {
		if err := os.Rename(file, file+".1"); err != nil {
			t.Fatal(err)
		}
		traffic.sendUntilIn(t, file)
		traffic.assertEachOnce(t, file+".1", file)
	})
	t.Run("rename, create and SIGHUP", func(t *testing.T) {
		// logrotate's create mode: rename, new empty file, postrotate
		// kill -HUP.
		if err := os.Rename(file, file+".2"); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, nil, 0o640); err != nil {
			t.Fatal(err)
		}
		reopened := strings.Count(g.stderr.String(), "audit file reopened")
		g.signal(t, syscall.SIGHUP)
		eventually(t, 5*time.Second, func() error {
			if strings.Count(g.stderr.String(), "audit file reopened") == reopened {
				return fmt.Errorf("no reopen logged after SIGHUP")
			}
			return nil
		})
		path := traffic.send(t)
		traffic.sendUntilIn(t, file)
		for _, p := range auditedPaths(t, file+".2") {
			if p == path {
				t.Errorf("a request after the SIGHUP went to the rotated file")
			}
		}
		traffic.assertEachOnce(t, file+".1", file+".2", file)
	})
	t.Run("remove", func(t *testing.T) {
		if err := os.Remove(file); err != nil {
			t.Fatal(err)
		}
		traffic.sendUntilIn(t, file)
		// Lines written before the gateway noticed went to the removed
		// file; every line after the first in the new file is there.
		got := auditedPaths(t, file)
		first := -1
		for i, p := range traffic.sent {
			if p == got[0] {
				first = i
			}
		}
		if first < 0 || !slicesEqual(got, traffic.sent[first:]) {
			t.Errorf("new file holds %v, want the requests from %s on: %v", got, got[0], traffic.sent[max(first, 0):])
		}
	})
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestAuditOutputSwitchOnReload changes audit.output in gateway.yaml: the
// log moves to the new destination without a restart, no line lost or
// written twice.
func TestAuditOutputSwitchOnReload(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	file := filepath.Join(t.TempDir(), "audit.log")
	tenant := tenantYAML(auditor, allowRule("api", []string{hostAPI}, origin.port))
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":         gatewayYAML("audit:\n  output: stdout\n"),
		"tenants/auditor.yaml": tenant,
	})
	traffic := &auditTraffic{g: g, url: func(p string) string { return origin.url(hostAPI, p) }}
	for range 3 {
		traffic.send(t)
	}
	writeFile(t, filepath.Join(dir, "gateway.yaml"), gatewayYAML(fmt.Sprintf("audit:\n  output: %q\n", file)))
	traffic.sendUntilIn(t, file)
	if strings.Contains(g.stderr.String(), "takes effect after a restart") {
		t.Errorf("audit.output change reported as needing a restart")
	}

	writeFile(t, filepath.Join(dir, "gateway.yaml"), gatewayYAML("audit:\n  output: stdout\n"))
	eventually(t, 5*time.Second, func() error {
		last := traffic.send(t)
		time.Sleep(50 * time.Millisecond)
		for _, p := range pathsOfLines(t, g.stdout.String()) {
			if p == last {
				return nil
			}
		}
		return fmt.Errorf("stdout does not hold the line of %s", last)
	})

	// A destination that cannot be opened leaves the log where it is; once
	// it can be, SIGHUP switches to it although the config is unchanged.
	later := filepath.Join(t.TempDir(), "not-yet", "audit.log")
	writeFile(t, filepath.Join(dir, "gateway.yaml"), gatewayYAML(fmt.Sprintf("audit:\n  output: %q\n", later)))
	eventually(t, 5*time.Second, func() error {
		if !strings.Contains(g.stderr.String(), "cannot open the new audit output") {
			return fmt.Errorf("no error logged for an audit output that cannot be opened")
		}
		return nil
	})
	stayed := traffic.send(t)
	eventually(t, 5*time.Second, func() error {
		if !slices.Contains(pathsOfLines(t, g.stdout.String()), stayed) {
			return fmt.Errorf("the line of %s, sent while the new output could not be opened, is not on stdout", stayed)
		}
		return nil
	})
	if err := os.Mkdir(filepath.Dir(later), 0o755); err != nil {
		t.Fatal(err)
	}
	g.signal(t, syscall.SIGHUP)
	traffic.sendUntilIn(t, later)

	seen := map[string]int{}
	eventually(t, 5*time.Second, func() error {
		clear(seen)
		stdout := pathsOfLines(t, g.stdout.String())
		for _, p := range append(append(stdout, auditedPaths(t, file)...), auditedPaths(t, later)...) {
			seen[p]++
		}
		for _, p := range traffic.sent {
			if seen[p] != 1 {
				return fmt.Errorf("request %s has %d audit lines on stdout and in the files, want 1", p, seen[p])
			}
		}
		return nil
	})
}

// TestAuditDiskRefusesWrites points the audit log at /dev/full (every
// write fails with ENOSPC): requests are still served, and the failure is
// logged and counted.
func TestAuditDiskRefusesWrites(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":         gatewayYAML("audit:\n  output: /dev/full\n"),
		"tenants/auditor.yaml": tenantYAML(auditor, allowRule("api", []string{hostAPI}, origin.port)),
	})
	client := g.client(t, auditor)
	for i := range 20 {
		if status, _ := fetch(t, client, origin.url(hostAPI, fmt.Sprintf("/full/%d", i))); status != http.StatusOK {
			t.Fatalf("request %d: status %d", i, status)
		}
	}
	eventually(t, 5*time.Second, func() error {
		samples, err := g.metrics()
		if err != nil {
			return err
		}
		if n, _ := sumMetric(samples, "egressgw_audit_write_errors_total", nil); n < 1 {
			return fmt.Errorf("egressgw_audit_write_errors_total %v", n)
		}
		if n, found := sumMetric(samples, "egressgw_audit_backlog_bytes", nil); !found || n <= 0 {
			return fmt.Errorf("egressgw_audit_backlog_bytes %v (found %v), want the unwritten lines", n, found)
		}
		if _, found := sumMetric(samples, "egressgw_audit_dropped_lines_total", nil); !found {
			return fmt.Errorf("no egressgw_audit_dropped_lines_total")
		}
		if !strings.Contains(g.stderr.String(), "audit log write failed") || !strings.Contains(g.stderr.String(), "no space left on device") {
			return fmt.Errorf("the failure is not logged")
		}
		return nil
	})
	if n := strings.Count(g.stderr.String(), "audit log write failed"); n != 1 {
		t.Errorf("one run of failures logged %d times", n)
	}
}
