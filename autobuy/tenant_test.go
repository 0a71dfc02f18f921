package autobuy_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

var recipeSetup = autobuy.Setup{Metric: "chat_message", UnitCostMC: 1000, Plans: []plan.Plan{hourPlan}}

func newTenant(t *testing.T) (*quotastacktest.Server, *quotastack.Client) {
	t.Helper()
	srv := quotastacktest.Start(t)
	return srv, srv.Client()
}

func activeRule(t *testing.T, c *quotastack.Client, metric string) (quotastack.Rule, bool) {
	t.Helper()
	for r, err := range c.Rules(context.Background(), 0) {
		require.NoError(t, err)
		if r.Active && r.BillableMetricKey == metric {
			return r, true
		}
	}
	return quotastack.Rule{}, false
}

func posts(srv *quotastacktest.Server) []string {
	var out []string
	for _, r := range srv.Requests() {
		if r.Method == "POST" {
			out = append(out, r.Path)
		}
	}
	return out
}

func TestSetupOnAnEmptyTenantMakesTheGateWork(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := newTenant(t)
	steps, err := recipeSetup.Apply(ctx, c)
	require.NoError(t, err)
	var actions []string
	for _, s := range steps {
		actions = append(actions, s.Metric+" "+s.Action)
	}
	assert.Equal(t, []string{"chat_message metric_created", "chat_message rule_created",
		"plan_purchase_1hr metric_created", "plan_purchase_1hr rule_created"}, actions)

	chat, ok := activeRule(t, c, "chat_message")
	require.True(t, ok)
	assert.Equal(t, int64(1000), chat.UnitCost)
	require.NotNil(t, chat.Eligible)
	assert.Equal(t, 10, *chat.Eligible.MinPriority)
	buy, ok := activeRule(t, c, "plan_purchase_1hr")
	require.True(t, ok)
	assert.Equal(t, int64(1), buy.UnitCost)
	assert.Equal(t, 0, *buy.Eligible.MaxPriority)
	assert.False(t, *buy.Eligible.Expiring)

	// The gate auto-buys on this tenant: the purchase rule prices the debit.
	_, err = srv.Grant(user, quotastacktest.BlockSpec{Credits: 250_000})
	require.NoError(t, err)
	g, err := autobuy.New(c, autobuy.WithPlan(hourPlan))
	require.NoError(t, err)
	d, err := g.Gate(ctx, quotastack.ExternalID(user), "chat_message", autobuy.WithEventID("m1"))
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)

	// A second run (every start-up) reads and writes nothing.
	srv.ResetRequests()
	steps, err = recipeSetup.Apply(ctx, c)
	require.NoError(t, err)
	assert.Empty(t, posts(srv))
	assert.Equal(t, "rule_kept", steps[1].Action)
	assert.Equal(t, "rule_kept", steps[3].Action)
	require.NoError(t, srv.CheckInvariants())
}

func TestSetupNeverReplacesADifferentRuleUnlessTold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := newTenant(t)
	theirs, err := srv.CreateRule(quotastack.Rule{BillableMetricKey: "chat_message", CostType: "per_unit", UnitCost: 5})
	require.NoError(t, err)

	srv.ResetRequests()
	_, err = recipeSetup.Apply(ctx, c)
	require.ErrorIs(t, err, autobuy.ErrRuleDiffers)
	assert.Contains(t, err.Error(), "per_unit 5 mc/unit")
	assert.Empty(t, posts(srv), "nothing may be written when a rule differs")
	r, ok := activeRule(t, c, "chat_message")
	require.True(t, ok)
	assert.Equal(t, theirs, r.ID)
	assert.Equal(t, int64(5), r.UnitCost)

	replace := recipeSetup
	replace.ReplaceRules = true
	steps, err := replace.Apply(ctx, c)
	require.NoError(t, err)
	assert.Equal(t, "rule_replaced", steps[1].Action)
	r, _ = activeRule(t, c, "chat_message")
	assert.Equal(t, int64(1000), r.UnitCost)
	assert.NotEqual(t, theirs, r.ID)
}

func TestSetupRefusesBadInputBeforeAnyRequest(t *testing.T) {
	t.Parallel()
	srv, c := newTenant(t)
	for name, s := range map[string]autobuy.Setup{
		"no metric":      {UnitCostMC: 1, Plans: []plan.Plan{hourPlan}},
		"no cost":        {Metric: "chat_message", Plans: []plan.Plan{hourPlan}},
		"no plan":        {Metric: "chat_message", UnitCostMC: 1},
		"bad plan":       {Metric: "chat_message", UnitCostMC: 1, Plans: []plan.Plan{{Type: "x"}}},
		"plan on metric": {Metric: "plan_purchase_1hr", UnitCostMC: 1, Plans: []plan.Plan{hourPlan}},
	} {
		_, err := s.Apply(context.Background(), c)
		assert.ErrorIs(t, err, quotastack.ErrInvalidInput, name)
	}
	assert.Empty(t, srv.Requests())
}

func TestSameRule(t *testing.T) {
	t.Parallel()
	ten, eleven := 10, 11
	base := quotastack.Rule{BillableMetricKey: "m", CostType: "per_unit", UnitCost: 3,
		Eligible: &quotastack.Eligibility{MinPriority: &ten}}
	for _, tt := range []struct {
		name string
		edit func(*quotastack.Rule)
		same bool
	}{
		{"ids and activity ignored", func(r *quotastack.Rule) { r.ID, r.Active = "rule_1", true }, true},
		{"default overage policy", func(r *quotastack.Rule) { r.OveragePolicy = "block" }, true},
		{"other overage policy", func(r *quotastack.Rule) { r.OveragePolicy = "allow" }, false},
		{"unit cost", func(r *quotastack.Rule) { r.UnitCost = 4 }, false},
		{"eligibility", func(r *quotastack.Rule) { r.Eligible = &quotastack.Eligibility{MinPriority: &eleven} }, false},
		{"no eligibility", func(r *quotastack.Rule) { r.Eligible = nil }, false},
		{"cost type", func(r *quotastack.Rule) { r.CostType = "flat" }, false},
	} {
		r := base
		tt.edit(&r)
		assert.Equal(t, tt.same, autobuy.SameRule(base, r), tt.name)
	}
}
