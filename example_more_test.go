package quotastack_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

func ExampleClient_Reserve() {
	srv := quotastacktest.NewServer()
	defer srv.Close()
	_, _ = srv.CreateRule(quotastack.Rule{BillableMetricKey: "image_generation", CostType: "per_unit", UnitCost: 2_000})
	_, _ = srv.Grant("ivy", quotastacktest.BlockSpec{Credits: 50_000})
	client := srv.Client()
	ctx := context.Background()

	// Hold the cost of 10 images while the model runs; nothing is debited yet.
	r, err := client.Reserve(ctx, quotastack.ReserveParams{Customer: quotastack.ExternalID("ivy"),
		MetricKey: "image_generation", EstimatedUnits: 10, TTL: time.Minute},
		quotastack.WithIdempotencyKey("reserve:job_1"))
	if err != nil {
		panic(err)
	}
	fmt.Println(r.Status, r.ReservedAmount)

	// The model made 7 images: debit those, return the rest of the hold.
	// (A failed job would call client.Release instead; client.RunReserved
	// does both, and releases on a panic too.)
	done, err := client.Commit(ctx, r.ID, 7, quotastack.WithIdempotencyKey("commit:"+r.ID))
	if err != nil {
		panic(err)
	}
	fmt.Println(done.Status, done.CommittedAmount)
	// Output:
	// active 20000
	// committed 14000
}

func ExampleClient_GrantCredits() {
	srv := quotastacktest.NewServer()
	defer srv.Close()
	client := srv.Client()
	ctx := context.Background()
	mia := quotastack.ExternalID("user_81")
	if _, err := client.CreateCustomer(ctx, mia.ID(), "Mia"); err != nil { // a grant needs the customer
		panic(err)
	}

	// The signup handler may run twice: the key derived from the user id makes
	// the bonus a one-time grant, and the second call a replay.
	for range 2 {
		g, err := client.GrantCredits(ctx, mia, quotastack.CreditGrantParams{
			Credits: 25_000, Source: "promotional", Reason: "signup bonus",
		}, quotastack.WithIdempotencyKey(quotastack.SignupGrantKey(mia.ID())))
		if err != nil {
			panic(err)
		}
		fmt.Println(g.Meta.IdempotencyKey, g.Meta.Replayed, g.Balance)
	}
	// Output:
	// signup-grant:user_81 false 25000
	// signup-grant:user_81 true 25000
}

// The catalog: a billable metric and the metering rule that prices it. For
// the auto-buy recipe's rules, autobuy.Setup creates both and never replaces
// a rule that differs.
func ExampleClient_CreateRule() {
	srv := quotastacktest.NewServer()
	defer srv.Close()
	client := srv.Client()
	ctx := context.Background()

	if _, err := client.CreateMetric(ctx, quotastack.Metric{Key: "chat_message", Name: "Chat message"}); err != nil &&
		!errors.Is(err, quotastack.ErrConflict) { // the metric exists already: fine
		panic(err)
	}
	ten := 10
	rule, err := client.CreateRule(ctx, quotastack.Rule{BillableMetricKey: "chat_message",
		CostType: quotastack.CostPerUnit, UnitCost: 1_000,
		Eligible: &quotastack.Eligibility{MinPriority: &ten}}, // plan credits only
		quotastack.WithIdempotencyKey(quotastack.DeriveKey("rule", "chat_message", "v1")))
	if err != nil {
		panic(err)
	}
	fmt.Println(rule.Active, rule.UnitCost)

	for r, err := range client.Rules(ctx, 100) { // every page, lazily
		if err != nil {
			panic(err)
		}
		fmt.Println(r.BillableMetricKey, r.CostType, r.Active)
	}
	// Output:
	// true 1000
	// chat_message per_unit true
}
