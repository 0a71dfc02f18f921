package quotastacktest_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	quotastack "github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// burnWorld grants four 1,000 mc blocks that the two burn orders take in different orders:
// DESC takes plan, promoExpiring, wallet, promo; ASC takes promoExpiring, promo, wallet, plan.
func burnWorld(t *testing.T, opts ...quotastacktest.Option) (*world, map[string]string) {
	w := newWorld(t, opts...)
	ids := map[string]string{}
	grant := func(name string, g quotastacktest.BlockSpec) {
		id, err := w.srv.Grant("burner", g)
		require.NoError(t, err)
		ids[id] = name
		w.clock.Advance(time.Second) // distinct created_at
	}
	grant("wallet", quotastacktest.BlockSpec{Credits: 1000})
	grant("plan", quotastacktest.BlockSpec{Credits: 1000, Priority: 10, ExpiresAt: quotastacktest.Ptr(t0.Add(time.Hour))})
	grant("promoExpiring", quotastacktest.BlockSpec{Credits: 1000, Source: "promotional", ExpiresAt: quotastacktest.Ptr(t0.Add(2 * time.Hour))})
	grant("promo", quotastacktest.BlockSpec{Credits: 1000, Source: "promotional"})
	return w, ids
}

func TestBurnOrder(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		order     quotastacktest.BurnOrder
		listed    []string
		afterBurn map[string]int64
	}{
		{"priority desc (default)", quotastacktest.BurnOrderPriorityDesc,
			[]string{"plan", "promoExpiring", "wallet", "promo"},
			map[string]int64{"plan": 0, "promoExpiring": 500, "wallet": 1000, "promo": 1000}},
		{"priority asc", quotastacktest.BurnOrderPriorityAsc,
			[]string{"promoExpiring", "promo", "wallet", "plan"},
			map[string]int64{"promoExpiring": 0, "promo": 500, "wallet": 1000, "plan": 1000}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w, ids := burnWorld(t, quotastacktest.WithBurnOrder(tc.order))
			r := w.get(ext("burner") + "/credits?include_blocks=true")
			requireStatus(t, r, 200)
			var listed []string
			for _, b := range r.json(t)["blocks"].([]any) {
				listed = append(listed, ids[b.(map[string]any)["id"].(string)])
			}
			require.Equal(t, tc.listed, listed, "blocks are listed in burn order")

			// look costs 1,000 mc per unit with every block eligible; 1,500 mc spans two blocks.
			_, err := w.srv.CreateRule(quotastack.Rule{BillableMetricKey: "half", CostType: "per_unit", UnitCost: 500})
			require.NoError(t, err)
			requireStatus(t, w.post("/v1/usage", "burn", usageBody("burner", "half", 3)), 200)
			got := map[string]int64{}
			for _, b := range w.srv.Blocks("burner") {
				got[ids[b.ID]] = b.RemainingAmount
			}
			for name, want := range tc.afterBurn {
				require.Equal(t, want, got[name], name)
			}
			debit := w.srv.Ledger("burner")[4]
			require.Equal(t, "debit", debit.Kind)
			require.Equal(t, int64(-1500), debit.Amount)
			require.Len(t, debit.Parts, 2, "one entry, two blocks")
		})
	}
}

func TestSetBurnOrderSwitches(t *testing.T) {
	t.Parallel()
	w, ids := burnWorld(t)
	w.srv.SetBurnOrder(quotastacktest.BurnOrderPriorityAsc)
	requireStatus(t, w.post("/v1/usage", "b1", usageBody("burner", "look", 1)), 200)
	require.Equal(t, "promoExpiring", ids[w.srv.Ledger("burner")[4].BlockID])
	w.srv.SetBurnOrder(quotastacktest.BurnOrderPriorityDesc)
	requireStatus(t, w.post("/v1/usage", "b2", usageBody("burner", "look", 1)), 200)
	require.Equal(t, "plan", ids[w.srv.Ledger("burner")[5].BlockID])
}

