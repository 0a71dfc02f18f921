package quotastacktest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	quotastack "github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

func TestEntitlementRecipeShape(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	id := w.recipeCustomer()

	r := w.get(ext(recipeUser) + "/entitlements/chat_message")
	requireStatus(t, r, 200)
	require.JSONEq(t, fmt.Sprintf(`{
	  "allowed": false,
	  "customer_id": %q,
	  "external_customer_id": "user42:companion7",
	  "billable_metric_key": "chat_message",
	  "units": 1,
	  "balance": 500000,
	  "reserved_balance": 0,
	  "effective_balance": 500000,
	  "estimated_cost": 1000,
	  "balance_after": -1000,
	  "subscription_status": "active",
	  "overage_policy": "block"
	}`, id), string(r.body))

	// The same account by UUID, with units=3 against the wallet-only metric.
	r = w.get("/v1/customers/" + id + "/entitlements/plan_purchase_1hr?units=3")
	requireStatus(t, r, 200)
	m := r.json(t)
	require.Equal(t, true, m["allowed"])
	require.Equal(t, float64(3), m["units"])
	require.Equal(t, float64(3), m["estimated_cost"])
	require.Equal(t, float64(499_997), m["balance_after"])
}

func TestCreditsShape(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	id := w.recipeCustomer()
	blk := w.srv.Blocks(recipeUser)[0].ID

	r := w.get(ext(recipeUser) + "/credits")
	requireStatus(t, r, 200)
	require.JSONEq(t, fmt.Sprintf(`{"customer_id": %q, "external_customer_id": "user42:companion7",
	  "balance": 500000, "reserved_balance": 0, "effective_balance": 500000,
	  "lifetime_earned": 500000, "version": 1}`, id), string(r.body))

	r = w.get("/v1/customers/" + id + "/credits?include_blocks=true")
	requireStatus(t, r, 200)
	require.JSONEq(t, fmt.Sprintf(`{"customer_id": %q, "external_customer_id": "user42:companion7",
	  "balance": 500000, "reserved_balance": 0, "effective_balance": 500000,
	  "lifetime_earned": 500000, "version": 1,
	  "blocks": [{"id": %q, "original_amount": 500000, "remaining_amount": 500000, "priority": 0,
	    "expires_at": null, "source": "topup", "metadata": {"source": "wallet_recharge"},
	    "created_at": "2026-04-13T13:00:00Z"}]}`, id, blk), string(r.body))
}

func TestUsageShape(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	id := w.recipeCustomer()

	r := w.post("/v1/usage", "plan-debit:1hr:auto_msg_abc123", `{
	    "external_customer_id": "user42:companion7",
	    "billable_metric_key": "plan_purchase_1hr",
	    "units": 100000,
	    "metadata": { "plan_type": "1hr", "order_id": "auto_msg_abc123", "trigger": "auto_buy" }
	  }`)
	requireStatus(t, r, 200)
	evt := r.json(t)["id"].(string)
	require.Regexp(t, `^evt_`, evt)
	require.JSONEq(t, fmt.Sprintf(`{"id": %q, "customer_id": %q, "external_customer_id": "user42:companion7",
	  "billable_metric_key": "plan_purchase_1hr", "units": 100000, "cost": 100000,
	  "balance_after": 400000, "created_at": "2026-04-13T13:00:00Z"}`, evt, id), string(r.body))

	ev := w.srv.UsageEvents(recipeUser)
	require.Len(t, ev, 1)
	require.Equal(t, "auto_buy", ev[0].Metadata["trigger"])
	require.Equal(t, "plan-debit:1hr:auto_msg_abc123", ev[0].IdempotencyKey)

	// The purchase's second step, without which CheckInvariants reports a debit without a grant.
	requireStatus(t, w.post("/v1/topup/grant", "plan-grant:1hr:auto_msg_abc123", `{"external_customer_id": "user42:companion7",
	  "credits": 50000, "priority": 10, "expires_at": "2026-04-13T14:00:00Z",
	  "metadata": {"source": "plan_grant", "plan_type": "1hr", "order_id": "auto_msg_abc123", "trigger": "auto_buy"}}`), 201)
}

