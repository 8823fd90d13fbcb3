package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egressgw/egressgw/state"
)

// refusalWithRequest asserts a 403 destination_not_allowed for target
// that reached none of targets, and returns the access request its body
// names.
func (g *gateway) refusalWithRequest(t *testing.T, c credentials, target string, targets ...reachable) state.RequestRef {
	t.Helper()
	before := snapshotReach(targets...)
	resp := g.get(t, c.header(), target)
	body := readBody(t, resp)
	before.assertUnchanged(t)
	var refusal struct {
		Error         string            `json:"error"`
		AccessRequest *state.RequestRef `json:"access_request"`
	}
	if err := json.Unmarshal([]byte(body), &refusal); err != nil || resp.StatusCode != http.StatusForbidden || refusal.Error != "destination_not_allowed" {
		t.Fatalf("GET %s: status %d, body %q; want 403 destination_not_allowed", target, resp.StatusCode, body)
	}
	if refusal.AccessRequest == nil || refusal.AccessRequest.ID == "" {
		t.Fatalf("GET %s: the refusal names no access request: %s", target, body)
	}
	return *refusal.AccessRequest
}

// addGrant adds a grant through the CLI as the admin and returns it.
func (g *gateway) addGrant(t *testing.T, args ...string) state.Grant {
	t.Helper()
	res := g.adminCLI(t, accessOpsToken, append([]string{"grant", "add", "--json"}, args...)...)
	var added struct{ Grant state.Grant }
	if err := json.Unmarshal([]byte(res.stdout), &added); res.exitCode != 0 || err != nil || added.Grant.ID == "" {
		t.Fatalf("grant add %v: exit %d, %v\n%s", args, res.exitCode, err, res.output())
	}
	return added.Grant
}

// The cycle a user sees, through the real binary and its CLI: a refusal
// files a pending access request, named in the 403; an approver approves it
// for a few seconds; the gateway allows the host within the refresh window,
// audited with rule grant:ID; a tunnel the grant allowed is closed when the
// grant expires, audited revoked; the host is refused again and the request
// is pending again. A deny rule still beats a grant, and a grant never
// waives network safety.
func TestGrantCycle(t *testing.T) {
	t.Parallel()
	web := startHTTPUpstream(t, "127.0.0.1", nil)
	echoServer := startTCPServer(t, "127.0.0.1", echo)
	g := startGateway(t, configFiles{
		"gateway.yaml": accessGatewayYAML(),
		"tenants/acme.yaml": tenantYAML(acme, yamlf(`
			rules:
			  - { name: docs, hosts: [%q], ports: [%d] }
			  - { name: no-paste, action: deny, hosts: [%q] }
		`, hostSub, web.port, hostPaste)),
	})
	target := web.url(hostOther, "/simple/")

	// Refused, and the refusal is a pending access request.
	ref := g.refusalWithRequest(t, acme, target, web)
	if ref.Status != state.StatusPending {
		t.Fatalf("access request %s: status %q, want pending", ref.ID, ref.Status)
	}
	res := g.adminCLI(t, accessWatcherToken, "access", "list", "--json", "--tenant", "acme")
	var listed struct{ Requests []state.AccessRequest }
	if err := json.Unmarshal([]byte(res.stdout), &listed); err != nil || len(listed.Requests) != 1 ||
		listed.Requests[0].ID != ref.ID || listed.Requests[0].Host != hostOther || listed.Requests[0].Path != "/simple/" {
		t.Fatalf("access list after the refusal: %v\n%s", err, res.output())
	}

	// Approved for a few seconds, for every port of the host, so that a
	// tunnel to the echo server is covered too.
	lifetime := scaled(8 * time.Second)
	res = g.adminCLI(t, accessApproverToken, "access", "approve", ref.ID, "--for", lifetime.String(),
		"--ports", fmt.Sprintf("%d,%d", web.port, echoServer.port), "--json")
	var approved struct{ Grant state.Grant }
	if err := json.Unmarshal([]byte(res.stdout), &approved); res.exitCode != 0 || err != nil || approved.Grant.ID == "" {
		t.Fatalf("approve: exit %d, %v\n%s", res.exitCode, err, res.output())
	}
	grant := approved.Grant
	rule := "grant:" + grant.ID

	// Applied within the refresh window.
	eventually(t, scaled(5*time.Second), func() error {
		resp := g.get(t, acme.header(), target)
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK || body != greeting("/simple/") {
			return fmt.Errorf("status %d, body %q", resp.StatusCode, body)
		}
		return nil
	})
	g.waitAudit(t, auditWith("tenant", "acme", "host", hostOther, "path", "/simple/", "decision", "allow", "rule", rule))

	// A tunnel the grant allows stays open until the grant expires.
	tunnel := g.tunnel(t, acme, echoServer.authority(hostOther))
	pingThroughTunnel(t, tunnel)
	closed := make(chan error, 1)
	go func() {
		_, err := tunnel.Read(make([]byte, 1))
		closed <- err
	}()
	select {
	case err := <-closed:
		if err == nil {
			t.Fatal("the granted tunnel returned data instead of closing")
		}
	case <-time.After(time.Until(grant.ExpiresAt) + scaled(4*time.Second)):
		t.Fatalf("the tunnel is still open %v after its grant expired", scaled(4*time.Second))
	}
	if now := time.Now(); now.Before(grant.ExpiresAt) {
		t.Errorf("the tunnel closed %v before its grant expired", grant.ExpiresAt.Sub(now))
	}
	rec := g.waitAudit(t, auditWith("tenant", "acme", "method", "CONNECT", "code", "revoked"))
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, grant.ID) || !ruleIs(rec["rule"], rule) {
		t.Errorf("the closed tunnel's audit line does not name its grant: %v", rec)
	}

	// Refused again, and the request is pending again.
	client := g.client(t, acme)
	eventually(t, scaled(5*time.Second), func() error {
		if status, err := statusOf(client, target); err != nil || status != http.StatusForbidden {
			return fmt.Errorf("status %d, %v", status, err)
		}
		return nil
	})
	if again := g.refusalWithRequest(t, acme, target, web); again.ID != ref.ID || again.Status != state.StatusPending {
		t.Errorf("after the grant expired: access request %+v, want %s pending again", again, ref.ID)
	}

	// A deny rule beats a grant, and a grant for a metadata address is
	// still refused by network safety; neither reaches anything.
	metadata := startHTTPUpstream(t, "127.0.0.1", nil) // a canary: nothing may be dialled for meta.test
	paste := g.addGrant(t, "--tenant", "acme", "--host", hostPaste, "--ports", fmt.Sprint(web.port), "--for", "1h")
	meta := g.addGrant(t, "--tenant", "acme", "--host", hostMetadata, "--ports", "80", "--for", "1h")
	probe := g.addGrant(t, "--tenant", "acme", "--host", hostSubSub, "--ports", fmt.Sprint(web.port), "--for", "1h")
	eventually(t, scaled(5*time.Second), func() error { // all three grants are applied
		resp := g.get(t, acme.header(), web.url(hostSubSub, "/"))
		if readBody(t, resp); resp.StatusCode != http.StatusOK {
			return fmt.Errorf("grant %s not applied yet: status %d", probe.ID, resp.StatusCode)
		}
		return nil
	})
	e := g.expectRefused(t, http.MethodGet, acme.header(), web.url(hostPaste, "/"), http.StatusForbidden, "destination_not_allowed", web)
	if strings.Contains(e.Message, paste.ID) {
		t.Errorf("the deny rule's refusal credits the grant: %q", e.Message)
	}
	g.expectRefused(t, http.MethodGet, acme.header(), "http://"+hostMetadata+"/latest/meta-data/", http.StatusForbidden, "destination_ip_denied", web, metadata)
	_ = meta
}