func TestEligibilityRecipe(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()

	// 500,000 wallet mc, and chat messages take plan credits only.
	m := w.get(ext(recipeUser) + "/entitlements/chat_message").json(t)
	require.Equal(t, false, m["allowed"])
	require.Equal(t, float64(500_000), m["balance"])
	require.Equal(t, float64(-1000), m["balance_after"])
	p := requireProblem(t, w.post("/v1/usage", "usage:msg_1", usageBody(recipeUser, "chat_message", 1)), 402, "insufficient-credits")
	require.Equal(t, float64(1000), p["required"])
	require.Equal(t, float64(0), p["available"])

	// Buy the plan as the recipe does: debit the wallet, grant plan credits.
	requireStatus(t, w.post("/v1/usage", "plan-debit:1hr:o1", usageBody(recipeUser, "plan_purchase_1hr", 100_000)), 200)
	requireStatus(t, w.post("/v1/topup/grant", "plan-grant:1hr:o1", grantBody(recipeUser, 50_000, 10, "2026-04-13T14:00:00Z")), 201)
	m = w.get(ext(recipeUser) + "/entitlements/chat_message").json(t)
	require.Equal(t, true, m["allowed"])
	require.Equal(t, float64(450_000), m["balance"])
	require.Equal(t, float64(49_000), m["balance_after"])
	requireStatus(t, w.post("/v1/usage", "usage:msg_1b", usageBody(recipeUser, "chat_message", 1)), 200)

	// The wallet-only purchase metric never touches plan credits: 400,000 wallet mc left.
	m = w.get(ext(recipeUser) + "/entitlements/plan_purchase_1hr?units=400001").json(t)
	require.Equal(t, false, m["allowed"])
	require.Equal(t, float64(-1), m["balance_after"])

	// An expiring priority-0 block is not wallet either.
	_, err := w.srv.Grant(recipeUser, quotastacktest.BlockSpec{Credits: 5, ExpiresAt: quotastacktest.Ptr(t0.Add(48 * time.Hour))})
	require.NoError(t, err)
	m = w.get(ext(recipeUser) + "/entitlements/plan_purchase_1hr?units=400001").json(t)
	require.Equal(t, float64(-1), m["balance_after"])
}

func TestPlanExpiryByClock(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	requireStatus(t, w.post("/v1/topup/grant", "plan-grant:1", grantBody(recipeUser, 50_000, 10, "2026-04-13T14:00:00Z")), 201)
	require.Equal(t, true, w.get(ext(recipeUser) + "/entitlements/chat_message").json(t)["allowed"])
	before, _ := w.srv.Account(recipeUser)

	w.clock.Advance(59*time.Minute + 59*time.Second)
	require.Equal(t, true, w.get(ext(recipeUser) + "/entitlements/chat_message").json(t)["allowed"])
	w.clock.Advance(time.Second) // expires_at <= now: expired
	m := w.get(ext(recipeUser) + "/entitlements/chat_message").json(t)
	require.Equal(t, false, m["allowed"])
	require.Equal(t, float64(500_000), m["balance"])
	require.Equal(t, float64(-1000), m["balance_after"])

	r := w.get(ext(recipeUser) + "/credits?include_blocks=true").json(t)
	require.Len(t, r["blocks"], 1, "an expired block is not listed")
	require.Equal(t, float64(550_000), r["lifetime_earned"], "lifetime_earned never decreases")
	after, _ := w.srv.Account(recipeUser)
	require.Greater(t, after.Version, before.Version)
	led := w.srv.Ledger(recipeUser)
	last := led[len(led)-1]
	require.Equal(t, "expire", last.Kind)
	require.Equal(t, int64(-50_000), last.Amount)
	require.Equal(t, t0.Add(time.Hour), last.Time)
}

func TestFullySpentBlockNotListed(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, err := w.srv.Grant("spender", quotastacktest.BlockSpec{Credits: 1000})
	require.NoError(t, err)
	_, err = w.srv.Grant("spender", quotastacktest.BlockSpec{Credits: 1000, Priority: 1})
	require.NoError(t, err)
	requireStatus(t, w.post("/v1/usage", "u1", usageBody("spender", "look", 1)), 200)
	blocks := w.get(ext("spender") + "/credits?include_blocks=true").json(t)["blocks"].([]any)
	require.Len(t, blocks, 1)
	require.Equal(t, float64(0), blocks[0].(map[string]any)["priority"])
}

