package autobuy_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
)

// chargedChatMC sums what the customer paid for chat: usage events and
// reservation commits on chat_message.
func (w *world) chargedChatMC() int64 {
	var sum int64
	for _, e := range w.srv.Ledger(user) {
		if (e.Kind == "debit" || e.Kind == "commit") && e.MetricKey == "chat_message" {
			sum -= e.Amount // debits are negative in the ledger
		}
	}
	return sum
}

func TestLeaseMode(t *testing.T) {
	t.Parallel()
	t.Run("a hot customer costs two requests per lease", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 250_000)
		w.grantPlanCredits(t, 200_000) // 200 actions
		g := w.gate(t, autobuy.WithLease(autobuy.LeaseConfig{Actions: 50, Linger: time.Hour}))
		w.srv.ResetRequests()
		for i := range 200 {
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("m%d", i)))
			require.NoError(t, err)
			require.True(t, d.Allowed, "action %d: %s", i, d.Reason)
			assert.True(t, d.Leased)
		}
		require.NoError(t, g.Close(context.Background()))
		assert.LessOrEqual(t, len(w.srv.Requests()), 9, "4 reserves and 4 commits for 200 actions, and one GET that resolves the external id")
		assert.Equal(t, int64(200_000), w.chargedChatMC(), "every action charged once, at its price")
		acct, _ := w.srv.Account(user)
		assert.Zero(t, acct.ReservedBalance, "nothing left held")
	})
	t.Run("a repeated event id counts once on a lease", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 250_000)
		w.grantPlanCredits(t, 50_000)
		g := w.gate(t, autobuy.WithLease(autobuy.LeaseConfig{Actions: 10, Linger: time.Hour}))
		for range 3 {
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("same"))
			require.NoError(t, err)
			assert.True(t, d.Allowed)
		}
		require.NoError(t, g.Close(context.Background()))
		assert.Equal(t, int64(1_000), w.chargedChatMC())
	})
	t.Run("no lease to be had: the per-action path buys the plan", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 250_000) // plan credits exhausted, the wallet can pay
		g := w.gate(t, autobuy.WithLease(autobuy.LeaseConfig{Actions: 50, Linger: time.Hour}))
		d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
		assert.False(t, d.Leased)
		require.NoError(t, g.Close(context.Background()))
		assert.Equal(t, 1, w.planGrants())
		assert.Equal(t, int64(1_000), w.chargedChatMC())
	})
	t.Run("a refused lease costs no check: the 402 decides", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 0) // no plan credits, no wallet
		g := w.gate(t, autobuy.WithLease(autobuy.LeaseConfig{Actions: 50, Linger: time.Hour}))
		uuid := quotastack.CustomerID(w.uuid(t))
		w.srv.ResetRequests()
		d, err := g.Gate(context.Background(), uuid, "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.Equal(t, autobuy.ReasonEmptyWallet, d.Reason)
		var paths []string
		for _, r := range w.srv.Requests() {
			paths = append(paths, r.Method+" "+r.Path)
		}
		assert.Len(t, paths, 2, "reserve 402, wallet: %v", paths)
		require.NoError(t, g.Close(context.Background()))
	})
	t.Run("an idle lease is committed after the linger", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 250_000)
		w.grantPlanCredits(t, 50_000)
		g := w.gate(t, autobuy.WithLease(autobuy.LeaseConfig{Actions: 10, Linger: 50 * time.Millisecond}))
		t.Cleanup(func() { assert.NoError(t, g.Close(context.Background())) })
		for i := range 3 {
			_, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("m%d", i)))
			require.NoError(t, err)
		}
		require.Eventually(t, func() bool {
			acct, _ := w.srv.Account(user)
			return acct.ReservedBalance == 0 && w.chargedChatMC() == 3_000
		}, 5*time.Second, 10*time.Millisecond, "committed without a Flush")
	})
	t.Run("a lease settled after its reservation expired is charged, not free", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 250_000)
		w.grantPlanCredits(t, 50_000)
		g := w.gate(t, autobuy.WithLease(autobuy.LeaseConfig{Actions: 10, TTL: time.Minute, Linger: time.Hour}))
		for i := range 4 {
			_, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("m%d", i)))
			require.NoError(t, err)
		}
		w.clock.Advance(2 * time.Minute) // the reservation expires before anything commits it
		acct, _ := w.srv.Account(user)
		assert.Zero(t, acct.ReservedBalance, "the server returned the hold")
		require.NoError(t, g.Close(context.Background()))
		assert.Equal(t, int64(4_000), w.chargedChatMC(), "the 4 actions counted in the ChargeLog are charged by a usage record")
	})
	t.Run("concurrent actions never overspend", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 0)
		w.grantPlanCredits(t, 120_000) // 120 actions for 200 attempts, no wallet
		g := w.gate(t, autobuy.WithLease(autobuy.LeaseConfig{Actions: 25, Linger: time.Hour}))
		var allowed atomic.Int64
		var wg sync.WaitGroup
		for i := range 200 {
			wg.Go(func() {
				d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("m%d", i)))
				if err == nil && d.Allowed {
					allowed.Add(1)
				}
			})
		}
		wg.Wait()
		require.NoError(t, g.Close(context.Background()))
		assert.Equal(t, allowed.Load()*1_000, w.chargedChatMC(), "every allowed action charged, none more")
		assert.LessOrEqual(t, w.chargedChatMC(), int64(120_000))
	})
}
