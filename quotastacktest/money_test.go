package quotastacktest_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	quotastack "github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// byExt and byID are the two customer members of a body (contract §3).
func byExt(externalID string) string { return fmt.Sprintf(`"external_customer_id": %q`, externalID) }
func byID(customerID string) string  { return fmt.Sprintf(`"customer_id": %q`, customerID) }

// debitJSON is the recipe's plan debit (contract §7): 100,000 mc on plan_purchase_1hr.
func debitJSON(cust, order, trigger string) string {
	return fmt.Sprintf(`{%s, "billable_metric_key": "plan_purchase_1hr", "units": 100000,
	  "metadata": {"plan_type": "1hr", "order_id": %q, "trigger": %q}}`, cust, order, trigger)
}

// grantJSON is the recipe's plan grant: 50,000 plan mc at priority 10, expiring at expires.
func grantJSON(cust, order, trigger, expires string) string {
	return fmt.Sprintf(`{%s, "credits": 50000, "price_paid": 0, "currency": "mc", "priority": 10,
	  "expires_at": %q,
	  "metadata": {"source": "plan_grant", "plan_type": "1hr", "order_id": %q, "trigger": %q}}`, cust, expires, order, trigger)
}

const hourLater = "2026-04-13T14:00:00Z"

func (w *world) debit(cust, order, trigger string) {
	w.t.Helper()
	requireStatus(w.t, w.post("/v1/usage", "plan-debit:1hr:"+order, debitJSON(cust, order, trigger)), 200)
}

func (w *world) grant(cust, order, trigger, expires string) {
	w.t.Helper()
	requireStatus(w.t, w.post("/v1/topup/grant", "plan-grant:1hr:"+order, grantJSON(cust, order, trigger, expires)), 201)
}

// chat sends n chat messages (1,000 mc each from plan credits) as one event.
func (w *world) chat(key string, n int64) {
	w.t.Helper()
	requireStatus(w.t, w.post("/v1/usage", key, usageBody(recipeUser, "chat_message", n)), 200)
}

// TestMoneyChecksCatchBugs makes each known money bug happen over raw HTTP and expects
// CheckInvariants to name it.
func TestMoneyChecksCatchBugs(t *testing.T) {
	t.Parallel()
	me := byExt(recipeUser)
	cases := []struct {
		name  string
		steps func(w *world, id string)
		want  []string // substrings of the error, each must appear
		// inFlight: the violation is reported even by CheckInvariants(InFlight()).
		inFlight bool
	}{
		{"plan debit without a grant", func(w *world, _ string) {
			w.debit(me, "o1", "auto_buy")
		}, []string{"plan debited without a grant: order o1 (plan 1hr)"}, false},
		{"plan grant without a debit (issue 12 #10: a 202 debit rejected later)", func(w *world, _ string) {
			w.grant(me, "o1", "auto_buy", hourLater)
		}, []string{"plan granted without a debit: order o1 (plan 1hr)"}, true},
		{"two debits for one order, different keys", func(w *world, _ string) {
			w.debit(me, "o1", "manual")
			requireStatus(t, w.post("/v1/usage", "another-key", debitJSON(me, "o1", "manual")), 200)
			w.grant(me, "o1", "manual", hourLater)
		}, []string{"order o1 (plan 1hr) debited 2 times", `key "plan-debit:1hr:o1"`, `key "another-key"`}, true},
		{"two debits for one order, the same key past 24 h (issue 12 #3)", func(w *world, _ string) {
			w.debit(me, "o1", "auto_buy")
			w.clock.Advance(25 * time.Hour)
			w.debit(me, "o1", "auto_buy")
			w.grant(me, "o1", "auto_buy", "2026-04-14T15:00:00Z")
		}, []string{"order o1 (plan 1hr) debited 2 times"}, true},
		{"two grants for one order", func(w *world, _ string) {
			w.debit(me, "o1", "manual")
			w.grant(me, "o1", "manual", hourLater)
			requireStatus(t, w.post("/v1/topup/grant", "grant-again", grantJSON(me, "o1", "manual", hourLater)), 201)
		}, []string{"order o1 (plan 1hr) granted 2 times"}, true},
		{"auto-buy while another order is debited, not granted (issue 12 #2, #4)", func(w *world, _ string) {
			w.debit(me, "o1", "auto_buy")
			w.debit(me, "o2", "auto_buy")
			w.grant(me, "o2", "auto_buy", hourLater)
			w.grant(me, "o1", "auto_buy", hourLater)
		}, []string{"one exhaustion bought two plans: auto-buy debit", "of order o2 (plan 1hr)", "while order o1 is debited but not granted"}, true},
		{"auto-buy while an auto-bought block is untouched (issue 12 #1: two id forms)", func(w *world, id string) {
			w.debit(me, "ext-order", "auto_buy")
			w.grant(me, "ext-order", "auto_buy", hourLater)
			w.debit(byID(id), "uuid-order", "auto_buy")
			w.grant(byID(id), "uuid-order", "auto_buy", hourLater)
		}, []string{"of order uuid-order (plan 1hr)", "of order ext-order is untouched"}, true},
		{"debit of one customer, grant to another", func(w *world, _ string) {
			_, err := w.srv.Grant("someone-else", quotastacktest.BlockSpec{Credits: 1000})
			require.NoError(t, err)
			w.debit(me, "o1", "manual")
			w.grant(byExt("someone-else"), "o1", "manual", hourLater)
		}, []string{`customer "user42:companion7": plan debited without a grant: order o1`,
			`customer "someone-else": plan granted without a debit: order o1`}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			w.broken = true
			id := w.recipeCustomer()
			tc.steps(w, id)
			err := w.srv.CheckInvariants()
			require.Error(t, err)
			for _, s := range tc.want {
				require.Contains(t, err.Error(), s)
			}
			if tc.inFlight {
				require.Error(t, w.srv.CheckInvariants(quotastacktest.InFlight()))
			}
		})
	}
}

