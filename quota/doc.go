// Package quota is the admit step of the gateway's request path: it decides
// whether a tenant's request may start now (request rate and concurrency) and
// shapes how fast its bytes may flow (bandwidth).
//
// It provides three things, each taking plain values (keys as strings, limits
// as numbers) so that the policy can be rebuilt on every reload without
// touching quota state:
//
//   - request-rate buckets: [Limiter.Allow] and [Limiter.AllowBoth] take one
//     token per request (a CONNECT tunnel, or a request inside an inspected
//     tunnel) and return a [Result] carrying what the client sees: Retry-After
//     and the RateLimit-* header values;
//   - concurrency slots: [Limiter.Acquire] holds one slot per open request or
//     tunnel until [Slot.Release];
//   - bandwidth shapers: [Bandwidth.Shaper] returns one [Shaper] per tenant and
//     direction, shared by all of the tenant's connections, that delays reads
//     and writes so their sum stays at the limit.
//
// State is kept per key and the limit is passed on every call. A key whose
// limit is unchanged keeps its state across a reload (no fresh burst); a
// changed limit takes effect on the next call. Per-key state lives in bounded
// LRU structures whose idle entries expire; nothing grows with the number of
// keys ever seen.
//
// Two [Limiter] implementations exist: [Memory] (one process) and [Redis]
// (request rates and concurrency shared by every replica through one Redis,
// rates by the GCRA of github.com/go-redis/redis_rate, slots as expiring
// leases). Bandwidth is always shaped per replica by [Bandwidth]; its
// Replicas setting divides the tenant's limit between them.
//
// What the package deliberately does not do: it knows nothing of tenants,
// connectors, HTTP or configuration files (the caller builds keys and limits
// from the policy snapshot), it writes no response, header, log line or
// metric (the proxy turns a [Result], a [Slot] or an [ErrUnavailable] into
// those), and it never refuses bytes: bandwidth is shaped, not rejected.
package quota
