package proxy

import (
	"testing"

	"github.com/egressgw/egressgw/policy"
)

// The audit line's decision, code and reason come from the one outcome,
// whatever steps it went through: a report-mode pass keeps saying what
// enforce would have answered until something else ends the exchange.
func TestOutcomeAudited(t *testing.T) {
	allow := policy.Decision{Allow: true, Code: policy.CodeOK, Rule: "api"}
	report := policy.Decision{Allow: true, Report: true, Code: policy.CodeDestinationNotAllowed, Reason: "denied by rule \"no\"", Rule: "no"}
	deny := policy.Decision{Code: policy.CodeDestinationNotAllowed, Reason: "no rule", Rule: ""}
	for _, tc := range []struct {
		name                 string
		steps                []outcome
		decision, code, rule string
		reason               string
		// what enforce would have answered, on every exchange only report
		// mode let in, whatever ended it
		reportCode, reportReason string
	}{
		{"allowed", []outcome{decided(allow), {}}, "allow", "ok", "api", "", "", ""},
		{"denied", []outcome{decided(deny)}, "deny", "destination_not_allowed", "", "no rule", "", ""},
		{"refused before any decision", []outcome{refused(policy.CodeProxyAuthRequired, "who")}, "deny", "proxy_auth_required", "", "who", "", ""},
		{"refused after the decision keeps its rule", []outcome{decided(allow), refused(policy.CodeRateLimited, "slow")}, "deny", "rate_limited", "api", "slow", "", ""},
		{"upstream failure", []outcome{decided(allow), failed(policy.CodeUpstreamTimeout, "late")}, "allow", "upstream_timeout", "api", "", "", ""},
		{"report-mode pass", []outcome{decided(report), {}}, "report", "destination_not_allowed", "no", "denied by rule \"no\"",
			"destination_not_allowed", "denied by rule \"no\""},
		{"report-mode pass the upstream failed", []outcome{decided(report), failed(policy.CodeUpstreamUnreachable, "gone")}, "report", "upstream_unreachable", "no", "",
			"destination_not_allowed", "denied by rule \"no\""},
		{"report-mode pass the client left", []outcome{decided(report), failed(policy.CodeClientClosed, "left")}, "report", "client_closed", "no", "",
			"destination_not_allowed", "denied by rule \"no\""},
		{"report-mode pass a hook denied", []outcome{decided(report), refused(policy.CodeHookDenied, "hook says no")}, "deny", "hook_denied", "no", "hook says no",
			"destination_not_allowed", "denied by rule \"no\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var o outcome
			for i, step := range tc.steps {
				if i == 0 {
					o = step
					continue
				}
				if !step.ok() {
					o = o.then(step)
				}
			}
			decision, code, reason := o.audited()
			if decision != tc.decision || string(code) != tc.code || o.rule != tc.rule || reason != tc.reason {
				t.Errorf("audited %s %s rule %q reason %q, want %s %s rule %q reason %q",
					decision, code, o.rule, reason, tc.decision, tc.code, tc.rule, tc.reason)
			}
			if reportCode, reportReason := o.reported(); string(reportCode) != tc.reportCode || reportReason != tc.reportReason {
				t.Errorf("reported %q %q, want %q %q", reportCode, reportReason, tc.reportCode, tc.reportReason)
			}
		})
	}
}
