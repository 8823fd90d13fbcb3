// Package state keeps what the gateway learns and decides at run time, as
// opposed to what its configuration files say: access requests (what a
// tenant was refused or asked for) and grants (allow rules that an admin
// approved for a while and that expire by themselves).
//
// A [Store] has two backends:
//
//   - [File] (state.backend: file, the default): one directory (state.dir),
//     one JSON file per kind of state, each written whole and atomically
//     (temporary file, fsync, rename, fsync of the directory). It survives
//     restarts and serves one replica only: a second store on a directory
//     in use is refused.
//   - [Redis] (state.backend: redis): shared by replicas. Grant keys expire
//     with their grant; access requests are bounded by a sorted set of their
//     last-seen times; a version counter changes on every write, so a
//     replica that polls it each second applies a new or revoked grant
//     within 2 s.
//
// # Design
//
// Fail closed. Every read that cannot be completed (Redis down, a file or a
// value that does not decode exactly, an invalid grant read back) is an
// error and returns nothing: the caller applies no grant rather than a
// partial or guessed set. Decoding is strict (unknown fields, trailing data
// and an unknown format number are corrupt), because state that is not what
// this package wrote must never widen access.
//
// Bounded. Access requests are deduplicated by tenant, host and port and
// capped at Options.MaxPending (pending and decided alike), the least
// recently seen dropped first; their strings are cut to fixed sizes. Grants
// are created by admins only and leave the store when they expire.
//
// Cheap on the refusal path. A repeated refusal only bumps a count: the file
// backend writes that within FlushInterval instead of once per refusal, and
// the Redis backend does it in one script call. A new request, a decision
// and every grant change are written before the call returns, so pending
// requests and grants survive a crash; only the latest counts may not.
//
// More kinds of state. Budgets will keep their counters in the same store:
// the file backend gives each kind its own file in the directory (this one
// is access.json) and the Redis backend its own key namespace under the
// prefix (this one is "access:"), so kinds never rewrite or lock each other.
//
// # What it deliberately does not do
//
// It does not match requests against grants, parse host patterns, paths or
// durations, or authenticate anyone: the caller checks a grant's host
// pattern with allowlist.ParsePattern before creating it and turns active
// grants into allow rules of the tenant; deny rules and network safety stay
// the caller's. It does not poll: the caller polls [Store.Version] and
// re-reads [Store.Grants], and drops a grant at its ExpiresAt by itself.
// It writes no audit line, metric or log.
package state
