package quotastacktest_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/quotastacktest"
)

func TestSparseAnswers(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithSparseAnswers())
	id := w.recipeCustomer()

	m := w.get(ext(recipeUser) + "/credits").json(t)
	requireKeys(t, m, "customer_id", "external_customer_id", "balance", "reserved_balance", "effective_balance")
	m = w.get(ext(recipeUser) + "/credits?include_blocks=true").json(t)
	requireKeys(t, m, "customer_id", "external_customer_id", "balance", "reserved_balance", "effective_balance", "blocks")
	blocks := m["blocks"].([]any)
	require.Len(t, blocks, 1)
	requireKeys(t, blocks[0].(map[string]any), "id", "original_amount", "remaining_amount", "priority", "expires_at", "source", "metadata")

	r := w.post("/v1/topup/grant", "g1", grantBody(recipeUser, 1000, 0, ""))
	requireStatus(t, r, 201)
	requireKeys(t, r.json(t)["block"].(map[string]any), "id", "original_amount", "remaining_amount", "priority", "expires_at", "source", "metadata")

	m = w.get(ext(recipeUser) + "/entitlements/chat_message").json(t)
	requireKeys(t, m, "allowed", "customer_id", "external_customer_id", "billable_metric_key", "units", "balance",
		"reserved_balance", "effective_balance", "estimated_cost", "balance_after", "overage_policy")
	require.Equal(t, id, m["customer_id"], "customer_id stays: every documented answer has it")

	w.srv.SetSparseAnswers(false)
	m = w.get(ext(recipeUser) + "/credits?include_blocks=true").json(t)
	require.Equal(t, float64(501_000), m["lifetime_earned"])
	require.Equal(t, float64(2), m["version"])
	require.Contains(t, m["blocks"].([]any)[0], "created_at")
	require.Equal(t, "active", w.get(ext(recipeUser) + "/entitlements/look").json(t)["subscription_status"])
}

func TestFaultExecuteThenStatus(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	w.srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/usage", ExecuteThenStatus: 502})
	body := usageBody(recipeUser, "look", 3)
	r := w.post("/v1/usage", "usage:1", body)
	p := requireProblem(t, r, 502, "internal-error")
	require.Equal(t, "/v1/usage", p["instance"])
	ev := w.srv.UsageEvents(recipeUser)
	require.Len(t, ev, 1, "the request executed before the 502")
	recs := w.srv.Requests()
	require.Equal(t, "execute-then-status", recs[len(recs)-1].Fault)
	require.Equal(t, 502, recs[len(recs)-1].Status)

	r = w.post("/v1/usage", "usage:1", body)
	requireStatus(t, r, 200)
	require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"), "the kept result is replayed")
	require.Equal(t, ev[0].EventID, r.json(t)["id"])
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)

	// A GET executes too, then gets the status.
	w.srv.InjectFault(quotastacktest.Fault{Method: "GET", ExecuteThenStatus: 503})
	requireProblem(t, w.get(ext(recipeUser)+"/credits"), 503, "unavailable")

	// At random: PExecute500 1 on grants only.
	w.srv.SetRandomFaults(&quotastacktest.RandomFaults{Seed: 3, PExecute500: 1, PathPrefix: "/v1/topup"})
	requireProblem(t, w.post("/v1/topup/grant", "g1", grantBody(recipeUser, 1000, 0, "")), 500, "internal-error")
	requireStatus(t, w.post("/v1/usage", "usage:2", body), 200)
	w.srv.ClearFaults()
	r = w.post("/v1/topup/grant", "g1", grantBody(recipeUser, 1000, 0, ""))
	requireStatus(t, r, 201)
	require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"))
	require.Equal(t, int64(3), w.srv.FaultCounts().ExecuteThen)
	acct, _ := w.srv.Account(recipeUser)
	require.Equal(t, int64(500_000-6000+1000), acct.Balance)
}

