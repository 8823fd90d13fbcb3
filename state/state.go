package state

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Defaults of Options.
const (
	// DefaultMaxPending bounds the access requests kept gateway-wide
	// (access.max_pending).
	DefaultMaxPending = 10000
	// DefaultMaxGrantDuration bounds how far ahead a grant may expire
	// (access.max_grant_duration): permanent access is a rule in the
	// tenant file, not a grant.
	DefaultMaxGrantDuration = 30 * 24 * time.Hour
)

// Bounds on what one access request stores, so that a sandbox cannot grow
// the store by sending long paths or reasons. Longer values are cut.
const (
	maxHostLen   = 253
	maxMethodLen = 32
	maxPathLen   = 1024
	maxReasonLen = 1024
	maxNoteLen   = 1024
	maxNameLen   = 256
)

// Errors callers branch on. Every other error of a Store means its state
// could not be read or written: the caller applies no grant.
var (
	// ErrNotFound: no access request or grant has that id.
	ErrNotFound = errors.New("state: not found")
	// ErrNotPending: the access request was already decided.
	ErrNotPending = errors.New("state: access request is not pending")
	// ErrInvalid: the input was refused (a grant without expiry, a port
	// out of range, ...); the message says what.
	ErrInvalid = errors.New("state: invalid")
	// ErrCorrupt: stored state could not be decoded. Nothing read from it
	// is returned.
	ErrCorrupt = errors.New("state: stored state is corrupt")
)

// Status is where an access request stands.
type Status string

// The statuses of an access request.
const (
	StatusPending  Status = "pending"
	StatusApproved Status = "approved"
	StatusDenied   Status = "denied"
)

func (s Status) valid() bool {
	return s == StatusPending || s == StatusApproved || s == StatusDenied
}