func TestUsageBatch(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	r := w.post("/v1/usage/batch", "batch-1", `{"events": [
	  {"external_customer_id": "user42:companion7", "billable_metric_key": "plan_purchase_1hr", "units": 10},
	  {"external_customer_id": "user42:companion7", "billable_metric_key": "chat_message", "units": 1},
	  {"external_customer_id": "nobody", "billable_metric_key": "look", "units": 1},
	  {"external_customer_id": "user42:companion7", "billable_metric_key": "look", "units": 0}
	]}`)
	requireStatus(t, r, 200)
	res := r.json(t)["results"].([]any)
	require.Len(t, res, 4)
	wantStatus := []float64{200, 402, 404, 400}
	wantType := []string{"", "insufficient-credits", "customer-not-found", "validation-error"}
	for i, x := range res {
		m := x.(map[string]any)
		require.Equal(t, float64(i), m["index"])
		require.Equal(t, wantStatus[i], m["status"])
		if wantType[i] == "" {
			requireKeys(t, m, "index", "status", "event")
			require.Equal(t, float64(10), m["event"].(map[string]any)["cost"])
			continue
		}
		requireKeys(t, m, "index", "status", "error")
		require.Equal(t, problemType+wantType[i], m["error"].(map[string]any)["type"])
	}
	acct, _ := w.srv.Account(recipeUser)
	require.Equal(t, int64(499_990), acct.Balance)
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)

	requireProblem(t, w.post("/v1/usage/batch", "batch-2", `{"events": []}`), 400, "validation-error")
}

func TestTopupGrantShape(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	// The purchase's first step, without which CheckInvariants reports a grant without a debit.
	requireStatus(t, w.post("/v1/usage", "plan-debit:1hr:auto_msg_abc123", `{"external_customer_id": "user42:companion7",
	  "billable_metric_key": "plan_purchase_1hr", "units": 100000,
	  "metadata": {"plan_type": "1hr", "order_id": "auto_msg_abc123", "trigger": "auto_buy"}}`), 200)
	const body = `{
	    "external_customer_id": "user42:companion7",
	    "credits": 50000,
	    "price_paid": 0,
	    "currency": "mc",
	    "expires_at": "2026-04-13T14:00:00Z",
	    "priority": 10,
	    "metadata": { "source": "plan_grant", "plan_type": "1hr", "order_id": "auto_msg_abc123", "trigger": "auto_buy" }
	  }`
	r := w.post("/v1/topup/grant", "plan-grant:1hr:auto_msg_abc123", body)
	requireStatus(t, r, 201)
	m := r.json(t)
	requireKeys(t, m, "customer_id", "external_customer_id", "block", "balance", "effective_balance")
	blk := m["block"].(map[string]any)
	require.Regexp(t, `^blk_`, blk["id"])
	require.JSONEq(t, fmt.Sprintf(`{"id": %q, "original_amount": 50000, "remaining_amount": 50000, "priority": 10,
	  "expires_at": "2026-04-13T14:00:00Z", "source": "topup",
	  "metadata": {"source": "plan_grant", "plan_type": "1hr", "order_id": "auto_msg_abc123", "trigger": "auto_buy"},
	  "created_at": "2026-04-13T13:00:00Z"}`, blk["id"]), mustJSON(t, blk))
	require.Equal(t, float64(450_000), m["balance"])
	require.Equal(t, float64(450_000), m["effective_balance"])

	// A replay answers 201 too; an unknown external id creates the customer.
	r2 := w.post("/v1/topup/grant", "plan-grant:1hr:auto_msg_abc123", body)
	requireStatus(t, r2, 201)
	require.Equal(t, "true", r2.header.Get("X-Idempotent-Replayed"))
	require.Equal(t, r.body, r2.body)
	r = w.post("/v1/topup/grant", "signup-grant:new/user", `{"external_customer_id": "new/user", "credits": 1000}`)
	requireStatus(t, r, 201)
	acct, ok := w.srv.Account("new/user")
	require.True(t, ok)
	require.Equal(t, int64(1000), acct.Balance)
	require.Equal(t, acct.CustomerID, r.json(t)["customer_id"])
}

