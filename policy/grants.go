package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/state"
)

// KindGrant marks a rule that comes from a grant of the state store, not
// from the config directory (docs/reference.md, "Access requests and
// grants").
const KindGrant RuleKind = "grant"

// GrantRulePrefix starts the rule name of every grant: "grant:ID" in
// decisions, audit lines and explain.
const GrantRulePrefix = "grant:"

// Grants is the compiled set of the grants active when it was built: per
// tenant, allow rules named "grant:ID". It is immutable and kept apart
// from the Snapshot, since grants change every second and the snapshot
// on reloads; a decision takes both (Tenant.DecideGranted). A nil *Grants
// holds no grant.
type Grants struct {
	tenants map[string]*tenantGrants
	count   int
	next    time.Time // the earliest ExpiresAt; zero when empty
}

// tenantGrants are one tenant's grants, latest expiry first, so that the
// first match of the set is the grant that lasts longest: when it has
// expired, every later match has too.
type tenantGrants struct {
	rules []GrantRule
	set   *allowlist.Set
}

// GrantRule is one grant as a rule of its tenant.
type GrantRule struct {
	Name      string // "grant:ID"
	ID        string
	Match     allowlist.Rule
	ExpiresAt time.Time
}

// CompileGrants builds the grant set of gs as of now. A grant that has
// expired by now is left out; one whose host pattern, ports, methods or
// paths do not parse is dropped, with an error saying why, and never
// widened to something that would parse.
func CompileGrants(gs []state.Grant, now time.Time) (*Grants, []error) {
	set := &Grants{tenants: map[string]*tenantGrants{}}
	var dropped []error
	for _, g := range gs {
		if !g.Active(now) {
			continue
		}
		rule, err := grantRule(g)
		if err != nil {
			dropped = append(dropped, fmt.Errorf("grant %q of tenant %q dropped: %w", g.ID, g.Tenant, err))
			continue
		}
		tg := set.tenants[g.Tenant]
		if tg == nil {
			tg = &tenantGrants{}
			set.tenants[g.Tenant] = tg
		}
		tg.rules = append(tg.rules, rule)
		set.count++
		if set.next.IsZero() || rule.ExpiresAt.Before(set.next) {
			set.next = rule.ExpiresAt
		}
	}
	for _, tg := range set.tenants {
		slices.SortFunc(tg.rules, func(a, b GrantRule) int {
			if c := b.ExpiresAt.Compare(a.ExpiresAt); c != 0 {
				return c
			}
			return strings.Compare(a.ID, b.ID)
		})
		matches := make([]allowlist.Rule, len(tg.rules))
		for i, r := range tg.rules {
			matches[i] = r.Match
		}
		tg.set = allowlist.NewSet(matches)
	}
	return set, dropped
}

// grantRule checks g as a tenant rule is checked at load, and compiles it.
func grantRule(g state.Grant) (GrantRule, error) {
	if g.ID == "" || g.Tenant == "" {
		return GrantRule{}, fmt.Errorf("no id or tenant")
	}
	p, err := allowlist.ParsePattern(g.Host)
	if err != nil {
		return GrantRule{}, fmt.Errorf("host %q: %w", g.Host, err)
	}
	r := GrantRule{Name: GrantRulePrefix + g.ID, ID: g.ID, ExpiresAt: g.ExpiresAt,
		Match: allowlist.Rule{Action: allowlist.Allow, Hosts: []allowlist.Pattern{p}}}
	if len(g.Ports) == 0 {
		// Without ports a rule would default to 80 and 443: a grant says
		// which ports it opens, or opens none.
		return GrantRule{}, fmt.Errorf("no ports")
	}
	for _, port := range g.Ports {
		if port < 1 || port > 65535 {
			return GrantRule{}, fmt.Errorf("port %d: want 1 to 65535", port)
		}
		r.Match.Ports = append(r.Match.Ports, uint16(port))
	}
	for _, m := range g.Methods {
		if !methodPattern.MatchString(m) {
			return GrantRule{}, fmt.Errorf("method %q: want an upper-case HTTP method such as GET", m)
		}
		r.Match.Methods = append(r.Match.Methods, m)
	}
	for _, path := range g.Paths {
		if !strings.HasPrefix(path, "/") {
			return GrantRule{}, fmt.Errorf("path %q: want a prefix starting with /", path)
		}
		r.Match.Paths = append(r.Match.Paths, path)
	}
	return r, nil
}

