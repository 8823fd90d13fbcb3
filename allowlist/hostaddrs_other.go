//go:build !linux

package allowlist

import "context"

// addressChanges is nil where the gateway has no way to hear of address
// changes: the periodic refresh alone keeps the list current.
func addressChanges(context.Context) <-chan struct{} { return nil }
