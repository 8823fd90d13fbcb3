package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/state"
)

// The access-request and grant endpoints of the admin API
// (docs/reference.md, "Admin API"; docs/admins.md walks through them).

// Bounds on what an admin sends: a grant is a short list, not a policy.
const (
	maxAdminBody    = 64 << 10
	maxGrantPorts   = 64
	maxGrantMethods = 32
	maxGrantPaths   = 64
	maxGrantNote    = 1024
	// The widest address ranges a grant may name; wider access is a rule
	// in the tenant file, reviewed as the rest of the policy.
	minGrantBitsV4 = 24
	minGrantBitsV6 = 48
)

var grantMethod = regexp.MustCompile(`^[A-Z][A-Z-]{0,31}$`)

// approveBody is POST /v1/access-requests/ID/approve. Host and Ports
// default to the request's.
type approveBody struct {
	For     string   `json:"for"`
	Host    string   `json:"host"`
	Ports   []int    `json:"ports"`
	Methods []string `json:"methods"`
	Paths   []string `json:"paths"`
	Note    string   `json:"note"`
}

// grantBody is POST /v1/grants: a grant with no access request. Ports
// default to 80 and 443, as a rule's do.
type grantBody struct {
	Tenant  string   `json:"tenant"`
	For     string   `json:"for"`
	Host    string   `json:"host"`
	Ports   []int    `json:"ports"`
	Methods []string `json:"methods"`
	Paths   []string `json:"paths"`
	Note    string   `json:"note"`
}

// parseApproveBody decodes and checks an approval at now.
func parseApproveBody(data []byte, now time.Time, maxFor time.Duration) (state.GrantSpec, error) {
	var b approveBody
	if err := decodeAdminJSON(data, &b, "for, host, ports, methods, paths, note"); err != nil {
		return state.GrantSpec{}, err
	}
	return grantSpec(b.For, b.Host, b.Ports, b.Methods, b.Paths, b.Note, now, maxFor, false)
}

// parseGrantBody decodes and checks a new grant at now; whether its tenant
// exists is the caller's to check.
func parseGrantBody(data []byte, now time.Time, maxFor time.Duration) (state.GrantSpec, error) {
	var b grantBody
	if err := decodeAdminJSON(data, &b, "tenant, for, host, ports, methods, paths, note"); err != nil {
		return state.GrantSpec{}, err
	}
	if b.Tenant == "" {
		return state.GrantSpec{}, errors.New("tenant is required")
	}
	if len(b.Ports) == 0 {
		b.Ports = []int{80, 443}
	}
	spec, err := grantSpec(b.For, b.Host, b.Ports, b.Methods, b.Paths, b.Note, now, maxFor, true)
	spec.Tenant = b.Tenant
	return spec, err
}

// decodeAdminJSON decodes one JSON object strictly: an unknown field or
// anything after the object is refused, so a misspelt key is never
// silently a default.
func decodeAdminJSON(data []byte, v any, fields string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return fmt.Errorf("unknown field %s; the fields are %s", msg, fields)
		}
		if errors.Is(err, io.EOF) {
			return errors.New("the body is empty; send a JSON object")
		}
		return fmt.Errorf("the body is not a valid JSON object: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("the body holds more than one JSON object")
	}
	return nil
}

// grantSpec checks what an admin chose for a grant.
func grantSpec(forText, host string, ports []int, methods, paths []string, note string, now time.Time, maxFor time.Duration, hostRequired bool) (state.GrantSpec, error) {
	var spec state.GrantSpec
	if forText == "" {
		return spec, fmt.Errorf("for is required: how long the grant lasts, such as \"2h\" (at most %v; permanent access is a rule in the tenant file)", maxFor)
	}
	d, err := time.ParseDuration(forText)
	if err != nil || d <= 0 {
		return spec, fmt.Errorf("for %q: want a positive duration such as \"30m\" or \"2h\"", forText)
	}
	if d > maxFor {
		return spec, fmt.Errorf("for %q is longer than access.max_grant_duration (%v); permanent access is a rule in the tenant file (GET /v1/grants/ID/rule prints one)", forText, maxFor)
	}
	spec.ExpiresAt = now.Add(d)
	switch {
	case host != "":
		p, err := grantHost(host)
		if err != nil {
			return spec, err
		}
		spec.Host = p
	case hostRequired:
		return spec, errors.New("host is required: a host pattern such as api.example.com or *.example.com")
	}
	if len(ports) > maxGrantPorts || len(methods) > maxGrantMethods || len(paths) > maxGrantPaths {
		return spec, fmt.Errorf("at most %d ports, %d methods and %d paths; a wider grant is a rule in the tenant file", maxGrantPorts, maxGrantMethods, maxGrantPaths)
	}
	for _, p := range ports {
		if p < 1 || p > 65535 {
			return spec, fmt.Errorf("port %d: want 1 to 65535", p)
		}
	}
	for _, m := range methods {
		if !grantMethod.MatchString(m) {
			return spec, fmt.Errorf("method %q: want an upper-case HTTP method such as GET", m)
		}
	}
	for _, p := range paths {
		if !strings.HasPrefix(p, "/") || len(p) > 1024 || strings.ContainsAny(p, "?#\x00") {
			return spec, fmt.Errorf("path %q: want a prefix starting with / (no query, at most 1024 bytes)", p)
		}
		if err := policy.CheckPath(p); err != nil {
			return spec, fmt.Errorf("path %q: %v", p, err)
		}
	}
	if len(note) > maxGrantNote {
		return spec, fmt.Errorf("note is longer than %d bytes", maxGrantNote)
	}
	spec.Ports, spec.Methods, spec.Paths, spec.Note = ports, methods, paths, note
	return spec, nil
}