// Len counts the grants in the set.
func (g *Grants) Len() int {
	if g == nil {
		return 0
	}
	return g.count
}

// NextExpiry is the earliest ExpiresAt of the set, when it must be built
// again; zero when the set is empty.
func (g *Grants) NextExpiry() time.Time {
	if g == nil {
		return time.Time{}
	}
	return g.next
}

// Rules lists a tenant's grants as rules, latest expiry first.
func (g *Grants) Rules(tenant string) []GrantRule {
	if g == nil || g.tenants[tenant] == nil {
		return nil
	}
	return g.tenants[tenant].rules
}

// At is the set as a decision at now sees it: a grant applies until its
// ExpiresAt, not a moment later, however long ago the set was built. A
// zero now sees no grant.
func (g *Grants) At(now time.Time) GrantsAt { return GrantsAt{set: g, now: now} }

// AnyTime is the set with every grant in it applying, expired or not: to
// tell which grant allowed something once it has ended.
func (g *Grants) AnyTime() GrantsAt { return GrantsAt{set: g, anyTime: true} }

// GrantsAt is a grant set seen at one moment; the zero value holds no
// grant.
type GrantsAt struct {
	set     *Grants
	now     time.Time
	anyTime bool
}

// match finds the grant of tenant that allows q, if one does.
func (ga GrantsAt) match(tenant string, q allowlist.Query) (*GrantRule, bool) {
	if ga.set == nil || ga.now.IsZero() && !ga.anyTime {
		return nil, false
	}
	tg := ga.set.tenants[tenant]
	if tg == nil {
		return nil, false
	}
	res := tg.set.Match(q)
	if res.Allow < 0 {
		return nil, false
	}
	r := &tg.rules[res.Allow]
	if !ga.anyTime && !ga.now.Before(r.ExpiresAt) {
		return nil, false // latest expiry first: every other match is over too
	}
	return r, true
}

// grantVerdict decides r, which no connector or rule of the tenant allows
// nor denies, under the tenant's grants; ok is false when none applies.
// Methods and paths of a grant apply only to traffic the gateway reads:
// a CONNECT it covers is refused rather than let through unchecked, as a
// rule's would be (unless it is let in as plain HTTP, read request by
// request), and so is an upgrade, after which nothing is read.
func (t *Tenant) grantVerdict(r Request, ga GrantsAt) (Decision, bool) {
	g, ok := ga.match(t.ID, allowlist.Query{Host: r.Host, Port: r.Port, Method: r.Method, Path: r.Path, Tunnel: r.Tunnel})
	if !ok {
		return Decision{}, false
	}
	rule := Rule{Name: g.Name, Kind: KindGrant, Match: g.Match}
	switch {
	case r.Tunnel && !r.PlainHTTP && g.Match.Conditional():
		return t.unreadable(r, g.Name, fmt.Sprintf(
			"grant %q restricts methods or paths, which an HTTPS tunnel hides; a grant cannot inspect tunnels: ask for a grant without methods and paths, or a connector with inspect: true", g.Name)), true
	case r.Upgrade && !r.Tunnel && g.Match.Conditional():
		return t.unreadable(r, g.Name, fmt.Sprintf(
			"grant %q restricts methods or paths, which cannot be enforced on the bytes after a protocol switch (101); upgrades need a grant without methods and paths", g.Name)), true
	case r.Upgrade && !r.Tunnel:
		// A deny rule's methods and paths on the host could not apply
		// after the 101 either.
		if d, refused := t.refuseUpgrade(r, &rule); refused {
			return d, true
		}
	}
	return Decision{Allow: true, Code: CodeOK, Rule: g.Name}, true
}

// grantCoversHost finds the grant of the tenant whose host and port cover
// r, whatever its methods and paths: for the message of a refusal.
func (t *Tenant) grantCoversHost(r Request, ga GrantsAt) (*GrantRule, bool) {
	return ga.match(t.ID, allowlist.Query{Host: r.Host, Port: r.Port, Tunnel: true})
}
