package e2e

import (
	"bytes"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The docs' commands are the binary's: these tests run the walkthroughs of
// docs/*.md against it, check that every `egressgw ...` command the docs
// and the README show is one the binary accepts, and run the audit-log
// queries of docs/admins.md on a real audit log.
//
// A walkthrough is marked in the Markdown source with HTML comments (not
// rendered) on the line before a fenced block:
//
//	<!-- test: file PATH -->   the block is config file PATH
//	<!-- test: run -->         each line is a command, run in order:
//	                           `egressgw ...` or `export NAME=value`
//	<!-- test: output -->      lines the previous run block's last command
//	                           prints, in order; "…" stands for any lines
//	<!-- test: jq -->          jq commands reading audit.log
//
// Files are written under config/ in a fresh directory, where the commands
// run.

// docBlock is one fenced code block of a Markdown file.
type docBlock struct {
	line   int    // of the opening fence
	lang   string // the fence's info string
	marker string // file, run, output, jq; "" when unmarked
	arg    string // the marker's argument (a file path)
	text   string
}

var docMarker = regexp.MustCompile(`^<!--\s*test:\s*(\w+)\s*(\S*)\s*-->$`)

// readDocBlocks returns the fenced blocks of a Markdown file.
func readDocBlocks(t *testing.T, path string) []docBlock {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	var blocks []docBlock
	marker, arg := "", ""
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if m := docMarker.FindStringSubmatch(line); m != nil {
			marker, arg = m[1], m[2]
			continue
		}
		if !strings.HasPrefix(line, "```") {
			if marker != "" {
				t.Errorf("%s:%d: a test marker must stand right before a fenced block", path, i)
			}
			marker, arg = "", ""
			continue
		}
		b := docBlock{line: i + 1, lang: strings.TrimPrefix(line, "```"), marker: marker, arg: arg}
		marker, arg = "", ""
		var body []string
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			body = append(body, lines[i])
		}
		b.text = strings.Join(body, "\n") + "\n"
		blocks = append(blocks, b)
	}
	return blocks
}

