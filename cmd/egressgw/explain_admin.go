package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/egressgw/egressgw/policy"
)

// explain asks the gateway's /v1/explain (docs/reference.md, "Admin API")
// how it decides the request: its live policy and the grants it applies.
// A reply that is not a trace of that tenant is an error, never printed
// as a decision.
func (c *adminClient) explain(tenant, method, rawURL string, resolve bool) (policy.Trace, error) {
	q := url.Values{"tenant": {tenant}, "method": {method}, "url": {rawURL}}
	if resolve {
		q.Set("resolve", "1")
	}
	data, err := c.call(http.MethodGet, "/v1/explain?"+q.Encode(), nil)
	if err != nil {
		return policy.Trace{}, err
	}
	var trace policy.Trace
	if err := json.Unmarshal(data, &trace); err != nil {
		return policy.Trace{}, fmt.Errorf("the reply of %s is not a decision trace: %w", c.base, err)
	}
	switch {
	case trace.Decision != "allow" && trace.Decision != "deny" && trace.Decision != "report":
		return policy.Trace{}, fmt.Errorf("the reply of %s is not a decision trace: decision %q", c.base, trace.Decision)
	case trace.Tenant != tenant:
		return policy.Trace{}, fmt.Errorf("the reply of %s is not a decision trace for tenant %q: it names %q", c.base, tenant, trace.Tenant)
	}
	return trace, nil
}
