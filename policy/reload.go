package policy

import (
	"crypto/sha256"
	"io/fs"
	"slices"
	"time"
)

// Reload is Load for a config directory that prev, the live snapshot, was
// loaded from. Every file is read and checked again, but what was compiled
// from unchanged inputs is taken over from prev instead of being compiled
// a second time: a connector whose file, hook scripts and gateway.yaml
// (with the files it refers to) are unchanged, and a tenant whose file,
// connectors and gateway.yaml are unchanged. The new snapshot shares those
// immutable values with prev, so a reload that changes a few tenants or
// connectors holds little more than one policy in memory
// (docs/operators.md, "Memory"). The result is what Load would return for
// fsys, warnings and errors included; prev is only read.
func Reload(fsys fs.FS, now time.Time, prev *Snapshot) (*Snapshot, error) {
	return load(fsys, now, prev)
}

// reuse indexes what the previous snapshot compiled. A nil *reuse (a
// first load) offers nothing.
type reuse struct {
	tenants    map[string]*Tenant       // by file
	warnings   map[string][]ConfigError // by file
	connectors map[string]*Connector    // by file
	versions   connectorSet             // as tenants resolved them
	gateway    [sha256.Size]byte        // the previous gatewayInputs
}

func newReuse(prev *Snapshot) *reuse {
	if prev == nil {
		return nil
	}
	r := &reuse{
		tenants:    make(map[string]*Tenant, len(prev.tenants)),
		warnings:   map[string][]ConfigError{},
		connectors: map[string]*Connector{},
		versions:   prev.versions,
		gateway:    prev.gatewayInputs,
	}
	for _, t := range prev.tenants {
		r.tenants[t.File] = t
	}
	for _, w := range prev.Warnings {
		r.warnings[w.File] = append(r.warnings[w.File], w)
	}
	for _, versions := range prev.versions {
		for _, c := range versions {
			r.connectors[c.File] = c
		}
	}
	return r
}

// connector returns the previous snapshot's connector when it was compiled
// from the same inputs as c, which is then an equal value; otherwise c.
// Keeping the previous one is what lets the tenants that use it be kept
// too.
func (r *reuse) connector(c *Connector, inputs [sha256.Size]byte) *Connector {
	c.inputs = inputs
	if r != nil {
		if p := r.connectors[c.File]; p != nil && p.inputs == inputs {
			return p
		}
	}
	return c
}

// tenant returns the previous snapshot's tenant compiled from the file
// name with content digest sum, and the warnings that file gave, when the
// connectors it uses resolve to the same values as before and gateway.yaml
// is unchanged (gatewayInputs): gateway settings may apply to every tenant,
// as defaults do.
func (r *reuse) tenant(name string, sum [sha256.Size]byte, connectors connectorSet, gateway [sha256.Size]byte) (*Tenant, []ConfigError, bool) {
	if r == nil || gateway != r.gateway {
		return nil, nil, false
	}
	t := r.tenants[name]
	if t == nil || t.source != sum {
		return nil, nil, false
	}
	for _, rule := range t.rules {
		// Every version of the name, not just the one resolved: a new
		// version changes what an unpinned reference means.
		if rule.Kind == KindConnector && !slices.Equal(connectors[rule.Connector.Name], r.versions[rule.Connector.Name]) {
			return nil, nil, false
		}
	}
	return t, r.warnings[name], true
}

// tenantFrom compiles the tenant of file f, or takes it over from the
// previous snapshot when nothing it is compiled from changed. doc locates
// the problems found across tenants (a duplicate id, overlapping
// sources); it parses f only if one is found.
func (b *builder) tenantFrom(f configFile, connectors connectorSet) (*Tenant, *yamlDoc, bool) {
	sum := sha256.Sum256(f.data)
	if t, warns, ok := b.reuse.tenant(f.name, sum, connectors, b.gatewayInputs); ok {
		b.warns = append(b.warns, warns...)
		return t, &yamlDoc{file: f.name, data: f.data}, true
	}
	var tf tenantFile
	doc, ok := b.decode(f, &tf)
	if !ok {
		return nil, nil, false
	}
	t, ok := b.tenant(doc, tf, connectors)
	if !ok {
		return nil, nil, false
	}
	t.source = sum
	return t, doc, true
}

// gatewayInputs digests what gateway.yaml's settings are built from: the
// file and the files it refers to (secrets, the CA, upstream roots). The
// environment variables secrets may come from are not in it: a running
// process's environment does not change, and Snapshot.Hash ignores them
// as well.
func gatewayInputs(file *configFile, referenced []configFile) [sha256.Size]byte {
	h := sha256.New()
	if file != nil {
		hashFile(h, *file)
	}
	for _, f := range referenced {
		hashFile(h, f)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// connectorInputs digests what a connector is compiled from: the gateway's
// settings (secrets, the CA, hook limits, redaction profiles), its file,
// and the files it read (hook scripts).
func (b *builder) connectorInputs(f configFile, read []configFile) [sha256.Size]byte {
	h := sha256.New()
	h.Write(b.gatewayInputs[:])
	hashFile(h, f)
	for _, r := range read {
		hashFile(h, r)
	}
	return [sha256.Size]byte(h.Sum(nil))
}
