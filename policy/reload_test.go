package policy

import (
	"maps"
	"reflect"
	"slices"
	"testing"
	"testing/fstest"
	"time"
)

// reloadBase is a config with every kind of dependency a reload must
// notice: connectors pinned and unpinned, one injecting a secret from a
// file gateway.yaml names, one running a hook script, a tenant identified
// by address and one that only draws a warning.
func reloadBase() fstest.MapFS {
	files := map[string]string{
		"gateway.yaml":              "secrets:\n  token: { file: secrets/token }\nlimits: { idle_timeout: 60s }\n",
		"secrets/token":             "first-secret-value\n",
		"hooks/tag.tengo":           "request.headers[\"X-Tag\"] = [\"1\"]\n",
		"connectors/github-v1.yaml": "name: github\nversion: 1\nhosts: [\"api.github.com\"]\nports: [443]\n",
		"connectors/github-v2.yaml": "name: github\nversion: 2\nhosts: [\"api.github.com\", \"uploads.github.com\"]\nports: [443]\n",
		"connectors/crm.yaml": "name: crm\nhosts: [\"crm.example\"]\nports: [80]\n" +
			"inject: { headers: { Authorization: \"Bearer ${secret:token}\" }, allow_plaintext: true }\n",
		"connectors/tagger.yaml": "name: tagger\nhosts: [\"tag.example\"]\nports: [80]\nhooks: { request: hooks/tag.tengo }\n",
		"tenants/acme.yaml":      "id: acme\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [github, crm]\nrules:\n  - name: docs\n    hosts: [\"docs.python.org\"]\n",
		"tenants/pinned.yaml":    "id: pinned\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [github@1]\n",
		"tenants/tags.yaml":      "id: tags\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [tagger]\n",
		"tenants/lab.yaml":       "id: lab\nauth: { source_cidrs: [\"10.20.0.0/16\"] }\nrules:\n  - hosts: [\"pypi.org\"]\n",
		"tenants/idle.yaml":      "id: idle\nauth: { token_sha256: \"" + testTokenHash + "\" }\n",
	}
	fsys := fstest.MapFS{}
	for name, body := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(body)}
	}
	return fsys
}

