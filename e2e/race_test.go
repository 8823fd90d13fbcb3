//go:build race

package e2e

// raceEnabled reports that the tests, and so the gateway they build, run
// under the race detector.
const raceEnabled = true
