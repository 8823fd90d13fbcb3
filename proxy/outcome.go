package proxy

import "github.com/egressgw/egressgw/policy"

// outcome is how an exchange ended, or why it goes no further: the one
// value that the gateway's reply, the audit line and the metrics all read
// (docs/reference.md, "What clients see"). A step of the request path that
// can refuse returns one; the zero value lets the exchange go on.
type outcome struct {
	code       policy.Code // "" (ok) while the exchange goes on
	reason     string      // the reply's message and, for a refusal, the audit reason
	retryAfter int         // seconds, for a rate_limited refusal
	// denied marks the gateway refusing, as opposed to the upstream or the
	// client failing: the audit line says deny and gives the reason.
	denied bool
	// cut marks an exchange ended after the client had its status (a
	// per-event hook that ended a stream): like the audit-only codes, its
	// connection is aborted.
	cut bool

	// What the decision said, kept whatever comes after it: the deciding
	// rule, and whether only report mode let the exchange through, with
	// what enforce would have answered (wouldBe and wouldBeReason; reason
	// too while the exchange is ok).
	report        bool
	rule          string
	wouldBe       policy.Code
	wouldBeReason string
}

// refused is the gateway refusing an exchange.
func refused(code policy.Code, reason string) outcome {
	return outcome{code: code, reason: reason, denied: true}
}

// failed is an exchange that the upstream or the client cut short.
func failed(code policy.Code, reason string) outcome {
	return outcome{code: code, reason: reason}
}

// decided is the outcome of the allowlist's decision d.
func decided(d policy.Decision) outcome {
	switch {
	case !d.Allow:
		return outcome{code: d.Code, reason: d.Reason, denied: true, rule: d.Rule}
	case d.Report:
		return outcome{rule: d.Rule, report: true, wouldBe: d.Code, wouldBeReason: d.Reason, reason: d.Reason}
	default:
		return outcome{rule: d.Rule}
	}
}

// ok reports whether the exchange goes on.
func (o outcome) ok() bool { return o.code == "" || o.code == policy.CodeOK }

// replied reports whether the client had its status before the exchange
// ended this way (the audit-only codes): its connection is then cut, as
// no reply of the gateway can follow.
func (o outcome) replied() bool {
	if o.cut {
		return true
	}
	switch o.code {
	case policy.CodeClientClosed, policy.CodeUpstreamFailedMidway, policy.CodeRevoked, policy.CodeTunnelSNIMismatch,
		policy.CodeEventTooLarge:
		return true
	}
	return false
}

// then is o followed by a later step's outcome next: next says how the
// exchange ended, o's decision (rule, report mode) still says how it was
// let in, unless next is a decision of its own.
func (o outcome) then(next outcome) outcome {
	if next.rule == "" && !next.report {
		next.rule, next.report, next.wouldBe, next.wouldBeReason = o.rule, o.report, o.wouldBe, o.wouldBeReason
		if next.ok() && o.report {
			next.reason = o.reason
		}
	}
	return next
}

// Code is what the client sees: ok, or the error code.
func (o outcome) Code() policy.Code {
	if o.code == "" {
		return policy.CodeOK
	}
	return o.code
}

// audited is the audit line's and the metrics' view: the decision label
// (allow, deny or report), the code and the reason. An exchange that only
// report mode let through, and that then went well, is logged with what
// enforce would have answered.
func (o outcome) audited() (decision string, code policy.Code, reason string) {
	switch {
	case o.denied:
		return "deny", o.code, o.reason
	case o.report && o.ok():
		return "report", o.wouldBe, o.reason
	case o.report:
		return "report", o.code, ""
	default:
		return "allow", o.Code(), ""
	}
}

// reported is the denial enforce would have answered for an exchange that
// only report mode let in, kept apart from how the exchange ended (the
// audit line's report_code and report_reason): an upstream that then
// fails, or a hook that refuses, does not hide it. Empty for any other
// exchange.
func (o outcome) reported() (code policy.Code, reason string) {
	if !o.report {
		return "", ""
	}
	return o.wouldBe, o.wouldBeReason
}

// Error lets a refusal made while the response is transformed travel, as
// an error, through the transport to where the reply is made.
func (o *outcome) Error() string { return string(o.code) + ": " + o.reason }

// refusedErr is a refusal made while the response is transformed, as the
// error that carries it to the reply.
func refusedErr(code policy.Code, reason string) error {
	o := refused(code, reason)
	return &o
}
