package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/state"
)

// The tenant's own endpoint (docs/reference.md, "The tenant's own
// endpoint"; docs/sandbox-runtimes.md, "Asking the gateway"): plain
// requests to the self-service host are answered by the gateway for the
// tenant the proxy credentials identify, after its request quota, and are
// never forwarded. Everything shown is the identified tenant's own.

// selfServiceRule names, in the audit line, what let a request to the
// self-service host through.
const selfServiceRule = "self_service"

// Bounds on what a sandbox files: an access request is a URL and a
// sentence, not a document.
const (
	maxSelfServiceBody = 8 << 10
	maxFiledReason     = 1024
)

var filedMethod = regexp.MustCompile(`^[A-Z][A-Z-]{0,31}$`)

// selfServiceHost reports whether r, a plain request whose target is tg
// (or o, why it has none), is for the self-service host of the exchange's
// policy. The host is normalised as the decide step normalises it, so no
// spelling of the name reaches the rules or the dialer.
func (ex *exchange) selfServiceHost(r *http.Request, tg target, o outcome) bool {
	ss := ex.rt.live.Gateway.SelfService
	if !ss.Enabled || (r.URL.Scheme != "http" && r.URL.Scheme != "https") {
		return false // other schemes are refused as malformed (plainTarget)
	}
	if r.URL.Scheme == "http" && o.ok() {
		return tg.host == ss.Host // normalised once, for both
	}
	host, _, err := policy.SplitTarget(r.URL.Host, 80)
	return err == nil && host == ss.Host
}

// connectsToSelfService refuses a CONNECT to the self-service host: it
// answers plain http:// only, and is never dialled.
func (ex *exchange) connectsToSelfService(authority string) outcome {
	ss := ex.rt.live.Gateway.SelfService
	host, port, err := policy.SplitTarget(authority, 0)
	if !ss.Enabled || err != nil || host != ss.Host {
		return outcome{}
	}
	ex.host, ex.port = host, port
	o := refused(policy.CodeBadRequest, fmt.Sprintf(
		"%s answers plain http:// only: request http://%s/v1/policy through HTTP_PROXY, not through a CONNECT tunnel (HTTPS_PROXY)", host, host))
	o.rule = selfServiceRule
	return o
}

// answerSelf is the path of a plain request to the self-service host,
// after identify: admit, answer; the caller's deferred finish accounts.
func (ex *exchange) answerSelf(w http.ResponseWriter, r *http.Request) {
	ex.host, ex.port, _ = policy.SplitTarget(r.URL.Host, 80)
	ex.path = r.URL.EscapedPath() // never the query, which may hold a URL
	ex.out = outcome{rule: selfServiceRule}
	rate, o := ex.admit(r.Context(), true)
	if !o.ok() {
		ex.reply(w, o)
		return
	}
	a := ex.selfServiceAnswer(r)
	if ex.body.pending() {
		// Only a filing reads a body; any other is not waited for.
		w.Header().Set("Connection", "close")
		defer ex.body.abandon()
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(a.body)))
	if a.code != "" {
		h.Set("X-Egressgw-Error", string(a.code))
	}
	if a.allow != "" {
		h.Set("Allow", a.allow)
	}
	ex.setAllowedHeaders(h)
	ex.setRateLimitHeaders(h, rate)
	ex.status = a.status
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body)
}

// selfAnswer is an answer of the self-service endpoint.
type selfAnswer struct {
	status int
	body   []byte
	code   policy.Code // the error code of a refusal
	allow  string      // the methods a path answers, on a 405
}

