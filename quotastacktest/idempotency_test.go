package quotastacktest_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/quotastacktest"
)

func TestIdempotentReplay(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	body := usageBody(recipeUser, "plan_purchase_1hr", 100_000)
	first := w.post("/v1/usage", "plan-debit:1hr:o1", body)
	requireStatus(t, first, 200)
	require.Empty(t, first.header.Get("X-Idempotent-Replayed"))

	w.clock.Advance(time.Hour)
	again := w.post("/v1/usage", "plan-debit:1hr:o1", body)
	requireStatus(t, again, 200)
	require.Equal(t, "true", again.header.Get("X-Idempotent-Replayed"))
	require.Equal(t, first.body, again.body, "the stored body comes back byte for byte")
	require.NotEqual(t, first.header.Get("X-Request-Id"), again.header.Get("X-Request-Id"))

	acct, _ := w.srv.Account(recipeUser)
	require.Equal(t, int64(400_000), acct.Balance, "debited once")
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)

	recs := w.srv.Requests()
	last := recs[len(recs)-1]
	require.Equal(t, quotastacktest.RequestRecord{
		Method: "POST", Path: "/v1/usage", IdempotencyKey: "plan-debit:1hr:o1", Status: 200, Replayed: true,
		Time: t0.Add(time.Hour),
	}, last)
}

func TestIdempotencyConflict(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	requireStatus(t, w.post("/v1/usage", "k", usageBody(recipeUser, "look", 1)), 200)

	cases := []struct{ name, path, body string }{
		{"different body", "/v1/usage", usageBody(recipeUser, "look", 2)},
		{"same JSON, other bytes", "/v1/usage", usageBody(recipeUser, "look", 1) + " "},
		{"different path", "/v1/usage/batch", `{"events": [` + usageBody(recipeUser, "look", 1) + `]}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := w.send("POST", tc.path, "k", tc.body)
			require.NoError(t, err)
			requireProblem(t, r, 409, "idempotency-key-conflict")
		})
	}
	acct, _ := w.srv.Account(recipeUser)
	require.Equal(t, int64(499_000), acct.Balance, "nothing executed")
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)
}

func TestIdempotencyStores4xx(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	body := usageBody(recipeUser, "chat_message", 1)
	first := w.post("/v1/usage", "usage:msg_1", body)
	requireProblem(t, first, 402, "insufficient-credits")

	// Refill the plan credits: the replay still answers the stored 402.
	requireStatus(t, w.post("/v1/topup/grant", "plan-grant:1", grantBody(recipeUser, 50_000, 10, "2026-04-13T14:00:00Z")), 201)
	again := w.post("/v1/usage", "usage:msg_1", body)
	requireProblem(t, again, 402, "insufficient-credits")
	require.Equal(t, "true", again.header.Get("X-Idempotent-Replayed"))
	require.Equal(t, first.body, again.body)

	// A new key executes against the refilled plan.
	requireStatus(t, w.post("/v1/usage", "usage:msg_2", body), 200)

	// Validation errors are 4xx too.
	bad := w.post("/v1/usage", "usage:bad", usageBody(recipeUser, "chat_message", 0))
	requireProblem(t, bad, 400, "validation-error")
	again = w.post("/v1/usage", "usage:bad", usageBody(recipeUser, "chat_message", 0))
	require.Equal(t, "true", again.header.Get("X-Idempotent-Replayed"))
}

func TestIdempotency5xxNotStored(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	body := usageBody(recipeUser, "look", 3)
	w.srv.FailNext(1, 503)
	requireProblem(t, w.post("/v1/usage", "usage:retry", body), 503, "unavailable")
	require.Empty(t, w.srv.UsageEvents(recipeUser), "a status fault answers instead of executing")

	r := w.post("/v1/usage", "usage:retry", body)
	requireStatus(t, r, 200)
	require.Empty(t, r.header.Get("X-Idempotent-Replayed"), "the retry executes: 5xx is never stored")
	r = w.post("/v1/usage", "usage:retry", body)
	require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"))
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)

	recs := w.srv.Requests()
	require.Len(t, recs, 3)
	require.Equal(t, []int{503, 200, 200}, []int{recs[0].Status, recs[1].Status, recs[2].Status})
	require.Equal(t, "status", recs[0].Fault)
	require.Equal(t, quotastacktest.FaultCounts{Status503: 1}, w.srv.FaultCounts())
}

func TestIdempotencyConcurrentSameKey(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	const n = 32
	body := usageBody(recipeUser, "look", 1)
	results := make([]result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = w.send("POST", "/v1/usage", "usage:same", body)
		}()
	}
	close(start)
	wg.Wait()

	executed := 0
	for i := range n {
		require.NoError(t, errs[i])
		requireStatus(t, results[i], 200)
		require.Equal(t, results[0].body, results[i].body)
		if results[i].header.Get("X-Idempotent-Replayed") != "true" {
			executed++
		}
	}
	require.Equal(t, 1, executed)
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)
	acct, _ := w.srv.Account(recipeUser)
	require.Equal(t, int64(499_000), acct.Balance)
}

// TestIdempotencyConcurrentDifferentKeys checks that waiting on one key blocks nobody else.
func TestIdempotencyConcurrentDifferentKeys(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := w.send("POST", "/v1/usage", fmt.Sprintf("usage:%d", i%10), usageBody(recipeUser, "look", 1))
			if assert.NoError(t, err) {
				assert.Equal(t, 200, r.status)
			}
		}()
	}
	wg.Wait()
	require.Len(t, w.srv.UsageEvents(recipeUser), 10)
}

func TestIdempotencyRetention24h(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	body := usageBody(recipeUser, "look", 1)
	requireStatus(t, w.post("/v1/usage", "usage:daily", body), 200)

	w.clock.Advance(24*time.Hour - time.Second)
	r := w.post("/v1/usage", "usage:daily", body)
	require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"))

	w.clock.Advance(time.Second) // 24 h after the first answer: the key is forgotten
	r = w.post("/v1/usage", "usage:daily", body)
	requireStatus(t, r, 200)
	require.Empty(t, r.header.Get("X-Idempotent-Replayed"))
	require.Len(t, w.srv.UsageEvents(recipeUser), 2)

	// A forgotten key may even take a different body.
	w.clock.Advance(25 * time.Hour)
	requireStatus(t, w.post("/v1/usage", "usage:daily", usageBody(recipeUser, "look", 5)), 200)
}

func TestGetIgnoresIdempotencyKey(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	for range 2 {
		r := w.do("GET", ext(recipeUser)+"/credits", "same", "")
		requireStatus(t, r, 200)
		require.Empty(t, r.header.Get("X-Idempotent-Replayed"))
	}
}
