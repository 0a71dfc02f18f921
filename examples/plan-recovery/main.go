// Command plan-recovery shows how a plan purchase that stops halfway is
// finished: the wallet was debited but the plan credits were not granted.
// Calling plan.Buy again with the same order id completes it without a
// second debit, whether the grant failed (an outage) or the process died
// between the two steps (a crash). It runs on an embedded fake QuotaStack,
// or on a real one when QUOTASTACK_API_KEY is set.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/examples/internal/story"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

func main() {
	if err := run(context.Background(), os.Stdout, os.Getenv); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer, getenv func(string) string) error {
	env, err := story.Start(out, getenv)
	if err != nil {
		return err
	}
	defer env.Close()
	if err := env.SeedRecipe(ctx); err != nil {
		return err
	}

	env.Printf("\n== 1. The grant fails after the debit (an outage) ==\n")
	ana := env.Customer("ana")
	var anaPurchase *plan.Purchase
	if env.Fake == nil {
		env.Printf("Skipped: it needs the fake's fault injection, and this is a real QuotaStack.\n")
	} else if anaPurchase, err = outage(ctx, env, ana); err != nil {
		return err
	}

	env.Printf("\n== 2. The process crashes right after the debit ==\n")
	bo := env.Customer("bo")
	boPurchase, err := crash(ctx, env, bo)
	if err != nil {
		return err
	}

	env.Printf("\n== The ledger ==\n")
	for _, p := range []*plan.Purchase{anaPurchase, boPurchase} {
		if p == nil {
			continue
		}
		if err := env.PrintLedger(ctx, p.Customer); err != nil {
			return err
		}
		env.PrintPurchase(p)
	}
	return nil
}

// outage makes every topup grant fail with 503 for longer than the client
// retries, so plan.Buy stops after its debit; then QuotaStack comes back.
func outage(ctx context.Context, env *story.Env, c quotastack.Customer) (*plan.Purchase, error) {
	p := story.HourPlan
	if err := env.FillWallet(ctx, c, 250_000, "pay_ana_1"); err != nil {
		return nil, err
	}
	order := plan.DeriveOrderID("checkout", c.ID(), "1") // stored with the checkout before buying
	env.Fake.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503, Count: 10})
	env.Printf("QuotaStack now answers 503 to the next 10 topup grants; the client tries a call %d times.\n", quotastack.DefaultMaxAttempts)

	_, err := plan.Buy(ctx, env.Client, c, p, order)
	if !errors.Is(err, plan.ErrHalfDone) {
		return nil, fmt.Errorf("expected a half-done purchase, got %w", err)
	}
	env.Printf("plan.Buy failed half done (errors.Is(err, plan.ErrHalfDone) is true):\n  %v\n", err)
	if err := printWallet(ctx, env, c); err != nil {
		return nil, err
	}

	env.Fake.ClearFaults()
	env.Printf("QuotaStack is back. plan.Buy again with the same order id %s:\n", order)
	pur, err := plan.Buy(ctx, env.Client, c, p, order)
	if err != nil {
		return nil, err
	}
	env.Printf("  finished: debit replayed %v, grant replayed %v, %s of plan credits until %s\n",
		pur.DebitReplayed, pur.GrantReplayed, story.MC(pur.Block.RemainingAmount), pur.ExpiresAt.Format("15:04:05 MST"))
	debits, grants := countSteps(env, c, order)
	env.Printf("  the fake's ledger holds %d debit and %d grant for this order\n", debits, grants)
	return pur, printWallet(ctx, env, c)
}

// crash sends only the debit of a purchase, exactly as plan.Buy would, as if
// the process died before the grant; then a restarted process finishes it.
func crash(ctx context.Context, env *story.Env, c quotastack.Customer) (*plan.Purchase, error) {
	p := story.HourPlan
	if err := env.FillWallet(ctx, c, 250_000, "pay_bo_1"); err != nil {
		return nil, err
	}
	order := plan.DeriveOrderID("checkout", c.ID(), "1")
	debit, err := env.Client.Record(ctx, quotastack.UsageParams{
		Customer: c, MetricKey: p.Metric(), Units: p.PriceMC,
		Metadata: map[string]string{"plan_type": p.Type, "order_id": order, "trigger": string(plan.TriggerManual)},
	}, quotastack.WithIdempotencyKey(plan.DebitKey(p, order)))
	if err != nil {
		return nil, err
	}
	env.Printf("Debit %s recorded (key %q, %s), then the process died before the grant.\n",
		debit.ID, debit.Meta.IdempotencyKey, story.MC(debit.Cost))
	if err := printWallet(ctx, env, c); err != nil {
		return nil, err
	}

	env.Printf("After the restart, the order id is read back and plan.Buy is called with it:\n")
	pur, err := plan.Buy(ctx, env.Client, c, p, order)
	if err != nil {
		return nil, err
	}
	env.Printf("  finished: debit replayed %v (same event %s), grant replayed %v, %s of plan credits\n",
		pur.DebitReplayed, pur.Debit.ID, pur.GrantReplayed, story.MC(pur.Block.RemainingAmount))
	if env.Fake != nil {
		debits, grants := countSteps(env, c, order)
		env.Printf("  the fake's ledger holds %d debit and %d grant for this order\n", debits, grants)
	}
	return pur, printWallet(ctx, env, c)
}

func printWallet(ctx context.Context, env *story.Env, c quotastack.Customer) error {
	b, err := env.Client.BalanceWithBlocks(ctx, c)
	if err != nil {
		return err
	}
	env.Printf("  %s: wallet %s, plan credits %s\n", c.ID(), story.MC(b.WalletMC()), story.MC(b.PlanMC()))
	return nil
}

// countSteps counts the executed debits and grants of an order on the fake.
func countSteps(env *story.Env, c quotastack.Customer, order string) (debits, grants int) {
	for _, u := range env.Fake.UsageEvents(c.ID()) {
		if u.MetricKey == story.HourPlan.Metric() && u.Metadata["order_id"] == order {
			debits++
		}
	}
	for _, e := range env.Fake.Ledger(c.ID()) {
		if e.Kind == "grant" && e.Metadata["order_id"] == order {
			grants++
		}
	}
	return debits, grants
}
