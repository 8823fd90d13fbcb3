package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// What each client a sandbox runs prints when the gateway refuses it: the
// table in docs/sandbox-runtimes.md ("What each client prints") is this
// test's output. Most clients print only the status line of a refused
// CONNECT, so its reason phrase carries the error code and a short reason
// (docs/reference.md, "What clients see").

// clientTableEnv asks TestRefusalClients to rewrite the table in the doc
// from what the clients printed on this machine.
const clientTableEnv = "EGRESSGW_WRITE_CLIENT_TABLE"

// The table's place in docs/sandbox-runtimes.md.
const (
	clientTableBegin = "<!-- refusal-clients:begin (written by EGRESSGW_WRITE_CLIENT_TABLE=1 go test -run TestRefusalClients ./e2e) -->"
	clientTableEnd   = "<!-- refusal-clients:end -->"
)

// refusedCode is what every refusal in this test is.
const refusedCode = "destination_not_allowed"

// refusalFixture is a gateway whose tenant may reach hostAPI but not
// hostOther, where a TLS and a plain upstream listen all the same.
type refusalFixture struct {
	g             *gateway
	secure, plain *upstream
}

// refusalClient is one client program, driven with the proxy variables
// alone (plus what isolates it from this machine's own configuration).
type refusalClient struct {
	name string // its row in the table
	// program is looked up on PATH; the test skips the client without it.
	// "" is the Go client of this process.
	program string
	// codeOnHTTPS: the client prints the reason phrase of a refused
	// CONNECT (or, npm, its body), so its output for https:// must name
	// the error code.
	codeOnHTTPS bool
	// codeOnHTTP: the client prints the body of a refused http://
	// request, so its output must name the error code.
	codeOnHTTP bool
	// version says which release ran; an error skips the client.
	version func(t *testing.T, path string) (string, error)
	// fetch runs the client once for url and returns all it printed.
	fetch func(t *testing.T, fx refusalFixture, path, url string) string
}

