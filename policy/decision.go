package policy

import (
	"fmt"
	"strings"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/quota"
)

// Code is the machine-readable outcome of a request: "ok" or one of the
// error codes of docs/reference.md, "What clients see".
type Code string

// The codes a client can see (docs/reference.md, "What clients see").
const (
	CodeOK                    Code = "ok"
	CodeProxyAuthRequired     Code = "proxy_auth_required"
	CodeDestinationNotAllowed Code = "destination_not_allowed"
	CodeDestinationIPDenied   Code = "destination_ip_denied"
	CodeBadRequest            Code = "bad_request"
	CodeRateLimited           Code = "rate_limited"
	CodeConcurrencyLimited    Code = "concurrency_limited"
	CodeQuotaUnavailable      Code = "quota_unavailable"
	CodeBodyTooLarge          Code = "body_too_large"
	CodeHookDenied            Code = "hook_denied"
	CodeHookFailed            Code = "hook_failed"
	CodeDNSFailure            Code = "dns_failure"
	CodeUpstreamUnreachable   Code = "upstream_unreachable"
	CodeUpstreamTimeout       Code = "upstream_timeout"
)

// Audit-only codes: the client already had its status when an exchange
// ended this way, so no reply of the gateway carries them; the audit line
// and the metrics do (docs/reference.md, "What clients see").
const (
	// CodeTunnelSNIMismatch: an opaque tunnel closed because its TLS
	// ClientHello asked for another server than the CONNECT named, or
	// could not be read.
	CodeTunnelSNIMismatch Code = "tunnel_sni_mismatch"
	// CodeClientClosed: the client went away mid-request. Never an
	// upstream failure.
	CodeClientClosed Code = "client_closed"
	// CodeUpstreamFailedMidway: the upstream broke off after its head was
	// sent; the client's connection was aborted, never ended as if the
	// body were whole.
	CodeUpstreamFailedMidway Code = "upstream_failed_midway"
	// CodeRevoked: a policy reload, or the end of the grant that allowed
	// it, ended a tunnel, upgraded connection or response that the policy
	// no longer allows.
	CodeRevoked Code = "revoked"
	// CodeEventTooLarge: a stream redacted event by event carried an
	// event longer than redaction.max_event_bytes (or held back more than
	// that while it might continue a secret); the client's connection was
	// aborted, never ended as if the body were whole.
	CodeEventTooLarge Code = "event_too_large"
)

// Request is what the allowlist decides on. Host must already be normalised
// (allowlist.NormalizeHost).
type Request struct {
	Host   string
	Port   uint16
	Method string
	Path   string
	Tunnel bool // a CONNECT: method and path are unknown
	// TLS marks a request read inside an inspected tunnel, as opposed to
	// plain HTTP, where an injected secret would travel in clear text.
	TLS bool
	// Upgrade marks a request that asks to switch protocols (Connection:
	// Upgrade): after a 101 the gateway reads nothing more of it.
	Upgrade bool
	// PlainHTTP marks a tunnel the gateway lets in only to read it as
	// plain HTTP, each request inside decided on its own; anything else it
	// carries is closed unread. It is decided as an inspected tunnel is.
	PlainHTTP bool
}

// Decision is the allowlist's verdict on one request. The same value feeds
// the client's error, the audit log, the metrics and explain.
type Decision struct {
	Allow bool
	// Report is set when the request is let through only because the tenant
	// is in report mode; Code and Reason then say what enforce would do.
	Report bool
	Code   Code
	Reason string
	Rule   string // the deciding rule's name; empty when none matched
	// Connector is the allowing connector, if a connector allowed it. On a
	// report-mode pass it is the connector whose hosts cover the request,
	// so its quota, hooks and redaction still apply (but not its
	// credentials: see Report).
	Connector *Connector
	// ConnectorBucket is Connector's request bucket for this tenant, as
	// compiled at load (Rule.Bucket); a zero Limit when it sets no rate.
	ConnectorBucket quota.Bucket
	// unreadable marks a refusal because the gateway could not check the
	// request (an uninspected tunnel, credentials over plain HTTP), which
	// report mode never relaxes.
	unreadable bool
}