// TestReloadIsLoad edits a config the ways admins do and checks that
// Reload from the previous snapshot gives exactly what Load gives (the
// same tenants, connectors, warnings, hash and errors), that it took over
// just the tenants and connectors whose inputs did not change, and that
// the previous snapshot, still serving, was not touched.
func TestReloadIsLoad(t *testing.T) {
	allTenants := []string{"acme", "idle", "lab", "pinned", "tags"}
	allConnectors := []string{"crm.yaml", "github-v1.yaml", "github-v2.yaml", "tagger.yaml"}
	cases := []struct {
		name           string
		edit           map[string]string // file -> new content; "" removes it
		keptTenants    []string          // shared with the previous snapshot
		keptConnectors []string          // by file name under connectors/
		wantErr        string
	}{
		{
			name:           "nothing changed",
			keptTenants:    allTenants,
			keptConnectors: allConnectors,
		},
		{
			name:           "one tenant's rules",
			edit:           map[string]string{"tenants/lab.yaml": "id: lab\nauth: { source_cidrs: [\"10.20.0.0/16\"] }\nrules:\n  - hosts: [\"files.pythonhosted.org\"]\n"},
			keptTenants:    []string{"acme", "idle", "pinned", "tags"},
			keptConnectors: allConnectors,
		},
		{
			name:           "a comment in a tenant file",
			edit:           map[string]string{"tenants/pinned.yaml": "# reviewed\nid: pinned\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [github@1]\n"},
			keptTenants:    []string{"acme", "idle", "lab", "tags"},
			keptConnectors: allConnectors,
		},
		{
			name:           "tenant added",
			edit:           map[string]string{"tenants/zeta.yaml": "id: zeta\nauth: { token_sha256: \"" + testTokenHash + "\" }\nconnectors: [crm]\n"},
			keptTenants:    allTenants,
			keptConnectors: allConnectors,
		},
		{
			name:           "tenant removed",
			edit:           map[string]string{"tenants/idle.yaml": ""},
			keptTenants:    []string{"acme", "lab", "pinned", "tags"},
			keptConnectors: allConnectors,
		},
		{
			name:           "tenant file renamed",
			edit:           map[string]string{"tenants/idle.yaml": "", "tenants/idle2.yaml": "id: idle\nauth: { token_sha256: \"" + testTokenHash + "\" }\n"},
			keptTenants:    []string{"acme", "lab", "pinned", "tags"},
			keptConnectors: allConnectors,
		},
		{
			name:           "connector edited",
			edit:           map[string]string{"connectors/crm.yaml": "name: crm\nhosts: [\"crm.example\", \"files.crm.example\"]\nports: [80]\ninject: { headers: { Authorization: \"Bearer ${secret:token}\" }, allow_plaintext: true }\n"},
			keptTenants:    []string{"idle", "lab", "pinned", "tags"},
			keptConnectors: []string{"github-v1.yaml", "github-v2.yaml", "tagger.yaml"},
		},
		{
			name:           "connector version added",
			edit:           map[string]string{"connectors/github-v3.yaml": "name: github\nversion: 3\nhosts: [\"api.github.com\"]\nports: [443]\n"},
			keptTenants:    []string{"idle", "lab", "tags"}, // pinned to v1 too: the versions of its connector changed
			keptConnectors: allConnectors,
		},
		{
			name:           "hook script edited",
			edit:           map[string]string{"hooks/tag.tengo": "request.headers[\"X-Tag\"] = [\"2\"]\n"},
			keptTenants:    []string{"acme", "idle", "lab", "pinned"},
			keptConnectors: []string{"crm.yaml", "github-v1.yaml", "github-v2.yaml"},
		},
		{
			name: "gateway.yaml edited",
			edit: map[string]string{"gateway.yaml": "secrets:\n  token: { file: secrets/token }\nlimits: { idle_timeout: 90s }\n"},
		},
		{
			name: "secret file rotated",
			edit: map[string]string{"secrets/token": "second-secret-value\n"},
		},
		{
			name:    "new tenant takes a kept tenant's id",
			edit:    map[string]string{"tenants/zeta.yaml": "id: acme\nauth: { token_sha256: \"" + testTokenHash + "\" }\n"},
			wantErr: `tenants/zeta.yaml:1: tenant "acme" is already defined in tenants/acme.yaml`,
		},
		{
			name:    "kept tenant's id taken by a file read before it",
			edit:    map[string]string{"tenants/aaa.yaml": "id: pinned\nauth: { token_sha256: \"" + testTokenHash + "\" }\n"},
			wantErr: `tenants/pinned.yaml:1: tenant "pinned" is already defined in tenants/aaa.yaml`,
		},
		{
			name:    "new tenant overlaps a kept tenant's source",
			edit:    map[string]string{"tenants/aaa.yaml": "id: aaa\nauth: { source_cidrs: [\"10.20.30.0/24\"] }\n"},
			wantErr: `tenants/lab.yaml:2: source CIDR 10.20.0.0/16 overlaps 10.20.30.0/24 of tenant "aaa": a client address must identify one tenant`,
		},
		{
			name:    "connector broken",
			edit:    map[string]string{"connectors/github-v2.yaml": "name: github\nversion: 2\nhosts: []\n"},
			wantErr: "connectors/github-v2.yaml:3: hosts: at least one host pattern is required",
		},
	}
	now := time.Unix(1700000000, 0)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := reloadBase()
			prev, err := Load(base, now)
			if err != nil {
				t.Fatal(err)
			}
			untouched, err := Load(reloadBase(), now)
			if err != nil {
				t.Fatal(err)
			}
			edited := maps.Clone(base)
			for name, body := range c.edit {
				if body == "" {
					delete(edited, name)
					continue
				}
				edited[name] = &fstest.MapFile{Data: []byte(body)}
			}

			got, gotErr := Reload(edited, now, prev)
			want, wantErr := Load(edited, now)
			if !reflect.DeepEqual(prev, untouched) {
				t.Errorf("the previous snapshot changed during the reload")
			}
			if (gotErr == nil) != (wantErr == nil) || gotErr != nil && gotErr.Error() != wantErr.Error() {
				t.Fatalf("Reload error %v\nLoad error %v", gotErr, wantErr)
			}
			if c.wantErr != "" {
				if gotErr == nil || gotErr.Error() != c.wantErr {
					t.Fatalf("error %v, want %s", gotErr, c.wantErr)
				}
				return
			}
			if gotErr != nil {
				t.Fatal(gotErr)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Reload's snapshot differs from Load's\nReload warnings %v\nLoad warnings %v", got.Warnings, want.Warnings)
			}
			if !got.Unchanged(edited) {
				t.Errorf("Unchanged disagrees with the hash Reload computed")
			}

			var kept []string
			for _, id := range got.TenantIDs() {
				p, ok := prev.Tenant(id)
				if n, _ := got.Tenant(id); ok && n == p {
					kept = append(kept, id)
				}
			}
			if !slices.Equal(kept, c.keptTenants) {
				t.Errorf("tenants taken over %q, want %q", kept, c.keptTenants)
			}
			var keptConnectors []string
			for _, file := range allConnectors {
				if n, p := connectorInFile(got, "connectors/"+file), connectorInFile(prev, "connectors/"+file); n != nil && n == p {
					keptConnectors = append(keptConnectors, file)
				}
			}
			if !slices.Equal(keptConnectors, c.keptConnectors) {
				t.Errorf("connectors taken over %q, want %q", keptConnectors, c.keptConnectors)
			}
			for _, id := range got.TenantIDs() {
				tenant, _ := got.Tenant(id)
				for _, r := range tenant.Rules() {
					if r.Connector != nil && !slices.Contains(got.versions[r.Connector.Name], r.Connector) {
						t.Errorf("tenant %s uses a connector %s that is not the snapshot's own", id, r.Name)
					}
				}
			}
		})
	}
}

