package quotastack_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// newFake starts a fake QuotaStack with a chat metric (1,000 mc per message,
// plan credits only) and a customer holding 5,000 mc of plan credits.
func newFake() *quotastacktest.Server {
	srv := quotastacktest.NewServer()
	_, _ = srv.CreateRule(quotastack.Rule{BillableMetricKey: "chat_message", CostType: "per_unit", UnitCost: 1000,
		Eligible: &quotastacktest.Eligibility{MinPriority: quotastacktest.Ptr(10)}})
	exp := srv.Now().AddDate(0, 0, 1)
	_, _ = srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: 5_000, Priority: 10, ExpiresAt: &exp})
	return srv
}

func ExampleNewClient() {
	client, err := quotastack.NewClient("qs_test_example", quotastack.WithUserAgent("myapp/1.0"))
	if err != nil {
		panic(err)
	}
	fmt.Println(client.BaseURL())

	_, err = quotastack.NewClient("")
	fmt.Println(errors.Is(err, quotastack.ErrInvalidInput))
	// Output:
	// https://api.quotastack.io
	// true
}

func ExampleClient_Check() {
	srv := newFake()
	defer srv.Close()
	client := srv.Client()

	ent, err := client.Check(context.Background(), quotastack.ExternalID("user42:companion7"), "chat_message", 3)
	if err != nil {
		panic(err) // QuotaStack could not answer; a refusal is ent.Allowed == false
	}
	fmt.Println(ent.Allowed, ent.EstimatedCost, ent.BalanceAfter)
	// Output: true 3000 2000
}

func ExampleClient_Record() {
	srv := newFake()
	defer srv.Close()
	client := srv.Client()
	ctx := context.Background()
	usage := quotastack.UsageParams{Customer: quotastack.ExternalID("user42:companion7"), MetricKey: "chat_message", Units: 1}

	// One key per business event: a retry, even from another process, never charges twice.
	ev, err := client.Record(ctx, usage, quotastack.WithIdempotencyKey("usage:msg_123"))
	if err != nil {
		panic(err)
	}
	again, err := client.Record(ctx, usage, quotastack.WithIdempotencyKey("usage:msg_123"))
	if err != nil {
		panic(err)
	}
	fmt.Println(ev.Cost, ev.BalanceAfter, again.Meta.Replayed, again.ID == ev.ID)

	usage.Units = 10 // more than the plan credits cover
	_, err = client.Record(ctx, usage, quotastack.WithIdempotencyKey("usage:msg_124"))
	var apiErr *quotastack.APIError
	if errors.As(err, &apiErr) && errors.Is(err, quotastack.ErrInsufficientCredits) {
		fmt.Println("not recorded:", apiErr.StatusCode, apiErr.Required, apiErr.Available)
	}
	// Output:
	// 1000 4000 true true
	// not recorded: 402 10000 4000
}

func ExampleClient_Topup() {
	srv := newFake()
	defer srv.Close()
	client := srv.Client()

	// A wallet recharge after payment pay_abc123: the key makes it happen once.
	g, err := client.Topup(context.Background(), quotastack.TopupParams{
		Customer: quotastack.ExternalID("user42:companion7"), Credits: 250_000,
		PricePaid: 2500, Currency: "USD", ExternalPaymentID: "pay_abc123",
	}, quotastack.WithIdempotencyKey("pay_abc123-grant"))
	if err != nil {
		panic(err)
	}
	fmt.Println(g.Block.RemainingAmount, g.Block.IsWallet(), g.Balance)
	// Output: 250000 true 255000
}

func ExampleClient_BalanceWithBlocks() {
	srv := newFake()
	defer srv.Close()
	client := srv.Client()
	ctx := context.Background()
	alice := quotastack.ExternalID("user42:companion7")
	_, _ = client.Topup(ctx, quotastack.TopupParams{Customer: alice, Credits: 500_000}, quotastack.WithIdempotencyKey("topup:1"))

	bal, err := client.BalanceWithBlocks(ctx, alice)
	if err != nil {
		panic(err)
	}
	fmt.Println(bal.Balance, bal.WalletMC(), bal.PlanMC())
	// Output: 505000 500000 5000
}