// refusalClients are the clients the table has a row for, in its order.
func refusalClients() []refusalClient {
	return []refusalClient{
		{name: "curl", program: "curl", codeOnHTTP: true, version: firstWords("--version", 2),
			fetch: func(t *testing.T, fx refusalFixture, curl, url string) string {
				return run(t, fx.proxyEnv(), "", curl, "-sS", "--max-time", "20", url).output()
			}},
		{name: "wget", program: "wget", codeOnHTTPS: true, version: firstWords("--version", 3),
			fetch: func(t *testing.T, fx refusalFixture, wget, url string) string {
				return run(t, fx.proxyEnv(), t.TempDir(), wget, "-nv", "--tries=1", "--timeout=20", "-O", "out", url).output()
			}},
		{name: "Python urllib", program: "python3", codeOnHTTPS: true, version: firstWords("--version", 2),
			fetch: func(t *testing.T, fx refusalFixture, python, url string) string {
				return run(t, fx.proxyEnv(), "", python, "-c", pythonURLLibRefused, url).output()
			}},
		{name: "Python requests", program: "python3", codeOnHTTPS: true,
			version: func(t *testing.T, python string) (string, error) {
				out, err := exec.Command(python, "-c", "import requests; print('requests', requests.__version__)").CombinedOutput()
				if err != nil {
					return "", fmt.Errorf("requests is not importable: %v: %s", err, out)
				}
				return strings.TrimSpace(string(out)), nil
			},
			fetch: func(t *testing.T, fx refusalFixture, python, url string) string {
				return run(t, fx.proxyEnv(), "", python, "-c", pythonRequestsRefused, url).output()
			}},
		{name: "Go net/http", codeOnHTTPS: true, codeOnHTTP: true,
			version: func(*testing.T, string) (string, error) { return runtime.Version(), nil },
			fetch:   goRefused},
		{name: "Node undici", program: "node", version: nodeUndiciVersion,
			fetch: func(t *testing.T, fx refusalFixture, node, url string) string {
				return run(t, fx.proxyEnv(), nodeModulesDir(t), node, "--input-type=module", "-e", nodeUndiciRefused, url).output()
			}},
		{name: "git", program: "git", version: firstWords("--version", 3),
			fetch: func(t *testing.T, fx refusalFixture, git, url string) string {
				home := t.TempDir()
				env := append(fx.proxyEnv(), "HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL="+filepath.Join(home, ".gitconfig"), "GIT_TERMINAL_PROMPT=0")
				return run(t, env, "", git, "ls-remote", url+"repo.git").output()
			}},
		{name: "pip", program: "pip", codeOnHTTPS: true, version: firstWords("--version", 2),
			fetch: func(t *testing.T, fx refusalFixture, pip, url string) string {
				// This machine's PIP_* variables, REQUESTS_CA_BUNDLE and
				// config files would override pip's own settings: it
				// gets none of them. One retry, for its warning is where
				// pip says what the proxy answered.
				env := append(withoutVars(fx.proxyEnv(), "PIP_", "REQUESTS_CA_BUNDLE"), "PIP_CONFIG_FILE="+os.DevNull, "HOME="+t.TempDir())
				u := mustParseURL(t, url)
				return run(t, env, "", pip, "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
					"--retries", "1", "--timeout", "20", "-d", t.TempDir(),
					"--index-url", url+"simple/", "--trusted-host", u.Hostname(), "egressgw-refusal-probe").output()
			}},
		{name: "npm", program: "npm", codeOnHTTPS: true, codeOnHTTP: true, version: firstWords("--version", 1),
			fetch: func(t *testing.T, fx refusalFixture, npm, url string) string {
				// An empty user config: this machine's ~/.npmrc would
				// override what npm takes from the environment.
				dir := t.TempDir()
				userConfig := filepath.Join(dir, "npmrc")
				if err := os.WriteFile(userConfig, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				env := append(fx.proxyEnv(), "npm_config_userconfig="+userConfig, "npm_config_cache="+filepath.Join(dir, "cache"),
					"npm_config_update_notifier=false", "npm_config_fetch_retries=0")
				return run(t, env, dir, npm, "view", "egressgw-refusal-probe", "--registry", url).output()
			}},
		{name: "Java HttpClient", program: "java", codeOnHTTP: true, version: firstWords("--version", 2),
			fetch: func(t *testing.T, fx refusalFixture, java, url string) string {
				src := filepath.Join(t.TempDir(), "RefusedFetch.java")
				if err := os.WriteFile(src, []byte(javaRefused), 0o644); err != nil {
					t.Fatal(err)
				}
				// Java sends Basic proxy credentials for tunnels only
				// when the tunneling scheme list lets it.
				return run(t, fx.proxyEnv(), "", java, "-Djdk.http.auth.tunneling.disabledSchemes=", src, url).output()
			}},
		{name: ".NET HttpClient", program: "dotnet", version: dotnetVersion,
			fetch: func(t *testing.T, fx refusalFixture, dotnet, url string) string {
				dir := t.TempDir()
				src := filepath.Join(dir, "refused.cs")
				if err := os.WriteFile(src, []byte(dotnetRefused), 0o644); err != nil {
					t.Fatal(err)
				}
				env := append(fx.proxyEnv(), "DOTNET_CLI_TELEMETRY_OPTOUT=1", "DOTNET_NOLOGO=1", "HOME="+dir)
				return run(t, env, dir, dotnet, "run", src, "--", url).output()
			}},
	}
}

// pythonURLLibRefused fetches argv[1] with urllib and prints what a
// program that reports its error prints: the exception.
const pythonURLLibRefused = `
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=20) as resp:
        print(resp.status, resp.reason)
except Exception as e:
    print(f"{type(e).__name__}: {e}")
`

// pythonRequestsRefused does the same with requests, raising for an error
// status as programs using it do.
const pythonRequestsRefused = `
import sys, requests
try:
    requests.get(sys.argv[1], timeout=20).raise_for_status()
except Exception as e:
    print(f"{type(e).__name__}: {e}")
`

// nodeUndiciRefused fetches process.argv[1] through undici's
// EnvHttpProxyAgent, which takes the proxy variables, and prints the
// error with its causes, where undici puts what the proxy said.
const nodeUndiciRefused = `
import { EnvHttpProxyAgent, fetch } from 'undici';
const dispatcher = new EnvHttpProxyAgent();
try {
  const res = await fetch(process.argv[1], { dispatcher, signal: AbortSignal.timeout(20000) });
  console.log(res.status, res.statusText);
} catch (err) {
  for (let e = err; e; e = e.cause) console.log(String(e));
} finally {
  await dispatcher.close();
}
`

// javaRefused fetches args[0] with java.net.http.HttpClient, which does not
// read the proxy variables: it is given the proxy and credentials from
// them, as a sandboxed Java program must do.
const javaRefused = `
import java.net.*;
import java.net.http.*;
import java.time.Duration;

public class RefusedFetch {
    public static void main(String[] args) {
        URI target = URI.create(args[0]);
        URI proxy = URI.create(System.getenv(target.getScheme().equals("https") ? "HTTPS_PROXY" : "HTTP_PROXY"));
        String[] user = proxy.getUserInfo().split(":", 2);
        HttpClient client = HttpClient.newBuilder()
            .proxy(ProxySelector.of(new InetSocketAddress(proxy.getHost(), proxy.getPort())))
            .authenticator(new Authenticator() {
                protected PasswordAuthentication getPasswordAuthentication() {
                    return new PasswordAuthentication(user[0], user[1].toCharArray());
                }
            })
            .build();
        try {
            HttpResponse<String> resp = client.send(HttpRequest.newBuilder(target).timeout(Duration.ofSeconds(20)).build(),
                HttpResponse.BodyHandlers.ofString());
            System.out.println(resp.statusCode() + " " + resp.body());
        } catch (Exception e) {
            System.out.println(e);
        }
    }
}
`

// dotnetRefused is a .NET file-based program (.NET 10 or later): its
// HttpClient takes the proxy variables by default.
const dotnetRefused = `
using var client = new HttpClient { Timeout = TimeSpan.FromSeconds(20) };
try {
    var resp = await client.GetAsync(args[0]);
    Console.WriteLine($"{(int)resp.StatusCode} {resp.ReasonPhrase}");
} catch (Exception e) {
    for (var x = e; x != null; x = x.InnerException) Console.WriteLine($"{x.GetType().Name}: {x.Message}");
}
`

// goRefused is Go's client, in this process: the proxy is the one the
// variables name (http.ProxyFromEnvironment reads them once per process,
// so it is given as a URL). An error status is reported with its body.
func goRefused(t *testing.T, fx refusalFixture, _ string, target string) string {
	proxy := mustParseURL(t, fx.g.proxyURL(acme))
	transport := &http.Transport{Proxy: http.ProxyURL(proxy)}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: scaled(requestTimeout)}
	resp, err := client.Get(target)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err.Error()
	}
	return resp.Status + "\n" + string(body)
}