// selfServiceAnswer routes r to its endpoint and returns the status and
// JSON body of the answer.
func (ex *exchange) selfServiceAnswer(r *http.Request) selfAnswer {
	var allowed string
	switch ex.path {
	case "/v1/policy":
		if r.Method == http.MethodGet {
			return ex.answerJSON(http.StatusOK, ex.selfPolicy(r.Context()))
		}
		allowed = "GET"
	case "/v1/check":
		if r.Method == http.MethodGet {
			return ex.selfCheck(r)
		}
		allowed = "GET"
	case "/v1/access-requests":
		switch r.Method {
		case http.MethodGet:
			return ex.selfListRequests(r.Context())
		case http.MethodPost:
			return ex.selfFileRequest(r)
		}
		allowed = "GET, POST"
	default:
		return ex.answerError(http.StatusNotFound, codeNotFound,
			"no such endpoint; "+ex.host+" answers GET /v1/policy, GET /v1/check?method=M&url=U, GET and POST /v1/access-requests")
	}
	a := ex.answerError(http.StatusMethodNotAllowed, codeMethodNotAllowed,
		fmt.Sprintf("%s %s: use %s", r.Method, ex.path, allowed))
	a.allow = allowed
	return a
}

// answerJSON is a successful answer.
func (ex *exchange) answerJSON(status int, v any) selfAnswer {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		ex.gw.log.Error("self-service answer could not be encoded", "request_id", ex.id, "error", err)
		return ex.answerError(http.StatusInternalServerError, policy.CodeBadRequest, "the answer could not be encoded")
	}
	return selfAnswer{status: status, body: append(body, '\n')}
}

// answerError is a refusal of the self-service endpoint: the gateway's
// error body, recorded as the exchange's outcome for the audit line and
// metrics.
func (ex *exchange) answerError(status int, code policy.Code, message string) selfAnswer {
	o := refused(code, message)
	o.rule = selfServiceRule
	ex.out = o
	body, _ := json.Marshal(errorBody{
		Error: code, Message: message, Tenant: ex.tenantID(),
		Host: ex.host, Port: ex.port, RequestID: ex.id,
	})
	return selfAnswer{status: status, body: append(body, '\n'), code: code}
}

// selfPolicyView is GET /v1/policy: what the tenant may reach and use.
type selfPolicyView struct {
	Tenant     string          `json:"tenant"`
	Mode       policy.Mode     `json:"mode"`
	Connectors []selfConnector `json:"connectors"`
	Rules      []selfRule      `json:"rules"`
	// Grants is nil, and GrantsUnavailable says why, when the state store
	// could not be read: no grant applies then either.
	Grants            []selfGrant `json:"grants"`
	GrantsUnavailable string      `json:"grants_unavailable,omitempty"`
	Quota             selfQuota   `json:"quota"`
	// Budgets is nil, and BudgetsUnavailable says why, when the budget
	// counters could not be read.
	Budgets            []budgetView `json:"budgets"`
	BudgetsUnavailable string       `json:"budgets_unavailable,omitempty"`
}

type selfConnector struct {
	Name    string   `json:"name"`
	Version int      `json:"version"`
	Hosts   []string `json:"hosts"`
	Ports   []uint16 `json:"ports"`
	Methods []string `json:"methods"`
	Paths   []string `json:"paths"`
	Inspect bool     `json:"inspect"`
}

type selfRule struct {
	Name    string   `json:"name"`
	Action  string   `json:"action"`
	Hosts   []string `json:"hosts"`
	Ports   []uint16 `json:"ports"` // empty on a deny rule: every port
	Methods []string `json:"methods"`
	Paths   []string `json:"paths"`
}

type selfGrant struct {
	ID        string    `json:"id"`
	Host      string    `json:"host"`
	Ports     []int     `json:"ports"`
	Methods   []string  `json:"methods"`
	Paths     []string  `json:"paths"`
	ExpiresAt time.Time `json:"expires_at"`
}

// selfQuota is the tenant's quota: limits, and what remains where the
// quota backend can tell (Unavailable says when it cannot).
type selfQuota struct {
	Requests             *selfBucket  `json:"requests,omitempty"`
	Connectors           []selfBucket `json:"connectors,omitempty"`
	MaxConcurrent        int          `json:"max_concurrent,omitempty"`
	Open                 *int         `json:"open,omitempty"`
	EgressBytesPerSec    int64        `json:"egress_bytes_per_second,omitempty"`
	IngressBytesPerSec   int64        `json:"ingress_bytes_per_second,omitempty"`
	RemainingUnavailable string       `json:"remaining_unavailable,omitempty"`
}

