package e2e

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// A config directory `egressgw check` accepts, which the bad-config cases
// below break one file at a time.
var (
	validGatewayYAML = yamlf(`
		listen: ":3128"
	`)
	weatherConnectorYAML = yamlf(`
		name: weather
		version: 1
		hosts: ["api.weather.test"]
	`)
	mapsConnectorYAML = yamlf(`
		name: maps
		version: 1
		hosts: ["api.maps.test"]
	`)
)

func TestCheckAcceptsValidConfig(t *testing.T) {
	t.Parallel()
	dir := writeConfig(t, configFiles{
		"gateway.yaml":            validGatewayYAML,
		"connectors/weather.yaml": weatherConnectorYAML,
		"connectors/maps.yaml":    mapsConnectorYAML,
		"tenants/acme.yaml":       tenantYAML(acme, "connectors: [weather, maps]\n"),
		"tenants/wild.yaml":       tenantYAML(wild, "connectors: [maps]\n"),
	})
	res := egressgw(t, "check", "--config", dir)
	if res.exitCode != 0 || !strings.Contains(res.stdout, "ok: 2 tenants, 2 connectors") {
		t.Errorf("check: exit %d, want 0 and \"ok: 2 tenants, 2 connectors\"; output:\n%s", res.exitCode, res.output())
	}
}