// Decide applies the tenant's rules to r: a matching deny rule wins, then
// the first allowing connector or rule; nothing matching is a denial. It
// applies no grant: see DecideGranted.
func (t *Tenant) Decide(r Request) Decision { return t.DecideGranted(r, GrantsAt{}) }

// DecideGranted applies the tenant's rules and then its grants in ga to
// r: a matching deny rule wins, then the first allowing connector or rule,
// then a grant (docs/reference.md, "Access requests and grants");
// nothing matching is a denial.
//
// Report mode lets host, port, method and path denials through, and only
// those: a request the gateway cannot read (an uninspected tunnel to a
// connector that needs inspection) is refused in report mode too, so
// nothing passes unchecked.
func (t *Tenant) DecideGranted(r Request, ga GrantsAt) Decision {
	res := t.set.Match(allowlist.Query{Host: r.Host, Port: r.Port, Method: r.Method, Path: r.Path, Tunnel: r.Tunnel})
	if res.AmbiguousPath && (res.Deny >= 0 || res.Allow < 0) {
		// A rule naming paths could not compare this spelling of the path,
		// and it decided the request: refused as ambiguous, in report mode
		// too (docs/admins.md, "Paths").
		return Decision{
			Code: CodeBadRequest,
			Reason: fmt.Sprintf("the request is ambiguous: the path %q cannot be matched against the paths a rule for %s names: %s; send it in plain ASCII, unencoded where no encoding is needed",
				r.Path, hostPort(r.Host, r.Port), allowlist.PathAmbiguity(r.Path)),
			unreadable: true,
		}
	}
	d := t.verdict(r, res, ga)
	if d.Allow || d.unreadable || t.Mode != ModeReport {
		return d
	}
	// The connector whose hosts and ports cover r, whatever its methods and
	// paths or a deny rule say: its quota, hooks and redaction still apply.
	var c *Connector
	var bucket quota.Bucket
	if res := t.set.Match(allowlist.Query{Host: r.Host, Port: r.Port, Tunnel: true}); res.Allow >= 0 {
		rule := &t.rules[res.Allow]
		bucket = rule.Bucket
		if c = rule.Connector; r.Tunnel && !r.PlainHTTP && c != nil && c.NeedsInspection() && !c.Inspect {
			return t.needsInspect(r, rule.Name)
		}
		// Its hooks and redaction still apply, and cannot after a 101.
		if why := rule.upgradeRefusal(); r.Upgrade && c != nil && why != "" {
			return t.unreadable(r, rule.Name, why)
		}
	}
	d.Allow, d.Report, d.Connector, d.ConnectorBucket = true, true, c, bucket
	return d
}