type selfBucket struct {
	Connector         string  `json:"connector,omitempty"`
	RequestsPerSecond float64 `json:"requests_per_second"`
	Burst             int     `json:"burst"`
	Remaining         *int    `json:"remaining,omitempty"`
}

func (ex *exchange) selfPolicy(ctx context.Context) selfPolicyView {
	t := ex.tenant
	v := selfPolicyView{Tenant: t.ID, Mode: t.Mode, Connectors: []selfConnector{}, Rules: []selfRule{}}
	for _, rule := range t.Rules() {
		m := rule.Match
		ports := m.Ports
		if len(ports) == 0 && m.Action == allowlist.Allow {
			ports = []uint16{80, 443} // an allow rule's default (docs/reference.md)
		}
		if c := rule.Connector; c != nil {
			v.Connectors = append(v.Connectors, selfConnector{
				Name: c.Name, Version: c.Version, Hosts: patternNames(m.Hosts), Ports: orNone(ports),
				Methods: orNone(m.Methods), Paths: orNone(m.Paths), Inspect: c.Inspect,
			})
			continue
		}
		action := "allow"
		if m.Action == allowlist.Deny {
			action = "deny"
		}
		v.Rules = append(v.Rules, selfRule{
			Name: rule.Name, Action: action, Hosts: patternNames(m.Hosts), Ports: orNone(ports),
			Methods: orNone(m.Methods), Paths: orNone(m.Paths),
		})
	}
	v.Grants, v.GrantsUnavailable = ex.selfGrants(ctx)
	v.Quota = ex.selfQuota(ctx)
	v.Budgets, v.BudgetsUnavailable = ex.gw.tenantBudgets(ctx, t.ID, ex.id)
	return v
}

// selfGrants lists the tenant's active grants, or says why none can be
// read.
func (ex *exchange) selfGrants(ctx context.Context) ([]selfGrant, string) {
	st := ex.gw.state
	if st == nil {
		return []selfGrant{}, "this gateway keeps no state store: no grants apply"
	}
	all, err := st.Grants(ctx, ex.gw.now())
	if err != nil {
		ex.gw.log.Error("state store failed", "what", "grants", "request_id", ex.id, "error", err)
		return nil, "the state store could not be read: no grants apply until it can be"
	}
	out := []selfGrant{}
	for _, g := range all {
		if g.Tenant != ex.tenant.ID {
			continue
		}
		out = append(out, selfGrant{
			ID: g.ID, Host: g.Host, Ports: orNone(g.Ports), Methods: orNone(g.Methods),
			Paths: orNone(g.Paths), ExpiresAt: g.ExpiresAt,
		})
	}
	return out, ""
}

// selfQuota reads the tenant's quota state as the admin API's usage does;
// a backend that cannot be read leaves the limits and says so.
func (ex *exchange) selfQuota(ctx context.Context) selfQuota {
	t := ex.tenant
	q := selfQuota{MaxConcurrent: t.Quota.MaxConcurrent, EgressBytesPerSec: t.Quota.EgressBytes, IngressBytesPerSec: t.Quota.IngressBytes}
	var failed error
	peek := func(b quota.Bucket, connector string) *selfBucket {
		sb := &selfBucket{Connector: connector, RequestsPerSecond: b.Limit.Rate, Burst: b.Limit.Burst}
		if res, err := ex.gw.quota.Peek(ctx, b.Key, b.Limit); err != nil {
			failed = err
		} else {
			sb.Remaining = &res.Remaining
		}
		return sb
	}
	if !t.Quota.Rate.Unlimited() {
		q.Requests = peek(quota.Bucket{Key: t.QuotaKey, Limit: t.Quota.Rate}, "")
	}
	for _, rule := range t.Rules() {
		if rule.Connector != nil && !rule.Bucket.Limit.Unlimited() {
			q.Connectors = append(q.Connectors, *peek(rule.Bucket, rule.Name))
		}
	}
	if open, err := ex.gw.quota.InUse(ctx, t.QuotaKey); err != nil {
		failed = err
	} else {
		q.Open = &open
	}
	if failed != nil {
		ex.gw.log.Warn("quota backend unavailable", "request_id", ex.id, "error", failed)
		q.RemainingUnavailable = "the quota backend could not be read; the limits still apply"
	}
	return q
}

