package budget

import (
	"context"
	"errors"
	"time"
)

var errNotImplemented = errors.New("not implemented yet")

// ErrUnavailable is returned when the counters cannot be read or written.
var ErrUnavailable = errors.New("budget counters unavailable")

// Options configures a Ledger.
type Options struct {
	Backend    Backend          // where counters are kept; nil: memory only
	Currency   string           // statements' currency
	Now        func() time.Time // nil: time.Now
	FlushEvery time.Duration    // 0: one second
	// OnWarn is called once per budget and period when its use crosses
	// WarnAt of a limit.
	OnWarn func(Warning)
	// OnError is called when a flush fails.
	OnError func(error)
}

// Warning is a budget's use crossing its warn_at.
type Warning struct {
	Tenant string
	Budget string
	Kind   string // requests | egress | ingress | cost
	Used   float64
	Limit  float64
	Reset  time.Time
}

// Ledger counts every tenant's traffic per connector version and period
// (hour, day and month always, budgets or not, so every tenant has a
// statement) and bounds it by the tenants' budgets.
type Ledger struct {
	opts Options
}

// New builds a Ledger and starts its flusher; Close stops it.
func New(opts Options) *Ledger { return &Ledger{opts: opts} }

// Close flushes the last counts and stops the flusher.
func (l *Ledger) Close() error { return errNotImplemented }

// SetBudgets replaces the live policy's budgets: tenant ID to its budgets
// in file order. Counters are kept.
func (l *Ledger) SetBudgets(budgets map[string][]Budget) {}

// Meter is the hot-path handle of one Source and the budgets that apply
// to its traffic.
type Meter struct{}

// Meter returns the handle counting src under the named budgets of the
// tenant (names as given to SetBudgets).
func (l *Ledger) Meter(src Source, budgets []string) *Meter { return &Meter{} }

// Admit reserves one request under every budget of m; it returns the
// first exhausted budget instead, reserving nothing.
func (m *Meter) Admit(now time.Time) (refusal *Refusal, err error) { return nil, errNotImplemented }

// Refusal names the budget that refused and when it resets.
type Refusal struct {
	Budget string
	Period Period
	Reset  time.Time
}

// Charge counts bytes each way; it reports whether a byte budget of m is
// now exhausted.
func (m *Meter) Charge(egress, ingress int64) (exhausted bool) { return false }

// Statement is the tenant's statement for the period holding at.
func (l *Ledger) Statement(ctx context.Context, tenant string, p Period, at time.Time) (Statement, error) {
	return Statement{}, errNotImplemented
}

// Budgets is where the tenant's budgets of the live policy stand, in file
// order.
func (l *Ledger) Budgets(ctx context.Context, tenant string) ([]Status, error) {
	return nil, errNotImplemented
}
