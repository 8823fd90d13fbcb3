package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reloadPeakLimit is the most a reload may add to the gateway's resident
// set, as a multiple of it when steady: docs/operators.md ("Memory") tells
// operators to size for it.
const reloadPeakLimit = 2.0

// TestReloadMemoryPeak serves 10,000 tenants, edits one of them three
// times and measures the process's resident-set high-water mark over the
// reloads against its steady resident set: a reload must not hold two
// copies of a policy that barely changed, nor leave the gateway larger for
// the next. The edit and an unchanged tenant are then checked with real
// requests.
func TestReloadMemoryPeak(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc to read the resident set from")
	}
	tenants := 10000
	if raceEnabled {
		// The race detector's runtime loads and reloads several times
		// slower; fewer tenants keep the test to its time.
		tenants = 2000
	}
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	files := configFiles{"gateway.yaml": gatewayYAML("")}
	for i := range 3 {
		files[fmt.Sprintf("connectors/svc%d.yaml", i)] = yamlf(`
			name: svc%d
			hosts: ["api%d.svc.example", "*.svc%d.example"]
			ports: [443]
			quota: { requests_per_second: 10, burst: 20 }
		`, i, i, i)
	}
	for i := range tenants {
		c := bulkTenant(i)
		files["tenants/"+c.tenant+".yaml"] = tenantYAML(c, fmt.Sprintf("connectors: [svc%d]\n", i%3)+
			allowRule("api", []string{hostAPI, fmt.Sprintf("t%d.%s", i, hostOther)}, origin.port))
	}
	g, dir := startReloadable(t, files, "--watch=false")
	pid := g.cmd.Process.Pid

	steady := settledRSS(t, pid)
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatalf("resetting the high-water mark: %v", err)
	}
	if hwm := procStatusKB(t, pid, "VmHWM"); hwm > steady*11/10 {
		t.Fatalf("VmHWM is %d kB right after the reset, steady VmRSS %d kB: the reset did not work", hwm, steady)
	}

	// Several reloads: each must give back what it took, or the next
	// starts from higher up.
	edited := bulkTenant(0)
	for i, host := range []string{hostOther, hostAPI, hostOther} {
		writeFile(t, filepath.Join(dir, "tenants", edited.tenant+".yaml"),
			tenantYAML(edited, "connectors: [svc0]\n"+allowRule("api", []string{host}, origin.port)))
		g.signal(t, syscall.SIGHUP)
		// The log, not /v1/config: the admin API waits for a reload in
		// progress, and a slow one would time out the poll.
		eventually(t, 60*time.Second, func() error {
			log := g.stderr.String()
			if strings.Contains(log, "config reload refused") {
				t.Fatalf("reload refused:\n%s", tail(log, 2000))
			}
			if want := fmt.Sprintf(`"msg":"policy reloaded","trigger":"SIGHUP","generation":%d,`, i+2); !strings.Contains(log, want) {
				return fmt.Errorf("no %s in the log yet", want)
			}
			return nil
		})
	}
	peak := procStatusKB(t, pid, "VmHWM")
	ratio := float64(peak) / float64(steady)
	t.Logf("%d tenants: steady VmRSS %d kB, VmHWM over 3 reloads %d kB (%.2fx)", tenants, steady, peak, ratio)
	if ratio > reloadPeakLimit {
		t.Errorf("reloads editing one of %d tenants peaked at %.2fx the steady resident set (%d kB of %d kB), want at most %.1fx",
			tenants, ratio, peak, steady, reloadPeakLimit)
	}

	g.expectAllowedGET(t, edited, origin.url(hostOther, "/edited"))
	if got := g.statusOf(t, edited, origin.url(hostAPI, "/")); got != http.StatusForbidden {
		t.Errorf("the edited tenant's old rule still applies: status %d", got)
	}
	g.expectAllowedGET(t, bulkTenant(tenants-1), origin.url(hostAPI, "/unchanged"))
}

// bulkTenant names the i-th of many generated tenants.
func bulkTenant(i int) credentials {
	return credentials{tenant: fmt.Sprintf("bulk-%05d", i), token: fmt.Sprintf("bulk-token-%05d-7c1e", i)}
}

// settledRSS waits until the resident set of process pid stops moving
// (three readings 200 ms apart within 2% of each other) and returns it,
// in kB.
func settledRSS(t *testing.T, pid int) int {
	t.Helper()
	var readings []int
	var settled int
	eventually(t, 20*time.Second, func() error {
		readings = append(readings, procStatusKB(t, pid, "VmRSS"))
		time.Sleep(200 * time.Millisecond)
		if n := len(readings); n >= 3 {
			lo, hi := readings[n-3], readings[n-3]
			for _, r := range readings[n-2:] {
				lo, hi = min(lo, r), max(hi, r)
			}
			if hi-lo <= hi/50 {
				settled = readings[n-1]
				return nil
			}
		}
		return fmt.Errorf("VmRSS still moving: %v kB", readings)
	})
	return settled
}

// procStatusKB reads a kB field (VmRSS, VmHWM) of /proc/PID/status.
func procStatusKB(t *testing.T, pid int, field string) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		value, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(value), " kB"))
		if err != nil {
			t.Fatalf("/proc/%d/status: %q: %v", pid, line, err)
		}
		return kb
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}
