package budget

import "time"

// Price is what a connector's traffic costs, in the gateway's currency.
type Price struct{ PerRequest, PerGiBEgress, PerGiBIngress float64 }

// Usage is an amount of traffic, or a limit on one (a zero field of a
// limit is no limit on that dimension).
type Usage struct {
	Requests int64   `json:"requests"`
	Egress   int64   `json:"egress_bytes"` // sandbox -> upstream, tunnels included, as relayed
	Ingress  int64   `json:"ingress_bytes"`
	Cost     float64 `json:"cost"`
}

// Line is one statement line: a connector version's traffic, or
// (Connector "") what the tenant's rules and grants allowed.
type Line struct {
	Connector string `json:"connector"`
	Version   int    `json:"version,omitempty"`
	Usage
}

// Statement is a tenant's traffic over one period, per connector version.
type Statement struct {
	Tenant   string    `json:"tenant"`
	Period   Period    `json:"period"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	Currency string    `json:"currency"`
	Lines    []Line    `json:"lines"` // by connector name, then version; "" last
	Total    Usage     `json:"total"`
}

// Status is where one budget of a tenant stands now. A zero field of
// Limit is no limit on that dimension.
type Status struct {
	Name       string    `json:"name"`
	Period     Period    `json:"period"`
	Limit      Usage     `json:"limit"`
	Used       Usage     `json:"used"`
	WarnAt     float64   `json:"warn_at,omitempty"`
	Reset      time.Time `json:"reset"`
	Exhausted  bool      `json:"exhausted"`
	Connectors []string  `json:"connectors,omitempty"`
}

// Budget is one budget as the policy defines it: a limit on a tenant's
// traffic over a period, counting only the listed connectors' traffic
// when Connectors is not empty.
type Budget struct {
	Name       string
	Period     Period
	Limit      Usage
	WarnAt     float64 // fraction of a limit whose crossing is warned of; 0: none
	Connectors []string
}

// Source is what a Meter counts: a tenant's traffic through one connector
// version, or (Connector "") through its own rules and grants.
type Source struct {
	Tenant    string
	Connector string
	Version   int
	Price     Price
}
