//go:build unix

package quotastack

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLocalPacerQueue: n calls queue at once and are served as tokens
// come; the CPU per call (cpu-ns/call, the process's user and system time)
// should stay flat from 2,000 to 20,000 waiters (a heap, no sort per token).
// Compare the two sizes within one run.
func BenchmarkLocalPacerQueue(b *testing.B) {
	for _, n := range []int{2000, 20000} {
		b.Run(fmt.Sprint("waiters=", n), func(b *testing.B) {
			cpu0 := cpuTime()
			for range b.N {
				p := NewLocalPacer(20_000, time.Second) // a token every 56 µs: the queue builds
				p.drain(time.Now())
				var wg sync.WaitGroup
				deadline := time.Now().Add(time.Hour)
				for i := range n {
					wg.Go(func() {
						ctx := BeginOperation(context.Background())
						if i%2 == 1 {
							operationOf(ctx).started.Store(true)
						}
						_ = p.Wait(ctx, deadline.Add(time.Duration(i%97)*time.Millisecond))
					})
				}
				wg.Wait()
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N*n), "cpu-ns/call")
		})
	}
}
