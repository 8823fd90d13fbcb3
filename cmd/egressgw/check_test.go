package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// A config on disk may refer to files beside its directory with relative
// paths (relative to the config directory) when their directories are in
// config.allow_paths (docs/admins.md), whether check is given the
// directory or its gateway.yaml.
func TestCheckReadsRelativePathsInAllowedDirectories(t *testing.T) {
	root := t.TempDir()
	var out bytes.Buffer
	if code := run([]string{"ca", "init", "--out", filepath.Join(root, "ca")}, &out, &out); code != exitOK {
		t.Fatalf("ca init: exit %d\n%s", code, out.String())
	}
	files := map[string]string{
		"config/gateway.yaml": "config: { allow_paths: [../ca, ../secrets, ../shared] }\n" + "tls:\n  ca_cert: ../ca/ca.pem\n  ca_key: ../ca/ca-key.pem\n  upstream_roots: [\"../ca/ca.pem\"]\n" +
			"secrets:\n  k: { file: ../secrets/k }\n",
		"config/connectors/c.yaml": "name: c\nhosts: [\"c.example\"]\ninspect: true\n" +
			"inject:\n  headers: { Authorization: \"Bearer ${secret:k}\" }\nhooks: { request: ../shared/tag.tengo }\n",
		"secrets/k":        "s3cret-value\n",
		"shared/tag.tengo": "request.headers[\"X-Tag\"] = [\"a\"]\n",
	}
	writeFiles(t, root, files)
	dir := filepath.Join(root, "config")
	for name, config := range map[string]string{"directory": dir, "gateway.yaml": filepath.Join(dir, "gateway.yaml")} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run([]string{"check", "--config", config}, &stdout, &stderr)
			if want := "ok: 0 tenants, 1 connectors\n"; code != exitOK || !bytes.HasSuffix(stdout.Bytes(), []byte(want)) {
				t.Errorf("check: exit %d, want 0 and %q; output:\n%s%s", code, want, stdout.String(), stderr.String())
			}
		})
	}
}

// writeFiles writes files, by path relative to dir, creating directories.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