// grantHost checks a grant's host pattern and returns its canonical form.
// Beyond what a rule refuses ("*", "*.com"), a grant may not name a wide
// address range.
func grantHost(host string) (string, error) {
	p, err := allowlist.ParsePattern(host)
	if err != nil {
		return "", fmt.Errorf("host: %v", err)
	}
	canonical := p.String()
	if p.IsAddress() {
		if prefix, err := netip.ParsePrefix(canonical); err == nil {
			if (prefix.Addr().Is4() && prefix.Bits() < minGrantBitsV4) || (prefix.Addr().Is6() && prefix.Bits() < minGrantBitsV6) {
				return "", fmt.Errorf("host %q covers more than a /%d (IPv4) or /%d (IPv6); grant a narrower range, or make it a rule in the tenant file", host, minGrantBitsV4, minGrantBitsV6)
			}
		}
	}
	return canonical, nil
}

// readAdminBody reads a request body up to maxAdminBody; false when it
// has replied.
func readAdminBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		adminError(w, http.StatusRequestEntityTooLarge, policy.CodeBodyTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxAdminBody))
		return nil, false
	case err != nil:
		adminError(w, http.StatusBadRequest, policy.CodeBadRequest, "the body could not be read")
		return nil, false
	}
	return data, true
}

// store returns the state store, or replies 503 when there is none.
func (g *Gateway) store(w http.ResponseWriter) (state.Store, bool) {
	if g.state == nil {
		adminError(w, http.StatusServiceUnavailable, codeStateUnavailable, "this gateway has no state store")
		return nil, false
	}
	return g.state, true
}

// stateError replies to a store error: what the admin can act on, or 503
// without the store's internals.
func (g *Gateway) stateError(w http.ResponseWriter, err error, what string) {
	switch {
	case errors.Is(err, state.ErrNotFound):
		adminError(w, http.StatusNotFound, codeNotFound, what+" not found")
	case errors.Is(err, state.ErrNotPending):
		adminError(w, http.StatusConflict, codeAlreadyDecided, what+" was already decided")
	case errors.Is(err, state.ErrInvalid):
		adminError(w, http.StatusBadRequest, policy.CodeBadRequest, strings.TrimPrefix(err.Error(), state.ErrInvalid.Error()+": "))
	default:
		g.log.Error("state store failed", "what", what, "error", err)
		adminError(w, http.StatusServiceUnavailable, codeStateUnavailable, "the state store could not be read or written; try again")
	}
}

func (g *Gateway) maxGrantDuration() time.Duration {
	if live := g.Live(); live != nil && live.Gateway.Access.MaxGrantDuration > 0 {
		return live.Gateway.Access.MaxGrantDuration
	}
	if g.settings.Access.MaxGrantDuration > 0 {
		return g.settings.Access.MaxGrantDuration
	}
	return state.DefaultMaxGrantDuration
}

// forbidTenant replies 403 unless caller may decide for tenant; nil
// callers come only with no admin tokens configured, which allows no
// write.
func forbidTenant(w http.ResponseWriter, caller *policy.AdminToken, tenant string) bool {
	if caller != nil && caller.MayDecide(tenant) {
		return false
	}
	name := "this caller"
	if caller != nil {
		name = fmt.Sprintf("admin token %q", caller.Name)
	}
	adminError(w, http.StatusForbidden, codeAdminAuthRequired, fmt.Sprintf("%s may not decide for tenant %q", name, tenant))
	return true
}

