package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The model example (configs/examples/model) served by the real gateway in
// front of an upstream that replays fixtures/answer.sse an event at a
// time, each event after the first only once the test has seen the one
// before reach the client: curl --no-buffer, Python reading line by line
// and Go all get every event as it comes, redacted and scrubbed, and in
// the end exactly fixtures/answer.redacted.sse.

// modelPrompt is what the clients send; the address must not leave.
const modelPrompt = `{"model":"small-1","stream":true,"messages":[{"role":"user","content":"write to jane.doe@example.com"}]}`

// pythonStream posts argv[3] to argv[1] (CA file argv[2]) and prints the
// answer line by line as it arrives.
const pythonStream = `
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
req = urllib.request.Request(sys.argv[1], data=sys.argv[3].encode(), headers={"Content-Type": "application/json"})
with urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx)).open(req, timeout=20) as resp:
    for line in resp:
        sys.stdout.write(line.decode())
        sys.stdout.flush()
`

type modelFixture struct {
	g       *gateway
	origin  *upstream
	caFile  string
	caPool  *x509.CertPool
	next    chan struct{}
	prompts chan string // request bodies as the upstream got them
	events  []string    // fixtures/answer.sse, an event each
	want    string      // fixtures/answer.redacted.sse
	key     string      // the injected key
}

func startModelFixture(t *testing.T) *modelFixture {
	t.Helper()
	dir, env, secrets := prepareExample(t, "model")
	fx := &modelFixture{next: make(chan struct{}), prompts: make(chan string, 8), key: secrets["model_api_key"]}
	answer, err := os.ReadFile(filepath.Join(dir, "fixtures", "answer.sse"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(dir, "fixtures", "answer.redacted.sse"))
	if err != nil {
		t.Fatal(err)
	}
	fx.want = string(want)
	for _, ev := range strings.SplitAfter(string(answer), "\n\n") {
		if ev != "" {
			fx.events = append(fx.events, ev)
		}
	}
	if !strings.Contains(string(answer), fx.key[:10]) {
		t.Fatalf("fixtures/answer.sse no longer spells out the key %q that prepareExample sets; update it", fx.key)
	}
	fx.origin = startTLSUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fx.prompts <- r.Header.Get("Authorization") + "\n" + string(body)
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i, ev := range fx.events {
			if i > 0 {
				select {
				case <-fx.next:
				case <-r.Context().Done():
					return
				}
			}
			if _, err := io.WriteString(w, ev); err != nil || rc.Flush() != nil {
				return
			}
		}
	}))
	rewriteExampleFile(t, dir, "connectors/model.yaml", `hosts: ["api.model.example.com"]`, fmt.Sprintf("hosts: [%q]", hostAPI))
	rewriteExampleFile(t, dir, "connectors/model.yaml", "ports: [443]", fmt.Sprintf("ports: [%d]", fx.origin.port))
	// Each client takes two of the connector's tokens (its CONNECT and its
	// request): the example's burst of 5 would refuse the third client.
	rewriteExampleFile(t, dir, "connectors/model.yaml", "burst: 5 }", "burst: 50 }")
	fx.g, fx.caPool = startExampleGateway(t, dir, env)
	fx.caFile = filepath.Join(dir, "ca", "ca.pem")
	return fx
}

// follow reads a client's answer line by line and releases each upstream
// event once the client has the one before: the first data line, then
// the events in turn, until the client is done. It returns all it read.
func (fx *modelFixture) follow(t *testing.T, answer io.Reader) string {
	t.Helper()
	lines := make(chan string)
	go func() {
		defer close(lines)
		r := bufio.NewReader(answer)
		for {
			line, err := r.ReadString('\n')
			if line != "" {
				lines <- line
			}
			if err != nil {
				return
			}
		}
	}()
	var got strings.Builder
	blank := 0 // events the client has whole
	released := 1
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				return got.String()
			}
			got.WriteString(line)
			if line == "\n" {
				blank++
			}
		case <-time.After(scaled(10 * time.Second)):
			t.Fatalf("the client waited for an event the upstream had sent; it has %q", got.String())
		}
		// The next event goes only once the client has every event sent,
		// but one that the gateway may hold back: an event that ends in
		// what might begin the key comes with the next.
		for released < len(fx.events) && (blank >= released || blank == released-1 && fx.holdable(released-1)) {
			select {
			case fx.next <- struct{}{}:
				released++
			case <-time.After(scaled(10 * time.Second)):
				t.Fatal("the upstream did not ask for its next event")
			}
		}
	}
}

// holdable says event i of the answer ends in part of the key.
func (fx *modelFixture) holdable(i int) bool {
	return strings.Contains(fx.events[i], fx.key[:10]) && !strings.Contains(fx.events[i], fx.key)
}

// checkPrompt checks what the upstream got: the key injected, the
// address in the prompt masked.
func (fx *modelFixture) checkPrompt(t *testing.T) {
	t.Helper()
	select {
	case got := <-fx.prompts:
		auth, body, _ := strings.Cut(got, "\n")
		if auth != "Bearer "+fx.key || strings.Contains(body, "jane.doe@example.com") || !strings.Contains(body, "[REDACTED:email]") {
			t.Errorf("the upstream got %q: want the key injected and the address masked", got)
		}
	default:
		t.Error("the upstream got no request")
	}
}

func TestExamplesModelStreamsThroughGateway(t *testing.T) {
	t.Parallel()
	fx := startModelFixture(t)
	target := fx.origin.url(hostAPI, "/v1/chat/completions")
	proxy := fx.g.proxyURL(exampleTenant)

	t.Run("go", func(t *testing.T) {
		proxyURL, _ := url.Parse(proxy)
		transport := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: fx.caPool}}
		t.Cleanup(transport.CloseIdleConnections)
		resp, err := (&http.Client{Transport: transport, Timeout: scaled(30 * time.Second)}).Post(target, "application/json", strings.NewReader(modelPrompt))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if got := fx.follow(t, resp.Body); got != fx.want {
			t.Errorf("Go client got\n%q\nwant\n%q", got, fx.want)
		}
		fx.checkPrompt(t)
	})

	for _, client := range []struct {
		name string
		args func(program string) []string
	}{
		{"curl", func(string) []string {
			return []string{"-sS", "--no-buffer", "--max-time", "30", "-x", proxy, "--cacert", fx.caFile,
				"-H", "Content-Type: application/json", "-d", modelPrompt, target}
		}},
		{"python3", func(string) []string { return []string{"-c", pythonStream, target, fx.caFile, modelPrompt} }},
	} {
		t.Run(client.name, func(t *testing.T) {
			program := lookPathOrSkip(t, client.name)
			cmd := exec.Command(program, client.args(program)...)
			cmd.Env = clientEnv("HTTPS_PROXY="+proxy, "https_proxy="+proxy)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill() })
			got := fx.follow(t, stdout)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("%s: %v\n%s", client.name, err, stderr.String())
			}
			if got != fx.want {
				t.Errorf("%s got\n%q\nwant\n%q", client.name, got, fx.want)
			}
			fx.checkPrompt(t)
		})
	}

	rec := fx.g.waitAudit(t, auditWith("tenant", exampleTenant.tenant, "path", "/v1/chat/completions"))
	if rec["code"] != "ok" {
		t.Errorf("audit line %v", rec)
	}
}