func TestCheckReportsErrorsWithFileAndLine(t *testing.T) {
	t.Parallel()
	// tenantHead is lines 1-3 of every tenant file below, so the line
	// numbers in want count from there.
	tenantHead := tenantYAML(acme, "")
	cases := []struct {
		name  string
		files configFiles // merged over the valid config
		want  string      // FILE:LINE: prefix of the expected error line
		every []string    // when set: every line check prints, in any order
	}{
		{
			name:  "unknown key in a tenant file",
			files: configFiles{"tenants/acme.yaml": tenantHead + "connectors: [weather]\ncolour: blue\n"},
			want:  "tenants/acme.yaml:5:",
		},
		{
			name:  "unknown key in a connector file",
			files: configFiles{"connectors/weather.yaml": weatherConnectorYAML + "colour: blue\n"},
			want:  "connectors/weather.yaml:4:",
		},
		{
			name:  "wrong type",
			files: configFiles{"tenants/acme.yaml": tenantHead + "quota:\n  requests_per_second: lots\n"},
			want:  "tenants/acme.yaml:5:",
		},
		{
			name: "duplicate tenant id across files",
			files: configFiles{
				"tenants/acme.yaml":  tenantHead,
				"tenants/other.yaml": tenantYAML(credentials{tenant: acme.tenant, token: "another-token"}, ""),
			},
			want: "tenants/other.yaml:1:", // files load in name order: the second one is the duplicate
		},
		{
			name:  "missing connector",
			files: configFiles{"tenants/acme.yaml": tenantHead + "connectors: [weather, nosuch]\n"},
			want:  "tenants/acme.yaml:4:",
		},
		{
			name:  "pin to a missing version",
			files: configFiles{"tenants/acme.yaml": tenantHead + "connectors: [weather@7]\n"},
			want:  "tenants/acme.yaml:4:",
		},
		{
			name:  "invalid CIDR in deny_cidrs",
			files: configFiles{"gateway.yaml": validGatewayYAML + "network:\n  deny_cidrs: [\"10.0.0.0/33\"]\n"},
			want:  "gateway.yaml:3:",
		},
		{
			name:  "wildcard over a public suffix",
			files: configFiles{"tenants/acme.yaml": tenantHead + allowRule("everything", []string{"*.com"}, 443)},
			want:  "tenants/acme.yaml:6:",
		},
		{
			// An unknown key in gateway.yaml neither hides its other
			// errors nor leaves hooks without limits; two bad hook limits
			// are two lines, each with its file and line.
			name: "several problems, one line each",
			files: configFiles{
				"gateway.yaml":    validGatewayYAML + "colour: blue\nnetwork:\n  deny_cidrs: [\"10.0.0.0/33\"]\n",
				"hooks/tag.tengo": "request.headers[\"X-Tag\"] = [\"a\"]\n",
				"connectors/weather.yaml": weatherConnectorYAML + yamlf(`
					hooks:
					  request: hooks/tag.tengo
					  max_memory: 1024
				`),
			},
			want: "connectors/weather.yaml:5:",
			every: []string{
				`gateway.yaml:2: unknown key "colour"`,
				`gateway.yaml:4: invalid CIDR "10.0.0.0/33": want an address or a prefix such as 10.0.0.0/8`,
				`connectors/weather.yaml:5: hooks: max_memory 1024: must be between 4MiB and 16GiB`,
				`connectors/weather.yaml:5: hooks: max_body_bytes 1048576: must be between 1 and a quarter of max_memory (256)`,
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			files := configFiles{
				"gateway.yaml":            validGatewayYAML,
				"connectors/weather.yaml": weatherConnectorYAML,
				"tenants/acme.yaml":       tenantYAML(acme, "connectors: [weather]\n"),
			}
			for name, content := range tc.files {
				files[name] = content
			}
			res := egressgw(t, "check", "--config", writeConfig(t, files))
			if res.exitCode != 1 {
				t.Errorf("check: exit %d, want 1", res.exitCode)
			}
			if !hasLineWithPrefix(res.output(), tc.want) {
				t.Errorf("check output has no line starting with %q followed by a message:\n%s", tc.want, res.output())
			}
			lines := strings.Split(strings.TrimSuffix(res.stdout, "\n"), "\n")
			for _, line := range lines {
				if !fileLineMessage.MatchString(line) {
					t.Errorf("check printed %q, which is not FILE:LINE: message; output:\n%s", line, res.output())
				}
			}
			if tc.every != nil {
				slices.Sort(lines)
				if want := slices.Sorted(slices.Values(tc.every)); !slices.Equal(lines, want) {
					t.Errorf("check printed:\n%s\nwant exactly these lines, in any order:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
				}
			}
			if strings.Contains(res.stdout, "ok:") {
				t.Errorf("check printed ok for a broken config:\n%s", res.stdout)
			}
		})
	}
}

// fileLineMessage is a line of check's error list (docs/reference.md, "Commands").
var fileLineMessage = regexp.MustCompile(`^[^\s:]+:[1-9][0-9]*: \S`)

// hasLineWithPrefix reports whether a line of output starts with prefix and
// goes on with a message.
func hasLineWithPrefix(output, prefix string) bool {
	for _, line := range strings.Split(output, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok && strings.TrimSpace(rest) != "" {
			return true
		}
	}
	return false
}

func TestExplain(t *testing.T) {
	t.Parallel()
	dir := writeConfig(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			tls: { ca_cert: ca/ca.pem, ca_key: ca/ca-key.pem }
		`)),
		"connectors/weather.yaml": yamlf(`
			name: weather
			version: 1
			hosts: [%q]
		`, hostAPI),
		"connectors/paste.yaml": yamlf(`
			name: paste
			version: 1
			hosts: [%q]
		`, hostPaste),
		"connectors/readonly.yaml": yamlf(`
			name: readonly
			version: 1
			hosts: [%q]
			methods: [GET]
			paths: ["/v1/"]
			inspect: true
		`, hostReadOnly),
		"tenants/acme.yaml": tenantYAML(acme, yamlf(`
			connectors: [weather, paste, readonly]
			rules:
			  - name: no-paste
			    action: deny
			    hosts: [%q]
		`, hostPaste)),
	})
	if res := egressgw(t, "ca", "init", "--out", filepath.Join(dir, "ca")); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	cases := []struct {
		name, method, url    string
		decision, code, rule string
		reason               string // exact, when set: the gateway's message
	}{
		{"allowed by a connector", "GET", "https://" + hostAPI + "/v1/today", "allow", "ok", "weather", ""},
		{"denied by a rule", "GET", "https://" + hostPaste + "/raw/1", "deny", "destination_not_allowed", "no-paste", ""},
		{"inspected tunnel, method allowed", "GET", "https://" + hostReadOnly + "/v1/items", "allow", "ok", "readonly", ""},
		{"inspected tunnel, method not allowed", "DELETE", "https://" + hostReadOnly + "/v1/items", "deny", "destination_not_allowed", "readonly",
			`tenant "acme" may not reach ` + hostReadOnly + `:443: DELETE /v1/items is not among the methods and paths that connector "readonly@1" allows`},
	}
	for _, tc := range cases {
		t.Run(tc.name+"/text", func(t *testing.T) {
			t.Parallel()
			res := egressgw(t, "explain", "--config", dir, "--tenant", acme.tenant, "--method", tc.method, tc.url)
			assertExplainExit(t, res, tc.decision)
			lower := strings.ToLower(res.stdout)
			if !strings.Contains(res.stdout, tc.rule) || !strings.Contains(lower, "decision: "+tc.decision) {
				t.Errorf("explain output does not name rule %q and decision %q:\n%s", tc.rule, tc.decision, res.output())
			}
			if tc.reason != "" && !strings.Contains(res.stdout, "reason:   "+tc.reason+"\n") {
				t.Errorf("explain output does not give the reason %q:\n%s", tc.reason, res.output())
			}
		})
		t.Run(tc.name+"/json", func(t *testing.T) {
			t.Parallel()
			res := egressgw(t, "explain", "--config", dir, "--tenant", acme.tenant, "--method", tc.method, "--json", tc.url)
			assertExplainExit(t, res, tc.decision)
			var got struct{ Decision, Code, Rule, Reason string }
			if err := json.Unmarshal([]byte(res.stdout), &got); err != nil {
				t.Fatalf("explain --json: %v; output:\n%s", err, res.output())
			}
			if got.Decision != tc.decision || got.Code != tc.code || !ruleIs(got.Rule, tc.rule) || (tc.reason != "" && got.Reason != tc.reason) {
				t.Errorf("explain --json: decision %q, code %q, rule %q, reason %q; want %q, %q, %q, %q",
					got.Decision, got.Code, got.Rule, got.Reason, tc.decision, tc.code, tc.rule, tc.reason)
			}
		})
	}
}

// assertExplainExit accepts exit 0, and for a denial also 1 (a script may
// branch on it); anything else means explain itself failed.
func assertExplainExit(t *testing.T, res commandResult, decision string) {
	t.Helper()
	if res.exitCode == 0 || (decision == "deny" && res.exitCode == 1) {
		return
	}
	t.Fatalf("explain: exit %d; output:\n%s", res.exitCode, res.output())
}

func TestTokenNew(t *testing.T) {
	t.Parallel()
	hashLine := regexp.MustCompile(`token_sha256: "([0-9a-f]{64})"`)
	tokenOf := func() string {
		res := egressgw(t, "token", "new")
		if res.exitCode != 0 {
			t.Fatalf("token new: exit %d; output:\n%s", res.exitCode, res.output())
		}
		m := hashLine.FindStringSubmatch(res.stdout)
		if m == nil {
			t.Fatalf("token new printed no `token_sha256: \"<hex>\"` line:\n%s", res.stdout)
		}
		// Whichever word of the other lines is the token, it is the one
		// whose hash was printed.
		for _, line := range strings.Split(res.stdout, "\n") {
			if hashLine.MatchString(line) {
				continue
			}
			for _, word := range strings.Fields(line) {
				if word = strings.Trim(word, `"'`); sha256Hex(word) == m[1] {
					return word
				}
			}
		}
		t.Fatalf("token new: no printed word hashes to %s:\n%s", m[1], res.stdout)
		return ""
	}
	if first, second := tokenOf(), tokenOf(); first == second {
		t.Errorf("token new printed the same token twice: %q", first)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	res := egressgw(t, "version")
	if res.exitCode != 0 || !strings.Contains(res.stdout, "go1.") {
		t.Errorf("version: exit %d, want 0 and output naming the Go version; output:\n%s", res.exitCode, res.output())
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"no-such-command"},
		{"serve", "--no-such-flag"},
		{"check", "--no-such-flag"},
		{"explain", "--config", t.TempDir()}, // neither --tenant nor URL
	} {
		if res := egressgw(t, args...); res.exitCode != 2 {
			t.Errorf("egressgw %s: exit %d, want 2 (usage error); output:\n%s", strings.Join(args, " "), res.exitCode, res.output())
		}
	}
}

