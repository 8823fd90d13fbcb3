package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The budgets walkthrough of docs/admins.md ("Budgets") runs against
// `egressgw serve --config DIR` on the files it shows, with the markers of
// the access walkthrough (TestDocsAccessWalkthrough) under the name
// budgets:
//
//	<!-- test: budgets file:PATH -->  the block is config file PATH
//	<!-- test: budgets run -->        `curl ...`, `egressgw ...` or `export NAME=value` lines
//	<!-- test: budgets output -->     what the last command prints
//
// The doc's listeners (127.0.0.1:3128, 127.0.0.1:9128) stand for the
// test's own.
func TestDocsBudgetsWalkthrough(t *testing.T) {
	t.Parallel()
	curl := lookPathOrSkip(t, "curl")
	doc := filepath.Join(repoRoot(t), "docs", "admins.md")
	var blocks []docBlock
	for _, b := range readDocBlocks(t, doc) {
		if b.marker == "budgets" {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) == 0 {
		t.Fatal("docs/admins.md has no `<!-- test: budgets ... -->` blocks: the budgets walkthrough is missing")
	}
	requireNXDomainForInvalid(t) // its upstreams are .invalid names: allowed, then refused by DNS

	config := t.TempDir()
	for _, b := range blocks {
		if path, ok := strings.CutPrefix(b.arg, "file:"); ok {
			dest := filepath.Join(config, filepath.FromSlash(path))
			if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dest, []byte(b.text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	g := newGateway(t)
	g.dir = t.TempDir()
	g.start(t, "--config", config)
	steps := walkthroughSteps{
		proxyAddr: g.proxyAddr,
		adminAddr: g.adminAddr,
		programs:  map[string]string{"curl": curl, "egressgw": gatewayBinary},
		env:       childEnv(),
		vars:      map[string]string{},
		ids:       map[string]string{},
		dir:       t.TempDir(),
	}
	ran, compared := steps.follow(t, blocks, func(string, string, string) {}) // written above, before the gateway started
	if ran < 4 || compared < 3 {
		t.Errorf("the walkthrough ran %d commands and compared %d outputs; is the block search broken?", ran, compared)
	}
}