func TestCreditGrantShape(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	id := w.recipeCustomer()
	r := w.post("/v1/customers/"+id+"/credits/grant", "promo:1", `{"credits": 2500, "source": "promotional", "reason": "welcome"}`)
	requireStatus(t, r, 201)
	m := r.json(t)
	requireKeys(t, m, "customer_id", "external_customer_id", "block", "balance", "effective_balance")
	blk := m["block"].(map[string]any)
	require.Equal(t, "promotional", blk["source"])
	require.Equal(t, float64(0), blk["priority"])
	require.Nil(t, blk["expires_at"])
	require.Equal(t, float64(502_500), m["balance"])

	r = w.post(ext(recipeUser)+"/credits/grant", "promo:2", `{"credits": 100, "priority": 5, "expires_at": "2026-05-01T00:00:00Z", "metadata": {"campaign": "spring"}}`)
	requireStatus(t, r, 201)
	blk = r.json(t)["block"].(map[string]any)
	require.Equal(t, "promotional", blk["source"], "source defaults to promotional")
	require.Equal(t, "2026-05-01T00:00:00Z", blk["expires_at"])
	require.Equal(t, map[string]any{"campaign": "spring"}, blk["metadata"])
}

func TestCustomersEndpoints(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	r := w.post("/v1/customers", "cust:ann", `{"external_id": "ann@example.com", "display_name": "Ann"}`)
	requireStatus(t, r, 201)
	m := r.json(t)
	requireKeys(t, m, "customer_id", "external_customer_id", "display_name", "created_at")
	id := m["customer_id"].(string)
	require.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, id)
	want := fmt.Sprintf(`{"customer_id": %q, "external_customer_id": "ann@example.com", "display_name": "Ann",
	  "created_at": "2026-04-13T13:00:00Z"}`, id)
	require.JSONEq(t, want, string(r.body))

	r = w.get("/v1/customers/" + id)
	requireStatus(t, r, 200)
	require.JSONEq(t, want, string(r.body))
	r = w.get("/v1/customer-by-external-id/ann@example.com")
	requireStatus(t, r, 200)
	require.JSONEq(t, want, string(r.body))

	requireProblem(t, w.post("/v1/customers", "cust:ann2", `{"external_id": "ann@example.com"}`), 409, "customer-exists")
}

func TestReservationShapes(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	id := w.recipeCustomer()
	r := w.post("/v1/reserve", "rsv:1", `{"external_customer_id": "user42:companion7", "billable_metric_key": "look",
	  "estimated_units": 5, "ttl_seconds": 60, "metadata": {"job": "j1"}}`)
	requireStatus(t, r, 201)
	rid := r.json(t)["id"].(string)
	require.Regexp(t, `^rsv_`, rid)
	require.JSONEq(t, fmt.Sprintf(`{"id": %q, "status": "active", "customer_id": %q, "external_customer_id": "user42:companion7",
	  "billable_metric_key": "look", "estimated_units": 5, "reserved_amount": 5000,
	  "expires_at": "2026-04-13T13:01:00Z"}`, rid, id), string(r.body))

	r = w.get("/v1/reserve/" + rid)
	requireStatus(t, r, 200)
	require.Equal(t, "active", r.json(t)["status"])

	r = w.post("/v1/reserve/"+rid+"/commit", "rsv:1:commit", `{"actual_units": 2}`)
	requireStatus(t, r, 200)
	m := r.json(t)
	require.Equal(t, "committed", m["status"])
	require.Equal(t, float64(2), m["actual_units"])
	require.Equal(t, float64(2000), m["committed_amount"])
	require.Regexp(t, `^evt_`, m["event_id"])
}