// quickstartCredentials finds user:token in the ready curl line the
// quickstart prints, in any of the forms curl accepts.
var quickstartCredentials = []*regexp.Regexp{
	regexp.MustCompile(`--proxy-user[ =]['"\\]*([^\s'"\\]+)`),
	regexp.MustCompile(`\s-U\s+['"\\]*([^\s'"\\]+)`),
	regexp.MustCompile(`(?:\s-x|--proxy)[ =]['"\\]*https?://([^@\s'"\\/]+)@`),
}

func TestQuickstart(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	// Its state store is ./egressgw-state, in the working directory.
	g.dir = t.TempDir()
	g.start(t) // no --config: the embedded quickstart policy

	var curlLine string
	eventually(t, 5*time.Second, func() error {
		for _, line := range strings.Split(g.stdout.String()+g.stderr.String(), "\n") {
			if strings.Contains(line, "curl") && strings.Contains(line, "-x") {
				curlLine = line
				return nil
			}
		}
		return errors.New("the quickstart printed no line with `curl` and `-x`")
	})
	var userToken string
	for _, re := range quickstartCredentials {
		if m := re.FindStringSubmatch(curlLine); m != nil {
			userToken = m[1]
			break
		}
	}
	user, token, ok := strings.Cut(userToken, ":")
	if !ok || user == "" || token == "" {
		t.Fatalf("no user:token in the quickstart curl line %q", curlLine)
	}

	// A host outside the quickstart policy is refused as not allowed, not
	// as unauthenticated: the printed credentials are real.
	g.expectRefused(t, http.MethodGet, basicAuth(user, token), "http://not-in-policy.invalid/", http.StatusForbidden, "destination_not_allowed")

	// The banner's explain line runs as printed from a checkout, and the
	// banner says how to get the binary it names.
	banner := g.stderr.String()
	t.Run("refused curl lines", func(t *testing.T) {
		assertQuickstartRefusals(t, banner)
	})
	if !strings.Contains(banner, "go install github.com/egressgw/egressgw/cmd/egressgw@latest") {
		t.Errorf("the quickstart banner does not say how to install egressgw:\n%s", banner)
	}
	var explainLine string
	for _, line := range strings.Split(banner, "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "egressgw explain ") {
			explainLine = line
		}
	}
	words := strings.Fields(explainLine)
	if len(words) < 2 {
		t.Fatalf("the quickstart banner has no `egressgw explain` line:\n%s", banner)
	}
	res := run(t, nil, repoRoot(t), gatewayBinary, words[1:]...)
	assertExplainExit(t, res, "deny")
	if !strings.Contains(res.stdout, "decision: DENY (destination_not_allowed)") {
		t.Errorf("`%s` from the repository root:\n%s", explainLine, res.output())
	}
	// The banner's admin line runs as printed, with its token, against
	// this gateway; the state store lives in the working directory.
	var adminLine string
	for _, line := range strings.Split(banner, "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "EGRESSGW_ADMIN_TOKEN=") {
			adminLine = line
		}
	}
	words = strings.Fields(adminLine)
	if len(words) < 3 || words[1] != "egressgw" {
		t.Fatalf("the quickstart banner has no `EGRESSGW_ADMIN_TOKEN=... egressgw access list` line:\n%s", banner)
	}
	res = run(t, append(childEnv(), words[0]), "", gatewayBinary, words[2:]...)
	if res.exitCode != 0 || !strings.HasPrefix(res.stdout, "ID ") {
		t.Errorf("`%s`: exit %d\n%s", adminLine, res.exitCode, res.output())
	}
	if _, err := os.Stat(filepath.Join(g.dir, "egressgw-state")); err != nil {
		t.Errorf("the quickstart's state store is not in its working directory: %v", err)
	}
}