// Two replicas on one Redis share access requests and grants: a refusal on
// one is listed by the other, a grant added through one applies on both
// within the refresh window, and its revocation too.
func TestGrantsSharedByReplicas(t *testing.T) {
	t.Parallel()
	redis := startRedis(t)
	web := startHTTPUpstream(t, "127.0.0.1", nil)
	files := configFiles{
		"gateway.yaml": accessGatewayYAML() + yamlf(`
			quota:
			  backend: redis
			  redis: { addr: %q, prefix: %q }
			state:
			  backend: redis
		`, redis.addr, "e2e-replicas:"),
		"tenants/acme.yaml": tenantYAML(acme, ""),
	}
	first := startGateway(t, files)
	second := startGateway(t, files)
	target := web.url(hostOther, "/shared")

	ref := second.refusalWithRequest(t, acme, target, web)
	res := first.adminCLI(t, accessWatcherToken, "access", "list", "--json")
	var listed struct{ Requests []state.AccessRequest }
	if err := json.Unmarshal([]byte(res.stdout), &listed); err != nil || len(listed.Requests) != 1 || listed.Requests[0].ID != ref.ID {
		t.Fatalf("the first replica does not list the second's access request %s: %v\n%s", ref.ID, err, res.output())
	}

	grant := first.addGrant(t, "--tenant", "acme", "--host", hostOther, "--ports", fmt.Sprint(web.port), "--for", "1h")
	for _, g := range []*gateway{first, second} {
		eventually(t, scaled(5*time.Second), func() error {
			status, err := statusOf(g.client(t, acme), target)
			if err != nil || status != http.StatusOK {
				return fmt.Errorf("grant %s: status %d, %v", grant.ID, status, err)
			}
			return nil
		})
		g.waitAudit(t, auditWith("tenant", "acme", "path", "/shared", "rule", "grant:"+grant.ID))
	}

	if res := second.adminCLI(t, accessOpsToken, "grant", "revoke", grant.ID); res.exitCode != 0 {
		t.Fatalf("revoke through the second replica: exit %d\n%s", res.exitCode, res.output())
	}
	for _, g := range []*gateway{first, second} {
		eventually(t, scaled(5*time.Second), func() error {
			// A response in flight when the grant ends is cut off: that
			// is the revocation, not yet its refusal.
			status, err := statusOf(g.client(t, acme), target)
			if err != nil || status != http.StatusForbidden {
				return fmt.Errorf("revoked grant %s still applies: status %d, %v", grant.ID, status, err)
			}
			return nil
		})
	}
}

// statusOf GETs url with client and returns the status once the whole
// body arrived, or the error that cut it short.
func statusOf(client *http.Client, url string) (int, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return resp.StatusCode, err
	}
	return resp.StatusCode, nil
}