func TestOverdraftAllowAndNotify(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{"allow", "notify"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			_, err := w.srv.CreateRule(quotastack.Rule{BillableMetricKey: "gpu", CostType: "per_unit", UnitCost: 1000, OveragePolicy: policy})
			require.NoError(t, err)
			_, err = w.srv.Grant("heavy", quotastacktest.BlockSpec{Credits: 1000})
			require.NoError(t, err)
			m := w.get(ext("heavy") + "/entitlements/gpu?units=3").json(t)
			require.Equal(t, true, m["allowed"], "not block: allowed even below zero")
			require.Equal(t, float64(-2000), m["balance_after"])
			require.Equal(t, policy, m["overage_policy"])

			r := w.post("/v1/usage", "gpu:1", usageBody("heavy", "gpu", 3))
			requireStatus(t, r, 200)
			require.Equal(t, float64(-2000), r.json(t)["balance_after"])
			requireStatus(t, w.post("/v1/usage", "gpu:2", usageBody("heavy", "gpu", 1)), 200)
			blocks := w.srv.Blocks("heavy")
			require.Len(t, blocks, 1, "the spent block goes, the overdraft block stays")
			require.Equal(t, "overdraft", blocks[0].Source)
			require.Equal(t, int64(-3000), blocks[0].RemainingAmount)
			acct, _ := w.srv.Account("heavy")
			require.Equal(t, int64(-3000), acct.Balance)

			// A block-policy metric stays refused while in overdraft.
			requireProblem(t, w.post("/v1/usage", "look:1", usageBody("heavy", "look", 1)), 402, "insufficient-credits")
		})
	}
}

func TestReservations(t *testing.T) {
	t.Parallel()
	reserve := func(w *world, key string, units, ttl int) string {
		w.t.Helper()
		r := w.post("/v1/reserve", key, `{"external_customer_id": "user42:companion7", "billable_metric_key": "look", "estimated_units": `+
			strconv.Itoa(units)+`, "ttl_seconds": `+strconv.Itoa(ttl)+`}`)
		requireStatus(w.t, r, 201)
		return r.json(w.t)["id"].(string)
	}
	account := func(w *world) quotastacktest.Account {
		a, ok := w.srv.Account(recipeUser)
		require.True(w.t, ok)
		return a
	}

	t.Run("hold then partial commit returns the rest", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t)
		w.recipeCustomer()
		id := reserve(w, "r1", 5, 0)
		a := account(w)
		require.Equal(t, [3]int64{500_000, 5000, 495_000}, [3]int64{a.Balance, a.ReservedBalance, a.EffectiveBalance})
		m := w.get(ext(recipeUser) + "/entitlements/look").json(t)
		require.Equal(t, float64(5000), m["reserved_balance"])
		require.Equal(t, float64(495_000), m["effective_balance"])
		require.Equal(t, float64(494_000), m["balance_after"])
		require.Equal(t, "2026-04-13T13:05:00Z", w.get("/v1/reserve/" + id).json(t)["expires_at"], "default TTL 300 s")
		require.NoError(t, w.srv.CheckInvariants(), "with a hold in place")

		requireStatus(t, w.post("/v1/reserve/"+id+"/commit", "r1:commit", `{"actual_units": 2}`), 200)
		a = account(w)
		require.Equal(t, [3]int64{498_000, 0, 498_000}, [3]int64{a.Balance, a.ReservedBalance, a.EffectiveBalance})
		ev := w.srv.UsageEvents(recipeUser)
		require.Len(t, ev, 1)
		require.Equal(t, id, ev[0].ReservationID)

		requireProblem(t, w.post("/v1/reserve/"+id+"/commit", "r1:commit2", `{"actual_units": 2}`), 409, "reservation-not-active")
		requireProblem(t, w.post("/v1/reserve/"+id+"/release", "r1:release", ""), 409, "reservation-not-active")
	})

	t.Run("release returns all", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t)
		w.recipeCustomer()
		id := reserve(w, "r1", 7, 0)
		r := w.post("/v1/reserve/"+id+"/release", "r1:release", "{}")
		requireStatus(t, r, 200)
		require.Equal(t, "released", r.json(t)["status"])
		a := account(w)
		require.Equal(t, [3]int64{500_000, 0, 500_000}, [3]int64{a.Balance, a.ReservedBalance, a.EffectiveBalance})
	})

	t.Run("TTL expiry on the clock", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t)
		w.recipeCustomer()
		id := reserve(w, "r1", 3, 60)
		w.clock.Advance(59 * time.Second)
		require.Equal(t, "active", w.get("/v1/reserve/" + id).json(t)["status"])
		w.clock.Advance(time.Second)
		require.Equal(t, "expired", w.get("/v1/reserve/" + id).json(t)["status"])
		a := account(w)
		require.Equal(t, [3]int64{500_000, 0, 500_000}, [3]int64{a.Balance, a.ReservedBalance, a.EffectiveBalance})
		requireProblem(t, w.post("/v1/reserve/"+id+"/commit", "c", `{"actual_units": 1}`), 409, "reservation-not-active")
	})

	t.Run("commit above the hold overflows, 402 keeps it active", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t)
		_, err := w.srv.Grant(recipeUser, quotastacktest.BlockSpec{Credits: 4000})
		require.NoError(t, err)
		id := reserve(w, "r1", 1, 0)
		requireProblem(t, w.post("/v1/reserve/"+id+"/commit", "c1", `{"actual_units": 5}`), 402, "insufficient-credits")
		a := account(w)
		require.Equal(t, [3]int64{4000, 1000, 3000}, [3]int64{a.Balance, a.ReservedBalance, a.EffectiveBalance}, "unchanged")
		require.Equal(t, "active", w.get("/v1/reserve/" + id).json(t)["status"])

		r := w.post("/v1/reserve/"+id+"/commit", "c2", `{"actual_units": 3}`)
		requireStatus(t, r, 200)
		require.Equal(t, float64(3000), r.json(t)["committed_amount"])
		a = account(w)
		require.Equal(t, [3]int64{1000, 0, 1000}, [3]int64{a.Balance, a.ReservedBalance, a.EffectiveBalance})
	})

	t.Run("hold limited by eligible credits", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t)
		w.recipeCustomer() // wallet only: chat messages cannot be held
		r := w.post("/v1/reserve", "r1", `{"external_customer_id": "user42:companion7", "billable_metric_key": "chat_message", "estimated_units": 1}`)
		p := requireProblem(t, r, 402, "insufficient-credits")
		require.Equal(t, float64(1000), p["required"])
		require.Equal(t, float64(0), p["available"])

		_, err := w.srv.Grant(recipeUser, quotastacktest.BlockSpec{Credits: 2000, Priority: 10, ExpiresAt: quotastacktest.Ptr(t0.Add(time.Hour))})
		require.NoError(t, err)
		r = w.post("/v1/reserve", "r2", `{"external_customer_id": "user42:companion7", "billable_metric_key": "chat_message", "estimated_units": 2}`)
		requireStatus(t, r, 201)
		m := w.get(ext(recipeUser) + "/entitlements/chat_message").json(t)
		require.Equal(t, false, m["allowed"], "the plan credits are all held")
		require.Equal(t, float64(-1000), m["balance_after"])

		// The plan block expires under the hold: the hold goes with it.
		w.clock.Advance(time.Hour)
		a := account(w)
		require.Equal(t, [3]int64{500_000, 0, 500_000}, [3]int64{a.Balance, a.ReservedBalance, a.EffectiveBalance})
	})
}

