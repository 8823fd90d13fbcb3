//go:build race

package hooks

// raceEnabled: under the race detector a worker's resident set includes
// the detector's shadow memory, several times the Go heap it shadows.
const raceEnabled = true
