package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/egressgw/egressgw/configs"
)

// The access walkthrough of docs/admins.md ("A request, an approval, an
// expiry") runs against `egressgw serve` on the embedded quickstart, as a
// newcomer follows it from the README. Its blocks carry their own markers,
// so that the config-directory walkthrough of TestDocsWalkthroughs leaves
// them alone:
//
//	<!-- test: quickstart file:PATH -->  the block is the quickstart's PATH, verbatim
//	<!-- test: quickstart run -->        each line is a command, run in order:
//	                                     `curl ...`, `egressgw ...` or `export NAME=value`
//	<!-- test: quickstart poll -->       one command, run again until it prints
//	                                     the next output block (a grant applies
//	                                     within the refresh window)
//	<!-- test: quickstart output -->     what the last command prints, all of it;
//	                                     a line "…" stands for any lines
//
// The doc shows the quickstart's addresses (127.0.0.1:3128, the admin
// listener 127.0.0.1:9128) and ids, times and request ids of one real run;
// the test puts in its own listeners, reads the ids the gateway gave, and
// runs the commands that name an id with the gateway's.

// accessWalkthroughRefresh bounds how long a poll block may take: grants
// apply within 2 s (docs/reference.md, "Access requests and grants"),
// with a wide margin for a loaded machine.
const accessWalkthroughRefresh = 10 * time.Second

