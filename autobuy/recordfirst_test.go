package autobuy_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

func TestRecordFirst(t *testing.T) {
	t.Parallel()
	t.Run("entitled: one request per action once the customer is known", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 250_000)
		w.grantPlanCredits(t, 10_000)
		g := w.gate(t, autobuy.WithRecordFirst())
		var perGate []int
		for i, ev := range []string{"m1", "m2", "m3"} {
			w.srv.ResetRequests()
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(ev))
			require.NoError(t, err)
			assert.True(t, d.Allowed, "gate %d", i)
			assert.Equal(t, autobuy.ReasonEntitled, d.Reason)
			perGate = append(perGate, len(w.srv.Requests()))
		}
		assert.Equal(t, []int{2, 1, 1}, perGate, "the first gate learns the customer's id from its check")
		assert.Len(t, w.usageFor("chat_message"), 3)
		assert.True(t, g.RecordFirst())
	})
	t.Run("not entitled: the 402 is the check, then the auto-buy", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 250_000)
		acct, _ := w.srv.Account(user)
		g := w.gate(t, autobuy.WithRecordFirst())
		// Armed by a synchronous usage answer (here, another customer's entitled action).
		armRecordFirst(t, w, g)
		w.srv.ResetRequests()
		d, err := g.Gate(context.Background(), quotastack.CustomerID(acct.CustomerID), "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
		assert.Len(t, w.srv.Requests(), 6, "record 402 (its figures stand for the check), wallet, debit, grant, re-check, record")
		chat := w.usageFor("chat_message")
		require.Len(t, chat, 1, "charged once")
		assert.Equal(t, "usage:"+acct.CustomerID+":m1:2", chat[0].IdempotencyKey, "the refused key is never reused")
		assert.Equal(t, 1, w.planGrants())
	})
	t.Run("a paywall costs the 402 and the wallet read, no check", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 0) // no wallet: the paywall
		acct, _ := w.srv.Account(user)
		g := w.gate(t, autobuy.WithRecordFirst())
		armRecordFirst(t, w, g)
		w.srv.ResetRequests()
		d, err := g.Gate(context.Background(), quotastack.CustomerID(acct.CustomerID), "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.False(t, d.Allowed)
		assert.Equal(t, autobuy.ReasonEmptyWallet, d.Reason)
		assert.Len(t, w.srv.Requests(), 2, "record 402, wallet")
	})
	t.Run("a server answering 202 never arms it", func(t *testing.T) {
		t.Parallel()
		mode, _ := quotastacktest.ModeNamed("usage202")
		w := setup(t, 250_000, mode.Options...)
		w.grantPlanCredits(t, 10_000)
		acct, _ := w.srv.Account(user)
		g := w.gate(t, autobuy.WithRecordFirst())
		d, err := g.Gate(context.Background(), quotastack.CustomerID(acct.CustomerID), "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		require.NotNil(t, d.Usage)
		assert.True(t, d.Usage.Accepted)
		assert.False(t, g.RecordFirst(), "never armed: no synchronous answer, and off for good")

		w.srv.ResetRequests()
		d, err = g.Gate(context.Background(), quotastack.CustomerID(acct.CustomerID), "chat_message", autobuy.WithEventID("m2"))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		reqs := w.srv.Requests()
		require.NotEmpty(t, reqs)
		assert.Contains(t, reqs[0].Path, "/entitlements/", "checks first again")
		w.srv.FlushAsyncUsage()
		assert.Len(t, w.usageFor("chat_message"), 2, "each action charged once")
	})
}

// armRecordFirst lets g see one synchronous usage answer: an entitled action
// of another customer.
func armRecordFirst(t *testing.T, w *world, g *autobuy.Gatekeeper) {
	t.Helper()
	tryArmRecordFirst(t, w, g)
	require.True(t, g.RecordFirst(), "armed")
}

// tryArmRecordFirst gates one entitled action of another customer through g;
// on a server that answers usage synchronously that arms record-first.
func tryArmRecordFirst(t *testing.T, w *world, g *autobuy.Gatekeeper) {
	t.Helper()
	exp := w.clock.Now().Add(time.Hour)
	_, err := w.srv.Grant("armer", quotastacktest.BlockSpec{Credits: 1_000, Priority: 10, ExpiresAt: &exp})
	require.NoError(t, err)
	d, err := g.Gate(context.Background(), quotastack.ExternalID("armer"), "chat_message")
	require.NoError(t, err)
	require.True(t, d.Allowed)
	w.srv.FlushAsyncUsage()
}
