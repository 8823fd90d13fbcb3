// Package allowlist decides where a tenant's traffic may go.
//
// It answers three questions with plain values in and plain values out:
//
//   - What is the canonical form of a request host? [NormalizeHost] lowercases,
//     strips one trailing dot, converts internationalised names to punycode and
//     refuses hosts that are malformed or that spell an IPv4 address in any way
//     other than canonical dotted decimal ("127.1", "0x7f000001", "2130706433"),
//     because different clients and resolvers read those spellings differently.
//   - Which rule matches a request? [ParsePattern] compiles one host pattern
//     (exact host, "*.example.com", IP literal or CIDR) and [Set] indexes an
//     ordered list of allow and deny [Rule]s so that [Set.Match] stays fast and
//     allocation-free with tens of thousands of rules.
//   - May the gateway dial an address? [AddressPolicy] applies the built-in
//     special-purpose ranges, the operator's deny and allow lists, the gateway
//     host's own addresses and its own listeners.
//
// The package deliberately does not resolve names, dial, read configuration
// files or build decisions for clients: the caller normalises the request
// host, resolves it, checks every address it is about to dial with
// [AddressPolicy.Check], and turns a [Result] into a client-facing decision.
// Keeping those steps out of here lets every piece be tested and benchmarked
// on its own.
package allowlist
