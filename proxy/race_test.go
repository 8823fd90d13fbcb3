//go:build race

package proxy

// raceEnabled reports that the tests run under the race detector, which
// makes sync.Pool drop items at random (so pooled paths allocate).
const raceEnabled = true