func TestDocsAccessWalkthrough(t *testing.T) {
	t.Parallel()
	curl := lookPathOrSkip(t, "curl")
	doc := filepath.Join(repoRoot(t), "docs", "admins.md")
	var blocks []docBlock
	for _, b := range readDocBlocks(t, doc) {
		if b.marker == "quickstart" {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) == 0 {
		t.Fatal("docs/admins.md has no `<!-- test: quickstart ... -->` blocks: the access walkthrough is missing")
	}

	requireNXDomainForInvalid(t)

	g := newGateway(t)
	g.dir = t.TempDir() // the quickstart's state store is ./egressgw-state
	g.start(t)          // no --config: the embedded quickstart
	steps := walkthroughSteps{
		proxyAddr: g.proxyAddr,
		adminAddr: g.adminAddr,
		programs:  map[string]string{"curl": curl, "egressgw": gatewayBinary},
		env:       childEnv(),
		vars:      map[string]string{},
		ids:       map[string]string{},
		dir:       t.TempDir(),
	}
	ran, compared := steps.follow(t, blocks, func(where, path, text string) {
		want, err := fs.ReadFile(configs.Quickstart(), path)
		if err != nil {
			t.Fatalf("%s: the quickstart has no %s: %v", where, path, err)
		}
		if text != string(want) {
			t.Errorf("%s: the block differs from the quickstart's %s, which is:\n%s", where, path, want)
		}
	})
	if ran < 8 || compared < 8 {
		t.Errorf("the walkthrough ran %d commands and compared %d outputs; is the block search broken?", ran, compared)
	}
}

// follow runs a walkthrough's blocks in order (their markers' first word
// stripped): file:PATH blocks go to file, run and poll blocks are run,
// output blocks compared. It returns how many commands ran and outputs
// were compared.
func (s *walkthroughSteps) follow(t *testing.T, blocks []docBlock, file func(where, path, text string)) (ran, compared int) {
	t.Helper()
	var last []string            // the last command's words, as run
	var lastLine, lastOut string // the doc's line for it, and what it printed
	polling := false
	for _, b := range blocks {
		where := fmt.Sprintf("admins.md:%d", b.line)
		switch kind, path, _ := strings.Cut(b.arg, ":"); kind {
		case "file":
			file(where, path, b.text)
		case "run", "poll":
			lines := commandLines(b.text)
			if kind == "poll" && len(lines) != 1 {
				t.Fatalf("%s: a poll block holds one command, this one %d", where, len(lines))
			}
			for _, line := range lines {
				if words, out := s.run(t, where, line); words != nil {
					last, lastLine, lastOut = words, line, out
				}
				ran++
			}
			polling = kind == "poll"
		case "output":
			if last == nil {
				t.Fatalf("%s: an output block with no command before it", where)
			}
			if !polling {
				bound, err := matchDocOutput(b.text, lastOut, s.ids)
				if err != nil {
					t.Fatalf("%s: `%s` %v\nit printed:\n%s", where, lastLine, err, lastOut)
				}
				s.bind(bound)
				compared++
				continue
			}
			// The command ran once already; the gateway may not have
			// applied the change yet, so it runs again until it prints
			// what the doc shows.
			deadline := time.Now().Add(scaled(accessWalkthroughRefresh))
			for out := lastOut; ; out = s.exec(t, where, lastLine, last) {
				bound, err := matchDocOutput(b.text, out, s.ids)
				if err == nil {
					s.bind(bound)
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: `%s`, run for %v, %v\nit printed last:\n%s", where, lastLine, scaled(accessWalkthroughRefresh), err, out)
				}
				time.Sleep(100 * time.Millisecond)
			}
			polling = false
			compared++
		default:
			t.Fatalf("%s: unknown marker `%s`", where, b.arg)
		}
	}
	return ran, compared
}

// requireNXDomainForInvalid skips on a machine whose resolver cannot say
// that a name under .invalid does not exist: once granted, the
// walkthrough's request fails at DNS, and the doc shows the message of a
// name that does not exist, not that of a resolver that does not answer.
func requireNXDomainForInvalid(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	_, err := net.DefaultResolver.LookupHost(ctx, "egressgw-walkthrough.invalid")
	if dnsErr, ok := errors.AsType[*net.DNSError](err); !ok || !dnsErr.IsNotFound {
		t.Skipf("this machine's resolver does not answer NXDOMAIN for .invalid names (%v), which the walkthrough's 502 shows", err)
	}
}

// walkthroughSteps runs the walkthrough's commands against one gateway.
type walkthroughSteps struct {
	proxyAddr, adminAddr string
	programs             map[string]string // command name → executable
	env                  []string
	vars                 map[string]string // exported by the walkthrough
	ids                  map[string]string // an id the doc shows → the gateway's
	dir                  string
}

// The quickstart's listeners as the doc shows them.
const (
	docProxyAddr = "127.0.0.1:3128"
	docAdminAddr = "127.0.0.1:9128"
)

// run runs one line of a run block and returns the command as run and
// what it printed on stdout; an export only sets a variable.
func (s *walkthroughSteps) run(t *testing.T, where, line string) ([]string, string) {
	t.Helper()
	if assignment, ok := strings.CutPrefix(line, "export "); ok {
		name, value, ok := strings.Cut(assignment, "=")
		if !ok {
			t.Fatalf("%s: %q: want export NAME=value", where, line)
		}
		s.vars[name] = value
		s.env = append(s.env, assignment)
		return nil, ""
	}
	words, err := shellWords(line, s.vars)
	if err != nil || len(words) == 0 {
		t.Fatalf("%s: %q: %v", where, line, err)
	}
	if _, ok := s.programs[words[0]]; !ok {
		t.Fatalf("%s: %q: the walkthrough runs `curl`, `egressgw` and `export` lines only", where, line)
	}
	for i, w := range words {
		w = strings.ReplaceAll(w, docProxyAddr, s.proxyAddr)
		w = strings.ReplaceAll(w, docAdminAddr, s.adminAddr)
		if id := walkthroughID.FindString(w); id != "" {
			actual, ok := s.ids[id]
			if !ok {
				t.Fatalf("%s: %q names %s, which no output before it showed", where, line, id)
			}
			w = strings.ReplaceAll(w, id, actual)
		}
		words[i] = w
	}
	// The access and grant commands reach the admin listener through
	// --admin-url; the doc relies on its default, the quickstart's.
	if words[0] == "egressgw" && len(words) > 2 && (words[1] == "access" || words[1] == "grant") && !strings.Contains(line, "--admin-url") {
		words = append(words[:3], append([]string{"--admin-url", "http://" + s.adminAddr}, words[3:]...)...)
	}
	if words[0] == "egressgw" && len(words) > 1 && words[1] == "usage" && !strings.Contains(line, "--admin-url") {
		words = append(words, "--admin-url", "http://"+s.adminAddr)
	}
	return words, s.exec(t, where, line, words)
}

// exec runs words, the doc's line as run, and returns their stdout; a
// command that fails fails the test, as it would stop a reader. Messages
// quote the doc's line, which names the admin token only as a variable.
func (s *walkthroughSteps) exec(t *testing.T, where, line string, words []string) string {
	t.Helper()
	res := run(t, s.env, s.dir, s.programs[words[0]], words[1:]...)
	if res.exitCode != 0 {
		t.Fatalf("%s: `%s`: exit %d\n%s", where, line, res.exitCode, res.output())
	}
	return res.stdout
}

func (s *walkthroughSteps) bind(bound map[string]string) {
	for docID, actual := range bound {
		s.ids[docID] = actual
	}
}

// commandLines are the lines of a run block that are commands.
func commandLines(text string) []string {
	var lines []string
	for _, line := range strings.Split(text, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			lines = append(lines, line)
		}
	}
	return lines
}

