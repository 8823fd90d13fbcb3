package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egressgw/egressgw/state"
)

// Streams that only a grant allows end when the grant does, revoked
// through the admin API or expired: plain HTTP, inside an inspected
// tunnel whose connector allows the tunnel but not the stream's path, and
// through an opaque tunnel the grant allows. The client sees its body cut
// short, never a clean end; the audit line says revoked and names the
// grant.

// grantStreamFixture is a gateway with admin tokens and inspection where
// streamer reaches streamOrigin only through grants: its one connector,
// streams-narrow, inspects tunnels to secure and allows only /narrow/
// inside them; nothing allows plain or opaque.
type grantStreamFixture struct {
	*streamFixture
	opaque *upstream      // a TLS upstream no connector names: its tunnels are not inspected
	roots  *x509.CertPool // the gateway's CA and the test CA, which signs opaque's certificate
}

func startGrantStreamFixture(t *testing.T) *grantStreamFixture {
	t.Helper()
	fx := &streamFixture{
		plain:  startHTTPUpstream(t, "127.0.0.1", streamOrigin),
		secure: startTLSUpstream(t, "127.0.0.1", streamOrigin),
	}
	opaque := startTLSUpstream(t, "127.0.0.1", streamOrigin)
	fx.dir = writeConfig(t, configFiles{
		"gateway.yaml": inspectingGatewayYAML(yamlf(`
			admin:
			  tokens:
			    - { name: ops, role: admin, token_sha256: %q }
		`, sha256Hex(accessOpsToken))),
		"connectors/streams-narrow.yaml": yamlf(`
			name: streams-narrow
			hosts: [%q]
			ports: [%d]
			paths: ["/narrow/"]
			inspect: true
		`, hostAPI, fx.secure.port),
		"tenants/streamer.yaml": tenantYAML(streamer, "connectors: [streams-narrow]\n"),
	})
	if res := egressgw(t, "ca", "init", "--out", filepath.Join(fx.dir, "ca")); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	fx.caFile = filepath.Join(fx.dir, "ca", "ca.pem")
	pem, err := os.ReadFile(fx.caFile)
	if err != nil {
		t.Fatal(err)
	}
	fx.caPool = x509.NewCertPool()
	fx.caPool.AppendCertsFromPEM(pem)
	testCA, err := os.ReadFile(testPKI.caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	roots.AppendCertsFromPEM(testCA)
	fx.g = newGateway(t)
	fx.g.start(t, "--config", fx.dir, "--log-format", "json")
	return &grantStreamFixture{streamFixture: fx, opaque: opaque, roots: roots}
}

// client is a Go client through the gateway as streamer that trusts the
// gateway's CA (inspected tunnels) and the test CA (opaque ones); without
// keep-alive, each request's connection, and so its tunnel, closes after
// it.
func (fx *grantStreamFixture) client(t *testing.T, keepAlive bool) *http.Client {
	proxy := &url.URL{Scheme: "http", Host: fx.g.proxyAddr, User: url.UserPassword(streamer.tenant, streamer.token)}
	transport := &http.Transport{Proxy: http.ProxyURL(proxy), TLSClientConfig: &tls.Config{RootCAs: fx.roots}, DisableKeepAlives: !keepAlive}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: scaled(requestTimeout)}
}

// upstreams are the three ways to the stream origin: plain HTTP, an
// inspected tunnel and an opaque one.
func (fx *grantStreamFixture) upstreams() map[string]*upstream {
	return map[string]*upstream{"plain": fx.plain, "inspected": fx.secure, "opaque": fx.opaque}
}

// adminCall sends method path with body (nil: none) to the admin API as
// the ops admin and decodes the JSON answer into out, failing unless the
// status is want.
func (fx *grantStreamFixture) adminCall(t *testing.T, method, path string, body any, want int, out any) {
	t.Helper()
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "http://"+fx.g.adminAddr+path, reader)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+accessOpsToken)
	resp, err := directClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	data := readBody(t, resp)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: status %d, body %s; want %d", method, path, resp.StatusCode, data, want)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(data), out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, data)
		}
	}
}

// grant adds, through POST /v1/grants, a grant to streamer for hostAPI on
// the three upstreams' ports, lasting lifetime, and waits until the
// gateway applies it to each.
func (fx *grantStreamFixture) grant(t *testing.T, lifetime time.Duration) state.Grant {
	t.Helper()
	var added struct{ Grant state.Grant }
	fx.adminCall(t, http.MethodPost, "/v1/grants", map[string]any{
		"tenant": streamer.tenant, "host": hostAPI, "ports": []int{fx.plain.port, fx.secure.port, fx.opaque.port},
		"for": lifetime.String(), "note": "streams under a grant",
	}, http.StatusCreated, &added)
	client := fx.client(t, false) // no probe's tunnel outlives it
	eventually(t, 5*time.Second, func() error {
		for _, up := range fx.upstreams() {
			if status, err := statusOf(client, up.url(hostAPI, "/probe")); err != nil || status != http.StatusOK {
				return fmt.Errorf("grant %s on %s: status %d, %v", added.Grant.ID, up.url(hostAPI, "/"), status, err)
			}
		}
		return nil
	})
	return added.Grant
}

