package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReloadSlowSaveUnderTraffic saves a tenant file in place, slowly, in
// chunks 50 ms apart, while the tenant's requests keep coming. Cut after
// its first rule, the new file is a valid policy that no longer allows the
// host under traffic: applying it half-written would refuse requests. The
// gateway must wait for the save to finish.
func TestReloadSlowSaveUnderTraffic(t *testing.T) {
	t.Parallel()
	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	apiRule := yamlf(`
		  - name: api
		    hosts: [%q]
		    ports: [%d]
	`, hostAPI, origin.port)
	g, dir := startReloadable(t, configFiles{
		"gateway.yaml":        gatewayYAML(""),
		"tenants/editor.yaml": tenantYAML(editor, "rules:\n"+apiRule),
	})

	load := startSteadyLoad(t, g.client(t, editor), origin.url(hostAPI, "/during-save"), 2)

	// The new file: a rule for another host first, ten lines of comments,
	// the api rule last.
	chunks := []string{tenantYAML(editor, yamlf(`
		rules:
		  - name: other
		    hosts: [%q]
		    ports: [%d]
	`, hostOther, origin.port))}
	for i := range 8 {
		chunks = append(chunks, fmt.Sprintf("# slow save, part %d\n", i+2))
	}
	chunks = append(chunks, apiRule)
	f, err := os.OpenFile(filepath.Join(dir, "tenants", "editor.yaml"), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range chunks {
		if i > 0 {
			// The save's own pace: well inside the 150 ms quiet window, so
			// that a stall of the test itself (a loaded CI machine) does
			// not open a pause the gateway must take for the save's end.
			time.Sleep(50 * time.Millisecond)
		}
		if _, err := f.WriteString(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g.expectStatusWithin(t, editor, origin.url(hostOther, "/"), http.StatusOK)
	ok, refused, firstRefusal := load.stop()
	t.Logf("%d requests ok, %d refused during the save", ok, refused)
	if refused != 0 {
		t.Errorf("%d of %d requests refused while the tenant file was being saved: a half-written file was applied; first: %s",
			refused, ok+refused, firstRefusal)
	}
	if ok == 0 {
		t.Error("no request went through during the save")
	}
	if strings.Count(g.stderr.String(), `"policy reloaded"`) != 1 {
		t.Errorf("the save was applied %d times, want once", strings.Count(g.stderr.String(), `"policy reloaded"`))
	}
}
