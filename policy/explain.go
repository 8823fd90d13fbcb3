package policy

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/redaction"
)

// Trace is the full reasoning behind one decision, for `egressgw explain`
// and /v1/explain. It is computed rule by rule, apart from the indexed
// matcher, and its Decision is the matcher's own, so the two cannot drift.
type Trace struct {
	Tenant   string      `json:"tenant"`
	Identity string      `json:"identity"`
	Mode     Mode        `json:"mode"`
	Method   string      `json:"method,omitempty"`
	Host     string      `json:"host"`
	Port     uint16      `json:"port"`
	Path     string      `json:"path,omitempty"`
	Tunnel   bool        `json:"tunnel"`
	Rules    []RuleTrace `json:"rules"`
	Network  string      `json:"network"`
	Quota    string      `json:"quota"`
	Hooks    string      `json:"hooks"`
	Redact   string      `json:"redaction"`
	Inspect  string      `json:"inspect,omitempty"`
	Inject   []string    `json:"inject_headers,omitempty"`

	Decision string `json:"decision"` // allow, deny or report
	Code     Code   `json:"code"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// RuleTrace says whether one rule of the tenant's list matched, and if not,
// the first part that did not.
type RuleTrace struct {
	Name    string   `json:"name"`
	Kind    RuleKind `json:"kind"`
	Action  string   `json:"action"`
	Matched bool     `json:"matched"`
	Detail  string   `json:"detail"`
}

// Explain traces how the tenant's policy decides r.
func (t *Tenant) Explain(r Request) Trace {
	tr := Trace{
		Tenant: t.ID, Mode: t.Mode, Method: r.Method, Host: r.Host, Port: r.Port, Path: r.Path, Tunnel: r.Tunnel,
		Identity: t.identity(),
		Network:  "every address the host resolves to is checked when it is dialled: private, loopback, link-local, metadata and the gateway's own addresses are refused unless network.allow_cidrs lists them",
		Quota:    t.Quota.String(),
		Hooks:    "none",
		Redact:   "none",
	}
	for _, rule := range t.rules {
		matched, detail := explainRule(rule, r)
		action := "allow"
		if rule.Match.Action == allowlist.Deny {
			action = "deny"
		}
		tr.Rules = append(tr.Rules, RuleTrace{Name: rule.Name, Kind: rule.Kind, Action: action, Matched: matched, Detail: detail})
	}
	d := t.Decide(r)
	tr.Code, tr.Rule, tr.Reason = d.Code, d.Rule, d.Reason
	if c := d.Connector; c != nil && c.Rate != nil {
		tr.Quota = fmt.Sprintf("tenant: %s; connector %s: %g requests/s, burst %d", tr.Quota, c.Name, c.Rate.PerSecond, c.Rate.Burst)
	}
	if c := d.Connector; c != nil && d.Allow {
		if r.Tunnel && c.Inspect {
			tr.Inspect = "the tunnel is inspected with the gateway's CA; each request inside is decided on its own method and path"
		}
		for _, h := range c.Inject {
			tr.Inject = append(tr.Inject, h.Name) // names only: values hold secrets
		}
		if rd := c.Redact; rd != nil && (!r.Tunnel || c.Inspect) {
			tr.Redact = fmt.Sprintf("request %v, response %v", chainNames(rd.Request), chainNames(rd.Response))
		}
		if h := c.Hooks; h != nil && (!r.Tunnel || c.Inspect) {
			var names []string
			if h.Request != nil {
				names = append(names, "request "+h.Request.Name())
			}
			if h.Response != nil {
				names = append(names, "response "+h.Response.Name())
			}
			tr.Hooks = fmt.Sprintf("%s (timeout %s, max_memory %d, max_allocs %d, max_body_bytes %d)",
				strings.Join(names, ", "), h.Limits.Timeout, h.Limits.MaxMemory, h.Limits.MaxAllocs, h.Limits.MaxBodyBytes)
		}
	}
	switch {
	case d.Report:
		tr.Decision = "report"
	case d.Allow:
		tr.Decision = "allow"
	default:
		tr.Decision = "deny"
	}
	return tr
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
	var b strings.Builder
	target := hostPort(tr.Host, tr.Port)
	if tr.Tunnel {
		fmt.Fprintf(&b, "request:  CONNECT %s\n", target)
	} else {
		fmt.Fprintf(&b, "request:  %s %s%s\n", tr.Method, target, tr.Path)
	}
	fmt.Fprintf(&b, "tenant:   %s, mode %s\n", tr.Identity, tr.Mode)
	fmt.Fprintf(&b, "rules (a matching deny wins, then the first matching allow):\n")
	if len(tr.Rules) == 0 {
		fmt.Fprintf(&b, "  (none)\n")
	}
	for _, r := range tr.Rules {
		mark := "  no match"
		if r.Matched {
			mark = "  MATCH   "
		}
		fmt.Fprintf(&b, "%s %s %s %q: %s\n", mark, r.Action, r.Kind, r.Name, r.Detail)
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
	fmt.Fprintf(&b, "decision: %s (%s)", strings.ToUpper(tr.Decision), tr.Code)
	if tr.Rule != "" {
		fmt.Fprintf(&b, " by %q", tr.Rule)
	}
	b.WriteString("\n")
	if tr.Reason != "" {
		fmt.Fprintf(&b, "reason:   %s\n", tr.Reason)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func chainNames(c redaction.Chain) []string {
	names := make([]string, len(c))
	for i, p := range c {
		names[i] = p.Name()
	}
	return names
}