// What differs between runs, as the doc shows it: access-request and
// grant ids (state.newID: a prefix and 26 base32 letters), request ids
// (ULIDs), and times (RFC 3339 in UTC).
var (
	walkthroughID   = regexp.MustCompile(`\b(?:req|gr)_[a-z2-7]{26}\b`)
	docVaryingValue = regexp.MustCompile(`\b(?:req|gr)_[a-z2-7]{26}\b|\b01[0-9A-HJKMNP-TV-Z]{24}\b|\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\b`)
)

const (
	anyIDPattern = `((?:req|gr)_[a-z2-7]{26})`
	anyULID      = `01[0-9A-HJKMNP-TV-Z]{24}`
	anyTime      = `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z`
)

// matchDocOutput checks that got is what the doc's want shows: the same
// lines, where a line "…" stands for any number of lines, a "…" inside a
// line for any text, a time or request id for any other, and an
// access-request or grant id for the one it stands for in ids or, if ids
// has none yet, for any (which it returns, to be bound). Trailing spaces
// and carriage returns (curl -i) do not count.
func matchDocOutput(want, got string, ids map[string]string) (map[string]string, error) {
	wantLines := trimmedLines(want)
	gotLines := trimmedLines(got)
	// Segments of consecutive concrete lines, split at "…" lines; each
	// is matched at its leftmost place, which is enough for globbing.
	type segment struct {
		lines []string
		first int // its first line's index in want, for messages
	}
	var segments []segment
	anchoredStart := len(wantLines) > 0 && wantLines[0] != "…"
	anchoredEnd := len(wantLines) > 0 && wantLines[len(wantLines)-1] != "…"
	cur := segment{first: 0}
	for i, w := range wantLines {
		if w == "…" {
			if len(cur.lines) > 0 {
				segments = append(segments, cur)
			}
			cur = segment{first: i + 1}
			continue
		}
		cur.lines = append(cur.lines, w)
	}
	if len(cur.lines) > 0 {
		segments = append(segments, cur)
	}
	bound := map[string]string{}
	next := 0
	for si, seg := range segments {
		matchAt := func(at int) (map[string]string, bool) {
			if at+len(seg.lines) > len(gotLines) {
				return nil, false
			}
			found := map[string]string{}
			for j, w := range seg.lines {
				ok, err := matchDocLine(w, gotLines[at+j], ids, bound, found)
				if err != nil || !ok {
					return nil, false
				}
			}
			return found, true
		}
		start, end := next, len(gotLines)-len(seg.lines)
		if si == 0 && anchoredStart {
			end = start
		}
		if si == len(segments)-1 && anchoredEnd {
			start = max(start, len(gotLines)-len(seg.lines))
		}
		matched := false
		for at := start; at <= end; at++ {
			if found, ok := matchAt(at); ok {
				for k, v := range found {
					bound[k] = v
				}
				next, matched = at+len(seg.lines), true
				break
			}
		}
		if !matched {
			var where string
			switch first, last := si == 0 && anchoredStart, si == len(segments)-1 && anchoredEnd; {
			case first && last:
				where = "exactly"
			case first:
				where = "first"
			case last:
				where = "last"
			default:
				where = "next, in this order"
			}
			return nil, fmt.Errorf("does not print %s the lines\n  %s\n(ids stand for those the gateway gave earlier: %v)", where, strings.Join(seg.lines, "\n  "), ids)
		}
	}
	if len(segments) == 0 && len(gotLines) > 0 && len(wantLines) == 0 {
		return nil, fmt.Errorf("prints something where the doc shows nothing")
	}
	return bound, nil
}

