package policy

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/budget"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/redaction"
)

// Snapshot is one complete, validated policy: gateway settings, tenants and
// connectors with their compiled matchers. It is immutable once built; a
// request holds one snapshot from start to end, and a reload builds a new one.
type Snapshot struct {
	Gateway Gateway
	// Hash is a sha256 over the path and content of every file the load
	// read: the YAML files and the files they refer to.
	Hash     string
	LoadedAt time.Time
	Warnings []ConfigError // problems that do not stop the load (shown by check)

	referenced []string // the files the YAML refers to, in the order read

	tenants    map[string]*Tenant
	tenantIDs  []string // sorted
	sources    []sourceTenant
	connectors int
	versions   connectorSet // what tenants' connector references resolve against
	// gatewayInputs digests what Gateway was built from, for reuse.
	gatewayInputs [sha256.Size]byte
}

type sourceTenant struct {
	prefix netip.Prefix
	tenant *Tenant
}

// Mode says whether a tenant's host/port/method/path denials are enforced or
// only reported.
type Mode string

// The tenant modes of docs/reference.md.
const (
	ModeEnforce Mode = "enforce"
	ModeReport  Mode = "report"
)

// Tenant is one tenant's compiled policy.
type Tenant struct {
	ID          string
	File        string
	Mode        Mode
	SourceCIDRs []netip.Prefix
	Quota       TenantQuota
	// QuotaKey keys the tenant's request bucket and concurrency slots in
	// the quota backend.
	QuotaKey string
	// Budgets bound the tenant's totals over calendar periods, in file
	// order (docs/reference.md, "Budgets and cost").
	Budgets []budget.Budget

	tokenHash [sha256.Size]byte
	hasToken  bool
	rules     []Rule // connectors first, in the tenant's order, then the tenant's own rules
	set       *allowlist.Set
	// upgradeDenies holds, as host and port rules, the deny rules that
	// restrict methods or paths and do not say upgrade: true; index i of a
	// match is rules[upgradeDenyRules[i]]. A protocol switch to a host they
	// cover is refused (see verdict).
	upgradeDenies    *allowlist.Set
	upgradeDenyRules []int
	source           [sha256.Size]byte // digest of the file it was compiled from, for reuse
}

// RuleKind tells a connector from a tenant's own rule.
type RuleKind string

// The kinds of rule a tenant's list holds.
const (
	KindConnector RuleKind = "connector"
	KindRule      RuleKind = "rule"
)

// Rule is one entry of a tenant's ordered rule list, as matched.
type Rule struct {
	Name      string // "github@3" for a connector, the rule's name otherwise
	Kind      RuleKind
	Match     allowlist.Rule
	Connector *Connector // set for KindConnector
	// Bucket is the connector's request bucket for this tenant (its key
	// and the connector's rate); a zero Limit when it sets none.
	Bucket quota.Bucket
	// Upgrade (upgrade: true) lets a protocol switch (WebSocket, h2c)
	// through although the rule restricts methods or paths, or its
	// connector runs hooks, injects or redacts: none of that applies to
	// the bytes after a 101 (docs/admins.md).
	Upgrade bool
}

// upgradeRefusal says why an Upgrade request that r allows must be
// refused, or "" when r lets upgrades through: a rule with no method or
// path restriction, whose connector (if any) transforms nothing, or one
// that says upgrade: true.
func (r *Rule) upgradeRefusal() string {
	switch {
	case r.Upgrade:
		return ""
	case r.Connector != nil && r.Connector.NeedsInspection():
		return fmt.Sprintf("connector %q restricts methods or paths, runs hooks, injects credentials or redacts, none of which applies to the bytes after a protocol switch (101); upgrades through it are refused unless the connector sets upgrade: true", r.Connector.Name)
	case r.Match.Conditional():
		return fmt.Sprintf("%s %q restricts methods or paths, which cannot be enforced on the bytes after a protocol switch (101); upgrades through it are refused unless the rule sets upgrade: true", r.Kind, r.Name)
	}
	return ""
}

// Connector is one version of a connector definition.
type Connector struct {
	Name    string
	Version int
	File    string
	// Inspect: tunnels to the connector are intercepted with the gateway's
	// CA, so its methods, paths and injection apply inside them.
	Inspect bool
	// Upgrade (upgrade: true) lets protocol switches through although the
	// connector needs to read what it carries (NeedsInspection).
	Upgrade bool
	// Inject holds headers set on every request the connector allows, with
	// their secrets resolved; never logged, never shown to the sandbox.
	Inject []InjectedHeader
	// AllowPlaintext lets a connector that injects be used over plain
	// HTTP, where the secret would cross the network in clear text.
	AllowPlaintext bool
	// RequestIDHeader is the canonical header that carries the gateway's
	// request id to the upstream (request_id_header, DefaultRequestIDHeader
	// when unset); "" sends none.
	RequestIDHeader string
	// Rate limits requests through this connector, per tenant; the zero
	// Limit: none.
	Rate quota.Limit
	// Price is what its traffic costs (price), for budgets and statements.
	Price budget.Price
	// Hooks transform requests and responses; nil: none.
	Hooks *ConnectorHooks
	// Redact scrubs what leaves and what comes back; nil: nothing.
	Redact *ConnectorRedaction
	// Scrubber removes the injected secrets from everything that goes
	// back to the sandbox; nil when the connector injects none.
	Scrubber *redaction.SecretScrubber
	rule     allowlist.Rule
	inputs   [sha256.Size]byte // digest of everything it was compiled from, for reuse
}

