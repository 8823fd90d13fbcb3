package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReloadSlowSaveUnderTraffic saves a tenant file in place, slowly, in
// chunks 100 ms apart, while the tenant's requests keep coming. Cut after
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

	var ok, refused atomic.Int64
	var firstRefusal atomic.Value
	stop := make(chan struct{})
	var clients sync.WaitGroup
	for range 2 {
		clients.Go(func() {
			client := g.client(t, editor)
			for {
				select {
				case <-stop:
					return
				default:
				}
				status, err := soakRequest(client, origin.url(hostAPI, "/during-save"))
				if err == nil && status == http.StatusOK {
					ok.Add(1)
					continue
				}
				refused.Add(1)
				firstRefusal.CompareAndSwap(nil, fmt.Sprintf("status %d, error %v", status, err))
			}
		})
	}

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
			time.Sleep(100 * time.Millisecond) // the save's own pace
		}
		if _, err := f.WriteString(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g.expectStatusWithin(t, editor, origin.url(hostOther, "/"), http.StatusOK)
	close(stop)
	clients.Wait()
	t.Logf("%d requests ok, %d refused during the save", ok.Load(), refused.Load())
	if refused.Load() != 0 {
		t.Errorf("%d of %d requests refused while the tenant file was being saved: a half-written file was applied; first: %v",
			refused.Load(), ok.Load()+refused.Load(), firstRefusal.Load())
	}
	if ok.Load() == 0 {
		t.Error("no request went through during the save")
	}
	if strings.Count(g.stderr.String(), `"policy reloaded"`) != 1 {
		t.Errorf("the save was applied %d times, want once", strings.Count(g.stderr.String(), `"policy reloaded"`))
	}
}
