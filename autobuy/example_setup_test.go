package autobuy_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// Once at start-up: build the gate and make it the package default, so code
// far from main can call autobuy.Gate without passing the gate around.
func ExampleSetDefault() {
	srv := recipeFake(250_000)
	defer srv.Close()
	gate, err := autobuy.New(srv.Client(), autobuy.WithPlan(plan.Plan{
		Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour,
	}))
	if err != nil {
		panic(err)
	}
	autobuy.SetDefault(gate)
	defer autobuy.SetDefault(nil)

	// Elsewhere, e.g. in a message handler:
	d, err := autobuy.Gate(context.Background(), quotastack.ExternalID("user42:companion7"), "chat_message",
		autobuy.WithEventID("msg_1"))
	if err != nil {
		panic(err)
	}
	fmt.Println(d.Allowed, d.Reason)
	// Output: true auto_bought
}

// Setup creates what the gate needs on a tenant, and refuses to replace a
// rule that prices the metric otherwise.
func ExampleSetup_Apply() {
	srv := quotastacktest.NewServer()
	defer srv.Close()
	client := srv.Client()
	setup := autobuy.Setup{Metric: "chat_message", UnitCostMC: 1_000, Plans: []plan.Plan{
		{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour},
	}}
	steps, err := setup.Apply(context.Background(), client)
	if err != nil {
		panic(err)
	}
	for _, s := range steps {
		fmt.Println(s.Metric, s.Action)
	}

	// Someone reprices chat messages on the tenant; Apply leaves that alone.
	_, _ = srv.CreateRule(quotastack.Rule{BillableMetricKey: "chat_message", CostType: "per_unit", UnitCost: 5})
	_, err = setup.Apply(context.Background(), client)
	fmt.Println(errors.Is(err, autobuy.ErrRuleDiffers))
	// Output:
	// chat_message metric_created
	// chat_message rule_created
	// plan_purchase_1hr metric_created
	// plan_purchase_1hr rule_created
	// true
}
