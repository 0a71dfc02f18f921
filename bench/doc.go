// Package bench measures what the SDK costs beyond the network: entitlement
// checks, usage records and the autobuy gate, each next to a baseline that
// does the same HTTP exchanges with plain net/http and encoding/json, through
// an in-memory transport (the client's own cost) and against the loopback
// quotastacktest server (round trips, connections, throughput).
//
// The package holds only tests and benchmarks. scripts/bench runs them with
// enough repetitions for benchstat and writes BENCHMARKS.md (through
// bench/cmd/benchreport); they also run as quick tests with go test ./bench/.
package bench
