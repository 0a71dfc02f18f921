package bench

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// Every benchmark runs the baseline (client=raw) first and the SDK
// (client=sdk) second, so `benchstat -col /client` puts them side by side
// with the SDK's change against the baseline. via=mem is an in-memory
// transport (client cost only); via=loop is the quotastacktest server on
// loopback, whose own cost (it runs in this process) is in the figures.

func BenchmarkCheck(b *testing.B)       { benchPairs(b, opCheck) }
func BenchmarkRecord(b *testing.B)      { benchPairs(b, opRecord) }
func BenchmarkGateHappy(b *testing.B)   { benchPairs(b, opGateHappy) }
func BenchmarkGateAutoBuy(b *testing.B) { benchPairs(b, opGateAutoBuy) }

func benchPairs(b *testing.B, s scenario) {
	for _, via := range []string{"mem", "loop"} {
		for _, client := range []string{"raw", "sdk"} {
			b.Run("via="+via+"/client="+client, func(b *testing.B) { benchOp(b, s, via, client) })
		}
	}
}

// benchOp measures b.N operations on a fresh pair (and, on loopback, a fresh
// server), and reports the requests each one sent.
func benchOp(b *testing.B, s scenario, via, client string) {
	op, requests := setup(b, s, via, client, b.N)
	ctx := context.Background()
	before := requests()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := op(ctx, i); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(requests()-before)/float64(b.N), "roundtrips/op")
}

// BenchmarkGateParallel64 gates from 64 goroutines across 1,000 customers
// (each with plenty of plan credits) on a fresh loopback server per
// measurement, and reports throughput and the TCP connections the server
// accepted. TestGateConcurrency asserts the same for exactly 10,000 gates.
func BenchmarkGateParallel64(b *testing.B) {
	for _, client := range []string{"raw", "sdk"} {
		b.Run("client="+client, func(b *testing.B) {
			w := newConcurrencyWorld(b, client, "pooled", parallelCustomers)
			var next atomic.Int64
			b.SetParallelism((parallelGoroutines + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if err := w.gate(ctx, int(next.Add(1))); err != nil {
						b.Error(err)
						return
					}
				}
			})
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "gates/s")
			b.ReportMetric(float64(w.srv.ConnectionsOpened()-w.conns0), "conns")
			b.ReportMetric(float64(len(w.srv.Requests()))/float64(b.N), "roundtrips/op")
		})
	}
}
