package e2e

import (
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// clientFixture is a gateway that lets acme reach one plain-HTTP and one
// HTTPS upstream, for exercising the clients sandboxes really use.
type clientFixture struct {
	g      *gateway
	plain  *upstream
	secure *upstream
}

func startClientFixture(t *testing.T) clientFixture {
	t.Helper()
	plain := startHTTPUpstream(t, "127.0.0.1", nil)
	secure := startTLSUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, plain.port, secure.port)),
	})
	return clientFixture{g: g, plain: plain, secure: secure}
}

// assertServed checks that a client's output carries the upstream's
// greeting for path, that the upstream served path, and that it never saw
// the tenant's proxy credentials.
func assertServed(t *testing.T, up *upstream, path, output string) {
	t.Helper()
	if !strings.Contains(output, greeting(path)) {
		t.Errorf("client output lacks the upstream's greeting %q:\n%s", greeting(path), output)
	}
	seen := up.requestsTo(path)
	if len(seen) == 0 {
		t.Errorf("upstream never received %s", path)
	}
	for _, r := range seen {
		if v := r.Header.Get("Proxy-Authorization"); v != "" {
			t.Errorf("upstream received Proxy-Authorization %q", v)
		}
	}
}

// clientEnv is a client's environment: childEnv plus vars.
func clientEnv(vars ...string) []string {
	return append(childEnv(), vars...)
}

// pythonFetch prints the status and body of argv[1], fetched with
// urllib.request, which takes its proxy from HTTP_PROXY/HTTPS_PROXY. An
// optional argv[2] is a CA file for HTTPS.
const pythonFetch = `
import ssl, sys, urllib.request
handlers = []
if len(sys.argv) > 2:
    handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=sys.argv[2])))
with urllib.request.build_opener(*handlers).open(sys.argv[1], timeout=20) as resp:
    print(resp.status)
    print(resp.read().decode())
`

func TestPlainHTTPClients(t *testing.T) {
	t.Parallel()
	fx := startClientFixture(t)

	t.Run("go", func(t *testing.T) {
		t.Parallel()
		status, body := fetch(t, fx.g.client(t, acme), fx.plain.url(hostAPI, "/from-go"))
		if status != http.StatusOK {
			t.Errorf("status %d, want 200", status)
		}
		assertServed(t, fx.plain, "/from-go", body)
	})
	t.Run("curl", func(t *testing.T) {
		t.Parallel()
		curl := lookPathOrSkip(t, "curl")
		res := run(t, clientEnv(), "", curl, "-sS", "--max-time", "20", "-w", "\nstatus %{http_code}\n",
			"-x", "http://"+fx.g.proxyAddr, "--proxy-user", acme.tenant+":"+acme.token,
			fx.plain.url(hostAPI, "/from-curl"))
		if res.exitCode != 0 || !strings.Contains(res.stdout, "status 200") {
			t.Errorf("curl exit %d, want 0 and status 200; output:\n%s", res.exitCode, res.output())
		}
		assertServed(t, fx.plain, "/from-curl", res.stdout)
	})
	t.Run("python", func(t *testing.T) {
		t.Parallel()
		python := lookPathOrSkip(t, "python3")
		res := run(t, clientEnv("HTTP_PROXY="+fx.g.proxyURL(acme), "http_proxy="+fx.g.proxyURL(acme)), "",
			python, "-c", pythonFetch, fx.plain.url(hostAPI, "/from-python"))
		if res.exitCode != 0 || !strings.HasPrefix(res.stdout, "200\n") {
			t.Errorf("python exit %d, want 0 and status 200; output:\n%s", res.exitCode, res.output())
		}
		assertServed(t, fx.plain, "/from-python", res.stdout)
	})
}

func TestKeepAlive(t *testing.T) {
	t.Parallel()
	fx := startClientFixture(t)
	client := fx.g.client(t, acme)

	var reused []bool
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) }}
	for _, path := range []string{"/first", "/second"} {
		ctx := httptrace.WithClientTrace(context.Background(), trace)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fx.plain.url(hostAPI, path), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatalf("reading %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d, want 200", path, resp.StatusCode)
		}
	}
	if len(reused) != 2 || !reused[1] {
		t.Errorf("connection reuse per request %v; the second request should reuse the first's connection to the gateway", reused)
	}
}

