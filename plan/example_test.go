package plan_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

func ExampleBuy() {
	srv := quotastacktest.NewServer()
	defer srv.Close()
	_, _ = srv.CreateRule(quotastack.Rule{BillableMetricKey: "plan_purchase_1hr", CostType: "per_unit", UnitCost: 1,
		Eligible: &quotastacktest.Eligibility{MaxPriority: quotastacktest.Ptr(0), Expiring: quotastacktest.Ptr(false)}})
	_, _ = srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: 250_000})
	client := srv.Client()

	hour := plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}
	// Derive the order id from the business event (here a checkout id), so a
	// retried checkout can't buy twice; store it to finish a half-done purchase.
	order := plan.DeriveOrderID("checkout", "chk_42")
	p, err := plan.Buy(context.Background(), client, quotastack.ExternalID("user42:companion7"), hour, order)
	if errors.Is(err, plan.ErrHalfDone) {
		// Debited, not granted: call plan.Buy again with the same order id.
		return
	}
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Block.RemainingAmount, p.Block.Priority, p.DebitKey == "plan-debit:1hr:"+order)

	again, _ := plan.Buy(context.Background(), client, quotastack.ExternalID("user42:companion7"), hour, order)
	fmt.Println(again.DebitReplayed, again.GrantReplayed, again.Block.ID == p.Block.ID)
	// Output:
	// 50000 10 true
	// true true true
}

// A purchase's error says what to do next: ErrHalfDone (and any
// ErrUnknownOutcome) means retry with the same order id; ErrNotBought means
// nothing was debited, so a new order id is safe.
func ExampleErrHalfDone() {
	srv := quotastacktest.NewServer()
	defer srv.Close()
	_ = srv.SeedRecipe()
	_, _ = srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: 250_000})
	client := srv.Client(quotastack.WithRetry(1, time.Millisecond, time.Millisecond))
	customer := quotastack.ExternalID("user42:companion7")
	hour := plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}
	order := plan.DeriveOrderID("checkout", "chk_43")

	srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503})
	_, err := plan.Buy(context.Background(), client, customer, hour, order)
	fmt.Println(errors.Is(err, plan.ErrHalfDone), errors.Is(err, plan.ErrUnknownOutcome), errors.Is(err, plan.ErrNotBought))

	// Later (a retry loop, a job, the next request): the same order id finishes it.
	p, err := plan.Buy(context.Background(), client, customer, hour, order)
	fmt.Println(err == nil, p.DebitReplayed, p.GrantReplayed)
	// Output:
	// true true false
	// true true false
}