// withoutVars is env without the variables whose names start with any of
// prefixes.
func withoutVars(env []string, prefixes ...string) []string {
	var kept []string
	for _, kv := range env {
		drop := false
		for _, p := range prefixes {
			drop = drop || strings.HasPrefix(kv, p)
		}
		if !drop {
			kept = append(kept, kv)
		}
	}
	return kept
}

// proxyEnv is a client's environment with the proxy variables naming the
// gateway with acme's credentials.
func (fx refusalFixture) proxyEnv() []string {
	p := fx.g.proxyURL(acme)
	return clientEnv("HTTP_PROXY="+p, "HTTPS_PROXY="+p, "http_proxy="+p, "https_proxy="+p)
}

// firstWords runs the program with arg and keeps the first n words of
// what it printed.
func firstWords(arg string, n int) func(*testing.T, string) (string, error) {
	return func(_ *testing.T, path string) (string, error) {
		out, err := exec.Command(path, arg).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%s %s: %v: %s", path, arg, err, out)
		}
		words := strings.Fields(string(out))
		return strings.Join(words[:min(n, len(words))], " "), nil
	}
}

func nodeUndiciVersion(t *testing.T, node string) (string, error) {
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("node --version: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(nodeModulesDir(t), "node_modules", "undici", "package.json"))
	if err != nil {
		return "", errors.New("undici is not installed; run `npm install` in e2e/testdata/node")
	}
	var pkg struct{ Version string }
	if err := json.Unmarshal(raw, &pkg); err != nil {
		return "", err
	}
	return "Node " + strings.TrimSpace(string(out)) + ", undici " + pkg.Version, nil
}

func dotnetVersion(_ *testing.T, dotnet string) (string, error) {
	out, err := exec.Command(dotnet, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("dotnet --version: %v", err)
	}
	v := strings.TrimSpace(string(out))
	if major, _, _ := strings.Cut(v, "."); atoi(major) < 10 {
		return "", fmt.Errorf(".NET SDK %s cannot run a single-file program (it needs 10 or later)", v)
	}
	return ".NET SDK " + v, nil
}

// nodeModulesDir is where the e2e Node packages are installed.
func nodeModulesDir(t *testing.T) string {
	dir, err := filepath.Abs(filepath.Join("testdata", "node"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// atoi is n's value, or 0 when it is not a number.
func atoi(n string) int {
	v, _ := strconv.Atoi(n)
	return v
}

func mustParseURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// clientRow is what one client printed, as the table shows it.
type clientRow struct {
	name, version, https, http string
}

func TestRefusalClients(t *testing.T) {
	t.Parallel()
	secure := startTLSUpstream(t, "127.0.0.1", nil)
	plain := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, secure.port, plain.port)),
	})
	fx := refusalFixture{g: g, secure: secure, plain: plain}
	before := snapshotReach(secure, plain)

	// The refusal on the wire: the code and the reason lead the CONNECT's
	// status line; what a plain request gets keeps the standard phrase.
	t.Run("status line", func(t *testing.T) {
		resp, _ := g.connect(t, acme.header(), secure.authority(hostOther))
		e := assertGatewayError(t, resp, http.StatusForbidden, refusedCode)
		if want := "403 " + refusedCode + ": tenant \"acme\" may not reach " + secure.authority(hostOther); !strings.HasPrefix(resp.Status, want) {
			t.Errorf("CONNECT status %q, want it to start with %q (message %q)", resp.Status, want, e.Message)
		}
		plainResp := g.get(t, acme.header(), plain.url(hostOther, "/"))
		assertGatewayError(t, plainResp, http.StatusForbidden, refusedCode)
		if plainResp.Status != "403 Forbidden" {
			t.Errorf("plain request status %q, want 403 Forbidden", plainResp.Status)
		}
	})

	httpsURL, httpURL := secure.url(hostOther, "/"), plain.url(hostOther, "/")
	clients := refusalClients()
	var mu sync.Mutex
	rows := map[string]clientRow{}
	t.Run("clients", func(t *testing.T) {
		for _, c := range clients {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				path := ""
				if c.program != "" {
					var err error
					if path, err = exec.LookPath(c.program); err != nil {
						t.Skipf("%s is not installed (%s not found), so it is not exercised", c.name, c.program)
					}
				}
				version, err := c.version(t, path)
				if err != nil {
					t.Skipf("%s is not usable here, so it is not exercised: %v", c.name, err)
				}
				refusedHTTPS := c.fetch(t, fx, path, httpsURL)
				refusedHTTP := c.fetch(t, fx, path, httpURL)
				t.Logf("%s (%s) for %s:\n%s\nfor %s:\n%s", c.name, version, httpsURL, refusedHTTPS, httpURL, refusedHTTP)
				if c.codeOnHTTPS && !strings.Contains(refusedHTTPS, refusedCode) {
					t.Errorf("%s prints what a refused CONNECT says, but its output does not name %s:\n%s", c.name, refusedCode, refusedHTTPS)
				}
				if c.codeOnHTTP && !strings.Contains(refusedHTTP, refusedCode) {
					t.Errorf("%s prints the body of a refused http:// request, but its output does not name %s:\n%s", c.name, refusedCode, refusedHTTP)
				}
				mu.Lock()
				defer mu.Unlock()
				rows[c.name] = clientRow{name: c.name, version: version,
					https: fx.tableCell(refusedHTTPS), http: fx.tableCell(refusedHTTP)}
			})
		}
	})
	before.assertUnchanged(t)

	doc := filepath.Join(repoRoot(t), "docs", "sandbox-runtimes.md")
	if os.Getenv(clientTableEnv) != "" {
		writeClientTable(t, doc, clients, rows)
		return
	}
	assertClientTableRows(t, doc, clients)
}

