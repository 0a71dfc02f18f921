package quotastacktest_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/quotastacktest"
)

// filler sends n sound requests of another customer (wallet grants), enough
// to push everything before them out of a small history window.
func (w *world) filler(n int) {
	w.t.Helper()
	for i := range n {
		requireStatus(w.t, w.post("/v1/topup/grant", fmt.Sprint("filler-", i), grantBody("filler", 1000, 0, "")), 201)
	}
}

// A long run of sound traffic past the window: purchases, chats, holds
// committed and released. The checks pass on the folded sums, and what the
// server keeps is the window.
func TestHistoryWindowKeepsSoundTrafficSound(t *testing.T) {
	t.Parallel()
	const limit = 40
	w := newWorld(t, quotastacktest.WithHistoryLimit(limit))
	me := byExt(recipeUser)
	w.recipeCustomer()
	_, err := w.srv.Grant(recipeUser, quotastacktest.BlockSpec{Credits: 500_000})
	require.NoError(t, err)
	for i := range 8 {
		order := fmt.Sprint("o", i)
		w.debit(me, order, "auto_buy")
		w.grant(me, order, "auto_buy", hourLater)
		for j := range 48 {
			w.chat(fmt.Sprintf("usage:%d:%d", i, j), 1)
			w.srv.NoteAllowed(recipeUser, "chat_message", fmt.Sprintf("%d:%d", i, j), 1)
		}
		r := w.post("/v1/reserve", fmt.Sprint("hold-", i), fmt.Sprintf(`{%s, "billable_metric_key": "chat_message", "estimated_units": 1}`, me))
		requireStatus(t, r, 201)
		id := r.json(t)["id"].(string)
		if i%2 == 0 {
			requireStatus(t, w.post("/v1/reserve/"+id+"/commit", fmt.Sprint("commit-", i), `{"actual_units": 2}`), 200)
			w.srv.NoteAllowed(recipeUser, "chat_message", fmt.Sprint("hold-", i), 2)
		} else {
			requireStatus(t, w.post("/v1/reserve/"+id+"/release", fmt.Sprint("release-", i), `{}`), 200)
		}
	}
	require.NoError(t, w.srv.CheckInvariants())
	assert.Greater(t, w.srv.HistoryFolded(), 300)
	assert.LessOrEqual(t, len(w.srv.AllLedger()), limit+limit/4)
	assert.LessOrEqual(t, len(w.srv.UsageEvents(recipeUser)), limit+limit/4)
	assert.Less(t, len(w.srv.PlanOrders(recipeUser)), 8, "sound orders left the window")
	acct, ok := w.srv.Account(recipeUser)
	require.True(t, ok)
	assert.Equal(t, int64(1_000_000-8*100_000+8*50_000-8*48_000-4*2_000), acct.Balance, "the balance is the server's, never the window's")
}

// Every money bug the checks know is still caught after its entries left the
// window: by the folded sums (units), or because an unsound plan order is
// never folded.
func TestHistoryWindowStillCatchesMoneyBugs(t *testing.T) {
	t.Parallel()
	me := byExt(recipeUser)
	cases := []struct {
		name  string
		steps func(w *world)
		want  string
	}{
		{"an action charged twice", func(w *world) {
			w.debit(me, "o1", "auto_buy")
			w.grant(me, "o1", "auto_buy", hourLater)
			w.chat("usage:m1", 1)
			w.chat("usage:m1:again", 1)
			w.srv.NoteAllowed(recipeUser, "chat_message", "m1", 1)
		}, "2 units of chat_message charged but only 1 allowed: an action charged twice"},
		{"an allowed action never charged", func(w *world) {
			w.debit(me, "o1", "auto_buy")
			w.grant(me, "o1", "auto_buy", hourLater)
			w.chat("usage:m1", 1)
			w.srv.NoteAllowed(recipeUser, "chat_message", "m1", 1)
			w.srv.NoteAllowed(recipeUser, "chat_message", "m2", 1)
		}, "2 units of chat_message allowed but only 1 charged"},
		{"a plan debited without a grant", func(w *world) {
			w.debit(me, "o1", "auto_buy")
		}, "plan debited without a grant: order o1 (plan 1hr)"},
		{"a plan granted without a debit", func(w *world) {
			w.grant(me, "o1", "auto_buy", hourLater)
		}, "plan granted without a debit: order o1 (plan 1hr)"},
		{"one order debited twice", func(w *world) {
			w.debit(me, "o1", "manual")
			requireStatus(w.t, w.post("/v1/usage", "another-key", debitJSON(me, "o1", "manual")), 200)
			w.grant(me, "o1", "manual", hourLater)
		}, "order o1 (plan 1hr) debited 2 times"},
		{"two plans for one exhaustion", func(w *world) {
			w.debit(me, "o1", "auto_buy")
			w.debit(me, "o2", "auto_buy")
			w.grant(me, "o2", "auto_buy", hourLater)
			w.grant(me, "o1", "auto_buy", hourLater)
		}, "one exhaustion bought two plans"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, quotastacktest.WithHistoryLimit(8))
			w.broken = true
			w.recipeCustomer()
			tc.steps(w)
			w.filler(20)
			require.Greater(t, w.srv.HistoryFolded(), 5, "the bug's entries left the window")
			err := w.srv.CheckInvariants()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
