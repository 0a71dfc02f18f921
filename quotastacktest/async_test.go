package quotastacktest_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/quotastacktest"
)

// require202 checks the docs' asynchronous answer: 202, no body, no content type.
func require202(t *testing.T, r result) {
	t.Helper()
	require.Equal(t, 202, r.status, "body: %s", r.body)
	require.Empty(t, r.body)
	require.Empty(t, r.header.Get("Content-Type"))
	require.Equal(t, "0", r.header.Get("Content-Length"))
}

func TestAsyncUsageAnswers202WithoutBody(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{}))
	w.recipeCustomer()
	body := `{"external_customer_id": "user42:companion7", "billable_metric_key": "plan_purchase_1hr", "units": 100000,
	  "metadata": {"plan_type": "1hr", "order_id": "o1", "trigger": "auto_buy"}}`
	r := w.post("/v1/usage", "plan-debit:1hr:o1", body)
	require202(t, r)
	require.Empty(t, r.header.Get("X-Idempotent-Replayed"))
	acct, _ := w.srv.Account(recipeUser)
	require.Equal(t, int64(400_000), acct.Balance, "without Defer the debit executes before the 202")

	r = w.post("/v1/usage", "plan-debit:1hr:o1", body)
	require202(t, r)
	require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"))
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)
	requireStatus(t, w.post("/v1/topup/grant", "plan-grant:1hr:o1", grantJSON(byExt(recipeUser), "o1", "auto_buy", hourLater)), 201)

	// What a synchronous server refuses is accepted, then rejected silently: no debit.
	for _, tc := range []struct {
		key, body string
		status    int
		slug      string
	}{
		{"usage:short", usageBody(recipeUser, "plan_purchase_1hr", 400_001), 402, "insufficient-credits"},
		{"usage:nobody", usageBody("nobody", "look", 1), 404, "customer-not-found"},
		{"usage:nometric", usageBody(recipeUser, "no_such_metric", 1), 404, "metric-not-found"},
	} {
		require202(t, w.post("/v1/usage", tc.key, tc.body))
		rej := w.srv.RejectedUsage()
		last := rej[len(rej)-1]
		require.Equal(t, tc.key, last.IdempotencyKey)
		require.Equal(t, tc.status, last.Status)
		require.Equal(t, problemType+tc.slug, last.Type)
		require.NotEmpty(t, last.Detail)
		require.Equal(t, -1, last.BatchIndex)
		require.Equal(t, t0, last.AcceptedAt)
	}
	require.Len(t, w.srv.RejectedUsage(), 3)
	require.Equal(t, int64(400_001), w.srv.RejectedUsage()[0].Units)
	acct, _ = w.srv.Account(recipeUser)
	require.Equal(t, int64(450_000), acct.Balance, "rejected events debit nothing")
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)

	// A malformed body and a missing key are still refused at once.
	requireProblem(t, w.post("/v1/usage", "usage:bad", usageBody(recipeUser, "look", 0)), 400, "validation-error")
	requireProblem(t, w.post("/v1/usage", "", usageBody(recipeUser, "look", 1)), 400, "idempotency-key-required")

	// Off again: 200 with the event.
	w.srv.SetAsyncUsage(nil)
	requireStatus(t, w.post("/v1/usage", "usage:sync", usageBody(recipeUser, "look", 1)), 200)
}

func TestAsyncUsageDeferredToTheNextRequest(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{Defer: true}))
	w.recipeCustomer()
	require202(t, w.post("/v1/usage", "usage:1", usageBody(recipeUser, "look", 1)))
	require.Equal(t, 1, w.srv.PendingUsage())
	require.Empty(t, w.srv.UsageEvents(recipeUser), "accepted, not executed yet")

	m := w.get(ext(recipeUser) + "/credits").json(t)
	require.Equal(t, float64(499_000), m["balance"], "the next request executes it first")
	require.Equal(t, 0, w.srv.PendingUsage())
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)
	require202(t, w.post("/v1/usage", "usage:1", usageBody(recipeUser, "look", 1)))
	require.Equal(t, 0, w.srv.PendingUsage(), "a replay queues nothing")
}

