package autobuy_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// runGates gates n actions concurrently (action i through gates[i%len]) and
// returns how many were allowed. Errors are collected, not required, off the
// test goroutine.
func runGates(t *testing.T, w *world, gates []*autobuy.Gatekeeper, n int) (allowed int) {
	t.Helper()
	var wg sync.WaitGroup
	var ok atomic.Int32
	errs := make(chan error, n)
	start := make(chan struct{}) // all gates start together, during the same exhaustion
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			d, err := gates[i%len(gates)].Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("msg_%d", i)))
			if err != nil {
				errs <- err
				return
			}
			if d.Allowed {
				ok.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	return int(ok.Load())
}

func TestConcurrentGatesBuyOnePlan(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		replicas int
		actions  int
		latency  time.Duration
	}{
		// One process: gates that began during the exhaustion share one
		// purchase; the 50 actions the plan covers go through, the other 50
		// are denied. (The latency makes every goroutine begin before the
		// purchase ends: a gate that began after the plan was used up would
		// meet a new exhaustion and rightly buy the next plan.)
		{"100 goroutines, one client", 1, 100, 5 * time.Millisecond},
		// Replicas without a shared lock: only the derived keys keep the
		// purchase single. 40 actions fit in one plan, so the plan never runs
		// out and a second purchase could only be a double charge.
		{"4 replicas without a shared lock", 4, 40, 0},
		{"4 replicas without a shared lock, slow server", 4, 40, 2 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000)
			w.srv.SetLatency(tt.latency) // widens every race window
			var bought atomic.Int32
			hooks := autobuy.WithHooks(autobuy.Hooks{AutoBought: func(context.Context, quotastack.Customer, *plan.Purchase) { bought.Add(1) }})
			gates := make([]*autobuy.Gatekeeper, tt.replicas)
			for i := range gates {
				gates[i] = w.gate(t, hooks) // each with its own client and LocalLocker
			}

			allowed := runGates(t, w, gates, tt.actions)

			assert.Equal(t, 1, w.planGrants(), "exactly one plan")
			assert.Len(t, w.usageFor("plan_purchase_1hr"), 1, "exactly one debit")
			assert.Equal(t, int64(150_000), w.wallet())
			assert.Equal(t, min(tt.actions, 50), allowed, "every action the 50,000 mc plan covers is allowed")
			assert.Len(t, w.usageFor("chat_message"), allowed, "one usage event per allowed action")
			assert.GreaterOrEqual(t, bought.Load(), int32(1))
		})
	}
}

func TestConcurrentGatesUnderFaults(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	w.srv.SetRandomFaults(&quotastacktest.RandomFaults{Seed: 7, P503: 0.05, P429: 0.03, PDrop: 0.05, RetryAfter: "0"})
	gates := []*autobuy.Gatekeeper{w.gate(t), w.gate(t), w.gate(t)}
	// 40 actions fit in one plan: the plan never runs out, so a second
	// purchase can only be a double charge, whatever the timing.
	allowed := runGates(t, w, gates, 40)
	w.srv.SetRandomFaults(nil)

	assert.Equal(t, 1, w.planGrants())
	assert.Len(t, w.usageFor("plan_purchase_1hr"), 1)
	assert.Equal(t, 40, allowed)
	assert.Len(t, w.usageFor("chat_message"), allowed)
	fc := w.srv.FaultCounts()
	assert.Positive(t, fc.Status503+fc.Status429+fc.Drops, "faults were injected")
}
