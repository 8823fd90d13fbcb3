package policy

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"iter"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/redaction"
)

// The files of a config directory (docs/reference.md).
const (
	GatewayFileName = "gateway.yaml"
	TenantsDir      = "tenants"
	ConnectorsDir   = "connectors"
)

var (
	idPattern     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	methodPattern = regexp.MustCompile(`^[A-Z][A-Z-]{0,31}$`)
	hexSHA256     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Load reads, validates and compiles the config directory fsys into a
// Snapshot. On any error it returns a *LoadError listing every problem with
// its file and line, and no snapshot: a policy is used whole or not at all.
func Load(fsys fs.FS, now time.Time) (*Snapshot, error) {
	return load(fsys, now, nil)
}

// load builds a snapshot reading one file at a time: gateway.yaml, then
// each connector, then each tenant is read, hashed, compiled and dropped,
// so that a load never holds the text of a large config whole
// (docs/operators.md, "Memory"). prev, when not nil, lends the compiled
// tenants and connectors whose inputs are unchanged (see reuse). Files
// are read under gateway.yaml's rules (docs/admins.md, "Where config
// files may live"); a file refused unread is reported with the rest of the
// config's problems.
func load(fsys fs.FS, now time.Time, prev *Snapshot) (*Snapshot, error) {
	gateway, rules, refused := readGatewayFile(fsys)
	b := &builder{reader: newReader(fsys, rules), secretFiles: map[location]bool{}, hash: sha256.New(), reuse: newReuse(prev), snap: &Snapshot{
		LoadedAt: now,
		tenants:  map[string]*Tenant{},
	}}
	b.errs = append(b.errs, refused...)
	b.gateway(gateway, len(refused) > 0)
	b.gatewayInputs = gatewayInputs(gateway, b.referenced)
	connectors, err := b.connectors()
	if err != nil {
		return nil, err
	}
	if err := b.tenants(connectors); err != nil {
		return nil, err
	}
	b.lintAdmin()
	if len(b.snap.tenantIDs) == 0 {
		// Valid, but nothing can pass: worth a word from check.
		b.warns = append(b.warns, ConfigError{File: "tenants/", Msg: "no tenants: every request will be refused; add one file per tenant (docs/admins.md)"})
	}
	b.scrubSecrets()
	if len(b.errs) > 0 {
		return nil, &LoadError{Errors: b.errs}
	}
	for _, f := range b.referenced {
		hashFile(b.hash, f)
		b.snap.referenced = append(b.snap.referenced, f.name)
	}
	b.snap.Hash = hex.EncodeToString(b.hash.Sum(nil))
	b.snap.versions = connectors
	b.snap.gatewayInputs = b.gatewayInputs
	b.snap.Warnings = b.warns
	b.snap.indexSources()
	return b.snap, nil
}

// configFile is one file read from the config directory; name is its path
// relative to the directory, which is what errors show.
type configFile struct {
	name string
	data []byte
}

type configFiles struct {
	gateway    *configFile
	tenants    []configFile
	connectors []configFile
	// reader reads the files the YAML refers to, under gateway.yaml's rules.
	reader *reader
}

// refusedFile records a file refused unread (outside the directory, too
// large, not a regular file) as a problem of the whole file.
func refusedFile(list *[]ConfigError, name string, err error) {
	msg := strings.TrimPrefix(err.Error(), name+" ")
	*list = append(*list, ConfigError{File: name, Msg: msg, wholeFile: true})
}

// readGatewayFile reads gateway.yaml and the file rules it sets; the file
// is nil when there is none (every setting then takes its default) or it
// was refused, which refused says. gateway.yaml sets
// config.max_file_bytes, so it is read under the default, and held to its
// own setting when that is lower.
func readGatewayFile(fsys fs.FS) (file *configFile, rules fileRules, refused []ConfigError) {
	rules = fileRules{maxBytes: defaultMaxFileBytes}
	data, _, err := newReader(fsys, rules).read(GatewayFileName)
	switch {
	case err == nil:
		rules = peekFileRules(data)
		if int64(len(data)) > rules.maxBytes {
			refusedFile(&refused, GatewayFileName, &tooLargeError{name: GatewayFileName, size: int64(len(data)), max: rules.maxBytes})
			return nil, rules, refused
		}
		return &configFile{name: GatewayFileName, data: data}, rules, nil
	case !errors.Is(err, fs.ErrNotExist):
		refusedFile(&refused, GatewayFileName, err)
	}
	return nil, rules, refused
}

// readConfigFiles reads gateway.yaml, then every YAML file of tenants/ and
// connectors/, whole, for Snapshot.Unchanged. A file refused unread makes
// the error a *LoadError, returned with everything else that was read.
func readConfigFiles(fsys fs.FS) (configFiles, error) {
	var cf configFiles
	gateway, rules, refused := readGatewayFile(fsys)
	cf.gateway = gateway
	cf.reader = newReader(fsys, rules)
	refuse := func(name string, err error) { refusedFile(&refused, name, err) }
	for _, dir := range []struct {
		name string
		out  *[]configFile
	}{{TenantsDir, &cf.tenants}, {ConnectorsDir, &cf.connectors}} {
		files, err := cf.reader.readYAMLDir(dir.name, refuse)
		if err != nil {
			return cf, err
		}
		*dir.out = files
	}
	if len(refused) > 0 {
		return cf, &LoadError{Errors: refused}
	}
	return cf, nil
}

// readYAMLDir reads every *.yaml and *.yml file of dir, in name order;
// files it cannot read go to refuse.
func (r *reader) readYAMLDir(dir string, refuse func(name string, err error)) ([]configFile, error) {
	var out []configFile
	for f, err := range r.yamlFiles(dir, refuse) {
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// yamlFiles yields every *.yaml and *.yml file of dir, in name order, one
// at a time, so that a caller can compile and drop each before reading
// the next; files it cannot read go to refuse. Hidden names are skipped:
// they are editors' temporary files and the "..data" machinery of
// Kubernetes volumes, never policy.
func (r *reader) yamlFiles(dir string, refuse func(name string, err error)) iter.Seq2[configFile, error] {
	return func(yield func(configFile, error) bool) {
		entries, err := fs.ReadDir(r.fsys, dir)
		if errors.Is(err, fs.ErrNotExist) {
			return
		}
		if err != nil {
			yield(configFile{}, fmt.Errorf("read %s: %w", dir, err))
			return
		}
		for _, e := range entries {
			name := e.Name()
			if strings.HasPrefix(name, ".") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
				continue
			}
			p := path.Join(dir, name)
			info, err := fs.Stat(r.fsys, p) // follows symlinks, as ConfigMap volumes need
			if err != nil {
				yield(configFile{}, fmt.Errorf("stat %s: %w", p, err))
				return
			}
			if info.IsDir() {
				continue
			}
			data, _, err := r.read(p)
			if err != nil {
				refuse(p, err)
				continue
			}
			if !yield(configFile{name: p, data: data}, nil) {
				return
			}
		}
	}
}

// hashFiles is the digest load computes as it reads, for files read whole:
// gateway.yaml, connectors, tenants, then the files they refer to.
func hashFiles(cf configFiles, referenced []configFile) string {
	h := sha256.New()
	if cf.gateway != nil {
		hashFile(h, *cf.gateway)
	}
	for _, f := range cf.connectors {
		hashFile(h, f)
	}
	for _, f := range cf.tenants {
		hashFile(h, f)
	}
	for _, f := range referenced {
		hashFile(h, f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// hashFile adds one file, its name and its length to a digest, so that
// no two different sets of files write the same bytes.
func hashFile(h hash.Hash, f configFile) {
	fmt.Fprintf(h, "%s\x00%d\x00", f.name, len(f.data))
	h.Write(f.data)
}

type builder struct {
	reader  *reader
	secrets map[string]string // resolved values by name; never printed
	// declaredSecrets are the names gateway.yaml lists, resolved or not.
	declaredSecrets map[string]bool
	// undecoded holds the top-level sections of gateway.yaml that did not
	// decode ("" for the whole file): what they declare (secrets, the CA,
	// redaction profiles) is unknown, so references to it are not judged.
	undecoded map[string]bool
	// caFailed: tls.ca_cert or tls.ca_key is set but could not be loaded,
	// which gateway.yaml's own errors say.
	caFailed bool
	// brokenConnectors names the connectors whose files have errors: a
	// tenant's reference to one is not another error.
	brokenConnectors map[string]bool
	snap             *Snapshot
	errs             []ConfigError
	warns            []ConfigError
	referenced       []configFile // files the YAML refers to, as read
	// secretFiles are where the secrets read from files lie: no other key
	// may name them (a hook script's compile error would quote one).
	secretFiles map[location]bool
	hash        hash.Hash // Snapshot.Hash, fed as files are read
	// reuse holds what the previous snapshot compiled; gatewayInputs is
	// the digest of what gateway.yaml's settings were built from.
	reuse         *reuse
	gatewayInputs [sha256.Size]byte
	// lintAdmin checks admin.tokens against the tenants, once they are
	// loaded.
	lintAdmin func()
}

// refuse records a file refused unread.
func (b *builder) refuse(name string, err error) { refusedFile(&b.errs, name, err) }

// scrubSecrets replaces any secret value found in an error or a warning:
// every message is built to name secrets, never to hold them, and this
// keeps it so whatever a file held (docs/admins.md).
func (b *builder) scrubSecrets() {
	if len(b.secrets) == 0 {
		return
	}
	scrub := func(list []ConfigError) {
		for i := range list {
			for name, v := range b.secrets {
				if strings.Contains(list[i].Msg, v) {
					list[i].Msg = strings.ReplaceAll(list[i].Msg, v, "[secret "+name+"]")
				}
			}
		}
	}
	scrub(b.errs)
	scrub(b.warns)
}

// errorf records one problem at doc:line. An argument that joins several
// errors into lines (errors.Join, as hooks.Limits.Validate returns) is
// recorded once per joined error, with the same format, so that every
// problem is its own FILE:LINE: message.
func (b *builder) errorf(doc *yamlDoc, line int, format string, args ...any) {
	for i, arg := range args {
		err, isErr := arg.(error)
		joined, isJoin := arg.(interface{ Unwrap() []error })
		if !isErr || !isJoin || !strings.Contains(err.Error(), "\n") {
			continue
		}
		for _, err := range joined.Unwrap() {
			one := slices.Clone(args)
			one[i] = err
			b.errorf(doc, line, format, one...)
		}
		return
	}
	b.errs = append(b.errs, ConfigError{File: doc.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

func (b *builder) warnf(doc *yamlDoc, line int, format string, args ...any) {
	b.warns = append(b.warns, ConfigError{File: doc.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// decode decodes one file strictly; it reports false when the file had
// errors, so that later checks do not pile up noise on a broken file.
func (b *builder) decode(f configFile, out any) (*yamlDoc, bool) {
	doc, errs := decodeStrict(f.name, f.data, out)
	b.errs = append(b.errs, errs...)
	return doc, len(errs) == 0
}

// gatewayUndecoded reports whether gateway.yaml's section (a top-level
// key) may hold more than was decoded from it.
func (b *builder) gatewayUndecoded(section string) bool {
	return b.undecoded[section] || b.undecoded[""]
}

func (b *builder) gateway(file *configFile, refused bool) {
	var gf gatewayFile
	doc := &yamlDoc{file: GatewayFileName}
	b.undecoded = map[string]bool{}
	if file != nil {
		hashFile(b.hash, *file)
		before := len(b.errs)
		var ok bool
		if doc, ok = b.decode(*file, &gf); !ok {
			// The config is refused, but the list of its problems should
			// be whole and true. So the checks go on: a section that did
			// not decode takes its defaults (rather than the zero values
			// the decoder may have left in it) and what it would have
			// declared is unknown (see undecoded); the other sections
			// decoded in full and are checked as usual. An unknown key
			// leaves the rest of its section decoded, and a second
			// document the first.
			for _, ce := range b.errs[before:] {
				if !ce.decodedRest {
					b.undecoded[doc.section(ce.Line)] = true
				}
			}
			gf.reset(b.undecoded)
		}
	}
	if refused {
		b.undecoded[""] = true // its problem is reported; what it says is unknown
	}
	g := &b.snap.Gateway
	b.configSection(doc, gf.Config)
	g.Listen = orDefault(gf.Listen, ":3128")
	g.AdminListen = orDefault(gf.AdminListen, "127.0.0.1:9128")
	b.listenAddr(doc, "listen", g.Listen)
	b.listenAddr(doc, "admin_listen", g.AdminListen)
	g.DenyCIDRs = b.prefixes(doc, gf.Network.DenyCIDRs, "network", "deny_cidrs")
	g.AllowCIDRs = b.prefixes(doc, gf.Network.AllowCIDRs, "network", "allow_cidrs")
	for i, s := range gf.Network.DNSServers {
		if _, err := netip.ParseAddrPort(s); err != nil {
			b.errorf(doc, doc.line("network", "dns_servers", i), "dns server %q: want ip:port such as 10.0.0.2:53", s)
		}
	}
	g.DNSServers = gf.Network.DNSServers
	g.DNSTimeout = durationOr(gf.Network.DNSTimeout, 2*time.Second)
	g.DialTimeout = durationOr(gf.Network.DialTimeout, 5*time.Second)
	g.ResponseHeaderTimeout = durationOr(gf.Network.ResponseHeaderTimeout, 30*time.Second)

	g.MaxHeaderBytes = int(sizeOr(gf.Limits.MaxHeaderBytes, 64<<10))
	g.IdleTimeout = durationOr(gf.Limits.IdleTimeout, 120*time.Second)
	g.MaxConnections = intOr(gf.Limits.MaxConnections, 10000)
	g.ShutdownGrace = durationOr(gf.Limits.ShutdownGrace, 20*time.Second)
	g.RequestBodyTimeout = durationOr(gf.Limits.RequestBodyTimeout, 30*time.Second)
	g.ResponseWriteTimeout = durationOr(gf.Limits.ResponseWriteTimeout, 60*time.Second)
	g.MaxUnauthenticated = intOr(gf.Limits.MaxUnauthenticated, 1000)
	b.positive(doc, g.MaxHeaderBytes, "limits", "max_header_bytes")
	b.positive(doc, int(g.IdleTimeout), "limits", "idle_timeout")
	b.positive(doc, g.MaxConnections, "limits", "max_connections")
	b.positive(doc, int(g.RequestBodyTimeout), "limits", "request_body_timeout")
	b.positive(doc, int(g.ResponseWriteTimeout), "limits", "response_write_timeout")
	b.positive(doc, g.MaxUnauthenticated, "limits", "max_unauthenticated")
	b.positive(doc, int(g.DNSTimeout), "network", "dns_timeout")
	b.positive(doc, int(g.DialTimeout), "network", "dial_timeout")
	b.positive(doc, int(g.ResponseHeaderTimeout), "network", "response_header_timeout")

	g.UpstreamRoots = b.upstreamRoots(doc, gf.TLS.UpstreamRoots)

	g.AuditOutput = orDefault(gf.Audit.Output, "stdout")
	g.MaxTenantLabels = intOr(gf.Metrics.MaxTenantLabels, 500)
	b.positive(doc, g.MaxTenantLabels, "metrics", "max_tenant_labels")

	// Sections whose features this build does not enforce yet are refused
	// rather than accepted and ignored: a policy that says more than the
	// gateway does would be a silent hole.
	g.Hooks = b.hooksSettings(doc, gf.Hooks)
	if g.Hooks.Defaults.Validate() != nil {
		// Reported above, at gateway.yaml. Connectors' hooks are checked
		// against the built-in defaults instead of repeating it for each.
		g.Hooks.Defaults = hooks.DefaultLimits()
	}
	b.secrets = b.resolveSecrets(doc, gf.Secrets)
	b.loadCA(doc, gf.TLS)

	g.Quota = b.quotaBackend(doc, gf.Quota)
	g.Redaction = b.redactionSettings(doc, gf.Redaction)
	g.TenantDefaults = b.tenantDefaults(doc, gf.TenantDefaults)
	g.AdminTokens = b.adminTokens(doc, gf.Admin)
	g.State = b.stateSettings(doc, gf.State)
	g.Access = b.accessSettings(doc, gf.Access)
	g.SelfService = b.selfServiceSettings(doc, gf.SelfService)
	g.Budgets = b.budgetSettings(doc, gf.Budgets)
	b.lintAdmin = func() { b.lintAdminTenants(doc, gf.Admin) }
}

// configSection checks gateway.yaml's config section, which the file
// reader has already applied (peekFileRules) where it is valid.
func (b *builder) configSection(doc *yamlDoc, f configSectionFile) {
	if s := f.MaxFileBytes; s != nil && (*s < 1 || *s > maxMaxFileBytes) {
		b.errorf(doc, doc.line("config", "max_file_bytes"), "config.max_file_bytes: want 1B to %dMiB", maxMaxFileBytes>>20)
	}
	_, onDisk := b.reader.fsys.(diskDir)
	for i, p := range f.AllowPaths {
		line := doc.line("config", "allow_paths", i)
		switch {
		case !validAllowPath(p):
			b.errorf(doc, line, "config.allow_paths: %q would allow every file; list the directories files may be read from", p)
		case !filepath.IsAbs(p) && !onDisk:
			b.errorf(doc, line, "config.allow_paths: %q is relative, and this config has no directory on disk to resolve it against", p)
		}
	}
}

// upstreamRoots builds the pool upstream certificates are verified
// against: the system roots plus the listed PEM files. It returns nil, which
// means the system roots alone, when none are listed.
func (b *builder) upstreamRoots(doc *yamlDoc, files []string) *x509.CertPool {
	if len(files) == 0 {
		return nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	for i, name := range files {
		line := doc.line("tls", "upstream_roots", i)
		data, err := b.readFile(name)
		if err != nil {
			b.errorf(doc, line, "upstream root %q: %v", name, err)
			continue
		}
		if !pool.AppendCertsFromPEM(data) {
			b.errorf(doc, line, "upstream root %q: no PEM certificate found", name)
		}
	}
	return pool
}

// readFile reads a file a config refers to (a hook script, a secret, the
// CA, upstream roots) and keeps it for the snapshot's hash, so that
// editing it is a change like editing the YAML. A relative name is
// relative to the config directory; wherever it points, it must resolve
// inside the directory or config.allow_paths (docs/admins.md).
func (b *builder) readFile(name string) ([]byte, error) {
	data, _, err := b.readFileAt(name)
	return data, err
}

// readFileAt is readFile that also tells where the file was found.
func (b *builder) readFileAt(name string) ([]byte, location, error) {
	data, loc, err := b.reader.read(name)
	if err == nil {
		b.referenced = append(b.referenced, configFile{name: name, data: data})
	}
	return data, loc, err
}

// DirFS returns the config directory dir, on disk, as the file system Load
// and Snapshot.Unchanged read. Unlike os.DirFS, it lets Load check where
// every file resolves on disk: inside dir, or in a directory listed in
// config.allow_paths.
func DirFS(dir string) fs.FS {
	return diskDir{FS: os.DirFS(dir), dir: dir}
}

// diskDir is a config directory that has a path on disk.
type diskDir struct {
	fs.FS
	dir string
}

func (b *builder) listenAddr(doc *yamlDoc, key, addr string) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		b.errorf(doc, doc.line(key), "%s: want host:port such as \":3128\", got %q", key, addr)
	}
}

func (b *builder) positive(doc *yamlDoc, v int, path ...any) {
	if v <= 0 {
		b.errorf(doc, doc.line(path...), "%s: must be greater than zero", path[len(path)-1])
	}
}

func (b *builder) prefixes(doc *yamlDoc, values []string, path ...any) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range values {
		line := doc.line(append(path, i)...)
		p, err := parsePrefix(s)
		if err != nil {
			b.errorf(doc, line, "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// parsePrefix accepts a canonical CIDR or a bare address (a /32 or /128).
func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: want an address or a prefix such as 10.0.0.0/8", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: want an address or a prefix such as 10.0.0.0/8", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: host bits are set; did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// connectorSet indexes connector versions by name.
type connectorSet map[string][]*Connector // versions sorted ascending

func (b *builder) connectors() (connectorSet, error) {
	set := connectorSet{}
	seen := map[string]string{} // name@version -> file
	b.brokenConnectors = map[string]bool{}
	for f, err := range b.reader.yamlFiles(ConnectorsDir, b.refuse) {
		if err != nil {
			return nil, err
		}
		hashFile(b.hash, f)
		var cf connectorFile
		doc, ok := b.decode(f, &cf)
		if !ok {
			b.brokenConnectors[cf.Name] = true
			continue
		}
		refs := len(b.referenced)
		c, ok := b.connector(doc, cf)
		if !ok {
			b.brokenConnectors[cf.Name] = true
			continue
		}
		c = b.reuse.connector(c, b.connectorInputs(f, b.referenced[refs:]))
		key := fmt.Sprintf("%s@%d", c.Name, c.Version)
		if prev, dup := seen[key]; dup {
			b.errorf(doc, doc.line("version"), "connector %s is already defined in %s", key, prev)
			continue
		}
		seen[key] = f.name
		set[c.Name] = append(set[c.Name], c)
		b.snap.connectors++
	}
	for _, versions := range set {
		sort.Slice(versions, func(i, j int) bool { return versions[i].Version < versions[j].Version })
	}
	return set, nil
}

func (b *builder) connector(doc *yamlDoc, cf connectorFile) (*Connector, bool) {
	before := len(b.errs)
	if !idPattern.MatchString(cf.Name) {
		b.errorf(doc, doc.line("name"), "name: want letters, digits, '.', '_' or '-' (at most 64), got %q", cf.Name)
	}
	version := 1
	if cf.Version != nil {
		version = *cf.Version
		if version < 1 {
			b.errorf(doc, doc.line("version"), "version: must be 1 or more")
		}
	}
	rule := b.matchRule(doc, allowlist.Allow, cf.Hosts, cf.Ports, cf.Methods, cf.Paths)
	if cf.Inspect && b.snap.Gateway.CA == nil && !b.caFailed && !b.gatewayUndecoded("tls") {
		b.errorf(doc, doc.line("inspect"), "inspect: true needs tls.ca_cert and tls.ca_key in %s; create them with: egressgw ca init --out DIR", GatewayFileName)
	}
	var inject []InjectedHeader
	allowPlaintext := false
	if cf.Inject != nil {
		inject = b.injectHeaders(doc, cf.Inject.Headers)
		allowPlaintext = cf.Inject.AllowPlaintext
	}
	requestIDHeader := b.requestIDHeader(doc, cf)
	connectorHooks := b.connectorHooks(doc, cf.Hooks)
	beforeRedact := len(b.errs)
	redact := b.connectorRedaction(doc, cf.Redact)
	if b.gatewayUndecoded("redaction") {
		// Its only errors are profiles missing from gateway.yaml, which
		// may well be in the part that did not decode.
		b.errs = b.errs[:beforeRedact]
	}
	var rate quota.Limit
	if cf.Quota != nil {
		rate = b.rate(doc, cf.Quota.RequestsPerSecond, cf.Quota.Burst, "quota")
	}
	price := b.price(doc, cf.Price)
	if len(b.errs) > before {
		return nil, false
	}
	c := &Connector{Price: price,
		Name: cf.Name, Version: version, File: doc.file,
		Inspect: cf.Inspect, Upgrade: cf.Upgrade, Inject: inject, AllowPlaintext: allowPlaintext,
		RequestIDHeader: requestIDHeader, Rate: rate, Hooks: connectorHooks, Redact: redact, rule: rule,
	}
	if secrets := c.SecretValues(); len(secrets) > 0 {
		values := make([][]byte, len(secrets))
		for i, v := range secrets {
			values[i] = []byte(v)
		}
		scrubber, err := redaction.NewSecretScrubber(values)
		if err != nil {
			b.errorf(doc, doc.line("inject"), "inject: %v", err)
		}
		c.Scrubber = scrubber
	}
	if c.NeedsInspection() && !c.Inspect {
		b.warnf(doc, doc.line("name"), "connector %q restricts methods or paths, injects credentials or runs hooks without inspect: true: HTTPS tunnels to it are refused, only plain HTTP can use it", c.Name)
	}
	return c, true
}

// matchRule validates and compiles the matching part shared by connectors
// and tenant rules; doc paths are relative to prefix.
func (b *builder) matchRule(doc *yamlDoc, action allowlist.Action, hosts []string, ports []int, methods, paths []string, prefix ...any) allowlist.Rule {
	at := func(steps ...any) int { return doc.line(append(append([]any{}, prefix...), steps...)...) }
	r := allowlist.Rule{Action: action}
	if len(hosts) == 0 {
		b.errorf(doc, at("hosts"), "hosts: at least one host pattern is required")
	}
	for i, h := range hosts {
		p, err := allowlist.ParsePattern(h)
		if err != nil {
			b.errorf(doc, at("hosts", i), "host %q: %v", h, err)
			continue
		}
		r.Hosts = append(r.Hosts, p)
	}
	b.lintAddresses(doc, action, hosts, at)
	for i, port := range ports {
		if port < 1 || port > 65535 {
			b.errorf(doc, at("ports", i), "port %d: want 1 to 65535", port)
			continue
		}
		r.Ports = append(r.Ports, uint16(port))
	}
	for i, m := range methods {
		if !methodPattern.MatchString(m) {
			b.errorf(doc, at("methods", i), "method %q: want an upper-case HTTP method such as GET", m)
			continue
		}
		r.Methods = append(r.Methods, m)
	}
	for i, p := range paths {
		if !strings.HasPrefix(p, "/") {
			b.errorf(doc, at("paths", i), "path %q: want a prefix starting with /", p)
			continue
		}
		r.Paths = append(r.Paths, p)
	}
	return r
}

func (b *builder) tenants(connectors connectorSet) error {
	owner := map[string]string{} // tenant id -> file
	type sourceOwner struct {
		prefix netip.Prefix
		id     string
	}
	var sources []sourceOwner
	for f, err := range b.reader.yamlFiles(TenantsDir, b.refuse) {
		if err != nil {
			return err
		}
		hashFile(b.hash, f)
		t, doc, ok := b.tenantFrom(f, connectors)
		if !ok {
			continue
		}
		if prev, dup := owner[t.ID]; dup {
			b.errorf(doc, doc.line("id"), "tenant %q is already defined in %s", t.ID, prev)
			continue
		}
		for i, p := range t.SourceCIDRs {
			for _, other := range sources {
				if other.prefix.Overlaps(p) {
					b.errorf(doc, doc.line("auth", "source_cidrs", i),
						"source CIDR %s overlaps %s of tenant %q: a client address must identify one tenant", p, other.prefix, other.id)
				}
			}
		}
		for _, p := range t.SourceCIDRs {
			sources = append(sources, sourceOwner{prefix: p, id: t.ID})
		}
		owner[t.ID] = f.name
		b.snap.tenants[t.ID] = t
		b.snap.tenantIDs = append(b.snap.tenantIDs, t.ID)
	}
	sort.Strings(b.snap.tenantIDs)
	return nil
}

func (b *builder) tenant(doc *yamlDoc, tf tenantFile, connectors connectorSet) (*Tenant, bool) {
	before := len(b.errs)
	t := &Tenant{ID: tf.ID, File: doc.file, Mode: ModeEnforce, QuotaKey: tenantQuotaKey(tf.ID)}
	if !idPattern.MatchString(tf.ID) {
		b.errorf(doc, doc.line("id"), "id: want letters, digits, '.', '_' or '-' (at most 64), got %q", tf.ID)
	}
	if tf.Auth.TokenSHA256 != "" {
		if !hexSHA256.MatchString(tf.Auth.TokenSHA256) {
			b.errorf(doc, doc.line("auth", "token_sha256"), "token_sha256: want 64 lower-case hex digits (egressgw token new prints one)")
		} else {
			raw, _ := hex.DecodeString(tf.Auth.TokenSHA256)
			copy(t.tokenHash[:], raw)
			t.hasToken = true
		}
	}
	t.SourceCIDRs = b.prefixes(doc, tf.Auth.SourceCIDRs, "auth", "source_cidrs")
	if tf.Auth.TokenSHA256 == "" && len(tf.Auth.SourceCIDRs) == 0 {
		b.errorf(doc, doc.line("auth"), "auth: set token_sha256 or source_cidrs, or no client can be identified as this tenant")
	}
	switch Mode(tf.Mode) {
	case "", ModeEnforce:
	case ModeReport:
		t.Mode = ModeReport
	default:
		b.errorf(doc, doc.line("mode"), "mode: want enforce or report, got %q", tf.Mode)
	}
	t.Quota = b.tenantQuota(doc, tf.Quota, "quota").withDefaults(tf.Quota, b.snap.Gateway.TenantDefaults)
	if max := b.snap.Gateway.MaxConnections; t.Quota.MaxConcurrent >= max {
		b.warnf(doc, doc.line("quota", "max_concurrent"), "tenant %q may hold %d concurrent requests and tunnels, which is at least limits.max_connections (%d): it alone could take every connection", tf.ID, t.Quota.MaxConcurrent, max)
	}

	used := map[string]bool{}
	brokenRef := false
	for i, ref := range tf.Connectors {
		c, err := connectors.resolve(ref)
		if name, _, _ := strings.Cut(ref, "@"); err != nil && b.brokenConnectors[name] {
			// The connector's file has errors, reported there (the
			// version this tenant pins may be the broken one).
			brokenRef = true
			continue
		}
		if err != nil {
			b.errorf(doc, doc.line("connectors", i), "%v", err)
			continue
		}
		if used[c.Name] {
			b.errorf(doc, doc.line("connectors", i), "connector %q is listed twice", c.Name)
			continue
		}
		used[c.Name] = true
		t.rules = append(t.rules, Rule{Name: fmt.Sprintf("%s@%d", c.Name, c.Version), Kind: KindConnector, Match: c.rule, Connector: c, Upgrade: c.Upgrade,
			Bucket: quota.Bucket{Key: connectorQuotaKey(tf.ID, c.Name), Limit: c.Rate}})
	}
	names := map[string]bool{}
	for i, rf := range tf.Rules {
		name := rf.Name
		if name == "" {
			name = fmt.Sprintf("rules[%d]", i)
		}
		if names[name] {
			b.errorf(doc, doc.line("rules", i, "name"), "rule name %q is used twice", name)
		}
		names[name] = true
		action := allowlist.Allow
		switch rf.Action {
		case "", "allow":
		case "deny":
			action = allowlist.Deny
		default:
			b.errorf(doc, doc.line("rules", i, "action"), "action: want allow or deny, got %q", rf.Action)
		}
		m := b.matchRule(doc, action, rf.Hosts, rf.Ports, rf.Methods, rf.Paths, "rules", i)
		t.rules = append(t.rules, Rule{Name: name, Kind: KindRule, Match: m, Upgrade: rf.Upgrade})
		if action == allowlist.Allow && m.Conditional() && tunnelable(m) {
			b.warnf(doc, doc.line("rules", i), "rule %q restricts methods or paths, which an HTTPS tunnel (CONNECT) hides and a tenant rule cannot inspect: tunnels to its hosts are refused; %s", name, moveToConnector)
		}
	}
	t.Budgets = b.budgets(doc, tf.Budgets, used)
	if len(t.rules) == 0 && len(b.errs) == before && !brokenRef {
		b.warnf(doc, doc.line("id"), "tenant %q has no connectors or rules: every request will be denied", tf.ID)
	}
	if len(b.errs) > before || brokenRef {
		return nil, false
	}
	b.lintTenant(doc, tf, t)
	matchRules := make([]allowlist.Rule, len(t.rules))
	for i, r := range t.rules {
		matchRules[i] = r.Match
	}
	t.set = allowlist.NewSet(matchRules)
	t.indexUpgradeDenies()
	return t, true
}

// indexUpgradeDenies builds upgradeDenies: each deny rule that restricts
// methods or paths and does not say upgrade: true, as a rule on its hosts
// and ports alone, since after a protocol switch any method and path may
// follow.
func (t *Tenant) indexUpgradeDenies() {
	var denies []allowlist.Rule
	for i, r := range t.rules {
		if r.Match.Action != allowlist.Deny || !r.Match.Conditional() || r.Upgrade {
			continue
		}
		denies = append(denies, allowlist.Rule{Action: allowlist.Deny, Hosts: r.Match.Hosts, Ports: r.Match.Ports})
		t.upgradeDenyRules = append(t.upgradeDenyRules, i)
	}
	if len(denies) > 0 {
		t.upgradeDenies = allowlist.NewSet(denies)
	}
}

// moveToConnector is what to do with a tenant rule whose methods or paths
// must apply to HTTPS: only a connector can inspect a tunnel.
const moveToConnector = "move the restriction into a connector with inspect: true"

// tunnelAdvice says how to make a rule's methods and paths checkable inside
// an HTTPS tunnel, for the message that refuses the tunnel.
func tunnelAdvice(kind RuleKind) string {
	if kind == KindConnector {
		return "the connector needs inspect: true"
	}
	return "a tenant rule cannot inspect tunnels: " + moveToConnector
}

// tunnelable reports whether clients would reach r's ports through CONNECT:
// any port but 80, where plain HTTP is sent as it is. No ports means the
// defaults, 80 and 443.
func tunnelable(r allowlist.Rule) bool {
	return len(r.Ports) == 0 || slices.ContainsFunc(r.Ports, func(p uint16) bool { return p != 80 })
}

var (
	secretName      = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	secretReference = regexp.MustCompile(`\$\{secret:([^}]*)\}`)
	headerName      = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// minSecretLen is the shortest secret accepted: scrubbing a shorter value
// from everything returned to the sandbox would shred ordinary text.
const minSecretLen = 8

// resolveSecrets reads every secret of gateway.yaml from its environment
// variable or file. Values are kept in memory only, and errors name the
// source, never the value.
func (b *builder) resolveSecrets(doc *yamlDoc, sources map[string]secretSourceFile) map[string]string {
	out := map[string]string{}
	names := make([]string, 0, len(sources))
	for name := range sources {
		names = append(names, name)
	}
	sort.Strings(names)
	b.declaredSecrets = map[string]bool{}
	for _, name := range names {
		b.declaredSecrets[name] = true
		line := doc.line("secrets", name)
		if !secretName.MatchString(name) {
			b.errorf(doc, line, "secret name %q: want letters, digits, '_', '.' or '-'", name)
			continue
		}
		if value, ok := b.resolveSecret(doc, line, fmt.Sprintf("secret %q", name), sources[name]); ok {
			out[name] = value
		}
	}
	return out
}

// resolveSecret reads one secret from its environment variable or file;
// what names it in errors, never its value.
func (b *builder) resolveSecret(doc *yamlDoc, line int, what string, src secretSourceFile) (string, bool) {
	var value string
	switch {
	case src.Env != "" && src.File != "":
		b.errorf(doc, line, "%s: set env or file, not both", what)
		return "", false
	case src.Env != "":
		v, ok := os.LookupEnv(src.Env)
		if !ok || v == "" {
			b.errorf(doc, line, "%s: environment variable %s is not set", what, src.Env)
			return "", false
		}
		value = v
	case src.File != "":
		data, loc, err := b.readFileAt(src.File)
		if err != nil {
			b.errorf(doc, line, "%s: %v", what, err)
			return "", false
		}
		b.secretFiles[loc] = true
		value = strings.TrimRight(string(data), "\r\n")
	default:
		b.errorf(doc, line, "%s: set env or file", what)
		return "", false
	}
	if strings.ContainsAny(value, "\r\n\x00") {
		b.errorf(doc, line, "%s: the value holds a line break or NUL, which no header may carry", what)
		return "", false
	}
	if len(value) < minSecretLen {
		b.errorf(doc, line, "%s: shorter than %d bytes; too short to be scrubbed safely from responses", what, minSecretLen)
		return "", false
	}
	return value, true
}

// injectHeaders validates a connector's inject.headers and resolves the
// ${secret:NAME} references in their values.
func (b *builder) injectHeaders(doc *yamlDoc, headers map[string]string) []InjectedHeader {
	names := make([]string, 0, len(headers))
	for name := range headers {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []InjectedHeader
	for _, name := range names {
		line := doc.line("inject", "headers", name)
		canonical := http.CanonicalHeaderKey(name)
		if !headerName.MatchString(name) || isHopOrFraming(canonical) {
			b.errorf(doc, line, "inject header %q: not a header a connector may set", name)
			continue
		}
		h := InjectedHeader{Name: canonical}
		value := headers[name]
		failed := false
		h.Value = secretReference.ReplaceAllStringFunc(value, func(ref string) string {
			secret := secretReference.FindStringSubmatch(ref)[1]
			v, ok := b.secrets[secret]
			switch {
			case !ok && b.declaredSecrets[secret]:
				b.errorf(doc, line, "inject header %q: secret %q could not be resolved (see %s)", name, secret, GatewayFileName)
			case !ok && !b.gatewayUndecoded("secrets"):
				b.errorf(doc, line, "inject header %q: secret %q is not defined in %s", name, secret, GatewayFileName)
			}
			if !ok {
				failed = true
				return ""
			}
			h.Secrets = append(h.Secrets, v)
			return v
		})
		if strings.Contains(strings.ReplaceAll(value, "${secret:", ""), "${") && !failed {
			b.errorf(doc, line, "inject header %q: only ${secret:NAME} references are supported", name)
			failed = true
		}
		if !failed {
			out = append(out, h)
		}
	}
	return out
}

// isHopOrFraming names the headers the gateway computes itself.
func isHopOrFraming(canonical string) bool {
	switch canonical {
	case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Te", "Trailer", "Upgrade":
		return true
	}
	return strings.HasPrefix(canonical, "Proxy-")
}

// loadCA loads the signing CA of inspected tunnels, when configured.
func (b *builder) loadCA(doc *yamlDoc, t tlsFile) {
	if t.CACert == "" && t.CAKey == "" {
		return
	}
	b.caFailed = true // until it loads
	line := doc.line("tls", "ca_cert")
	if t.CACert == "" || t.CAKey == "" {
		b.errorf(doc, doc.line("tls"), "tls: set both ca_cert and ca_key")
		return
	}
	certPEM, err := b.readFile(t.CACert)
	if err != nil {
		b.errorf(doc, line, "ca_cert: %v", err)
		return
	}
	keyPEM, keyAt, err := b.readFileAt(t.CAKey)
	if err != nil {
		b.errorf(doc, doc.line("tls", "ca_key"), "ca_key: %v", err)
		return
	}
	b.secretFiles[keyAt] = true // a private key: no script either
	ca, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		b.errorf(doc, line, "ca_cert/ca_key: %v", err)
		return
	}
	leaf, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil || !leaf.IsCA || leaf.KeyUsage&x509.KeyUsageCertSign == 0 {
		b.errorf(doc, line, "ca_cert: not a CA certificate allowed to sign certificates")
		return
	}
	b.caFailed = false
	ca.Leaf = leaf
	sum := sha256.Sum256(ca.Certificate[0])
	b.snap.Gateway.CA = &ca
	b.snap.Gateway.CAFingerprint = hex.EncodeToString(sum[:])
}

// resolve finds the connector a tenant names: "NAME" is the highest
// version, "NAME@V" a pinned one.
func (cs connectorSet) resolve(ref string) (*Connector, error) {
	name, pin, pinned := strings.Cut(ref, "@")
	versions := cs[name]
	if len(versions) == 0 {
		return nil, fmt.Errorf("connector %q is not defined in %s/", name, ConnectorsDir)
	}
	if !pinned {
		return versions[len(versions)-1], nil
	}
	v, err := strconv.Atoi(pin)
	if err != nil || v < 1 {
		return nil, fmt.Errorf("connector reference %q: want NAME or NAME@VERSION", ref)
	}
	for _, c := range versions {
		if c.Version == v {
			return c, nil
		}
	}
	have := make([]string, len(versions))
	for i, c := range versions {
		have[i] = strconv.Itoa(c.Version)
	}
	return nil, fmt.Errorf("connector %q has no version %d (defined: %s)", name, v, strings.Join(have, ", "))
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func durationOr(d *Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return time.Duration(*d)
}

func sizeOr(s *Size, def Size) Size {
	if s == nil {
		return def
	}
	return *s
}

func intOr(v *int, def int) int {
	if v == nil {
		return def
	}
	return *v
}