// tableCell is the first meaningful lines of a client's output, without
// what differs from run to run (ports, request ids, temporary paths).
func (fx refusalFixture) tableCell(output string) string {
	replacer := strings.NewReplacer(
		fx.g.proxyURL(acme), "http://acme:TOKEN@gateway:3128",
		fx.g.proxyAddr, "gateway:3128",
		acme.token, "TOKEN",
		":"+strconv.Itoa(fx.secure.port), ":PORT",
		":"+strconv.Itoa(fx.plain.port), ":PORT",
		", port="+strconv.Itoa(fx.secure.port), ", port=PORT",
		", port="+strconv.Itoa(fx.plain.port), ", port=PORT",
	)
	output = replacer.Replace(output)
	output = requestIDPattern.ReplaceAllString(output, "01K…")
	output = tempPathPattern.ReplaceAllString(output, "/tmp/…")
	output = timestampPattern.ReplaceAllString(output, "")
	var kept []string
	for _, line := range strings.Split(output, "\n") {
		line = strings.TrimRight(line, " \t\r")
		if line == "" || strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") || clientNoise.MatchString(line) {
			continue // stack frames, indented detail, what every refusal prints alike
		}
		kept = append(kept, line)
		if len(kept) == 3 {
			break
		}
	}
	cell := strings.Join(kept, " ⏎ ")
	if len(cell) > 360 {
		cell = strings.ToValidUTF8(cell[:360], "") + " …"
	}
	return cell
}