// endlessStream is an event stream under way: its path, whether it runs
// in an opaque tunnel (audited as the tunnel, without a path), and how
// its reader ended, once it ends.
type endlessStream struct {
	path   string
	opaque bool
	ended  chan streamEnd
}

// streamEnd is the error a stream's reader ended with, and when.
type streamEnd struct {
	err error
	at  time.Time
}

// openStreams starts an endless event stream from each upstream as a Go
// client would, reads its first event, and reads on in the background.
func (fx *grantStreamFixture) openStreams(t *testing.T, name string) []endlessStream {
	t.Helper()
	var streams []endlessStream
	for way, up := range fx.upstreams() {
		s := endlessStream{path: "/events/" + name + "-" + way, opaque: up == fx.opaque, ended: make(chan streamEnd, 1)}
		resp, err := fx.client(t, true).Get(up.url(hostAPI, s.path))
		if err != nil {
			t.Fatalf("%s: %v", s.path, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d (%s)", s.path, resp.StatusCode, resp.Header.Get("X-Egressgw-Error"))
		}
		events := bufio.NewReader(resp.Body)
		if _, err := events.ReadString('\n'); err != nil {
			t.Fatalf("%s: first event: %v", s.path, err)
		}
		go func() {
			defer resp.Body.Close()
			for {
				if _, err := events.ReadString('\n'); err != nil {
					s.ended <- streamEnd{err: err, at: time.Now()}
					return
				}
			}
		}()
		streams = append(streams, s)
	}
	return streams
}

// expectCutShort waits until each stream has ended, cut short (unexpected
// EOF), between notBefore and deadline, and checks its audit line:
// revoked, by grant, for the reason given.
func (fx *grantStreamFixture) expectCutShort(t *testing.T, streams []endlessStream, notBefore, deadline time.Time, grant state.Grant, reason string) {
	t.Helper()
	timeout := time.After(time.Until(deadline))
	for _, s := range streams {
		select {
		case end := <-s.ended:
			if !errors.Is(end.err, io.ErrUnexpectedEOF) {
				t.Errorf("%s ended with %v, want it cut short (unexpected EOF)", s.path, end.err)
			}
			if end.at.Before(notBefore) {
				t.Errorf("%s ended %v too early", s.path, notBefore.Sub(end.at))
			}
		case <-timeout:
			t.Fatalf("%s still streams after the grant ended", s.path)
		}
		var rec map[string]any
		if s.opaque {
			rec = fx.g.waitAudit(t, auditWith("tenant", streamer.tenant, "method", http.MethodConnect, "port", fx.opaque.port, "code", "revoked", "rule", "grant:"+grant.ID))
		} else {
			rec = fx.expectAudit(t, s.path, "revoked", http.StatusOK, -1)
		}
		why, _ := rec["reason"].(string)
		if rec["decision"] != "deny" || !ruleIs(rec["rule"], "grant:"+grant.ID) || !strings.Contains(why, grant.ID) || !strings.Contains(why, reason) {
			t.Errorf("audit line of %s: %v; want decision deny, rule grant:%s and a reason saying it %s", s.path, rec, grant.ID, reason)
		}
	}
}

func TestGrantEndEndsStreams(t *testing.T) {
	t.Parallel()
	fx := startGrantStreamFixture(t)

	// Revoked through the admin API: ended at once, without the grace a
	// reload gives, within the refresh window. curl reads a plain stream
	// too, as it comes.
	revoked := fx.grant(t, time.Hour)
	streams := fx.openStreams(t, "revoked")
	curlDone := make(chan commandResult, 1)
	go func() { curlDone <- fx.curl(t, fx.plain.url(hostAPI, "/events/revoked-curl"), "-N") }()
	eventually(t, 5*time.Second, func() error {
		if len(fx.plain.requestsTo("/events/revoked-curl")) == 0 {
			return errors.New("curl's stream has not started")
		}
		return nil
	})
	revokedAt := time.Now()
	var answer struct{ Revoked string }
	fx.adminCall(t, http.MethodDelete, "/v1/grants/"+revoked.ID, nil, http.StatusOK, &answer)
	if answer.Revoked != revoked.ID {
		t.Errorf("DELETE /v1/grants/%s answered revoked %q", revoked.ID, answer.Revoked)
	}
	deadline := revokedAt.Add(scaled(2 * reloadWindow))
	fx.expectCutShort(t, streams, revokedAt, deadline, revoked, "was revoked")
	select {
	case res := <-curlDone:
		if res.exitCode != 18 {
			t.Errorf("curl exit %d, want 18 (transfer closed with data remaining)\n%s", res.exitCode, res.stderr)
		}
	case <-time.After(time.Until(deadline)):
		t.Fatal("curl's stream still runs after the grant was revoked")
	}
	fx.expectAudit(t, "/events/revoked-curl", "revoked", http.StatusOK, -1)

	// Expired: ended at its expiry, not before.
	expiring := fx.grant(t, scaled(6*time.Second))
	streams = fx.openStreams(t, "expired")
	fx.expectCutShort(t, streams, expiring.ExpiresAt, expiring.ExpiresAt.Add(scaled(2*reloadWindow)), expiring, "expired")

	// The streams of each grant; the probes ended whole.
	if n := fx.requests(t, "revoked"); n != 7 {
		t.Errorf("egressgw_requests_total{code=revoked} = %v, want 7", n)
	}
}