// docFiles are the Markdown files whose commands must be real.
func docFiles(t *testing.T) []string {
	t.Helper()
	repo := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(repo, "docs", "*.md"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no docs/*.md (%v)", err)
	}
	return append(files, filepath.Join(repo, "README.md"))
}

func TestDocsWalkthroughs(t *testing.T) {
	t.Parallel()
	for _, doc := range docFiles(t) {
		blocks := readDocBlocks(t, doc)
		if !slices.ContainsFunc(blocks, func(b docBlock) bool { return b.marker == "run" }) {
			continue
		}
		t.Run(filepath.Base(doc), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			for _, b := range blocks {
				if b.marker != "file" {
					continue
				}
				path := filepath.Join(dir, "config", filepath.FromSlash(b.arg))
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(b.text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			env := childEnv()
			var last commandResult
			var lastCommand string
			for _, b := range blocks {
				where := fmt.Sprintf("%s:%d", filepath.Base(doc), b.line)
				switch b.marker {
				case "run":
					for _, line := range strings.Split(b.text, "\n") {
						line = strings.TrimSpace(line)
						if line == "" || strings.HasPrefix(line, "#") {
							continue
						}
						if assignment, ok := strings.CutPrefix(line, "export "); ok {
							env = append(env, assignment)
							continue
						}
						words, err := shellWords(line, nil)
						if err != nil || len(words) == 0 || words[0] != "egressgw" {
							t.Fatalf("%s: %q: run blocks hold `egressgw ...` and `export NAME=value` lines (%v)", where, line, err)
						}
						last, lastCommand = run(t, env, dir, gatewayBinary, words[1:]...), line
						if last.exitCode != 0 {
							t.Fatalf("%s: %s: exit %d\n%s", where, line, last.exitCode, last.output())
						}
					}
				case "output":
					if lastCommand == "" {
						t.Fatalf("%s: an output block with no run block before it", where)
					}
					assertLinesInOrder(t, where, lastCommand, b.text, last.stdout)
				}
			}
		})
	}
}

// assertLinesInOrder checks that every line of want but "…" is a line of
// got, in the same order.
func assertLinesInOrder(t *testing.T, where, command, want, got string) {
	t.Helper()
	gotLines := strings.Split(got, "\n")
	next := 0
	for _, w := range strings.Split(strings.TrimRight(want, "\n"), "\n") {
		w = strings.TrimRight(w, " ")
		if w == "…" || w == "" {
			continue
		}
		found := false
		for ; next < len(gotLines); next++ {
			if strings.TrimRight(gotLines[next], " ") == w {
				found, next = true, next+1
				break
			}
		}
		if !found {
			t.Errorf("%s: `%s` does not print, in this order, the line\n  %s\nit printed:\n%s", where, command, w, got)
			return
		}
	}
}

var (
	inlineCommand = regexp.MustCompile("`(egressgw [^`]+)`")
	imageCommand  = regexp.MustCompile(`\begressgw:[\w.-]+\s+(.*)$`)
	usageCommand  = regexp.MustCompile(`(?m)^\s+egressgw ([a-z]+(?: [a-z]+)?)`)
	helpFlagName  = regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`)
)

// docCommands finds the egressgw command lines of a Markdown file: in
// shell blocks (also as a container image's command) and in inline code.
func docCommands(t *testing.T, doc string) []string {
	t.Helper()
	raw, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range inlineCommand.FindAllStringSubmatch(string(raw), -1) {
		out = append(out, m[1])
	}
	for _, b := range readDocBlocks(t, doc) {
		if !slices.Contains([]string{"sh", "bash", "console", "shell"}, b.lang) {
			continue
		}
		for _, line := range strings.Split(b.text, "\n") {
			line = strings.TrimPrefix(strings.TrimSpace(line), "$ ")
			if before, _, ok := strings.Cut(line, " #"); ok {
				line = before // a comment
			}
			if m := imageCommand.FindStringSubmatch(line); m != nil && strings.HasPrefix(line, "docker run ") {
				out = append(out, "egressgw "+m[1])
				continue
			}
			for _, part := range regexp.MustCompile(`&&|;|\|`).Split(line, -1) {
				part = strings.TrimSpace(part)
				if strings.HasPrefix(part, "egressgw ") {
					out = append(out, part)
				}
			}
		}
	}
	return out
}

func TestDocsCommandsAreReal(t *testing.T) {
	t.Parallel()
	usage := egressgw(t, "help")
	commands := map[string]bool{}
	for _, m := range usageCommand.FindAllStringSubmatch(usage.stdout, -1) {
		commands[m[1]] = true
	}
	if !commands["serve"] || !commands["check"] {
		t.Fatalf("`egressgw help` lists no serve or check:\n%s", usage.output())
	}
	flagsOf := map[string]map[string]bool{}
	flags := func(command string) map[string]bool {
		if f, ok := flagsOf[command]; ok {
			return f
		}
		res := egressgw(t, append(strings.Fields(command), "-h")...)
		f := map[string]bool{"h": true, "help": true}
		for _, m := range helpFlagName.FindAllStringSubmatch(res.output(), -1) {
			f[m[1]] = true
		}
		flagsOf[command] = f
		return f
	}
	checked := 0
	for _, doc := range docFiles(t) {
		for _, line := range docCommands(t, doc) {
			where := fmt.Sprintf("%s: `%s`", filepath.Base(doc), line)
			words := strings.Fields(strings.NewReplacer("[", " ", "]", " ").Replace(line))[1:]
			if len(words) == 0 {
				continue
			}
			command := words[0]
			if len(words) > 1 && commands[words[0]+" "+words[1]] {
				command = words[0] + " " + words[1]
			}
			if !commands[command] {
				t.Errorf("%s: %q is not a command of egressgw (`egressgw help` lists %v)", where, command, slices.Sorted(maps.Keys(commands)))
				continue
			}
			known := flags(command)
			for _, w := range words[len(strings.Fields(command)):] {
				if !strings.HasPrefix(w, "-") || w == "-" {
					continue
				}
				name, _, _ := strings.Cut(strings.TrimLeft(w, "-"), "=")
				if !known[name] {
					t.Errorf("%s: %s is not a flag of `egressgw %s` (it has %v)", where, w, command, slices.Sorted(maps.Keys(known)))
				}
			}
			checked++
		}
	}
	if checked < 10 {
		t.Errorf("only %d egressgw commands found in the docs; is the search broken?", checked)
	}
}

var requestIDLiteral = regexp.MustCompile(`"01[0-9A-Z]{24}"`)

// TestDocsAuditQueries runs the jq examples of docs/admins.md on the audit
// log of a gateway that served an allowed request, a report-mode one, a
// refused one and an upstream failure: each must parse and find something.
func TestDocsAuditQueries(t *testing.T) {
	t.Parallel()
	jq := lookPathOrSkip(t, "jq")
	var queries []string
	for _, b := range readDocBlocks(t, filepath.Join(repoRoot(t), "docs", "admins.md")) {
		if b.marker != "jq" {
			continue
		}
		for _, line := range strings.Split(b.text, "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				queries = append(queries, line)
			}
		}
	}
	if len(queries) == 0 {
		t.Fatal("docs/admins.md has no `<!-- test: jq -->` block")
	}

	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	g := startGateway(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, "mode: report\n"+allowRule("api", []string{hostAPI}, origin.port)),
		"tenants/wild.yaml": tenantYAML(wild, allowRule("api", []string{hostAPI, hostNXDomain}, origin.port)),
	})
	g.expectAllowedGET(t, acme, origin.url(hostAPI, "/allowed"))
	g.expectAllowedGET(t, acme, origin.url(hostOther, "/reported"))
	denied := g.expectRefused(t, http.MethodGet, wild.header(), origin.url(hostOther, "/denied"), http.StatusForbidden, "destination_not_allowed")
	g.expectRefused(t, http.MethodGet, wild.header(), origin.url(hostNXDomain, "/nx"), http.StatusBadGateway, "dns_failure")
	g.waitAudit(t, auditWith("code", "dns_failure"))

	audit := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(audit, []byte(g.stdout.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, q := range queries {
		q = requestIDLiteral.ReplaceAllString(q, `"`+denied.RequestID+`"`)
		words, err := shellWords(q, nil)
		if err != nil || len(words) < 2 || words[0] != "jq" || words[len(words)-1] != "audit.log" {
			t.Errorf("admins.md: %q: want `jq ... audit.log` (%v)", q, err)
			continue
		}
		words[len(words)-1] = audit
		res := run(t, nil, "", jq, words[1:]...)
		if res.exitCode != 0 || strings.TrimSpace(res.stdout) == "" || strings.TrimSpace(res.stdout) == "[]" {
			t.Errorf("admins.md: %s\nexit %d, printed nothing useful on an audit log with allowed, reported, refused and failed requests:\n%s", q, res.exitCode, res.output())
		}
	}
	if !bytes.Contains([]byte(g.stdout.String()), []byte(denied.RequestID)) {
		t.Errorf("the refused request's id %s is not in the audit log", denied.RequestID)
	}
}

// A doc sentence that names a secret, the CA or a rotation next to
// "restart" claims it waits for one (table rows are lines of their own).
var (
	docSentenceEnd  = regexp.MustCompile(`[.;](\s|$)`)
	secretOrCA      = regexp.MustCompile(`(?i)\bsecrets?\b|\bthe CA\b|\bca_cert\b|\bca_key\b|\brotated\b`)
	restartWord     = regexp.MustCompile(`(?i)\brestart`)
	restartExcluded = regexp.MustCompile(`(?i)environment|without a restart`)
)

// TestDocsSecretAndCARotationAreLive: docs/admins.md says a rotated secret
// file or CA applies within 2 s, without a restart. This test does it
// against the binary (the CA's rotation is TestCARotationAppliesOnReload)
// and fails on any doc sentence that says such files wait for a restart;
// only a secret read from the environment does.
func TestDocsSecretAndCARotationAreLive(t *testing.T) {
	t.Parallel()
	for _, doc := range docFiles(t) {
		raw, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, para := range regexp.MustCompile(`\n\s*\n|\n\|`).Split(string(raw), -1) {
			for _, sentence := range docSentenceEnd.Split(strings.Join(strings.Fields(para), " "), -1) {
				if secretOrCA.MatchString(sentence) && restartWord.MatchString(sentence) && !restartExcluded.MatchString(sentence) {
					t.Errorf("%s: %q says a secret or the CA waits for a restart; rotating a secret file or the CA applies live (docs/admins.md)",
						filepath.Base(doc), strings.TrimSpace(sentence))
				}
			}
		}
	}

	origin := startHTTPUpstream(t, "127.0.0.1", nil)
	const before, after = "first-secret-value-1", "second-secret-value-2"
	rotator := credentials{tenant: "rotator", token: "rotator-token-docs"}
	secretDir := t.TempDir()
	secretFile := filepath.Join(secretDir, "api_key")
	if err := os.WriteFile(secretFile, []byte(before+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(yamlf(`
			config: { allow_paths: [%q] }
			secrets:
			  api_key: { file: %q }
		`, secretDir, secretFile)),
		"connectors/api.yaml": yamlf(`
			name: api
			hosts: [%q]
			ports: [%d]
			inject:
			  headers: { Authorization: "Bearer ${secret:api_key}" }
			  allow_plaintext: true
		`, hostAPI, origin.port),
		"tenants/rotator.yaml": tenantYAML(rotator, "connectors: [api]\n"),
	})
	sent := func(path string) string {
		g.expectAllowedGET(t, rotator, origin.url(hostAPI, path))
		seen := origin.requestsTo(path)
		if len(seen) == 0 {
			t.Fatalf("upstream saw no request to %s", path)
		}
		return seen[len(seen)-1].Header.Get("Authorization")
	}
	if got := sent("/before"); got != "Bearer "+before {
		t.Fatalf("before the rotation the upstream got %q", got)
	}
	// Rotated by rename, as a secret manager does.
	next := filepath.Join(secretDir, ".api_key.new")
	if err := os.WriteFile(next, []byte(after+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, secretFile); err != nil {
		t.Fatal(err)
	}
	n := 0
	eventually(t, scaled(2*reloadWindow), func() error {
		n++
		if got := sent(fmt.Sprintf("/after-%d", n)); got != "Bearer "+after {
			return fmt.Errorf("after the rotation the upstream got the old value")
		}
		return nil
	})
}

var (
	docTenantID    = regexp.MustCompile(`(?m)^id:\s*"?([\w-]+)"?\s*$`)
	docTokenHash   = regexp.MustCompile(`token_sha256:\s*"([^"]*)"`)
	docProxyToken  = regexp.MustCompile(`https?://([\w-]+):([^@\s/]+)@`)
	docTokenLine   = regexp.MustCompile(`(?m)^token:\s*(\S+)\s*$`)
	docPlaceholder = regexp.MustCompile(`…|\$|^TOKEN$|^[A-Z_]+$`)
)

// TestDocsTokensMatchTheirHashes: every token the docs show (in a proxy
// URL, or as `egressgw token new` prints it) hashes to the token_sha256
// the same doc gives for it, so the examples work as written.
// Placeholders (TOKEN, $VAR, "3rYb…") are not tokens.
func TestDocsTokensMatchTheirHashes(t *testing.T) {
	t.Parallel()
	checked := 0
	for _, doc := range docFiles(t) {
		name := filepath.Base(doc)
		hashOf := map[string]string{} // tenant id → token_sha256 of its file in this doc
		blocks := readDocBlocks(t, doc)
		for _, b := range blocks {
			id, hash := docTenantID.FindStringSubmatch(b.text), docTokenHash.FindStringSubmatch(b.text)
			if id != nil && hash != nil {
				hashOf[id[1]] = hash[1]
			}
		}
		raw, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range docProxyToken.FindAllStringSubmatch(string(raw), -1) {
			tenant, token := m[1], m[2]
			if docPlaceholder.MatchString(token) {
				continue
			}
			want, ok := hashOf[tenant]
			if !ok {
				t.Errorf("%s: token %q for tenant %q, whose file this doc does not show", name, token, tenant)
				continue
			}
			if got := sha256Hex(token); got != want {
				t.Errorf("%s: tenant %q's token %q hashes to %s, but its file says token_sha256 %q", name, tenant, token, got, want)
			}
			checked++
		}
		// `egressgw token new` output: a token line, then its hash.
		for _, b := range blocks {
			token, hash := docTokenLine.FindStringSubmatch(b.text), docTokenHash.FindStringSubmatch(b.text)
			if token == nil || hash == nil || docPlaceholder.MatchString(token[1]) || strings.Contains(hash[1], "…") {
				continue
			}
			if got := sha256Hex(token[1]); got != hash[1] {
				t.Errorf("%s:%d: token %q hashes to %s, not the token_sha256 %q shown with it", name, b.line, token[1], got, hash[1])
			}
			checked++
		}
	}
	if checked == 0 {
		t.Error("no token shown with its hash in the docs; docs/admins.md's report-mode example shows one")
	}
}