// matchDocLine matches one line; found collects ids seen for the first
// time, which must agree wherever they appear.
func matchDocLine(want, got string, ids, bound, found map[string]string) (bool, error) {
	var pattern strings.Builder
	var captured []string // doc ids, in the order of their capture groups
	pattern.WriteString("^")
	rest := want
	for rest != "" {
		loc := docVaryingValue.FindStringIndex(rest)
		ellipsis := strings.Index(rest, "…")
		if loc == nil && ellipsis < 0 {
			pattern.WriteString(regexp.QuoteMeta(rest))
			break
		}
		if ellipsis >= 0 && (loc == nil || ellipsis < loc[0]) {
			pattern.WriteString(regexp.QuoteMeta(rest[:ellipsis]) + ".*")
			rest = rest[ellipsis+len("…"):]
			continue
		}
		pattern.WriteString(regexp.QuoteMeta(rest[:loc[0]]))
		value := rest[loc[0]:loc[1]]
		switch {
		case walkthroughID.MatchString(value):
			if actual, ok := ids[value]; ok {
				pattern.WriteString(regexp.QuoteMeta(actual))
			} else if actual, ok := bound[value]; ok {
				pattern.WriteString(regexp.QuoteMeta(actual))
			} else {
				pattern.WriteString(anyIDPattern)
				captured = append(captured, value)
			}
		case strings.HasPrefix(value, "01"):
			pattern.WriteString(anyULID)
		default:
			pattern.WriteString(anyTime)
		}
		rest = rest[loc[1]:]
	}
	pattern.WriteString("$")
	re, err := regexp.Compile(pattern.String())
	if err != nil {
		return false, err
	}
	m := re.FindStringSubmatch(got)
	if m == nil {
		return false, nil
	}
	for i, docID := range captured {
		actual := m[i+1]
		if prev, ok := found[docID]; ok && prev != actual {
			return false, nil // one id in the doc, two in the output
		}
		for _, known := range []map[string]string{ids, bound, found} {
			for other, a := range known {
				if a == actual && other != docID {
					return false, nil // two ids in the doc, one in the output
				}
			}
		}
		found[docID] = actual
	}
	return true, nil
}

func trimmedLines(s string) []string {
	s = strings.TrimRight(s, "\r\n")
	if s == "" {
		return nil
	}
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \r")
	}
	return lines
}

