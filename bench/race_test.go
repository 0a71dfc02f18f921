//go:build race

package bench

// raceEnabled scales the concurrency test down under the race detector,
// which slows every request tenfold.
const raceEnabled = true