// TestMoneyChecksPassLegitimateSequences runs the purchases that must not be reported.
func TestMoneyChecksPassLegitimateSequences(t *testing.T) {
	t.Parallel()
	me := byExt(recipeUser)
	cases := []struct {
		name  string
		steps func(w *world, id string)
	}{
		{"the recipe: debit, grant, chat", func(w *world, _ string) {
			w.debit(me, "auto_msg_abc123", "auto_buy")
			w.grant(me, "auto_msg_abc123", "auto_buy", hourLater)
			w.chat("usage:msg_abc123", 1)
		}},
		{"bought, consumed, bought again", func(w *world, _ string) {
			w.debit(me, "o1", "auto_buy")
			w.grant(me, "o1", "auto_buy", hourLater)
			w.chat("usage:all", 50) // the plan's 50,000 mc, to the last
			w.debit(me, "o2", "auto_buy")
			w.grant(me, "o2", "auto_buy", hourLater)
		}},
		{"bought, expired untouched, bought again", func(w *world, _ string) {
			w.debit(me, "o1", "auto_buy")
			w.grant(me, "o1", "auto_buy", hourLater)
			w.clock.Advance(time.Hour)
			w.debit(me, "o2", "auto_buy")
			w.grant(me, "o2", "auto_buy", "2026-04-13T15:00:00Z")
		}},
		{"half done, then finished by the grant's retry", func(w *world, _ string) {
			w.debit(me, "o1", "auto_buy")
			w.srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503})
			requireProblem(t, w.post("/v1/topup/grant", "plan-grant:1hr:o1", grantJSON(me, "o1", "auto_buy", hourLater)), 503, "unavailable")
			require.NoError(t, w.srv.CheckInvariants(quotastacktest.InFlight()), "a purchase between its steps")
			err := w.srv.CheckInvariants()
			require.ErrorContains(t, err, "plan debited without a grant: order o1")
			require.NoError(t, w.srv.CheckInvariants(quotastacktest.AllowHalfDone("o1")))
			w.clock.Advance(25 * time.Hour) // finished past the debit key's 24 h, without a new debit
			w.grant(me, "o1", "auto_buy", "2026-04-14T15:00:00Z")
		}},
		{"queued stacking: the next plan starts when the last ends", func(w *world, _ string) {
			w.debit(me, "o1", "auto_buy")
			w.grant(me, "o1", "auto_buy", hourLater)
			w.chat("usage:49", 49) // 1,000 mc left: a 2-message action is refused
			w.debit(me, "o2", "auto_buy")
			w.grant(me, "o2", "auto_buy", "2026-04-13T15:00:00Z")
			w.debit(me, "o3", "manual") // bought ahead by hand, stacked again
			w.grant(me, "o3", "manual", "2026-04-13T16:00:00Z")
		}},
		{"both steps by different id forms", func(w *world, id string) {
			w.debit(byID(id), "o1", "auto_buy")
			w.grant(me, "o1", "auto_buy", hourLater)
		}},
		{"a replayed debit and grant", func(w *world, _ string) {
			w.debit(me, "o1", "auto_buy")
			w.debit(me, "o1", "auto_buy")
			w.grant(me, "o1", "auto_buy", hourLater)
			w.grant(me, "o1", "auto_buy", hourLater)
		}},
		{"a plan debit the wallet can't cover is no debit", func(w *world, _ string) {
			requireProblem(t, w.post("/v1/usage", "plan-debit:1hr:big", `{"external_customer_id": "user42:companion7",
			  "billable_metric_key": "plan_purchase_1hr", "units": 600000,
			  "metadata": {"plan_type": "1hr", "order_id": "big", "trigger": "auto_buy"}}`), 402, "insufficient-credits")
		}},
		{"a seeded plan block without an order id is not an order", func(w *world, _ string) {
			_, err := w.srv.Grant(recipeUser, quotastacktest.BlockSpec{Credits: 50_000, Priority: 10,
				ExpiresAt: quotastacktest.Ptr(t0.Add(time.Hour)), Metadata: map[string]string{"source": "plan_grant", "plan_type": "1hr"}})
			require.NoError(t, err)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			id := w.recipeCustomer()
			tc.steps(w, id)
			require.NoError(t, w.srv.CheckInvariants())
		})
	}
}