func TestCatalogEndpoints(t *testing.T) {
	t.Parallel()
	w := newWorld(t) // seeds chat_message, plan_purchase_1hr, look
	r := w.post("/v1/billable-metrics", "metric:tokens", `{"key": "tokens", "name": "Tokens", "description": "LLM tokens"}`)
	requireStatus(t, r, 201)
	m := r.json(t)
	requireKeys(t, m, "key", "name", "description", "active_rule_id", "created_at")
	require.Nil(t, m["active_rule_id"])

	r = w.post("/v1/metering-rules", "rule:tokens", `{"billable_metric_key": "tokens", "cost_type": "graduated",
	  "tiers": [{"up_to": 100, "unit_cost": 10}, {"up_to": null, "unit_cost": 5}], "overage_policy": "allow"}`)
	requireStatus(t, r, 201)
	rule := r.json(t)
	require.Regexp(t, `^rule_`, rule["id"])
	require.Equal(t, true, rule["active"])
	require.Equal(t, "allow", rule["overage_policy"])
	require.Equal(t, []any{map[string]any{"up_to": float64(100), "unit_cost": float64(10)},
		map[string]any{"up_to": nil, "unit_cost": float64(5)}}, rule["tiers"])

	r = w.get("/v1/metering-rules/" + rule["id"].(string))
	requireStatus(t, r, 200)
	require.Equal(t, rule, r.json(t))
	r = w.get("/v1/billable-metrics/tokens")
	requireStatus(t, r, 200)
	require.Equal(t, rule["id"], r.json(t)["active_rule_id"])

	// A new rule replaces the active one.
	r = w.post("/v1/metering-rules", "rule:tokens:2", `{"billable_metric_key": "tokens", "cost_type": "flat", "flat_cost": 7}`)
	requireStatus(t, r, 201)
	r = w.get("/v1/metering-rules/" + rule["id"].(string))
	require.Equal(t, false, r.json(t)["active"])

	// Cursor pagination walks the four metrics two at a time.
	var keys []string
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 3)
		r = w.get("/v1/billable-metrics?limit=2" + cursor)
		requireStatus(t, r, 200)
		m := r.json(t)
		requireKeys(t, m, "data", "pagination")
		for _, d := range m["data"].([]any) {
			keys = append(keys, d.(map[string]any)["key"].(string))
		}
		pg := m["pagination"].(map[string]any)
		requireKeys(t, pg, "has_more", "next_cursor")
		if pg["has_more"] == false {
			require.Nil(t, pg["next_cursor"])
			break
		}
		cursor = "&cursor=" + pg["next_cursor"].(string)
	}
	require.Equal(t, []string{"chat_message", "plan_purchase_1hr", "look", "tokens"}, keys)

	r = w.get("/v1/metering-rules?limit=100")
	requireStatus(t, r, 200)
	require.Len(t, r.json(t)["data"], 5)
	require.Equal(t, map[string]any{"has_more": false, "next_cursor": nil}, r.json(t)["pagination"])
}

func TestPricing(t *testing.T) {
	t.Parallel()
	tiers := []quotastacktest.Tier{
		{UpTo: quotastacktest.Ptr[int64](10), UnitCost: 100},
		{UpTo: quotastacktest.Ptr[int64](20), UnitCost: 50},
		{UnitCost: 10},
	}
	cases := []struct {
		name  string
		rule  quotastack.Rule
		units int64
		cost  int64
	}{
		{"per_unit", quotastack.Rule{CostType: "per_unit", UnitCost: 7}, 3, 21},
		{"flat", quotastack.Rule{CostType: "flat", FlatCost: 500}, 9, 500},
		{"graduated within first tier", quotastack.Rule{CostType: "graduated", Tiers: tiers}, 5, 500},
		{"graduated across tiers", quotastack.Rule{CostType: "graduated", Tiers: tiers}, 25, 10*100 + 10*50 + 5*10},
		{"volume second tier", quotastack.Rule{CostType: "volume", Tiers: tiers}, 15, 15 * 50},
		{"volume last tier", quotastack.Rule{CostType: "volume", Tiers: tiers}, 25, 25 * 10},
	}
	w := newWorld(t)
	for _, tc := range cases {
		tc.rule.BillableMetricKey = "priced"
		_, err := w.srv.CreateRule(tc.rule)
		require.NoError(t, err)
		_, err = w.srv.Grant("pricing", quotastacktest.BlockSpec{Credits: 1_000_000})
		require.NoError(t, err)
		r := w.get(fmt.Sprintf("%s/entitlements/priced?units=%d", ext("pricing"), tc.units))
		requireStatus(t, r, 200)
		require.Equal(t, float64(tc.cost), r.json(t)["estimated_cost"], tc.name)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// The request log keeps the last WithRequestLogLimit requests and counts the rest.
func TestRequestLogLimit(t *testing.T) {
	t.Parallel()
	srv := quotastacktest.Start(t, quotastacktest.WithRequestLogLimit(3))
	c := srv.Client()
	for i := range 5 {
		_, _ = c.Balance(context.Background(), quotastack.ExternalID(fmt.Sprint("u", i)))
	}
	log := srv.Requests()
	require.Len(t, log, 3)
	assert.Equal(t, int64(2), srv.RequestsForgotten())
	assert.True(t, strings.HasSuffix(log[2].Path, "u4/credits"), log[2].Path)
	assert.True(t, strings.HasSuffix(log[0].Path, "u2/credits"), log[0].Path)
	srv.ResetRequests()
	assert.Empty(t, srv.Requests())
	assert.Zero(t, srv.RequestsForgotten())
}
