package main

import "runtime/debug"

// reloadGCPercent is the collector's target while a reload builds the next
// policy. At the serving target (gctarget.go) the heap may grow to 3-5x
// what was live at the last collection before the collector runs, and the
// reload's garbage (file text, YAML parse trees) would fill that headroom
// on top of the live policy. A low target collects as the load goes; the
// extra collections cost CPU only for the seconds a reload lasts
// (docs/operators.md, "Memory").
const reloadGCPercent = 25

// boundReloadMemory lowers the collector's target for a reload when GOGC
// is set (gcTarget.boundReload otherwise), unless GOGC set a lower one,
// and returns the function that restores it
// once the new policy is live or refused. That function also collects the
// old policy and the reload's garbage and returns their pages to the
// system: without it the resident set would stay at its reload peak until
// the scavenger came round, and every reload would leave the gateway
// larger.
func boundReloadMemory() (done func()) {
	prev := debug.SetGCPercent(reloadGCPercent)
	if prev >= 0 && prev < reloadGCPercent {
		debug.SetGCPercent(prev)
	}
	return func() {
		debug.SetGCPercent(prev)
		debug.FreeOSMemory()
	}
}