// TestExhaustionRuleIsPerPlanType: two gates of two plan types may each buy for their own
// exhaustion at once.
func TestExhaustionRuleIsPerPlanType(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	_, err := w.srv.CreateRule(quotastack.Rule{BillableMetricKey: "plan_purchase_img", CostType: "per_unit", UnitCost: 1,
		Eligible: &quotastacktest.Eligibility{MaxPriority: quotastacktest.Ptr(0), Expiring: quotastacktest.Ptr(false)}})
	require.NoError(t, err)
	w.debit(byExt(recipeUser), "o1", "auto_buy")
	requireStatus(t, w.post("/v1/usage", "plan-debit:img:o2", `{"external_customer_id": "user42:companion7",
	  "billable_metric_key": "plan_purchase_img", "units": 1000,
	  "metadata": {"plan_type": "img", "order_id": "o2", "trigger": "auto_buy"}}`), 200)
	requireStatus(t, w.post("/v1/topup/grant", "plan-grant:img:o2", `{"external_customer_id": "user42:companion7",
	  "credits": 500, "priority": 20, "expires_at": "2026-04-13T14:00:00Z",
	  "metadata": {"source": "plan_grant", "plan_type": "img", "order_id": "o2", "trigger": "auto_buy"}}`), 201)
	w.grant(byExt(recipeUser), "o1", "auto_buy", hourLater)
	require.NoError(t, w.srv.CheckInvariants())
}

func TestPlanOrders(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	require.Nil(t, w.srv.PlanOrders("nobody"))
	w.debit(byExt(recipeUser), "o1", "auto_buy")
	w.grant(byExt(recipeUser), "o1", "auto_buy", hourLater)
	w.debit(byExt(recipeUser), "o2", "manual")
	orders := w.srv.PlanOrders(recipeUser)
	require.Len(t, orders, 2)
	require.Equal(t, "1hr", orders[0].PlanType)
	require.Equal(t, "o1", orders[0].OrderID)
	require.Len(t, orders[0].Debits, 1)
	require.Equal(t, int64(100_000), orders[0].Debits[0].Cost)
	require.Equal(t, "plan-debit:1hr:o1", orders[0].Debits[0].IdempotencyKey)
	require.Len(t, orders[0].GrantBlockIDs, 1)
	require.True(t, strings.HasPrefix(orders[0].GrantBlockIDs[0], "blk_"))
	require.Equal(t, "o2", orders[1].OrderID)
	require.Empty(t, orders[1].GrantBlockIDs)
	w.grant(byExt(recipeUser), "o2", "manual", hourLater)
}
