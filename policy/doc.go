// Package policy loads a config directory (gateway.yaml, tenants/,
// connectors/) into an immutable Snapshot and decides requests against it.
//
// Loading decodes every file strictly and validates everything before a
// snapshot exists, so a snapshot is always complete and consistent; errors
// name file and line. Decisions come back as Decision values that the
// proxy turns into client errors, audit lines and metrics, and that
// Explain traces rule by rule.
//
// Grants from the state store (CompileGrants) are compiled into a Grants
// set of their own, not into the snapshot: they change every second and
// the snapshot on reloads. A decision takes both (Tenant.DecideGranted);
// grants come after the tenant's connectors and rules, and a deny rule
// still wins.
//
// Watch reports when the config directory may have changed (fsnotify on
// the directories, debounced, with a periodic resync); Snapshot.Unchanged
// tells cheaply whether anything did. Reloading is Load again, then publishing
// the new snapshot: the caller decides, the package never swaps by itself.
//
// The package does not dial, resolve names or serve HTTP.
package policy