// GET /v1/access-requests?tenant=&status=
func (g *Gateway) listAccessRequests(w http.ResponseWriter, r *http.Request) {
	st, ok := g.store(w)
	if !ok {
		return
	}
	q := r.URL.Query()
	f := state.Filter{Tenant: q.Get("tenant"), Status: state.Status(q.Get("status"))}
	switch f.Status {
	case "", state.StatusPending, state.StatusApproved, state.StatusDenied:
	default:
		adminError(w, http.StatusBadRequest, policy.CodeBadRequest, fmt.Sprintf("status %q: want pending, approved or denied", f.Status))
		return
	}
	reqs, err := st.ListRequests(r.Context(), f)
	if err != nil {
		g.stateError(w, err, "access requests")
		return
	}
	if reqs == nil {
		reqs = []state.AccessRequest{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"requests": reqs})
}

// findRequest returns the access request id.
func findRequest(r *http.Request, st state.Store, id string) (state.AccessRequest, error) {
	reqs, err := st.ListRequests(r.Context(), state.Filter{})
	if err != nil {
		return state.AccessRequest{}, err
	}
	for _, req := range reqs {
		if req.ID == id {
			return req, nil
		}
	}
	return state.AccessRequest{}, state.ErrNotFound
}

// POST /v1/access-requests/ID/approve
func (g *Gateway) approveAccessRequest(w http.ResponseWriter, r *http.Request) {
	st, ok := g.store(w)
	if !ok {
		return
	}
	data, ok := readAdminBody(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	req, err := findRequest(r, st, id)
	if err != nil {
		g.stateError(w, err, fmt.Sprintf("access request %q", id))
		return
	}
	caller := adminCaller(r)
	if forbidTenant(w, caller, req.Tenant) {
		return
	}
	spec, err := parseApproveBody(data, g.now(), g.maxGrantDuration())
	if err != nil {
		adminError(w, http.StatusBadRequest, policy.CodeBadRequest, err.Error())
		return
	}
	spec.By = caller.Name
	grant, err := st.Approve(r.Context(), id, spec)
	if err != nil {
		g.stateError(w, err, fmt.Sprintf("access request %q", id))
		return
	}
	g.auditAdmin(adminAuditRecord{Action: "approve", Actor: caller.Name, Role: string(caller.Role), Tenant: grant.Tenant,
		AccessRequest: id, Grant: grant.ID, Host: grant.Host, Ports: grant.Ports, ExpiresAt: grant.ExpiresAt})
	writeJSON(w, http.StatusOK, map[string]any{"grant": grant})
}

// POST /v1/access-requests/ID/deny; the body, if any, is an empty object.
func (g *Gateway) denyAccessRequest(w http.ResponseWriter, r *http.Request) {
	st, ok := g.store(w)
	if !ok {
		return
	}
	data, ok := readAdminBody(w, r)
	if !ok {
		return
	}
	if len(bytes.TrimSpace(data)) > 0 {
		if err := decodeAdminJSON(data, &struct{}{}, "none"); err != nil {
			adminError(w, http.StatusBadRequest, policy.CodeBadRequest, err.Error())
			return
		}
	}
	id := r.PathValue("id")
	req, err := findRequest(r, st, id)
	if err != nil {
		g.stateError(w, err, fmt.Sprintf("access request %q", id))
		return
	}
	caller := adminCaller(r)
	if forbidTenant(w, caller, req.Tenant) {
		return
	}
	denied, err := st.Deny(r.Context(), id, caller.Name)
	if err != nil {
		g.stateError(w, err, fmt.Sprintf("access request %q", id))
		return
	}
	g.auditAdmin(adminAuditRecord{Action: "deny", Actor: caller.Name, Role: string(caller.Role), Tenant: denied.Tenant,
		AccessRequest: id, Host: denied.Host, Ports: []int{denied.Port}})
	writeJSON(w, http.StatusOK, map[string]any{"request": denied})
}

// GET /v1/grants?tenant=
func (g *Gateway) listGrants(w http.ResponseWriter, r *http.Request) {
	st, ok := g.store(w)
	if !ok {
		return
	}
	grants, err := st.Grants(r.Context(), g.now())
	if err != nil {
		g.stateError(w, err, "grants")
		return
	}
	out := []state.Grant{}
	tenant := r.URL.Query().Get("tenant")
	for _, gr := range grants {
		if tenant == "" || gr.Tenant == tenant {
			out = append(out, gr)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"grants": out})
}

// POST /v1/grants
func (g *Gateway) addGrant(w http.ResponseWriter, r *http.Request) {
	st, ok := g.store(w)
	if !ok {
		return
	}
	data, ok := readAdminBody(w, r)
	if !ok {
		return
	}
	spec, err := parseGrantBody(data, g.now(), g.maxGrantDuration())
	if err != nil {
		adminError(w, http.StatusBadRequest, policy.CodeBadRequest, err.Error())
		return
	}
	caller := adminCaller(r)
	if forbidTenant(w, caller, spec.Tenant) {
		return
	}
	live := g.Live()
	if live == nil {
		adminError(w, http.StatusServiceUnavailable, codeStateUnavailable, "no policy loaded")
		return
	}
	if _, ok := live.Tenant(spec.Tenant); !ok {
		adminError(w, http.StatusBadRequest, policy.CodeBadRequest, fmt.Sprintf("tenant %q is not defined in the live policy", spec.Tenant))
		return
	}
	spec.By = caller.Name
	grant, err := st.AddGrant(r.Context(), spec)
	if err != nil {
		g.stateError(w, err, "grant")
		return
	}
	g.auditAdmin(adminAuditRecord{Action: "grant_add", Actor: caller.Name, Role: string(caller.Role), Tenant: grant.Tenant,
		Grant: grant.ID, Host: grant.Host, Ports: grant.Ports, ExpiresAt: grant.ExpiresAt})
	writeJSON(w, http.StatusCreated, map[string]any{"grant": grant})
}

// findGrant returns the active grant id.
func (g *Gateway) findGrant(r *http.Request, st state.Store, id string) (state.Grant, error) {
	grants, err := st.Grants(r.Context(), g.now())
	if err != nil {
		return state.Grant{}, err
	}
	for _, gr := range grants {
		if gr.ID == id {
			return gr, nil
		}
	}
	return state.Grant{}, state.ErrNotFound
}

// DELETE /v1/grants/ID
func (g *Gateway) revokeGrant(w http.ResponseWriter, r *http.Request) {
	st, ok := g.store(w)
	if !ok {
		return
	}
	id := r.PathValue("id")
	grant, err := g.findGrant(r, st, id)
	if err != nil {
		g.stateError(w, err, fmt.Sprintf("active grant %q", id))
		return
	}
	caller := adminCaller(r)
	if forbidTenant(w, caller, grant.Tenant) {
		return
	}
	if err := st.RevokeGrant(r.Context(), id); err != nil {
		g.stateError(w, err, fmt.Sprintf("active grant %q", id))
		return
	}
	g.auditAdmin(adminAuditRecord{Action: "grant_revoke", Actor: caller.Name, Role: string(caller.Role), Tenant: grant.Tenant,
		Grant: id, Host: grant.Host, Ports: grant.Ports})
	writeJSON(w, http.StatusOK, map[string]any{"revoked": id})
}

// GET /v1/grants/ID/rule
func (g *Gateway) grantRule(w http.ResponseWriter, r *http.Request) {
	st, ok := g.store(w)
	if !ok {
		return
	}
	id := r.PathValue("id")
	grant, err := g.findGrant(r, st, id)
	if err != nil {
		g.stateError(w, err, fmt.Sprintf("active grant %q", id))
		return
	}
	file := "tenants/" + grant.Tenant + ".yaml"
	if live := g.Live(); live != nil {
		if t, ok := live.Tenant(grant.Tenant); ok {
			file = t.File
		}
	}
	text, err := GrantRule(grant, file)
	if err != nil {
		g.stateError(w, err, "grant rule")
		return
	}
	w.Header().Set("Content-Type", "application/yaml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, text)
}

// grantRuleYAML is a tenant file's rule, as docs/reference.md lists its
// keys.
type grantRuleYAML struct {
	Name    string   `yaml:"name"`
	Hosts   []string `yaml:"hosts,flow"`
	Ports   []int    `yaml:"ports,flow"`
	Methods []string `yaml:"methods,flow,omitempty"`
	Paths   []string `yaml:"paths,flow,omitempty"`
}

// GrantRule is the rule that makes grant permanent: one entry of the
// rules: list of the tenant file named file, with a comment line saying
// where it came from.
func GrantRule(grant state.Grant, file string) (string, error) {
	rule := []grantRuleYAML{{
		Name:    "grant-" + grant.ID,
		Hosts:   []string{grant.Host},
		Ports:   grant.Ports,
		Methods: grant.Methods,
		Paths:   grant.Paths,
	}}
	text, err := yaml.Marshal(rule)
	if err != nil {
		return "", err
	}
	// The approver's name is an admin.tokens name (no line breaks); the
	// note, free text, is left out so it cannot break the YAML.
	header := fmt.Sprintf("# Grant %s, approved by %s, expires %s.\n# To make it permanent, add this entry under rules: in %s.\n",
		grant.ID, oneLine(grant.ApprovedBy), grant.ExpiresAt.UTC().Format(time.RFC3339), oneLine(file))
	return header + string(text), nil
}

func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}
