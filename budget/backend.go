package budget

import (
	"context"
	"time"
)

// Backend keeps the counters a Ledger flushes: one per budget and period,
// and one per connector version (a line) and period. Counts are only ever
// added to, so replicas sharing a Backend add up.
type Backend interface {
	// Add adds every delta to its counters; a line's delta also records
	// the line's price beside its counts.
	Add(ctx context.Context, deltas []Delta) error
	// Counts reads the counters of keys, zero where none exist.
	Counts(ctx context.Context, keys []Key) ([]Counts, error)
	// Lines reads every line of tenant for the period p starting at start.
	Lines(ctx context.Context, tenant string, p Period, start time.Time) ([]StoredLine, error)
	Close() error
}

// Key names one counter: a budget's (Budget set) or a line's.
type Key struct {
	Tenant    string
	Budget    string // a budget's name; "" for a line
	Connector string // a line's connector; "" for the tenant's rules and grants
	Version   int
	Period    Period
	Start     time.Time // the period's start
}

// The dimensions of Counts.
const (
	requests = iota
	egress
	ingress
	cost // in picoUnits of the currency; budgets only
	dimensions
)

// Counts is requests, egress bytes, ingress bytes and (for a budget) cost
// in millionths of a millionth of the currency.
type Counts [dimensions]int64

// picoUnits is how many counted units make one of the currency: cost is
// counted in integers so that replicas can add it up exactly (HINCRBY).
const picoUnits = 1e12

// Delta is counts to add to one counter.
type Delta struct {
	Key    Key
	Price  Price // a line's price, stored beside its counts
	Counts Counts
}

// StoredLine is one line as a Backend holds it.
type StoredLine struct {
	Connector string
	Version   int
	Price     Price
	Counts    Counts
}

// retention is how long a period's counters are kept after it ends:
// statements reach back this far.
func retention(p Period) time.Duration {
	switch p {
	case Hour:
		return 2 * 24 * time.Hour
	case Day:
		return 40 * 24 * time.Hour
	}
	return 400 * 24 * time.Hour
}