// InjectedHeader is one header a connector sets on the sandbox's behalf.
type InjectedHeader struct {
	Name    string   // canonical
	Value   string   // secrets resolved
	Secrets []string // the resolved secret values inside Value, for scrubbing
}

// NeedsInspection reports whether the connector does something only
// readable traffic allows: method or path rules, or injection. Such a
// connector refuses uninspected tunnels.
func (c *Connector) NeedsInspection() bool {
	return c.rule.Conditional() || len(c.Inject) > 0 || c.Hooks != nil || c.Redact != nil
}

// SecretValues lists every secret value the connector injects, for
// scrubbing from what goes back to the sandbox.
func (c *Connector) SecretValues() []string {
	var out []string
	for _, h := range c.Inject {
		out = append(out, h.Secrets...)
	}
	return out
}

// Gateway holds the settings of gateway.yaml with defaults applied.
type Gateway struct {
	Listen      string
	AdminListen string

	DenyCIDRs   []netip.Prefix
	AllowCIDRs  []netip.Prefix
	DNSServers  []string
	DNSTimeout  time.Duration
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// head once the request is sent; a silent upstream gets 504.
	ResponseHeaderTimeout time.Duration

	MaxHeaderBytes int
	IdleTimeout    time.Duration
	MaxConnections int
	ShutdownGrace  time.Duration
	// RequestBodyTimeout is the longest pause while reading a request
	// body; ResponseWriteTimeout the longest a client may leave a
	// response unread; MaxUnauthenticated bounds the connections that
	// have not completed an authenticated request (docs/reference.md).
	RequestBodyTimeout   time.Duration
	ResponseWriteTimeout time.Duration
	MaxUnauthenticated   int

	UpstreamRoots *x509.CertPool // nil: the system roots
	// CA signs the leaf certificates of inspected tunnels; nil when
	// tls.ca_cert is not set. CAFingerprint changes when the CA does.
	CA            *tls.Certificate
	CAFingerprint string

	Quota QuotaBackend
	// TenantDefaults is tenant_defaults.quota: what each tenant gets
	// where its own quota is silent, field by field.
	TenantDefaults TenantQuota
	Hooks          Hooks
	Redaction      Redaction

	AuditOutput     string
	MaxTenantLabels int

	// AdminTokens are who may use the admin API; reloadable. State and
	// Access configure the state store, opened once at start (changing
	// them needs a restart).
	AdminTokens []AdminToken
	State       StateSettings
	Access      AccessSettings
	// SelfService is where the gateway answers a sandbox about itself;
	// reloadable.
	SelfService SelfServiceSettings
	// Budgets holds what budgets share across tenants; reloadable.
	Budgets BudgetSettings
}

// Tenant returns the tenant with the given id.
func (s *Snapshot) Tenant(id string) (*Tenant, bool) {
	t, ok := s.tenants[id]
	return t, ok
}

// TenantIDs lists every tenant id, sorted.
func (s *Snapshot) TenantIDs() []string { return s.tenantIDs }

// Connectors counts connector definitions (every version of every name).
func (s *Snapshot) Connectors() int { return s.connectors }

// Referenced lists the files the YAML refers to (hook scripts, secret
// files, the CA, upstream roots) as written: relative to the config
// directory, or absolute. A watcher needs them to see those files change.
func (s *Snapshot) Referenced() []string { return slices.Clone(s.referenced) }

// dummyTokenHash is compared against when a tenant is unknown or has no
// token, so that answering takes as long as a wrong token would.
var dummyTokenHash = sha256.Sum256([]byte("egressgw: no such tenant"))

// Authenticate checks a Basic proxy credential. The token is compared by its
// SHA-256 in constant time, and unknown tenants take the same path, so the
// answer's timing tells nothing about which tenants exist.
func (s *Snapshot) Authenticate(tenantID, token string) (*Tenant, bool) {
	return s.AuthenticateSum(tenantID, sha256.Sum256([]byte(token)))
}

// AuthenticateSum is Authenticate for a token already hashed; it lets an
// open tunnel be re-checked against a new policy without keeping the token.
func (s *Snapshot) AuthenticateSum(tenantID string, sum [sha256.Size]byte) (*Tenant, bool) {
	t, known := s.tenants[tenantID]
	want := dummyTokenHash
	if known && t.hasToken {
		want = t.tokenHash
	}
	match := subtle.ConstantTimeCompare(sum[:], want[:]) == 1
	if !known || !t.hasToken || !match {
		return nil, false
	}
	return t, true
}

// TenantBySource returns the tenant whose source_cidrs contain addr, the most
// specific prefix first; nil when none does.
func (s *Snapshot) TenantBySource(addr netip.Addr) *Tenant {
	addr = addr.Unmap()
	for _, st := range s.sources {
		if st.prefix.Contains(addr) {
			return st.tenant
		}
	}
	return nil
}

func (s *Snapshot) indexSources() {
	for _, id := range s.tenantIDs {
		t := s.tenants[id]
		for _, p := range t.SourceCIDRs {
			s.sources = append(s.sources, sourceTenant{prefix: p, tenant: t})
		}
	}
	sort.SliceStable(s.sources, func(i, j int) bool {
		return s.sources[i].prefix.Bits() > s.sources[j].prefix.Bits()
	})
}

// Rules returns the tenant's rule list in evaluation order.
func (t *Tenant) Rules() []Rule { return t.rules }
