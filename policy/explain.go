package policy

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/redaction"
)

// Trace is the full reasoning behind one decision, for `egressgw explain`
// and /v1/explain. It is computed rule by rule, apart from the indexed
// matcher, and its Decision is the matcher's own, so the two cannot drift.
//
// An https URL takes up to two steps, as through the gateway: the CONNECT,
// and, when a connector with inspect: true lets the tunnel through, the
// request inside it. The top-level Rules and decision are those of the last
// step, which is what the client gets.
type Trace struct {
	Tenant   string `json:"tenant"`
	Identity string `json:"identity"`
	Mode     Mode   `json:"mode"`
	Method   string `json:"method,omitempty"` // for an https URL, of the request inside the tunnel
	Host     string `json:"host"`
	Port     uint16 `json:"port"`
	Path     string `json:"path,omitempty"` // for an https URL, of the request inside the tunnel
	// Tunnel is set when the request goes through a CONNECT tunnel.
	Tunnel bool        `json:"tunnel"`
	Rules  []RuleTrace `json:"rules"` // of the last step
	// Steps are the requests the gateway decides, in order; the last one's
	// decision is the trace's.
	Steps   []Step   `json:"steps"`
	Network string   `json:"network"`
	Quota   string   `json:"quota"`
	Hooks   string   `json:"hooks"`
	Redact  string   `json:"redaction"`
	Inspect string   `json:"inspect,omitempty"`
	Inject  []string `json:"inject_headers,omitempty"`
	// Unchecked says what the gateway lets through without reading it: the
	// method and path inside a tunnel that is not inspected.
	Unchecked string `json:"unchecked,omitempty"`
	// Upgrade says, for an allowed request, whether the same request with
	// Connection: Upgrade (WebSocket, h2c) would be let through, and why.
	Upgrade string `json:"upgrade,omitempty"`
	// Addresses are the destination's addresses checked against network
	// safety (ExplainRequest): the IP literal, or what the name resolved to.
	Addresses []AddressTrace `json:"addresses,omitempty"`

	Decision string `json:"decision"` // allow, deny or report
	Code     Code   `json:"code"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// Step is one request the gateway decides on the way to a URL.
type Step struct {
	Request  string      `json:"request"` // "CONNECT api.github.com:443" or "GET api.github.com:443/repos/"
	Tunnel   bool        `json:"tunnel"`  // a CONNECT: decided on host and port alone
	Method   string      `json:"method,omitempty"`
	Path     string      `json:"path,omitempty"`
	Rules    []RuleTrace `json:"rules"`
	Decision string      `json:"decision"` // allow, deny or report
	Code     Code        `json:"code"`
	Rule     string      `json:"rule,omitempty"`
	Reason   string      `json:"reason,omitempty"`
}

// RuleTrace says whether one rule of the tenant's list matched, and if not,
// the first part that did not.
type RuleTrace struct {
	Name    string   `json:"name"`
	Kind    RuleKind `json:"kind"`
	Action  string   `json:"action"`
	Matched bool     `json:"matched"`
	Detail  string   `json:"detail"`
	// ExpiresAt is a grant's expiry; zero for connectors and rules.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Explain traces how the tenant's policy decides the one request r.
func (t *Tenant) Explain(r Request) Trace { return t.ExplainGranted(r, GrantsAt{}) }

// ExplainGranted is Explain with the tenant's grants in ga, listed as
// rules after its connectors and rules.
func (t *Tenant) ExplainGranted(r Request, ga GrantsAt) Trace {
	tr := t.newTrace(r)
	d := tr.step(t, r, ga)
	tr.finish(r, d)
	tr.explainUpgrade(t, r, d, ga)
	return tr
}

// ExplainURL traces what the gateway decides when a client asks for rawURL
// with method: for an http URL, the one request; for https, the CONNECT
// and, if a connector with inspect: true lets the tunnel through, the
// request inside it, which then decides. A tunnel let through uninspected
// is the final word: the method and path inside it are never checked, and
// the trace says so. The error is a malformed URL (ErrBadTarget).
func (t *Tenant) ExplainURL(method, rawURL string) (Trace, error) {
	return t.ExplainURLGranted(method, rawURL, GrantsAt{})
}

// ExplainURLGranted is ExplainURL with the tenant's grants in ga.
func (t *Tenant) ExplainURLGranted(method, rawURL string, ga GrantsAt) (Trace, error) {
	outer, inner, err := requestsForURL(method, rawURL)
	if err != nil {
		return Trace{}, err
	}
	if !outer.Tunnel {
		return t.ExplainGranted(outer, ga), nil
	}
	tr := t.newTrace(outer)
	tr.Method, tr.Path = inner.Method, inner.Path
	d := tr.step(t, outer, ga)
	last := outer
	// As the proxy's tunnel does: the tunnel's decision says whether it is
	// inspected, and an inspected tunnel's requests are decided one by one.
	switch c := d.Connector; {
	case !d.Allow:
		// Refused: nothing is sent inside.
	case c == nil || !c.Inspect:
		tr.Unchecked = fmt.Sprintf("%s %s is sent inside a tunnel the gateway does not inspect: no method or path is checked", inner.Method, inner.Path)
	default:
		last = inner
		if err := CheckPath(inner.Path); err != nil {
			// The proxy refuses such an inner request before deciding it.
			d = Decision{Code: CodeBadRequest, Reason: "the request is ambiguous: " + err.Error()}
			tr.Steps = append(tr.Steps, Step{
				Request: requestLine(inner), Method: inner.Method, Path: inner.Path,
				Decision: "deny", Code: d.Code, Reason: d.Reason,
			})
			tr.Rules = nil
			break
		}
		d = tr.step(t, inner, ga)
	}
	tr.finish(last, d)
	tr.explainUpgrade(t, last, d, ga)
	return tr, nil
}

// explainUpgrade says whether an upgrade by the request r, which d
// allowed, would pass too: Decide answers for the same request with
// Upgrade set.
func (tr *Trace) explainUpgrade(t *Tenant, r Request, d Decision, ga GrantsAt) {
	switch {
	case !d.Allow || r.Upgrade:
	case r.Tunnel:
		tr.Upgrade = "not seen: the gateway reads nothing inside a tunnel it does not inspect"
	default:
		up := r
		up.Upgrade = true
		if u := t.DecideGranted(up, ga); u.Allow {
			tr.Upgrade = "allowed: this request may switch protocols (WebSocket, h2c); nothing after the 101 is read"
		} else {
			tr.Upgrade = "refused: " + u.Reason
		}
	}
}

func (t *Tenant) newTrace(r Request) Trace {
	return Trace{
		Tenant: t.ID, Mode: t.Mode, Method: r.Method, Host: r.Host, Port: r.Port, Path: r.Path, Tunnel: r.Tunnel,
		Identity: t.identity(),
		Network:  "every address the host resolves to is checked when it is dialled: private, loopback, link-local, metadata and the gateway's own addresses are refused unless network.allow_cidrs lists them",
		Quota:    t.Quota.String(),
		Hooks:    "none",
		Redact:   "none",
	}
}

// step decides r, rule by rule for the trace and with Decide for the
// verdict, and appends it to the trace's steps.
func (tr *Trace) step(t *Tenant, r Request, ga GrantsAt) Decision {
	s := Step{Request: requestLine(r), Tunnel: r.Tunnel, Method: r.Method, Path: r.Path}
	for _, rule := range t.rules {
		matched, detail := explainRule(rule, r)
		action := "allow"
		if rule.Match.Action == allowlist.Deny {
			action = "deny"
		}
		s.Rules = append(s.Rules, RuleTrace{Name: rule.Name, Kind: rule.Kind, Action: action, Matched: matched, Detail: detail})
	}
	for _, g := range ga.set.Rules(t.ID) {
		matched, detail := explainRule(Rule{Name: g.Name, Kind: KindGrant, Match: g.Match}, r)
		if matched && !ga.now.Before(g.ExpiresAt) {
			matched, detail = false, "expired at "+g.ExpiresAt.UTC().Format(time.RFC3339)
		}
		s.Rules = append(s.Rules, RuleTrace{Name: g.Name, Kind: KindGrant, Action: "allow", Matched: matched, Detail: detail, ExpiresAt: g.ExpiresAt})
	}
	d := t.DecideGranted(r, ga)
	s.Decision, s.Code, s.Rule, s.Reason = decisionWord(d), d.Code, d.Rule, d.Reason
	if c := d.Connector; c != nil && d.Allow && r.Tunnel && c.Inspect {
		tr.Inspect = "the tunnel is inspected with the gateway's CA; each request inside is decided on its own method and path"
	}
	tr.Steps = append(tr.Steps, s)
	tr.Rules = s.Rules
	return d
}

// finish fills in what the final decision d on r sets in motion.
func (tr *Trace) finish(r Request, d Decision) {
	tr.Decision, tr.Code, tr.Rule, tr.Reason = decisionWord(d), d.Code, d.Rule, d.Reason
	if c := d.Connector; c != nil && !c.Rate.Unlimited() {
		tr.Quota = fmt.Sprintf("tenant: %s; connector %s: %g requests/s, burst %d", tr.Quota, c.Name, c.Rate.Rate, c.Rate.Burst)
	}
	if c := d.Connector; c != nil && d.Allow {
		if !d.Report { // a request only report mode lets through gets no credentials
			for _, h := range c.Inject {
				tr.Inject = append(tr.Inject, h.Name) // names only: values hold secrets
			}
		}
		if rd := c.Redact; rd != nil && (!r.Tunnel || c.Inspect) {
			tr.Redact = fmt.Sprintf("request %v, response %v", chainNames(rd.Request), chainNames(rd.Response))
		}
		if h := c.Hooks; h != nil && (!r.Tunnel || c.Inspect) {
			var names []string
			if h.Request != nil {
				names = append(names, "request "+h.Request.Name())
			}
			if h.Response != nil && h.ResponsePerEvent {
				names = append(names, "response "+h.Response.Name()+" (per event on streamed bodies)")
			} else if h.Response != nil {
				names = append(names, "response "+h.Response.Name())
			}
			tr.Hooks = fmt.Sprintf("%s (timeout %s, max_memory %d, max_allocs %d, max_body_bytes %d)",
				strings.Join(names, ", "), h.Limits.Timeout, h.Limits.MaxMemory, h.Limits.MaxAllocs, h.Limits.MaxBodyBytes)
		}
	}
}

func decisionWord(d Decision) string {
	switch {
	case d.Report:
		return "report"
	case d.Allow:
		return "allow"
	default:
		return "deny"
	}
}

// requestLine names a request as the text trace prints it.
func requestLine(r Request) string {
	if r.Tunnel {
		return "CONNECT " + hostPort(r.Host, r.Port)
	}
	return r.Method + " " + hostPort(r.Host, r.Port) + r.Path
}

func (t *Tenant) identity() string {
	var ways []string
	if t.hasToken {
		ways = append(ways, "Proxy-Authorization Basic with token_sha256")
	}
	if len(t.SourceCIDRs) > 0 {
		ways = append(ways, fmt.Sprintf("client address in source_cidrs %v", t.SourceCIDRs))
	}
	return fmt.Sprintf("tenant %q from %s (%s)", t.ID, t.File, strings.Join(ways, " or "))
}

func explainRule(rule Rule, r Request) (bool, string) {
	m := rule.Match
	hostOK := slices.ContainsFunc(m.Hosts, func(p allowlist.Pattern) bool { return p.Match(r.Host) })
	if !hostOK {
		return false, fmt.Sprintf("host %s is not in %v", r.Host, m.Hosts)
	}
	ports := m.Ports
	if len(ports) == 0 && m.Action == allowlist.Allow {
		ports = []uint16{80, 443}
	}
	if len(ports) > 0 && !slices.Contains(ports, r.Port) {
		return false, fmt.Sprintf("port %d is not in %v", r.Port, ports)
	}
	if r.Tunnel {
		switch {
		case m.Conditional() && rule.Connector != nil && rule.Connector.Inspect:
			return true, "host and port match; the tunnel is inspected, so each request inside meets its methods and paths"
		case m.Conditional():
			return true, "host and port match; its methods and paths cannot be checked in an uninspected tunnel"
		}
		return true, "host and port match"
	}
	if len(m.Methods) > 0 && !slices.Contains(m.Methods, r.Method) {
		return false, fmt.Sprintf("method %s is not in %v", r.Method, m.Methods)
	}
	if len(m.Paths) > 0 && !slices.ContainsFunc(m.Paths, func(p string) bool { return strings.HasPrefix(r.Path, p) }) {
		return false, fmt.Sprintf("path %s has none of the prefixes %v", r.Path, m.Paths)
	}
	return true, "host, port, method and path match"
}

// WriteText prints the trace for a person.
func (tr Trace) WriteText(w io.Writer) error {
	steps := tr.Steps
	if len(steps) == 0 { // a Trace not made by Explain
		r := Request{Host: tr.Host, Port: tr.Port, Method: tr.Method, Path: tr.Path, Tunnel: tr.Tunnel}
		steps = []Step{{Request: requestLine(r), Tunnel: tr.Tunnel, Rules: tr.Rules}}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "request:  %s\n", steps[0].Request)
	for _, s := range steps[1:] {
		fmt.Fprintf(&b, "then:     %s, inside the inspected tunnel\n", s.Request)
	}
	fmt.Fprintf(&b, "tenant:   %s, mode %s\n", tr.Identity, tr.Mode)
	for i, s := range steps {
		if len(steps) == 1 {
			fmt.Fprintf(&b, "rules (a matching deny wins, then the first matching allow):\n")
		} else {
			fmt.Fprintf(&b, "rules for %s (a matching deny wins, then the first matching allow):\n", s.Request)
		}
		switch {
		case s.Code == CodeBadRequest:
			fmt.Fprintf(&b, "  (none considered: the request is refused before the rules)\n")
		case len(s.Rules) == 0:
			fmt.Fprintf(&b, "  (none)\n")
		}
		for _, r := range s.Rules {
			mark := "  no match"
			if r.Matched {
				mark = "  MATCH   "
			}
			expiry := ""
			if !r.ExpiresAt.IsZero() {
				expiry = " (expires " + r.ExpiresAt.UTC().Format(time.RFC3339) + ")"
			}
			fmt.Fprintf(&b, "%s %s %s %q%s: %s\n", mark, r.Action, r.Kind, r.Name, expiry, r.Detail)
		}
		if i < len(steps)-1 {
			fmt.Fprintf(&b, "  step decision: %s\n", outcome(s.Decision, s.Code, s.Rule))
		}
	}
	fmt.Fprintf(&b, "network:  %s\n", tr.Network)
	fmt.Fprintf(&b, "quota:    %s\n", tr.Quota)
	if tr.Inspect != "" {
		fmt.Fprintf(&b, "inspect:  %s\n", tr.Inspect)
	}
	if len(tr.Inject) > 0 {
		fmt.Fprintf(&b, "inject:   headers %s, with secrets from gateway.yaml\n", strings.Join(tr.Inject, ", "))
	}
	fmt.Fprintf(&b, "hooks:    %s\n", tr.Hooks)
	fmt.Fprintf(&b, "redaction: %s\n", tr.Redact)
	if tr.Unchecked != "" {
		fmt.Fprintf(&b, "unchecked: %s\n", tr.Unchecked)
	}
	if tr.Upgrade != "" {
		fmt.Fprintf(&b, "upgrade:  %s\n", tr.Upgrade)
	}
	fmt.Fprintf(&b, "decision: %s\n", outcome(tr.Decision, tr.Code, tr.Rule))
	if tr.Reason != "" {
		fmt.Fprintf(&b, "reason:   %s\n", tr.Reason)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// outcome prints a decision as `ALLOW (ok) by "github@2"`.
func outcome(decision string, code Code, rule string) string {
	s := fmt.Sprintf("%s (%s)", strings.ToUpper(decision), code)
	if rule != "" {
		s += fmt.Sprintf(" by %q", rule)
	}
	return s
}

func chainNames(c redaction.Chain) []string {
	names := make([]string, len(c))
	for i, p := range c {
		names[i] = p.Name()
	}
	return names
}