func TestExecuteThenStatusMode(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithExecuteThenStatus(500))
	w.recipeCustomer()
	body := usageBody(recipeUser, "look", 1)
	requireProblem(t, w.post("/v1/usage", "usage:1", body), 500, "internal-error")
	r := w.post("/v1/usage", "usage:1", body)
	requireStatus(t, r, 200)
	require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"))
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)

	requireStatus(t, w.get(ext(recipeUser)+"/credits"), 200)                                                             // GETs are not affected
	requireProblem(t, w.post("/v1/usage", "usage:1", usageBody(recipeUser, "look", 2)), 409, "idempotency-key-conflict") // nothing executed
	requireProblem(t, w.post("/v1/usage", "", body), 400, "idempotency-key-required")
	// A request that executes and fails keeps its 4xx for the retry.
	requireProblem(t, w.post("/v1/usage", "usage:big", usageBody(recipeUser, "look", 501)), 500, "internal-error")
	requireProblem(t, w.post("/v1/usage", "usage:big", usageBody(recipeUser, "look", 501)), 402, "insufficient-credits")

	w.srv.SetExecuteThenStatus(0)
	requireStatus(t, w.post("/v1/usage", "usage:2", body), 200)
	require.Equal(t, int64(2), w.srv.FaultCounts().ExecuteThen)
}

// TestDocumentedRateLimit: 100 requests in any 60 s, GETs and POSTs in one bucket.
func TestDocumentedRateLimit(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithDocumentedRateLimit())
	w.recipeCustomer()
	for range 50 {
		requireStatus(t, w.get(ext(recipeUser)+"/entitlements/look"), 200)
	}
	w.clock.Advance(30 * time.Second)
	for i := range 50 {
		requireStatus(t, w.post("/v1/usage", "usage:"+strconv.Itoa(i), usageBody(recipeUser, "look", 1)), 200)
	}
	r := w.get("/v1/billable-metrics")
	requireProblem(t, r, 429, "rate-limited")
	require.Equal(t, "30", r.header.Get("Retry-After"))
	p := requireProblem(t, w.post("/v1/usage", "usage:late", usageBody(recipeUser, "look", 1)), 429, "rate-limited")
	require.Equal(t, "/v1/usage", p["instance"])
	require.Len(t, w.srv.UsageEvents(recipeUser), 50, "a 429 executes nothing")

	w.clock.Advance(29 * time.Second)
	r = w.get("/v1/billable-metrics")
	requireProblem(t, r, 429, "rate-limited")
	require.Equal(t, "1", r.header.Get("Retry-After"))
	w.clock.Advance(time.Second)
	for range 50 {
		requireStatus(t, w.get("/v1/billable-metrics"), 200)
	}
	r = w.get("/v1/billable-metrics")
	requireProblem(t, r, 429, "rate-limited")
	require.Equal(t, "30", r.header.Get("Retry-After"), "the POSTs of t0+30s leave the window at t0+90s")
}

// TestRateLimitRetryAfterIsTruthful: after any 429, waiting Retry-After seconds gets the
// next request in, and waiting one second less does not.
func TestRateLimitRetryAfterIsTruthful(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithRateLimit(7, 13*time.Second))
	steps := []time.Duration{0, 300 * time.Millisecond, 2 * time.Second, 10 * time.Millisecond, 4700 * time.Millisecond, 1234 * time.Millisecond}
	checked := 0
	for i := range 400 {
		w.clock.Advance(steps[i%len(steps)])
		r := w.get("/v1/billable-metrics")
		if r.status == 200 {
			continue
		}
		requireProblem(t, r, 429, "rate-limited")
		secs, err := strconv.Atoi(r.header.Get("Retry-After"))
		require.NoError(t, err)
		require.Positive(t, secs)
		if secs > 1 {
			w.clock.Advance(time.Duration(secs-1) * time.Second)
			requireProblem(t, w.get("/v1/billable-metrics"), 429, "rate-limited")
			w.clock.Advance(time.Second)
		} else {
			w.clock.Advance(time.Second)
		}
		requireStatus(t, w.get("/v1/billable-metrics"), 200)
		checked++
	}
	require.Greater(t, checked, 20)
}

