package autobuy_test

import (
	"context"
	"fmt"
	"net/http"
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
		var paths []string
		for _, r := range w.srv.Requests() {
			paths = append(paths, r.Method+" "+r.Path)
		}
		assert.Len(t, paths, 5, "record 402 (its figures stand for the check), wallet, debit, grant, record (it stands for the re-check): %v", paths)
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

// Record-first's record after the grant stands for the recipe's re-check, so
// it must stop the loop the re-check stops: a plan whose credits can't pay
// for the action (priority 5, below chat_message's min_priority 10) is
// bought once and auto-buy is suspended, whether the record is refused (a
// synchronous server) or, the server having turned asynchronous, accepted.
func TestRecordFirstRecordAfterTheGrantStopsTheLoop(t *testing.T) {
	t.Parallel()
	bad := hourPlan
	bad.Priority = 5
	for _, c := range []struct {
		name     string
		turn202  bool
		want     []autobuy.Reason
		requests int
	}{
		{"the record refused: its 402 is diagnosed", false,
			[]autobuy.Reason{autobuy.ReasonEntitlementFailedAfterPurchase, autobuy.ReasonAutoBuySuspended, autobuy.ReasonAutoBuySuspended}, 6},
		{"the record accepted (202): the action stands, the re-check it skipped suspends", true,
			[]autobuy.Reason{autobuy.ReasonAutoBought, autobuy.ReasonAutoBuySuspended, autobuy.ReasonAutoBuySuspended}, 7},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 1_000_000)
			acct, _ := w.srv.Account(user)
			rt := &hookTransport{after: func(r *http.Request) {
				if c.turn202 && r.URL.Path == "/v1/topup/grant" {
					w.srv.SetAsyncUsage(&quotastacktest.AsyncUsage{}) // from the record after the grant on
				}
			}}
			cl, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL), quotastack.WithTransport(rt),
				quotastack.WithRetry(2, time.Millisecond, time.Millisecond))
			require.NoError(t, err)
			g, err := autobuy.New(cl, autobuy.WithPlan(bad), autobuy.WithRecordFirst(), autobuy.WithClock(w.srv.Now))
			require.NoError(t, err)
			armRecordFirst(t, w, g)
			var reasons []autobuy.Reason
			for i := range 3 {
				w.srv.ResetRequests()
				d, err := g.Gate(context.Background(), quotastack.CustomerID(acct.CustomerID), "chat_message", autobuy.WithEventID(fmt.Sprint("m", i)))
				require.NoError(t, err)
				reasons = append(reasons, d.Reason)
				if i == 0 {
					assert.Len(t, w.srv.Requests(), c.requests, "record 402, wallet, debit, grant, record, then the wallet read that diagnoses (and the re-check after a 202)")
				}
			}
			assert.Equal(t, c.want, reasons)
			assert.Equal(t, 1, w.planGrants(), "one useless plan, not one per message")
		})
	}
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
