package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeShadowHash is a password-hash line such as /etc/shadow holds; it
// must never be quoted by the gateway.
const fakeShadowHash = "$6$e2esalt$FAKEHASHe2eFakeHashE2Efakehash0123456789abcdef"

// A tenants/ entry that links to a file outside the config directory is
// refused: `egressgw check` exits 1, a reload keeps the last good policy,
// and neither check, the log nor /v1/config quotes the file.
func TestConfigLinkOutOfTheDirectoryIsRefusedUnquoted(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	outside := filepath.Join(t.TempDir(), "shadow")
	writeFile(t, outside, "root:"+fakeShadowHash+":19700:0:99999:7:::\n")
	files := configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"tenants/editor.yaml": tenantYAML(editor, allowRule("api", []string{hostAPI}, origin.port)),
	}

	checkDir := writeConfig(t, files)
	if err := os.Symlink(outside, filepath.Join(checkDir, "tenants", "evil.yaml")); err != nil {
		t.Fatal(err)
	}
	res := egressgw(t, "check", "--config", checkDir)
	if res.exitCode != 1 || !strings.Contains(res.output(), "tenants/evil.yaml: resolves to "+outside+", outside the config directory") {
		t.Errorf("check: exit %d, output:\n%s\nwant exit 1 and the link refused", res.exitCode, res.output())
	}
	if strings.Contains(res.output(), "FAKEHASH") {
		t.Errorf("check quotes the file outside:\n%s", res.output())
	}

	g, dir := startReloadable(t, files)
	link := filepath.Join(dir, "tenants", "evil.yaml")
	editUntil(t, func() {
		_ = os.Remove(link)
		if err := os.Symlink(outside, link); err != nil {
			t.Fatal(err)
		}
	}, func() error {
		if config := g.admin(t, "/v1/config"); !strings.Contains(config, "tenants/evil.yaml: resolves to") {
			return fmt.Errorf("/v1/config does not report the link: %s", config)
		}
		return nil
	})
	g.expectAllowedGET(t, editor, origin.url(hostAPI, "/still-old-policy"))
	for where, text := range map[string]string{"/v1/config": g.admin(t, "/v1/config"), "the log": g.stderr.String(), "the audit log": g.stdout.String()} {
		if strings.Contains(text, "FAKEHASH") {
			t.Errorf("%s quotes the file outside the config directory:\n%s", where, tail(text, 2000))
		}
	}
}

// A 101 MB tenant file is refused for its size without being read: the
// reload fails, and the gateway's resident memory does not grow by the
// file's size.
func TestOversizedTenantFileIsRefusedUnread(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"tenants/editor.yaml": tenantYAML(editor, allowRule("api", []string{hostAPI}, origin.port)),
	})
	before := vmRSS(t, g.cmd.Process.Pid)
	big := filepath.Join(dir, "tenants", "big.yaml")
	editUntil(t, func() {
		writeFile(t, big, "id: big\n")
		if err := os.Truncate(big, 101<<20); err != nil { // sparse: costs no disk
			t.Fatal(err)
		}
	}, func() error {
		if config := g.admin(t, "/v1/config"); !strings.Contains(config, "tenants/big.yaml: is 105906176 bytes, over config.max_file_bytes (4194304 bytes)") {
			return fmt.Errorf("/v1/config does not report the oversized file: %s", config)
		}
		return nil
	})
	g.expectAllowedGET(t, editor, origin.url(hostAPI, "/still-old-policy"))
	// Generous: the file is 101 MB, reading it whole grew the gateway by
	// about 700 MB.
	if after := vmRSS(t, g.cmd.Process.Pid); after-before > 32<<10 {
		t.Errorf("VmRSS grew from %d kB to %d kB on refusing a 101 MB file", before, after)
	}
}

// editUntil makes an edit and waits, within the reload window, until
// cond holds. The gateway starts its watcher beside its readiness, so an
// edit made at once may come before the watch: while cond does not hold,
// the edit is made anew every half second.
func editUntil(t *testing.T, edit func(), cond func() error) {
	t.Helper()
	edit()
	last := time.Now()
	eventually(t, 2*reloadWindow, func() error {
		err := cond()
		if err != nil && time.Since(last) > 500*time.Millisecond {
			edit()
			last = time.Now()
		}
		return err
	})
}

// vmRSS returns the resident memory of process pid in kB.
func vmRSS(t *testing.T, pid int) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return kb
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}
