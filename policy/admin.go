package policy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"path/filepath"
	"regexp"
	"slices"
	"time"
)

// AdminRole is what an admin token may do (docs/admins.md, "Admin tokens").
type AdminRole string

// The roles of admin.tokens, each allowed what the one before it is.
const (
	// RoleViewer reads: explain, usage, config, access requests, grants.
	RoleViewer AdminRole = "viewer"
	// RoleApprover also decides access requests and adds or revokes
	// grants, for the tenants it lists (every tenant when it lists none).
	RoleApprover AdminRole = "approver"
	// RoleAdmin may do everything the admin API offers.
	RoleAdmin AdminRole = "admin"
)

// AdminToken is one entry of admin.tokens. Only the token's SHA-256 is
// kept; Name is what audit lines record as the actor.
type AdminToken struct {
	Name string
	Role AdminRole
	// Tenants limits an approver to these tenants; empty means every
	// tenant. Always empty for the other roles.
	Tenants []string
	sum     [sha256.Size]byte
}

// MayDecide reports whether the token may decide access requests and
// manage grants of tenant.
func (t *AdminToken) MayDecide(tenant string) bool {
	switch t.Role {
	case RoleAdmin:
		return true
	case RoleApprover:
		return len(t.Tenants) == 0 || slices.Contains(t.Tenants, tenant)
	}
	return false
}

// StateSettings is gateway.yaml's state section: where access requests and
// grants are kept (docs/operators.md, "The state store").
type StateSettings struct {
	Backend string // file or redis
	// Dir is the file backend's directory: state.dir resolved against the
	// config directory, or as written when the config has no directory on
	// disk (the embedded quickstart), where it is relative to the working
	// directory.
	Dir string
}

// AccessSettings is gateway.yaml's access section, with defaults applied.
type AccessSettings struct {
	MaxPending       int
	MaxGrantDuration time.Duration
}

// Defaults of the state and access sections (docs/reference.md); they
// match the state package's own.
const (
	defaultStateDir         = "./egressgw-state"
	defaultMaxPending       = 10000
	defaultMaxGrantDuration = 30 * 24 * time.Hour
	// maxMaxPending bounds access.max_pending: each request is kept in
	// memory (file backend) or Redis, a few hundred bytes at most.
	maxMaxPending = 1_000_000
	// maxAdminTokens bounds admin.tokens: each request to the admin API
	// compares against every one.
	maxAdminTokens = 256
)

var adminTokenName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// AdminConfigured reports whether any admin token is configured. Without
// one, the admin API's reads are open and its writes refused
// (docs/admins.md, "Admin tokens").
func (g *Gateway) AdminConfigured() bool { return len(g.AdminTokens) > 0 }

// AuthenticateAdmin returns the admin token whose SHA-256 is that of
// token. Every configured token is compared, in constant time, whatever
// matches, so the time taken says nothing about which token was close.
func (g *Gateway) AuthenticateAdmin(token string) (*AdminToken, bool) {
	sum := sha256.Sum256([]byte(token))
	var found *AdminToken
	for i := range g.AdminTokens {
		t := &g.AdminTokens[i]
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 && found == nil {
			found = t
		}
	}
	return found, found != nil
}