// TestMatchDocOutput: the comparison the walkthrough relies on refuses
// what the doc does not show.
func TestMatchDocOutput(t *testing.T) {
	t.Parallel()
	const reqA, reqB = "req_aaaaaaaaaaaaaaaaaaaaaaaaaa", "req_bbbbbbbbbbbbbbbbbbbbbbbbbb"
	const grantA = "gr_cccccccccccccccccccccccccc"
	const docReq = "req_47mmhvgw3hdvef7sksdelbhf2y"
	const docGrant = "gr_3d4logkykbpmdt555fdgmqnliu"
	table := "ID  STATUS\n" + docReq + "  pending\n"
	cases := []struct {
		name      string
		want, got string
		ids       map[string]string
		ok        bool
		bound     map[string]string
	}{
		{"the same lines", "a\nb\n", "a\nb\n", nil, true, nil},
		{"a changed line", "a\nb\n", "a\nc\n", nil, false, nil},
		{"a missing last line", "a\nb\n", "a\n", nil, false, nil},
		{"an extra last line", "a\nb\n", "a\nb\nc\n", nil, false, nil},
		{"an extra first line", "a\nb\n", "z\na\nb\n", nil, false, nil},
		{"an extra line inside", "a\nb\n", "a\nz\nb\n", nil, false, nil},
		{"… stands for lines", "a\n…\nd\n", "a\nb\nc\nd\n", nil, true, nil},
		{"… stands for no line", "a\n…\nd\n", "a\nd\n", nil, true, nil},
		{"… at both ends", "…\nc\n…\n", "a\nb\nc\nd\n", nil, true, nil},
		{"lines after … out of order", "…\nc\nb\n", "a\nb\nc\n", nil, false, nil},
		{"… inside a line", `{"error":"x","message":"…","port":80}`, `{"error":"x","message":"anything; at all","port":80}`, nil, true, nil},
		{"… inside a line keeps the rest", `{"error":"x","message":"…","port":80}`, `{"error":"y","message":"m","port":80}`, nil, false, nil},
		{"carriage returns and trailing spaces", "HTTP/1.1 403 Forbidden\n…\n", "HTTP/1.1 403 Forbidden  \r\nDate: x\r\n", nil, true, nil},
		{"a time stands for any", "expires 2026-12-06T20:06:36Z\n", "expires 2031-01-02T03:04:05Z\n", nil, true, nil},
		{"a time with fractions", `"expires_at": "2026-12-06T20:06:36.103412468Z"`, `"expires_at": "2026-12-06T20:07:01.5Z"`, nil, true, nil},
		{"a request id stands for any", `"request_id":"01M96FCCBXK7DXCMNA1FYK9P2E"`, `"request_id":"01M96FD0000000000000000000"`, nil, true, nil},
		{"a new id is bound", table, "ID  STATUS\n" + reqA + "  pending\n", nil, true, map[string]string{docReq: reqA}},
		{"a bound id must be the same", table, "ID  STATUS\n" + reqB + "  pending\n", map[string]string{docReq: reqA}, false, nil},
		{"a bound id matches", table, "ID  STATUS\n" + reqA + "  pending\n", map[string]string{docReq: reqA}, true, map[string]string{}},
		{"one doc id, two ids", docReq + " " + docReq, reqA + " " + reqB, nil, false, nil},
		{"two doc ids, one id", docReq + " " + docGrant, reqA + " " + reqA, nil, false, nil},
		{"two doc ids, two ids", "approved " + docReq + ": " + docGrant, "approved " + reqA + ": " + grantA, nil, true,
			map[string]string{docReq: reqA, docGrant: grantA}},
		{"a new doc id, an id already bound", docGrant, reqA, map[string]string{docReq: reqA}, false, nil},
		{"an id is not a wildcard for text", table, "ID  STATUS\nsomething  pending\n", nil, false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bound, err := matchDocOutput(c.want, c.got, c.ids)
			if (err == nil) != c.ok {
				t.Fatalf("match = %v, want %v (want %q, got %q)", err, c.ok, c.want, c.got)
			}
			if c.ok && c.bound != nil && fmt.Sprint(bound) != fmt.Sprint(c.bound) {
				t.Errorf("bound %v, want %v", bound, c.bound)
			}
		})
	}
}