func TestAsyncUsageLagOnTheServerClock(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{Lag: 10 * time.Second}))
	w.recipeCustomer()
	require202(t, w.post("/v1/usage", "usage:1", usageBody(recipeUser, "look", 1)))
	w.clock.Advance(5 * time.Second)
	require202(t, w.post("/v1/usage", "usage:2", usageBody(recipeUser, "look", 1)))
	requireStatus(t, w.get(ext(recipeUser)+"/credits"), 200)
	require.Equal(t, 2, w.srv.PendingUsage())

	w.clock.Advance(5 * time.Second)
	require.Equal(t, float64(499_000), w.get(ext(recipeUser) + "/credits").json(t)["balance"], "the first is due")
	require.Equal(t, 1, w.srv.PendingUsage())
	ev := w.srv.UsageEvents(recipeUser)
	require.Len(t, ev, 1)
	require.Equal(t, "usage:1", ev[0].IdempotencyKey)
	require.Equal(t, t0.Add(10*time.Second), ev[0].Time, "executed when due, not when accepted")

	w.srv.FlushAsyncUsage()
	require.Equal(t, 0, w.srv.PendingUsage())
	require.Len(t, w.srv.UsageEvents(recipeUser), 2)
}

func TestAsyncUsageBatch(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{}))
	w.recipeCustomer()
	r := w.post("/v1/usage/batch", "batch-1", `{"events": [
	  {"external_customer_id": "user42:companion7", "billable_metric_key": "plan_purchase_1hr", "units": 10},
	  {"external_customer_id": "user42:companion7", "billable_metric_key": "chat_message", "units": 1},
	  {"external_customer_id": "user42:companion7", "billable_metric_key": "look", "units": 0}
	]}`)
	require202(t, r)
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)
	rej := w.srv.RejectedUsage()
	require.Len(t, rej, 2)
	require.Equal(t, [2]int{1, 402}, [2]int{rej[0].BatchIndex, rej[0].Status})
	require.Equal(t, [2]int{2, 400}, [2]int{rej[1].BatchIndex, rej[1].Status})
	require.Equal(t, "batch-1", rej[1].IdempotencyKey)
	require202(t, w.post("/v1/usage/batch", "batch-1", `{"events": [
	  {"external_customer_id": "user42:companion7", "billable_metric_key": "plan_purchase_1hr", "units": 10},
	  {"external_customer_id": "user42:companion7", "billable_metric_key": "chat_message", "units": 1},
	  {"external_customer_id": "user42:companion7", "billable_metric_key": "look", "units": 0}
	]}`))
	require.Len(t, w.srv.RejectedUsage(), 2, "a replay executes nothing")
	requireProblem(t, w.post("/v1/usage/batch", "batch-2", `{"events": []}`), 400, "validation-error")
}

// TestAsyncUsageGrantWithoutDebit is issue 12 #10 over raw HTTP: a purchase that trusts the
// 202 grants a plan the wallet could not pay for, and CheckInvariants says so.
func TestAsyncUsageGrantWithoutDebit(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{Defer: true}))
	w.broken = true
	_, err := w.srv.Grant(recipeUser, quotastacktest.BlockSpec{Credits: 50_000})
	require.NoError(t, err)
	require202(t, w.post("/v1/usage", "plan-debit:1hr:o1", debitJSON(byExt(recipeUser), "o1", "auto_buy")))
	requireStatus(t, w.post("/v1/topup/grant", "plan-grant:1hr:o1", grantJSON(byExt(recipeUser), "o1", "auto_buy", hourLater)), 201)

	rej := w.srv.RejectedUsage()
	require.Len(t, rej, 1, "the grant's request executed the pending debit first")
	require.Equal(t, 402, rej[0].Status)
	require.Equal(t, map[string]string{"plan_type": "1hr", "order_id": "o1", "trigger": "auto_buy"}, rej[0].Metadata)
	require.ErrorContains(t, w.srv.CheckInvariants(quotastacktest.InFlight()), "plan granted without a debit: order o1")
}

// TestAsyncUsagePendingDebitIsNotMissing: a grant that overtakes its accepted debit is fine
// in flight, and the quiet check executes the debit before judging.
func TestAsyncUsagePendingDebitIsNotMissing(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{Lag: time.Minute}))
	w.recipeCustomer()
	require202(t, w.post("/v1/usage", "plan-debit:1hr:o1", debitJSON(byExt(recipeUser), "o1", "auto_buy")))
	requireStatus(t, w.post("/v1/topup/grant", "plan-grant:1hr:o1", grantJSON(byExt(recipeUser), "o1", "auto_buy", hourLater)), 201)
	require.NoError(t, w.srv.CheckInvariants(quotastacktest.InFlight()))
	require.Equal(t, 1, w.srv.PendingUsage(), "InFlight leaves pending events pending")
	require.NoError(t, w.srv.CheckInvariants())
	require.Equal(t, 0, w.srv.PendingUsage())
	acct, _ := w.srv.Account(recipeUser)
	require.Equal(t, int64(450_000), acct.Balance)
}
