package autobuy_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

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
		// One process, 100 actions at once against 50-action plans: the
		// gates that began during the exhaustion wait for one purchase and
		// check again under the lock; once that plan is spent the next gate
		// meets a new exhaustion and buys the next plan. Every plan bought is
		// needed by the actions allowed. (The latency widens every race.)
		{"100 goroutines, one client", 1, 100, 5 * time.Millisecond},
		// Replicas (each its own client and Gatekeeper) sharing one journal
		// and one locker, as with autobuy/redislock. 40 actions fit in one
		// plan, so the plan never runs out and a second purchase could only
		// be a double charge.
		{"4 replicas sharing a journal and a locker", 4, 40, 0},
		{"4 replicas sharing a journal and a locker, slow server", 4, 40, 2 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000)
			w.srv.SetLatency(tt.latency) // widens every race window
			var bought atomic.Int32
			hooks := autobuy.WithHooks(autobuy.Hooks{AutoBought: func(context.Context, autobuy.CustomerRef, *plan.Purchase) { bought.Add(1) }})
			shared := []autobuy.Option{hooks, autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker())}
			gates := make([]*autobuy.Gatekeeper, tt.replicas)
			for i := range gates {
				gates[i] = w.gate(t, shared...) // each with its own client
			}

			allowed := runGates(t, w, gates, tt.actions)

			plans := w.planGrants()
			assert.Equal(t, (allowed+49)/50, plans, "each plan was needed: %d actions allowed", allowed)
			assert.Len(t, w.usageFor("plan_purchase_1hr"), plans, "one debit per plan")
			assert.Equal(t, 250_000-int64(plans)*100_000, w.wallet())
			if tt.actions <= 50 {
				assert.Equal(t, tt.actions, allowed, "one plan covers them all")
			} else {
				assert.GreaterOrEqual(t, allowed, tt.actions-2, "a gate loses only a race for the last credits")
			}
			assert.Len(t, w.usageFor("chat_message"), allowed, "one usage event per allowed action")
			assert.Equal(t, int32(plans), bought.Load(), "the hook fires once per plan")
		})
	}
}

func TestConcurrentGatesUnderFaults(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	w.srv.SetRandomFaults(&quotastacktest.RandomFaults{Seed: 7, P503: 0.05, P429: 0.03, PDrop: 0.05, RetryAfter: "0"})
	shared := []autobuy.Option{autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker())}
	gates := []*autobuy.Gatekeeper{w.gate(t, shared...), w.gate(t, shared...), w.gate(t, shared...)}
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
