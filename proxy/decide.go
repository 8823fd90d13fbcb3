package proxy

import (
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/egressgw/egressgw/policy"
)

// target is where a request goes, as the decide step reads it from the
// request: each path has its own way to find it (plainTarget, innerTarget,
// connectTarget), and one decide step.
type target struct {
	host string
	port uint16
	path string // "" for a tunnel, whose method and path are unknown
	// upgrade marks a request that asks to switch protocols, which the
	// policy decides on its own terms: nothing after the 101 is read
	// (docs/admins.md, upgrade: true).
	upgrade bool
}

// decide is the decide step: the tenant's rules on tg, which the request
// path found in the request, or o, why it found none (with whatever of tg
// the reply and the audit line can still name).
func (ex *exchange) decide(tg target, o outcome) outcome {
	ex.host, ex.port, ex.path, ex.upgrade = tg.host, tg.port, tg.path, tg.upgrade
	if !o.ok() {
		return o
	}
	ex.grants = ex.gw.grants.current.Load()
	granted := ex.grants.At(ex.start)
	d := ex.tenant.DecideGranted(ex.policyRequest(), granted)
	if !d.Allow && ex.tunnel && ex.port == plainHTTPPort {
		// Refused maybe only because the tunnel cannot be read: let in as
		// plain HTTP, it is read request by request (docs/design.md).
		ex.plainTunnel = true
		if plain := ex.tenant.DecideGranted(ex.policyRequest(), granted); plain.Allow {
			d = plain
		} else {
			ex.plainTunnel = false
		}
	}
	o = ex.setDecision(d)
	if o.report {
		ex.gw.log.Info("report mode: would deny", "request_id", ex.id, "tenant", ex.tenant.ID, "reason", o.reason)
	}
	// What the tenant was refused becomes an access request an admin can
	// grant (docs/reference.md, "Access requests and grants").
	switch {
	case o.code == policy.CodeDestinationNotAllowed:
		ex.recordRefusal(false)
	case o.report && o.wouldBe == policy.CodeDestinationNotAllowed:
		ex.recordRefusal(true)
	}
	return o
}

// policyRequest is what the tenant's rules decide on for ex.
func (ex *exchange) policyRequest() policy.Request {
	return policy.Request{
		Host: ex.host, Port: ex.port, Method: ex.method, Path: ex.path,
		Tunnel: ex.tunnel, PlainHTTP: ex.plainTunnel,
		TLS: ex.inner && ex.scheme == "https", Upgrade: ex.upgrade,
	}
}

// plainTarget is the target of a plain proxy request: its absolute URL.
func plainTarget(r *http.Request) (target, outcome) {
	defaultPort, ok := policy.SchemePort(r.URL.Scheme)
	if !ok {
		return target{}, refused(policy.CodeBadRequest, "only http:// URLs can be sent as plain proxy requests; use CONNECT (HTTPS_PROXY) for https")
	}
	path, o := requestPath(r)
	if !o.ok() {
		return target{host: hostOnly(r.URL.Host)}, o
	}
	host, port, err := policy.SplitTarget(r.URL.Host, defaultPort)
	if err != nil {
		return target{host: hostOnly(r.URL.Host)}, malformedTarget(err)
	}
	return target{host: host, port: port, path: path, upgrade: isUpgrade(r.Header)}, outcome{}
}

// innerTarget is the target of a request inside the tunnel of tunnelEx,
// read as scheme (https when inspected, http when it carries plain HTTP):
// it must name the tunnel's own host and port, or the request would go
// wherever its Host header says, and is decided on its method and path.
func innerTarget(r *http.Request, tunnelEx *exchange, scheme string) (target, outcome) {
	defaultPort := uint16(443)
	if scheme == "http" {
		defaultPort = plainHTTPPort
	}
	host, port, err := policy.SplitTarget(r.Host, defaultPort)
	if r.Method == http.MethodConnect && err == nil {
		// A tunnel inside the tunnel would carry bytes no rule reads.
		return target{host: host, port: port}, refused(policy.CodeBadRequest,
			"a CONNECT inside a tunnel is not forwarded (this includes WebSockets over HTTP/2, extended CONNECT); open WebSockets over HTTP/1.1")
	}
	otherScheme := r.URL.IsAbs() && r.URL.Scheme != scheme
	if err != nil || otherScheme || host != tunnelEx.host || port != tunnelEx.port {
		named := r.Host
		if r.URL.IsAbs() {
			named = r.URL.Scheme + "://" + r.URL.Host
		}
		return target{host: hostOnly(r.Host), port: port}, refused(policy.CodeBadRequest, fmt.Sprintf(
			"a request inside the tunnel to %s names %q; every request in a tunnel must be for the tunnel's own host",
			net.JoinHostPort(tunnelEx.host, strconv.Itoa(int(tunnelEx.port))), named))
	}
	path, o := requestPath(r)
	if !o.ok() {
		return target{host: host, port: port}, o
	}
	return target{host: host, port: port, path: path, upgrade: isUpgrade(r.Header)}, outcome{}
}

// connectTarget is the target of a CONNECT: its authority, which must
// name a port.
func connectTarget(authority string) (target, outcome) {
	host, port, err := policy.SplitTarget(authority, 0)
	if err != nil {
		return target{host: hostOnly(authority)}, malformedTarget(err)
	}
	return target{host: host, port: port}, outcome{}
}

// requestPath is r's path as the rules match it, refused when it has more
// than one reading (docs/admins.md, "Paths").
func requestPath(r *http.Request) (string, outcome) {
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	if err := policy.CheckPath(path); err != nil {
		return "", refused(policy.CodeBadRequest, "the request is ambiguous: "+err.Error())
	}
	return path, outcome{}
}

func malformedTarget(err error) outcome {
	return refused(policy.CodeBadRequest, "the request target is malformed or ambiguous: "+err.Error())
}

func hostOnly(authority string) string {
	if h, _, err := net.SplitHostPort(authority); err == nil {
		return h
	}
	return authority
}
