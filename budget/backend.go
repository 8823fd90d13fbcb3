package budget

import (
	"context"
	"time"
)

// LineKey names the counters of one Source in one period.
type LineKey struct {
	Tenant    string
	Connector string
	Version   int
	Period    Period
	Start     time.Time
}

// Backend keeps the counters. Add adds deltas (with the line's price, kept
// beside its counts so a statement is computed from what crossed);
// Load reads every line of a tenant for one period.
type Backend interface {
	Add(ctx context.Context, deltas []Delta) error
	Load(ctx context.Context, tenant string, p Period, start time.Time) ([]StoredLine, error)
	Close() error
}

// Delta is counts to add to one line.
type Delta struct {
	Key                       LineKey
	Price                     Price
	Requests, Egress, Ingress int64
}

// StoredLine is one line as a Backend holds it.
type StoredLine struct {
	Connector                 string
	Version                   int
	Price                     Price
	Requests, Egress, Ingress int64
}
