// Package budget counts what every tenant's traffic amounts to over UTC
// calendar periods (hour, day, month) and bounds it: requests, bytes each
// way and their cost at the connectors' prices (docs/reference.md,
// "Budgets and cost").
//
// The Ledger is the one counter of a process. Its hot path (Meter.Admit,
// Meter.Charge) touches only local atomics; a flusher adds the deltas to a
// Backend about once a second and reads back what other replicas counted.
// Counters are keyed by tenant, connector version and period start, never
// by policy generation, so a reload keeps them and a restart loses at most
// the last unflushed second.
//
// The package deliberately knows nothing of the policy files or of HTTP:
// the policy compiles budgets and prices into plain values, the proxy
// asks a Meter before it forwards and charges it as bytes move.
package budget
