// Command autobuy plays the auto-buy-from-wallet recipe end to end: messages
// on plan credits, an automatic plan purchase from the wallet when they run
// out, the paywall when the wallet can't pay, and the plan picker for a
// customer who turned auto-buy off. It runs on an embedded fake QuotaStack,
// or on a real one when QUOTASTACK_API_KEY is set.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/examples/internal/story"
	"github.com/quotastack/quotastack-go/plan"
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

	alice := env.Customer("user42:companion7") // opted in to auto-buy
	bob := env.Customer("user7:companion2")    // prefers to choose plans himself
	optedOut := map[string]bool{bob.ID(): true}

	var purchases []*plan.Purchase
	var autoBuys, paywalls int // what the product team's hooks would send to analytics
	gate, err := autobuy.New(env.Client,
		autobuy.WithPlan(story.HourPlan),
		autobuy.WithPreference(func(_ context.Context, c quotastack.Customer) (bool, error) { return !optedOut[c.ID()], nil }),
		autobuy.WithHooks(autobuy.Hooks{
			AutoBought: func(context.Context, quotastack.Customer, *plan.Purchase) { autoBuys++ },
			Paywall:    func(context.Context, quotastack.Customer, autobuy.Decision) { paywalls++ },
		}))
	if err != nil {
		return err
	}

	env.Printf("\n== %s buys a plan by hand, then chats ==\n", alice.ID())
	if err := env.FillWallet(ctx, alice, 250_000, "pay_alice_1"); err != nil {
		return err
	}
	first, err := plan.Buy(ctx, env.Client, alice, story.HourPlan, plan.DeriveOrderID("checkout", alice.ID(), "1"))
	if err != nil {
		return err
	}
	env.Printf("%s bought plan %q by hand: %s from the wallet for %s of plan credits.\n", alice.ID(), first.Plan.Type, story.MC(first.Plan.PriceMC), story.MC(first.Plan.CreditsMC))
	purchases = append(purchases, first)

	// 110 messages: 50 on the first plan, one auto-buy, 50 on the second, then the paywall.
	runs := &runPrinter{env: env}
	for i := 1; i <= 110; i++ {
		d, err := gate.Gate(ctx, alice, "chat_message", autobuy.WithEventID(fmt.Sprintf("msg_%03d%s", i, alice.ID())))
		if err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		runs.add(i, d)
		if d.Purchase != nil {
			purchases = append(purchases, d.Purchase)
			env.Printf("  the plan credits ran out: plan %q bought from the wallet (%s left), order %s\n",
				d.Purchase.Plan.Type, story.MC(d.WalletMC-d.Purchase.Plan.PriceMC), d.Purchase.OrderID)
		}
	}
	runs.flush()

	env.Printf("\n== %s has auto-buy off ==\n", bob.ID())
	if err := env.FillWallet(ctx, bob, 500_000, "pay_bob_1"); err != nil {
		return err
	}
	d, err := gate.Gate(ctx, bob, "chat_message", autobuy.WithEventID("msg_bob_1"))
	if err != nil {
		return err
	}
	env.Printf("message 1: %s\n", describe(d))
	env.Printf("\nHooks fired: auto-bought %d, paywall or plan picker %d.\n", autoBuys, paywalls)

	env.Printf("\n== The ledger ==\n")
	for _, c := range []quotastack.Customer{alice, bob} {
		if err := env.PrintLedger(ctx, c); err != nil {
			return err
		}
	}
	env.Printf("Purchases of %s:\n", alice.ID())
	for _, p := range purchases {
		env.PrintPurchase(p)
	}
	return nil
}

func describe(d autobuy.Decision) string {
	if d.Allowed {
		return fmt.Sprintf("allowed (%s)", d.Reason)
	}
	return fmt.Sprintf("denied (%s): %s", d.Reason, screen(d.Reason))
}

func screen(r autobuy.Reason) string {
	switch r {
	case autobuy.ReasonEmptyWallet:
		return "show the PAYWALL"
	case autobuy.ReasonPlanExpired:
		return "show the PLAN PICKER"
	}
	return "show an error"
}

// runPrinter prints consecutive messages with the same outcome as one line.
type runPrinter struct {
	env      *story.Env
	from, to int
	last     string
}

func (r *runPrinter) add(i int, d autobuy.Decision) {
	s := describe(d)
	if s == r.last && d.Purchase == nil {
		r.to = i
		return
	}
	r.flush()
	r.from, r.to, r.last = i, i, s
	if d.Purchase != nil {
		r.flush() // an auto-buy gets a line of its own
	}
}

func (r *runPrinter) flush() {
	switch {
	case r.last == "":
	case r.from == r.to:
		r.env.Printf("message %d: %s\n", r.from, r.last)
	default:
		r.env.Printf("messages %d-%d: %s\n", r.from, r.to, r.last)
	}
	r.last = ""
}
