package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// Error codes of the admin API and the tenant's own endpoint, besides the
// gateway's own (docs/reference.md, "Admin API" and "The tenant's own
// endpoint").
const (
	codeAdminAuthRequired policy.Code = "admin_auth_required"
	codeNotFound          policy.Code = "not_found"
	codeAlreadyDecided    policy.Code = "already_decided"
	codeStateUnavailable  policy.Code = "state_unavailable"
	codeMethodNotAllowed  policy.Code = "method_not_allowed"
)

// openAdminPaths answer without a token: probes and scrapers carry none.
var openAdminPaths = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

type adminCallerKey struct{}

// adminCaller returns the admin token that authenticated r; nil when no
// admin tokens are configured, where only reads get through.
func adminCaller(r *http.Request) *policy.AdminToken {
	t, _ := r.Context().Value(adminCallerKey{}).(*policy.AdminToken)
	return t
}

// requireAdmin authenticates the admin API (docs/admins.md, "Admin
// tokens"). Every path but the probes and metrics needs a bearer token
// once admin.tokens lists one; any token reads, approvers and admins
// write what their role allows, and the handlers check an approver's
// tenants. Without tokens, reads stay open and writes are refused. The
// tokens are the live policy's, so a reload changes them.
func (g *Gateway) requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if openAdminPaths[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		settings := g.settings
		if live := g.Live(); live != nil {
			settings = live.Gateway
		}
		write := r.Method != http.MethodGet && r.Method != http.MethodHead
		if !settings.AdminConfigured() {
			if write {
				adminError(w, http.StatusForbidden, codeAdminAuthRequired, "the admin API is read-only: no admin tokens are configured (admin.tokens in gateway.yaml)")
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		token, ok := bearerToken(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="egressgw-admin"`)
			adminError(w, http.StatusUnauthorized, codeAdminAuthRequired, "send an admin token as Authorization: Bearer TOKEN")
			return
		}
		caller, ok := settings.AuthenticateAdmin(token)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="egressgw-admin", error="invalid_token"`)
			adminError(w, http.StatusUnauthorized, codeAdminAuthRequired, "the admin token is not valid")
			return
		}
		if write && !mayWrite(caller, r.URL.Path) {
			adminError(w, http.StatusForbidden, codeAdminAuthRequired,
				fmt.Sprintf("admin token %q has role %s, which may not %s %s", caller.Name, caller.Role, r.Method, r.URL.Path))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), adminCallerKey{}, caller)))
	})
}

// mayWrite reports whether caller's role may make a write to path; an
// approver's tenants are checked where the tenant is known.
func mayWrite(caller *policy.AdminToken, path string) bool {
	switch caller.Role {
	case policy.RoleAdmin:
		return true
	case policy.RoleApprover:
		return strings.HasPrefix(path, "/v1/access-requests/") || path == "/v1/grants" || strings.HasPrefix(path, "/v1/grants/")
	}
	return false
}

// bearerToken reads Authorization: Bearer TOKEN.
func bearerToken(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}

// adminError writes an admin API error like the gateway's own replies:
// a code to branch on and a message saying what to change.
func adminError(w http.ResponseWriter, status int, code policy.Code, message string) {
	w.Header().Set("X-Egressgw-Error", string(code))
	writeJSON(w, status, map[string]string{"error": string(code), "message": message})
}

// adminAuditRecord is the audit line of an admin write (docs/reference.md,
// "Audit line"): who changed what. It holds no token and no note.
type adminAuditRecord struct {
	Time          time.Time `json:"time"`
	Kind          string    `json:"kind"` // always "admin"
	Action        string    `json:"action"`
	Actor         string    `json:"actor"`
	Role          string    `json:"role"`
	Tenant        string    `json:"tenant"`
	AccessRequest string    `json:"access_request,omitempty"`
	Grant         string    `json:"grant,omitempty"`
	Host          string    `json:"host,omitempty"`
	Ports         []int     `json:"ports,omitempty"`
	ExpiresAt     time.Time `json:"expires_at,omitzero"`
}

// auditAdmin writes one admin write's audit line.
func (g *Gateway) auditAdmin(rec adminAuditRecord) {
	rec.Time, rec.Kind = g.now().UTC(), "admin"
	line, err := json.Marshal(rec)
	if err == nil {
		err = g.audit.writeLine(append(line, '\n'))
	}
	if err != nil {
		g.log.Error("writing an admin audit line failed", "action", rec.Action, "actor", rec.Actor, "error", err)
	}
}