// selfCheck is GET /v1/check: the decision trace for one request, as the
// admin API's explain gives it, for this tenant alone. Network safety is
// applied to IP literals; names are not resolved for a sandbox.
func (ex *exchange) selfCheck(r *http.Request) selfAnswer {
	q := r.URL.Query()
	method, target := q.Get("method"), q.Get("url")
	if method == "" {
		method = http.MethodGet
	}
	if target == "" {
		return ex.answerError(http.StatusBadRequest, policy.CodeBadRequest, "url is required: GET /v1/check?method=GET&url=https://api.example.com/path")
	}
	gw := ex.rt.live.Gateway
	network := policy.Network{Addresses: gw.AddressPolicy(ex.gw.hostAddrs, ex.gw.listeners)}
	trace, err := ex.tenant.ExplainRequest(r.Context(), strings.ToUpper(method), target, gw, network)
	if err != nil {
		return ex.answerError(http.StatusBadRequest, policy.CodeBadRequest, "url: "+err.Error())
	}
	// Where the tenant's file lives is the operator's business, and
	// resolving names is the admin API's.
	trace.Identity = fmt.Sprintf("tenant %q", ex.tenant.ID)
	if rest, ok := strings.CutPrefix(trace.Network, "not resolved ("); ok {
		if _, after, ok := strings.Cut(rest, "): "); ok {
			trace.Network = "not resolved here: " + after
		}
	}
	return ex.answerJSON(http.StatusOK, trace)
}

// filing is POST /v1/access-requests.
type filing struct {
	URL    string `json:"url"`
	Method string `json:"method"`
	Reason string `json:"reason"`
}

// parseFiling decodes a filing strictly and returns the access request
// it asks for, for tenant. selfHost is the self-service host, which is
// never a destination to ask for.
func parseFiling(data []byte, tenant, selfHost string) (state.Sighting, error) {
	var f filing
	if err := decodeAdminJSON(data, &f, "url, method, reason"); err != nil {
		return state.Sighting{}, err
	}
	if f.URL == "" {
		return state.Sighting{}, errors.New(`url is required: {"url": "https://pypi.org/simple/", "method": "GET", "reason": "..."}`)
	}
	u, err := url.Parse(f.URL)
	if err != nil {
		return state.Sighting{}, errors.New("url is not a valid URL")
	}
	defaultPort, ok := policy.SchemePort(u.Scheme)
	if !ok {
		return state.Sighting{}, errors.New("url: want an http:// or https:// URL")
	}
	if u.User != nil || u.Opaque != "" || u.Host == "" {
		return state.Sighting{}, errors.New("url: want scheme://host[:port]/path, without credentials")
	}
	host, port, err := policy.SplitTarget(u.Host, defaultPort)
	if err != nil {
		return state.Sighting{}, fmt.Errorf("url: %v", err)
	}
	if host == selfHost {
		return state.Sighting{}, fmt.Errorf("url: %s is the gateway itself", host)
	}
	method := strings.ToUpper(f.Method)
	if method == "" {
		method = http.MethodGet
	}
	if !filedMethod.MatchString(method) {
		return state.Sighting{}, fmt.Errorf("method %q: want an HTTP method such as GET", f.Method)
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	return state.Sighting{
		Tenant: tenant, Host: host, Port: int(port), Method: method, Path: path,
		Reason: cutUTF8(strings.TrimSpace(f.Reason), maxFiledReason),
	}, nil
}

// selfFileRequest files, or updates, the tenant's access request.
func (ex *exchange) selfFileRequest(r *http.Request) selfAnswer {
	st := ex.gw.state
	if st == nil {
		return ex.noStateStore()
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxSelfServiceBody+1))
	switch {
	case err != nil:
		return ex.answerError(http.StatusBadRequest, policy.CodeBadRequest, "the body could not be read")
	case len(data) > maxSelfServiceBody:
		return ex.answerError(http.StatusRequestEntityTooLarge, policy.CodeBodyTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxSelfServiceBody))
	}
	ex.bytesUp.Add(int64(len(data)))
	s, err := parseFiling(data, ex.tenant.ID, ex.rt.live.Gateway.SelfService.Host)
	if err != nil {
		return ex.answerError(http.StatusBadRequest, policy.CodeBadRequest, err.Error())
	}
	ref, err := st.FileRequest(r.Context(), s)
	if err != nil {
		if errors.Is(err, state.ErrInvalid) {
			return ex.answerError(http.StatusBadRequest, policy.CodeBadRequest, strings.TrimPrefix(err.Error(), state.ErrInvalid.Error()+": "))
		}
		ex.gw.log.Error("state store failed", "what", "file access request", "request_id", ex.id, "error", err)
		return ex.answerError(http.StatusServiceUnavailable, codeStateUnavailable, "the state store could not be written; try again")
	}
	return ex.answerJSON(http.StatusAccepted, ref)
}