func TestConnectClients(t *testing.T) {
	t.Parallel()
	fx := startClientFixture(t)

	t.Run("go", func(t *testing.T) {
		t.Parallel()
		status, body := fetch(t, fx.g.client(t, acme), fx.secure.url(hostAPI, "/tls-from-go"))
		if status != http.StatusOK {
			t.Errorf("status %d, want 200", status)
		}
		assertServed(t, fx.secure, "/tls-from-go", body)
	})
	t.Run("curl", func(t *testing.T) {
		t.Parallel()
		curl := lookPathOrSkip(t, "curl")
		res := run(t, clientEnv(), "", curl, "-sS", "--max-time", "20", "-w", "\nstatus %{http_code}\n",
			"--cacert", testPKI.caFile,
			"-x", "http://"+fx.g.proxyAddr, "--proxy-user", acme.tenant+":"+acme.token,
			fx.secure.url(hostAPI, "/tls-from-curl"))
		if res.exitCode != 0 || !strings.Contains(res.stdout, "status 200") {
			t.Errorf("curl exit %d, want 0 and status 200; output:\n%s", res.exitCode, res.output())
		}
		assertServed(t, fx.secure, "/tls-from-curl", res.stdout)
	})
	t.Run("python", func(t *testing.T) {
		t.Parallel()
		python := lookPathOrSkip(t, "python3")
		res := run(t, clientEnv("HTTPS_PROXY="+fx.g.proxyURL(acme), "https_proxy="+fx.g.proxyURL(acme)), "",
			python, "-c", pythonFetch, fx.secure.url(hostAPI, "/tls-from-python"), testPKI.caFile)
		if res.exitCode != 0 || !strings.HasPrefix(res.stdout, "200\n") {
			t.Errorf("python exit %d, want 0 and status 200; output:\n%s", res.exitCode, res.output())
		}
		assertServed(t, fx.secure, "/tls-from-python", res.stdout)
	})
	t.Run("node undici", func(t *testing.T) {
		t.Parallel()
		node := lookPathOrSkip(t, "node")
		if _, err := os.Stat(filepath.Join("testdata", "node", "node_modules", "undici")); err != nil {
			t.Skip("undici is not installed; run `npm install` in e2e/testdata/node to exercise Node's ProxyAgent")
		}
		// undici's ProxyAgent tunnels every request with CONNECT; the
		// upstream's CA reaches it through Node's default trust store.
		res := run(t, clientEnv("NODE_EXTRA_CA_CERTS="+testPKI.caFile), "", node,
			filepath.Join("testdata", "node", "fetch.mjs"), fx.secure.url(hostAPI, "/tls-from-node"), fx.g.proxyURL(acme))
		if res.exitCode != 0 || !strings.HasPrefix(res.stdout, "200\n") {
			t.Errorf("node exit %d, want 0 and status 200; output:\n%s", res.exitCode, res.output())
		}
		assertServed(t, fx.secure, "/tls-from-node", res.stdout)
	})
}

// TestGitCloneThroughProxy clones over git's "dumb" HTTP protocol, which
// needs nothing but static files, through the gateway. git (libcurl) first
// asks without credentials and answers the 407 challenge, so this also
// proves the challenge is one a real client follows.
func TestGitCloneThroughProxy(t *testing.T) {
	t.Parallel()
	git := lookPathOrSkip(t, "git")
	home := t.TempDir()
	gitEnv := clientEnv("HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL="+filepath.Join(home, ".gitconfig"),
		"GIT_TERMINAL_PROMPT=0", "GIT_AUTHOR_NAME=e2e", "GIT_AUTHOR_EMAIL=e2e@example.com",
		"GIT_COMMITTER_NAME=e2e", "GIT_COMMITTER_EMAIL=e2e@example.com")
	mustGit := func(dir string, args ...string) {
		t.Helper()
		if res := run(t, gitEnv, dir, git, args...); res.exitCode != 0 {
			t.Fatalf("git %s: exit %d\n%s", strings.Join(args, " "), res.exitCode, res.output())
		}
	}

	served, work := t.TempDir(), t.TempDir()
	bare := filepath.Join(served, "repo.git")
	mustGit(served, "init", "--bare", "--initial-branch=main", bare)
	mustGit(work, "init", "--initial-branch=main")
	const readme = "cloned through egressgw\n"
	if err := os.WriteFile(filepath.Join(work, "README"), []byte(readme), 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(work, "add", "README")
	mustGit(work, "commit", "-m", "first")
	mustGit(work, "push", bare, "main")
	mustGit(bare, "update-server-info")

	origin := startHTTPUpstream(t, "127.0.0.1", http.FileServer(http.Dir(served)))
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("git", []string{hostAPI}, origin.port)),
	})

	clone := filepath.Join(t.TempDir(), "clone")
	mustGit("", "-c", "http.proxy="+g.proxyURL(acme), "clone", origin.url(hostAPI, "/repo.git"), clone)
	got, err := os.ReadFile(filepath.Join(clone, "README"))
	if err != nil || string(got) != readme {
		t.Errorf("cloned README: %q, %v; want %q", got, err, readme)
	}
}