// sendRetrying is a careful raw client: it retries 5xx and 429 with the same key, moving
// the server clock by Retry-After instead of sleeping.
func (w *world) sendRetrying(method, path, key, body string) result {
	w.t.Helper()
	for range 5 {
		r := w.do(method, path, key, body)
		switch {
		case r.status == 429:
			secs, err := strconv.Atoi(r.header.Get("Retry-After"))
			require.NoError(w.t, err)
			w.clock.Advance(time.Duration(secs) * time.Second)
		case r.status >= 500:
		default:
			return r
		}
	}
	w.t.Fatalf("%s %s: still failing after 5 attempts", method, path)
	return result{}
}

// TestModesRunTheRecipe runs the recipe's purchase over raw HTTP against every mode, as a
// careful client would: read the wallet before buying, trust a 200/202 debit, retry with
// the same key.
func TestModesRunTheRecipe(t *testing.T) {
	t.Parallel()
	var names []string
	for _, m := range quotastacktest.Modes() {
		names = append(names, m.Name)
	}
	require.Equal(t, []string{"kind", "usage202", "sparse", "execute-then-5xx", "rate-limited"}, names)
	m, ok := quotastacktest.ModeNamed("usage202")
	require.True(t, ok)
	require.Equal(t, "usage202", m.Name)
	_, ok = quotastacktest.ModeNamed("nice")
	require.False(t, ok)

	quotastacktest.RunModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := newWorld(t, mode.Options...)
		w.recipeCustomer()
		me := byExt(recipeUser)
		// Enough requests to meet the rate limit: 120 checks.
		for range 120 {
			require.Equal(t, false, w.sendRetrying(http.MethodGet, ext(recipeUser)+"/entitlements/chat_message", "", "").json(t)["allowed"])
		}
		wallet := w.sendRetrying(http.MethodGet, ext(recipeUser)+"/credits?include_blocks=true", "", "").json(t)
		require.Equal(t, float64(500_000), wallet["balance"])
		_, hasVersion := wallet["version"]
		require.Equal(t, mode.Name != "sparse", hasVersion)

		r := w.sendRetrying(http.MethodPost, "/v1/usage", "plan-debit:1hr:o1", debitJSON(me, "o1", "auto_buy"))
		require.Contains(t, []int{200, 202}, r.status)
		r = w.sendRetrying(http.MethodPost, "/v1/topup/grant", "plan-grant:1hr:o1", grantJSON(me, "o1", "auto_buy", hourLater))
		requireStatus(t, r, 201)
		require.Equal(t, true, w.sendRetrying(http.MethodGet, ext(recipeUser)+"/entitlements/chat_message", "", "").json(t)["allowed"])
		r = w.sendRetrying(http.MethodPost, "/v1/usage", "usage:msg_abc123", usageBody(recipeUser, "chat_message", 1))
		require.Contains(t, []int{200, 202}, r.status)
		require.NoError(t, w.srv.CheckInvariants())
		acct, _ := w.srv.Account(recipeUser)
		require.Equal(t, int64(449_000), acct.Balance)
	})
}

// TestModesCatchTheTrustingPurchase: a purchase that skips the wallet read and grants after
// any 2xx debit passes against the kind fake and fails against usage202 (issue 12 #10).
func TestModesCatchTheTrustingPurchase(t *testing.T) {
	t.Parallel()
	quotastacktest.RunModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := newWorld(t, mode.Options...)
		w.broken = true
		_, err := w.srv.Grant(recipeUser, quotastacktest.BlockSpec{Credits: 50_000})
		require.NoError(t, err)
		me := byExt(recipeUser)
		r := w.sendRetrying(http.MethodPost, "/v1/usage", "plan-debit:1hr:o1", debitJSON(me, "o1", "auto_buy"))
		if r.status < 300 {
			w.sendRetrying(http.MethodPost, "/v1/topup/grant", "plan-grant:1hr:o1", grantJSON(me, "o1", "auto_buy", hourLater))
		}
		err = w.srv.CheckInvariants()
		if mode.Name == "usage202" {
			require.ErrorContains(t, err, "plan granted without a debit")
			return
		}
		requireProblem(t, r, 402, "insufficient-credits")
		require.NoError(t, err)
	})
}