// selfRequest is one of the tenant's access requests as it sees them.
type selfRequest struct {
	ID        string       `json:"id"`
	Host      string       `json:"host"`
	Port      int          `json:"port"`
	Method    string       `json:"method,omitempty"`
	Path      string       `json:"path,omitempty"`
	Reason    string       `json:"reason,omitempty"`
	Status    state.Status `json:"status"`
	Count     int64        `json:"count"`
	FirstSeen time.Time    `json:"first_seen"`
	LastSeen  time.Time    `json:"last_seen"`
	DecidedAt time.Time    `json:"decided_at,omitzero"`
	GrantID   string       `json:"grant_id,omitempty"`
}

// selfListRequests is GET /v1/access-requests: the tenant's requests.
func (ex *exchange) selfListRequests(ctx context.Context) selfAnswer {
	st := ex.gw.state
	if st == nil {
		return ex.noStateStore()
	}
	reqs, err := st.ListRequests(ctx, state.Filter{Tenant: ex.tenant.ID})
	if err != nil {
		ex.gw.log.Error("state store failed", "what", "access requests", "request_id", ex.id, "error", err)
		return ex.answerError(http.StatusServiceUnavailable, codeStateUnavailable, "the state store could not be read; try again")
	}
	out := []selfRequest{}
	for _, q := range reqs {
		if q.Tenant != ex.tenant.ID {
			continue // the filter says so already; never show another's
		}
		out = append(out, selfRequest{
			ID: q.ID, Host: q.Host, Port: q.Port, Method: q.Method, Path: q.Path, Reason: q.Reason,
			Status: q.Status, Count: q.Count, FirstSeen: q.FirstSeen, LastSeen: q.LastSeen,
			DecidedAt: q.DecidedAt, GrantID: q.GrantID,
		})
	}
	return ex.answerJSON(http.StatusOK, map[string]any{"requests": out})
}

func (ex *exchange) noStateStore() selfAnswer {
	return ex.answerError(http.StatusServiceUnavailable, codeStateUnavailable,
		"this gateway keeps no state store, so access requests cannot be filed or listed; ask its operators")
}

func patternNames(ps []allowlist.Pattern) []string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.String()
	}
	return names
}

// orNone keeps an empty list [] rather than null in an answer.
func orNone[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return slices.Clone(s)
}

// cutUTF8 shortens s to at most n bytes without splitting a UTF-8
// sequence.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