var (
	requestIDPattern = regexp.MustCompile(`\b01[0-9A-HJKMNP-TV-Z]{24}\b`)
	tempPathPattern  = regexp.MustCompile(`/tmp/[^\s'"]+`)
	timestampPattern = regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d `)
	// clientNoise are lines clients print whatever the refusal said:
	// Node's warnings, pip's index lines, npm's advice and log path.
	clientNoise = regexp.MustCompile(`^\(node:\d+\)|^\(Use .node --trace|^Looking in (indexes|links)|^npm error (403 In most cases|A complete log)`)
)

// writeClientTable replaces the table between the markers in doc.
func writeClientTable(t *testing.T, doc string, clients []refusalClient, rows map[string]clientRow) {
	t.Helper()
	var b bytes.Buffer
	b.WriteString("| client | version | refused `https://` (CONNECT) | refused `http://` |\n|---|---|---|---|\n")
	for _, c := range clients {
		row, ok := rows[c.name]
		if !ok {
			row = clientRow{name: c.name, version: "not installed here", https: "—", http: "—"}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", row.name, row.version, codeSpan(row.https), codeSpan(row.http))
	}
	content := readFile(t, doc)
	start, end := strings.Index(content, clientTableBegin), strings.Index(content, clientTableEnd)
	if start < 0 || end < start {
		t.Fatalf("%s lacks the markers %q and %q around the client table", doc, clientTableBegin, clientTableEnd)
	}
	content = content[:start+len(clientTableBegin)] + "\n" + b.String() + content[end:]
	if err := os.WriteFile(doc, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// codeSpan shows s as code in a table cell; "—" stays as it is.
func codeSpan(s string) string {
	if s == "—" || s == "" {
		return "—"
	}
	s = strings.ReplaceAll(s, "`", "'")
	s = strings.ReplaceAll(s, "|", `\|`)
	return "`" + s + "`"
}

// assertClientTableRows checks that the doc's table has a row for every
// client this test knows; what the rows say depends on the versions
// installed, which differ between machines, and is not checked.
func assertClientTableRows(t *testing.T, doc string, clients []refusalClient) {
	t.Helper()
	content := readFile(t, doc)
	start, end := strings.Index(content, clientTableBegin), strings.Index(content, clientTableEnd)
	if start < 0 || end < start {
		t.Fatalf("%s lacks the markers %q and %q around the client table", doc, clientTableBegin, clientTableEnd)
	}
	table := content[start:end]
	for _, c := range clients {
		if !strings.Contains(table, "\n| "+c.name+" |") {
			t.Errorf("the client table in %s has no row for %s; rewrite it with %s=1 go test -run TestRefusalClients ./e2e", doc, c.name, clientTableEnv)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}
