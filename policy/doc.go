// Package policy loads a config directory (gateway.yaml, tenants/,
// connectors/) into an immutable Snapshot and decides requests against it.
//
// Loading decodes every file strictly and validates everything before a
// snapshot exists, so a snapshot is always complete and consistent; errors
// name file and line. Decisions come back as Decision values that the
// proxy turns into client errors, audit lines and metrics, and that
// Explain traces rule by rule.
//
// The package does not dial, resolve names, watch files or serve HTTP:
// the proxy does the network, and reload is a matter of calling Load again
// and Holder.Swap.
package policy