func connectorInFile(s *Snapshot, file string) *Connector {
	for _, versions := range s.versions {
		for _, c := range versions {
			if c.File == file {
				return c
			}
		}
	}
	return nil
}

// TestReloadKeepsWarnings checks that a tenant taken over brings the
// warnings its file gives, in file order, as check and the log show them.
func TestReloadKeepsWarnings(t *testing.T) {
	now := time.Unix(1700000000, 0)
	base := reloadBase()
	prev, err := Load(base, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(prev.Warnings) == 0 {
		t.Fatal("the base config draws no warning; the test needs one")
	}
	edited := maps.Clone(base)
	edited["tenants/lab.yaml"] = &fstest.MapFile{Data: []byte("id: lab\nauth: { source_cidrs: [\"10.20.0.0/16\"] }\n")}
	got, err := Reload(edited, now, prev)
	if err != nil {
		t.Fatal(err)
	}
	if idle, _ := got.Tenant("idle"); idle != must(prev.Tenant("idle")) {
		t.Fatal("tenant idle was compiled again; the test needs it taken over")
	}
	want, err := Load(edited, now)
	if err != nil {
		t.Fatal(err)
	}
	idleWarned := slices.ContainsFunc(got.Warnings, func(w ConfigError) bool { return w.File == "tenants/idle.yaml" })
	if !reflect.DeepEqual(got.Warnings, want.Warnings) || !idleWarned {
		t.Errorf("warnings %v, want %v", got.Warnings, want.Warnings)
	}
}

func must[T any](v T, _ bool) T { return v }