func (t *Tenant) verdict(r Request, res allowlist.Result, ga GrantsAt) Decision {
	var allow *Rule
	if res.Allow >= 0 {
		allow = &t.rules[res.Allow]
	}
	// A tunnel read as plain HTTP meets methods, paths and transforms
	// request by request, as an inspected one does.
	inspected := r.Tunnel && (r.PlainHTTP || allow != nil && allow.Connector != nil && allow.Connector.Inspect)
	if res.Deny >= 0 {
		rule := t.rules[res.Deny]
		switch {
		case !r.Tunnel || !rule.Match.Conditional():
			return t.deny(r, rule.Name, fmt.Sprintf("denied by rule %q", rule.Name))
		case !inspected:
			return t.unreadable(r, rule.Name, fmt.Sprintf(
				"rule %q denies some methods or paths on this host, which cannot be checked inside an uninspected tunnel", rule.Name))
		}
		// An inspected tunnel: its inner requests meet the deny rule one by one.
	}
	if allow == nil {
		// No deny rule matched (one would have decided above): a grant
		// may allow what the config does not.
		if d, granted := t.grantVerdict(r, ga); granted {
			return d
		}
		if !r.Tunnel {
			// Say so when the host is allowed and only the method or path is not.
			hostOnly := t.set.Match(allowlist.Query{Host: r.Host, Port: r.Port, Tunnel: true})
			if hostOnly.Allow >= 0 {
				rule := t.rules[hostOnly.Allow]
				return t.deny(r, rule.Name, fmt.Sprintf("%s %s is not among the methods and paths that %s %q allows", r.Method, r.Path, rule.Kind, rule.Name))
			}
			if g, ok := t.grantCoversHost(r, ga); ok {
				return t.deny(r, g.Name, fmt.Sprintf("%s %s is not among the methods and paths that grant %q allows", r.Method, r.Path, g.Name))
			}
		}
		return t.deny(r, "", "no connector or rule matches; add the host to a connector the tenant uses or to the tenant's rules")
	}
	c := allow.Connector
	switch {
	case r.Tunnel && allow.Match.Conditional() && !inspected:
		return t.unreadable(r, allow.Name, fmt.Sprintf(
			"%s %q restricts methods or paths, which an HTTPS tunnel hides; %s", allow.Kind, allow.Name, tunnelAdvice(allow.Kind)))
	case r.Tunnel && !inspected && c != nil && c.NeedsInspection() && !c.Inspect:
		return t.needsInspect(r, allow.Name)
	case !r.Tunnel && !r.TLS && c != nil && len(c.Inject) > 0 && !c.AllowPlaintext:
		return t.unreadable(r, allow.Name, fmt.Sprintf(
			"connector %q injects credentials and is refused over plain HTTP so they never cross the network in clear text; use https://", allow.Name))
	case r.Upgrade && !r.Tunnel:
		if d, refused := t.refuseUpgrade(r, allow); refused {
			return d
		}
	}
	return Decision{Allow: true, Code: CodeOK, Rule: allow.Name, Connector: c, ConnectorBucket: allow.Bucket}
}

// refuseUpgrade returns the refusal of an Upgrade request r that allow
// lets through, if it must be refused: after the 101 the gateway reads
// nothing more, so neither the allowing rule's methods, paths and
// transforms nor a deny rule's methods and paths on the same host could
// apply, unless the rule concerned says upgrade: true.
func (t *Tenant) refuseUpgrade(r Request, allow *Rule) (Decision, bool) {
	if why := allow.upgradeRefusal(); why != "" {
		return t.unreadable(r, allow.Name, why), true
	}
	if t.upgradeDenies != nil {
		if res := t.upgradeDenies.Match(allowlist.Query{Host: r.Host, Port: r.Port, Tunnel: true}); res.Deny >= 0 {
			rule := t.rules[t.upgradeDenyRules[res.Deny]]
			return t.unreadable(r, rule.Name, fmt.Sprintf(
				"rule %q denies some methods or paths on this host, which cannot be enforced on the bytes after a protocol switch (101); upgrades to this host are refused unless that rule sets upgrade: true", rule.Name)), true
		}
	}
	return Decision{}, false
}

func (t *Tenant) deny(r Request, rule, why string) Decision {
	return Decision{
		Code:   CodeDestinationNotAllowed,
		Rule:   rule,
		Reason: fmt.Sprintf("tenant %q may not reach %s: %s", t.ID, hostPort(r.Host, r.Port), why),
	}
}

// unreadable is a refusal that report mode keeps (see Decide).
func (t *Tenant) unreadable(r Request, rule, why string) Decision {
	d := t.deny(r, rule, why)
	d.unreadable = true
	return d
}

// needsInspect refuses a tunnel through a connector that must read what
// it carries (Connector.NeedsInspection) but does not inspect.
func (t *Tenant) needsInspect(r Request, connector string) Decision {
	return t.unreadable(r, connector, fmt.Sprintf(
		"connector %q injects credentials, runs hooks, redacts or restricts methods or paths, which an HTTPS tunnel hides; the connector needs inspect: true", connector))
}

func hostPort(host string, port uint16) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}