// assertQuickstartRefusals runs the banner's curl lines for a host outside
// the quickstart policy as printed: over http:// curl prints the JSON
// error, over https:// the refused CONNECT's status.
func assertQuickstartRefusals(t *testing.T, banner string) {
	t.Helper()
	curl := lookPathOrSkip(t, "curl")
	refused := map[string]string{} // scheme → the banner's line
	for _, line := range strings.Split(banner, "\n") {
		words := strings.Fields(line)
		if len(words) < 2 || words[0] != "curl" {
			continue
		}
		if target := words[len(words)-1]; strings.Contains(target, "not-allowed.") {
			scheme, _, _ := strings.Cut(target, "://")
			refused[scheme] = strings.TrimSpace(line)
		}
	}
	for _, scheme := range []string{"http", "https"} {
		line, ok := refused[scheme]
		if !ok {
			t.Errorf("the quickstart banner has no curl line for a refused %s:// request:\n%s", scheme, banner)
			continue
		}
		res := run(t, nil, "", curl, strings.Fields(line)[1:]...)
		switch scheme {
		case "http":
			if res.exitCode != 0 || !strings.Contains(res.stdout, `"error":"destination_not_allowed"`) {
				t.Errorf("`%s`: exit %d, want 0 and the JSON error destination_not_allowed; output:\n%s", line, res.exitCode, res.output())
			}
		case "https":
			if res.exitCode == 0 || !strings.Contains(res.output(), "403") {
				t.Errorf("`%s`: exit %d, want curl to report the refused CONNECT's 403; output:\n%s", line, res.exitCode, res.output())
			}
		}
	}
}