// adminTokens validates admin.tokens.
func (b *builder) adminTokens(doc *yamlDoc, f adminFile) []AdminToken {
	if len(f.Tokens) > maxAdminTokens {
		b.errorf(doc, doc.line("admin", "tokens"), "admin.tokens: at most %d tokens", maxAdminTokens)
		return nil
	}
	var out []AdminToken
	names := map[string]int{}   // name -> line
	hashes := map[string]bool{} // token_sha256 values seen
	for i, tf := range f.Tokens {
		at := func(key string) int { return doc.line("admin", "tokens", i, key) }
		ok := true
		if !adminTokenName.MatchString(tf.Name) {
			b.errorf(doc, at("name"), "admin.tokens: name: want letters, digits, '.', '_', '@' or '-' (at most 64), got %q", tf.Name)
			ok = false
		} else if first, dup := names[tf.Name]; dup {
			b.errorf(doc, at("name"), "admin.tokens: name %q is already used at line %d; audit lines name the actor by it", tf.Name, first)
			ok = false
		} else {
			names[tf.Name] = at("name")
		}
		t := AdminToken{Name: tf.Name, Role: AdminRole(tf.Role)}
		switch {
		case !hexSHA256.MatchString(tf.TokenSHA256):
			b.errorf(doc, at("token_sha256"), "admin.tokens: token_sha256: want 64 lower-case hex digits (egressgw token new prints one)")
			ok = false
		case hashes[tf.TokenSHA256]:
			b.errorf(doc, at("token_sha256"), "admin.tokens: token %q has the same token_sha256 as another token: one token must name one actor", tf.Name)
			ok = false
		default:
			hashes[tf.TokenSHA256] = true
			raw, _ := hex.DecodeString(tf.TokenSHA256)
			copy(t.sum[:], raw)
		}
		switch t.Role {
		case RoleViewer, RoleApprover, RoleAdmin:
		case "":
			b.errorf(doc, at("role"), "admin.tokens: role is required: viewer, approver or admin")
			ok = false
		default:
			b.errorf(doc, at("role"), "admin.tokens: role: want viewer, approver or admin, got %q", tf.Role)
			ok = false
		}
		if len(tf.Tenants) > 0 && t.Role != RoleApprover {
			b.errorf(doc, at("tenants"), "admin.tokens: tenants applies to role approver only; a %s is not limited to tenants", orDefault(tf.Role, "token without a role"))
			ok = false
		}
		for j, id := range tf.Tenants {
			if !idPattern.MatchString(id) {
				b.errorf(doc, doc.line("admin", "tokens", i, "tenants", j), "admin.tokens: tenant id %q: want letters, digits, '.', '_' or '-' (at most 64)", id)
				ok = false
			}
		}
		t.Tenants = slices.Clone(tf.Tenants)
		if ok {
			out = append(out, t)
		}
	}
	return out
}

// lintAdminTenants warns about approver tenants the policy does not
// define. Not an error: such an entry gives the approver nothing, and a
// removed tenant must not hold a reload back (the old policy, tenant and
// all, would keep serving).
func (b *builder) lintAdminTenants(doc *yamlDoc, f adminFile) {
	for i, tf := range f.Tokens {
		for j, id := range tf.Tenants {
			if _, ok := b.snap.tenants[id]; !ok && idPattern.MatchString(id) {
				b.warnf(doc, doc.line("admin", "tokens", i, "tenants", j), "admin token %q lists tenant %q, which no tenant file defines: it may decide nothing for it", tf.Name, id)
			}
		}
	}
}

// stateSettings validates the state section. A relative state.dir is
// relative to the config directory, like every path in the config.
func (b *builder) stateSettings(doc *yamlDoc, f stateFile) StateSettings {
	s := StateSettings{Backend: orDefault(f.Backend, "file"), Dir: orDefault(f.Dir, defaultStateDir)}
	switch s.Backend {
	case "file", "redis":
	default:
		b.errorf(doc, doc.line("state", "backend"), "state.backend: want file or redis, got %q", f.Backend)
	}
	if f.Dir != "" && s.Backend != "file" {
		b.errorf(doc, doc.line("state", "dir"), "state.dir: only the file backend keeps a directory; the redis backend uses quota.redis")
	}
	if d, onDisk := b.reader.fsys.(diskDir); onDisk && !filepath.IsAbs(s.Dir) {
		s.Dir = filepath.Join(d.dir, s.Dir)
	}
	return s
}

// accessSettings validates the access section.
func (b *builder) accessSettings(doc *yamlDoc, f accessFile) AccessSettings {
	a := AccessSettings{
		MaxPending:       intOr(f.MaxPending, defaultMaxPending),
		MaxGrantDuration: durationOr(f.MaxGrantDuration, defaultMaxGrantDuration),
	}
	if a.MaxPending < 1 || a.MaxPending > maxMaxPending {
		b.errorf(doc, doc.line("access", "max_pending"), "access.max_pending: want 1 to %d", maxMaxPending)
	}
	if a.MaxGrantDuration < time.Minute {
		b.errorf(doc, doc.line("access", "max_grant_duration"), "access.max_grant_duration: want at least 1m; permanent access is a rule in the tenant file")
	}
	return a
}