func TestLedgerInspection(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	requireStatus(t, w.post("/v1/usage", "usage:1", usageBody(recipeUser, "look", 2)), 200)
	led := w.srv.Ledger(recipeUser)
	require.Len(t, led, 2)
	require.Equal(t, "grant", led[0].Kind)
	require.Equal(t, int64(500_000), led[0].Amount)
	require.Equal(t, "debit", led[1].Kind)
	require.Equal(t, int64(-2000), led[1].Amount)
	require.Equal(t, "usage:1", led[1].IdempotencyKey)
	require.Equal(t, "look", led[1].MetricKey)
	require.Regexp(t, `^evt_`, led[1].EventID)
	require.Equal(t, led[0].BlockID, led[1].BlockID)
	require.Less(t, led[0].Seq, led[1].Seq)
	require.Len(t, w.srv.AllLedger(), 2)
	require.Nil(t, w.srv.Ledger("nobody"))
	_, ok := w.srv.Account("nobody")
	require.False(t, ok)
	require.NoError(t, w.srv.CheckInvariants())
}

func TestSeedingErrors(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	require.Error(t, w.srv.CreateMetric("Bad Key", ""))
	require.Error(t, w.srv.CreateMetric("look", ""), "exists")
	_, err := w.srv.CreateRule(quotastack.Rule{BillableMetricKey: "x", CostType: "tiered"})
	require.Error(t, err)
	_, err = w.srv.CreateRule(quotastack.Rule{BillableMetricKey: "x", CostType: "volume", Tiers: []quotastacktest.Tier{{UpTo: quotastacktest.Ptr[int64](5), UnitCost: 1}}})
	require.Error(t, err, "the last tier must be unbounded")
	_, err = w.srv.CreateRule(quotastack.Rule{BillableMetricKey: "x", CostType: "per_unit", OveragePolicy: "sometimes"})
	require.Error(t, err)
	_, err = w.srv.Grant("g", quotastacktest.BlockSpec{Credits: 0})
	require.Error(t, err)
	id, err := w.srv.CreateCustomer("c1", "C One")
	require.NoError(t, err)
	require.NotEmpty(t, id)
	_, err = w.srv.CreateCustomer("c1", "again")
	require.Error(t, err)
}