// AccessRequest is what a tenant was refused (or asked for), deduplicated
// by tenant, host and port.
type AccessRequest struct {
	ID     string `json:"id"`
	Tenant string `json:"tenant"`
	Host   string `json:"host"`
	Port   int    `json:"port"`
	// Count is the number of refusals and filings folded into it.
	Count     int64     `json:"count"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// Method and Path are those of the last refusal; Path never holds a
	// query.
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	// Reason is the tenant's own, from the last filing that gave one.
	Reason string `json:"reason,omitempty"`
	Status Status `json:"status"`
	// ReportMode: the last refusal was a report-mode tenant's would-be
	// denial, not an actual refusal.
	ReportMode bool      `json:"report_mode,omitempty"`
	DecidedBy  string    `json:"decided_by,omitempty"`
	DecidedAt  time.Time `json:"decided_at,omitzero"`
	// GrantID is the grant its approval created.
	GrantID string `json:"grant_id,omitempty"`
}

// Grant is an allow rule of a tenant that expires by itself.
type Grant struct {
	ID     string `json:"id"`
	Tenant string `json:"tenant"`
	// Host is an allowlist host pattern, validated by the caller.
	Host string `json:"host"`
	// Ports, Methods and Paths restrict it; Methods and Paths empty mean
	// any.
	Ports      []int     `json:"ports"`
	Methods    []string  `json:"methods,omitempty"`
	Paths      []string  `json:"paths,omitempty"`
	ExpiresAt  time.Time `json:"expires_at"`
	CreatedAt  time.Time `json:"created_at"`
	ApprovedBy string    `json:"approved_by"`
	Note       string    `json:"note,omitempty"`
	// RequestID is the access request it approved, if any.
	RequestID string `json:"request_id,omitempty"`
}

// Active reports whether g applies at now: it expires at ExpiresAt, and
// not a moment later.
func (g Grant) Active(now time.Time) bool { return now.Before(g.ExpiresAt) }

// Sighting is one refusal or one filing of an access request.
type Sighting struct {
	Tenant string
	Host   string
	Port   int
	Method string
	// Path may hold a query; it is dropped before storing.
	Path string
	// Reason is the tenant's own (a filing); empty keeps the last one.
	Reason string
	// ReportMode marks a report-mode tenant's would-be denial.
	ReportMode bool
}

// RequestRef is what the refused client is told: the id and status of its
// access request.
type RequestRef struct {
	ID     string `json:"id"`
	Status Status `json:"status"`
}

// Filter selects access requests; zero fields match all.
type Filter struct {
	Tenant string
	Status Status
}

func (f Filter) match(r AccessRequest) bool {
	return (f.Tenant == "" || r.Tenant == f.Tenant) && (f.Status == "" || r.Status == f.Status)
}

// GrantSpec is what an approver or admin chooses for a grant. On approval,
// an empty Host and empty Ports take the request's host and port.
type GrantSpec struct {
	Tenant    string // ignored on approval: the request's tenant
	Host      string
	Ports     []int
	Methods   []string
	Paths     []string
	ExpiresAt time.Time
	By        string
	Note      string
}

// Store keeps access requests and grants. Every method is safe for
// concurrent use. A method that returns an error returned nothing else of
// use: a caller that cannot read grants applies none.
type Store interface {
	// RecordRefusal folds a refusal into the access request of its
	// tenant, host and port, creating a pending one if none exists, and
	// returns it. A refusal reopens an approved request once its grant
	// has ended (expired or revoked), not before: replicas refuse for up
	// to 2 s after an approval. It leaves a denied request denied.
	RecordRefusal(ctx context.Context, s Sighting) (RequestRef, error)
	// FileRequest is the tenant asking, usually with a reason: like
	// RecordRefusal, but it reopens any decided request (a grant that
	// does not cover what the tenant needs, a denial it disputes).
	FileRequest(ctx context.Context, s Sighting) (RequestRef, error)
	// ListRequests returns the access requests f selects, the most
	// recently seen first.
	ListRequests(ctx context.Context, f Filter) ([]AccessRequest, error)
	// Approve decides a pending request and creates its grant. It returns
	// ErrNotFound, ErrNotPending or ErrInvalid (the spec).
	Approve(ctx context.Context, id string, spec GrantSpec) (Grant, error)
	// Deny decides a pending request without a grant.
	Deny(ctx context.Context, id, by string) (AccessRequest, error)
	// AddGrant creates a grant with no access request.
	AddGrant(ctx context.Context, spec GrantSpec) (Grant, error)
	// RevokeGrant ends a grant now; ErrNotFound if it is not active.
	RevokeGrant(ctx context.Context, id string) error
	// Grants returns the grants active at now, by id. An expired grant is
	// never returned.
	Grants(ctx context.Context, now time.Time) ([]Grant, error)
	// Version changes on every write of any replica sharing the store,
	// so polling it (every second) tells a replica to re-read Grants.
	// The passing of time does not change it: an expiring grant is
	// dropped by the caller at its ExpiresAt.
	Version(ctx context.Context) (uint64, error)
	// Close releases the store, writing what is not yet written.
	Close() error
}

// Options are the settings every backend shares.
type Options struct {
	// MaxPending bounds the stored access requests, pending or decided;
	// the least recently seen go first. 0 means DefaultMaxPending.
	MaxPending int
	// MaxGrantDuration bounds ExpiresAt from now. 0 means
	// DefaultMaxGrantDuration.
	MaxGrantDuration time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxPending == 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.MaxGrantDuration == 0 {
		o.MaxGrantDuration = DefaultMaxGrantDuration
	}
	if o.MaxPending < 0 {
		return o, fmt.Errorf("%w: max_pending %d is negative", ErrInvalid, o.MaxPending)
	}
	if o.MaxGrantDuration < 0 {
		return o, fmt.Errorf("%w: max_grant_duration %v is negative", ErrInvalid, o.MaxGrantDuration)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// newID returns a random, URL-safe id that cannot be guessed: 128 bits
// from crypto/rand in lower-case base32.
func newID(prefix string) string {
	b := make([]byte, 16)
	// crypto/rand.Read never fails on supported platforms (it crashes
	// the program instead), so there is no error to handle.
	_, _ = rand.Read(b)
	return prefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// cleanSighting checks s and cuts its strings to their bounds.
func cleanSighting(s Sighting) (Sighting, error) {
	if s.Tenant == "" || len(s.Tenant) > maxNameLen {
		return s, fmt.Errorf("%w: tenant must be 1 to %d bytes", ErrInvalid, maxNameLen)
	}
	if s.Host == "" || len(s.Host) > maxHostLen {
		return s, fmt.Errorf("%w: host must be 1 to %d bytes", ErrInvalid, maxHostLen)
	}
	if s.Port < 1 || s.Port > 65535 {
		return s, fmt.Errorf("%w: port %d is not in 1-65535", ErrInvalid, s.Port)
	}
	if i := strings.IndexAny(s.Path, "?#"); i >= 0 {
		s.Path = s.Path[:i]
	}
	s.Method = cut(strings.ToUpper(s.Method), maxMethodLen)
	s.Path = cut(s.Path, maxPathLen)
	s.Reason = cut(s.Reason, maxReasonLen)
	return s, nil
}

// cut shortens s to at most n bytes without splitting a UTF-8 sequence.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// newGrant validates spec at now and returns the grant it describes. The
// host pattern's syntax is the caller's to check (allowlist.ParsePattern):
// this package knows no patterns.
func newGrant(spec GrantSpec, now time.Time, maxDur time.Duration, requestID string) (Grant, error) {
	g := Grant{
		ID:         newID("gr_"),
		Tenant:     spec.Tenant,
		Host:       spec.Host,
		Ports:      slices.Clone(spec.Ports),
		Methods:    slices.Clone(spec.Methods),
		Paths:      slices.Clone(spec.Paths),
		ExpiresAt:  spec.ExpiresAt.UTC(),
		CreatedAt:  now.UTC(),
		ApprovedBy: spec.By,
		Note:       spec.Note,
		RequestID:  requestID,
	}
	if err := g.validate(); err != nil {
		return Grant{}, err
	}
	if !g.ExpiresAt.After(now) {
		return Grant{}, fmt.Errorf("%w: expires_at %s is not in the future", ErrInvalid, g.ExpiresAt.Format(time.RFC3339))
	}
	if g.ExpiresAt.Sub(now) > maxDur {
		return Grant{}, fmt.Errorf("%w: expires_at is more than %v ahead (max_grant_duration); make permanent access a rule in the tenant file", ErrInvalid, maxDur)
	}
	return g, nil
}

// validate checks what every stored grant must satisfy; it is also run on
// grants read back, so a tampered store applies nothing odd.
func (g Grant) validate() error {
	switch {
	case g.ID == "":
		return fmt.Errorf("%w: grant without id", ErrInvalid)
	case g.Tenant == "" || len(g.Tenant) > maxNameLen:
		return fmt.Errorf("%w: tenant must be 1 to %d bytes", ErrInvalid, maxNameLen)
	case g.Host == "" || len(g.Host) > maxHostLen:
		return fmt.Errorf("%w: host pattern must be 1 to %d bytes", ErrInvalid, maxHostLen)
	case len(g.Ports) == 0:
		return fmt.Errorf("%w: a grant needs at least one port", ErrInvalid)
	case g.ExpiresAt.IsZero():
		return fmt.Errorf("%w: expires_at is required", ErrInvalid)
	case g.ApprovedBy == "" || len(g.ApprovedBy) > maxNameLen:
		return fmt.Errorf("%w: approved_by must be 1 to %d bytes", ErrInvalid, maxNameLen)
	case len(g.Note) > maxNoteLen:
		return fmt.Errorf("%w: note is longer than %d bytes", ErrInvalid, maxNoteLen)
	}
	for _, p := range g.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("%w: port %d is not in 1-65535", ErrInvalid, p)
		}
	}
	for _, m := range g.Methods {
		if m == "" || m != strings.ToUpper(m) || len(m) > maxMethodLen {
			return fmt.Errorf("%w: method %q must be upper-case, 1 to %d bytes", ErrInvalid, m, maxMethodLen)
		}
	}
	for _, p := range g.Paths {
		if p == "" || len(p) > maxPathLen {
			return fmt.Errorf("%w: path must be 1 to %d bytes", ErrInvalid, maxPathLen)
		}
	}
	return nil
}

// validate checks a request read back from the store.
func (r AccessRequest) validate() error {
	switch {
	case r.ID == "" || r.Tenant == "" || r.Host == "":
		return fmt.Errorf("%w: access request without id, tenant or host", ErrInvalid)
	case r.Port < 1 || r.Port > 65535:
		return fmt.Errorf("%w: access request port %d", ErrInvalid, r.Port)
	case !r.Status.valid():
		return fmt.Errorf("%w: access request status %q", ErrInvalid, r.Status)
	case r.Count < 1:
		return fmt.Errorf("%w: access request count %d", ErrInvalid, r.Count)
	}
	return nil
}

// approveSpec fills an approval's spec from its request.
func approveSpec(r AccessRequest, spec GrantSpec) GrantSpec {
	spec.Tenant = r.Tenant
	if spec.Host == "" {
		spec.Host = r.Host
	}
	if len(spec.Ports) == 0 {
		spec.Ports = []int{r.Port}
	}
	return spec
}

// dedupKey is the identity of an access request.
func dedupKey(tenant, host string, port int) string {
	return fmt.Sprintf("%s\x00%s\x00%d", tenant, host, port)
}

// sortRequests orders requests the most recently seen first.
func sortRequests(rs []AccessRequest) {
	slices.SortFunc(rs, func(a, b AccessRequest) int {
		if c := b.LastSeen.Compare(a.LastSeen); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

func sortGrants(gs []Grant) {
	slices.SortFunc(gs, func(a, b Grant) int { return strings.Compare(a.ID, b.ID) })
}

// strictJSON decodes data into v, refusing unknown fields and trailing
// data: stored state that is not exactly what this package wrote is
// corrupt, not guessed at.
func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the document")
	}
	return nil
}
