// Command reservations holds credits for an expensive action while it runs:
// client.WithReservation reserves the estimated cost, runs the action, then
// commits the units actually used (returning the rest of the hold), or
// releases everything when the action fails. It runs on an embedded fake
// QuotaStack, or on a real one when QUOTASTACK_API_KEY is set.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/examples/internal/story"
)

const (
	metric     = "image_generation"
	unitCostMC = 2_000
)

var errModel = errors.New("the image model timed out")

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
	if err := seed(ctx, env); err != nil {
		return err
	}
	ivy := env.Customer("ivy")
	if err := env.FillWallet(ctx, ivy, 50_000, "pay_ivy_1"); err != nil {
		return err
	}
	before, err := printBalance(ctx, env, ivy, "before")
	if err != nil {
		return err
	}

	env.Printf("\n== Generation 1: 10 images estimated, 7 made ==\n")
	res, err := env.Client.WithReservation(ctx, quotastack.ReserveParams{
		Customer: ivy, MetricKey: metric, EstimatedUnits: 10, TTL: time.Minute,
		Metadata: map[string]string{"job": "gen_1"},
	}, func(ctx context.Context, r *quotastack.Reservation) (int64, error) {
		env.Printf("Reserved %s for %d images (%s, %s, expires in a minute).\n",
			story.MC(r.ReservedAmount), r.EstimatedUnits, r.ID, r.Status)
		if _, err := printBalance(ctx, env, ivy, "while generating"); err != nil {
			return 0, err
		}
		env.Printf("The model made 7 images.\n")
		return 7, nil
	})
	if err != nil {
		return err
	}
	after, err := printBalance(ctx, env, ivy, "after the commit")
	if err != nil {
		return err
	}
	env.Printf("Reservation %s %s with %d units: %s debited, the other %s of the hold returned.\n",
		res.ID, res.Status, res.ActualUnits, story.MC(before-after), story.MC(res.ReservedAmount-(before-after)))

	env.Printf("\n== Generation 2: the model fails ==\n")
	res, err = env.Client.WithReservation(ctx, quotastack.ReserveParams{
		Customer: ivy, MetricKey: metric, EstimatedUnits: 10, TTL: time.Minute,
		Metadata: map[string]string{"job": "gen_2"},
	}, func(ctx context.Context, r *quotastack.Reservation) (int64, error) {
		env.Printf("Reserved %s for %d images (%s).\n", story.MC(r.ReservedAmount), r.EstimatedUnits, r.ID)
		if _, err := printBalance(ctx, env, ivy, "while generating"); err != nil {
			return 0, err
		}
		return 0, errModel
	})
	if !errors.Is(err, errModel) {
		return fmt.Errorf("expected the model's error, got %w", err)
	}
	env.Printf("WithReservation returned the action's error (%q) and released reservation %s.\n", err, res.ID)
	final, err := printBalance(ctx, env, ivy, "after the release")
	if err != nil {
		return err
	}
	env.Printf("Debited by the failed generation: %s.\n", story.MC(after-final))

	env.Printf("\n== The ledger ==\n")
	return env.PrintLedger(ctx, ivy)
}

// seed creates the metric and its rule: 2,000 mc per image, paid from any block.
func seed(ctx context.Context, env *story.Env) error {
	if _, err := env.Client.CreateMetric(ctx, quotastack.Metric{Key: metric, Name: "Image generation"}); err != nil && !errors.Is(err, quotastack.ErrConflict) {
		return err
	}
	rule := quotastack.Rule{BillableMetricKey: metric, CostType: quotastack.CostPerUnit, UnitCost: unitCostMC}
	if _, err := env.Client.CreateRule(ctx, rule, quotastack.WithIdempotencyKey(quotastack.DeriveKey("rule", metric, "v1"))); err != nil {
		return err
	}
	env.Printf("Metric %s costs %s per image, paid from any block.\n", metric, story.MC(unitCostMC))
	return nil
}

// printBalance prints the customer's balances and returns the balance.
func printBalance(ctx context.Context, env *story.Env, c quotastack.Customer, when string) (int64, error) {
	b, err := env.Client.Balance(ctx, c)
	if err != nil {
		return 0, err
	}
	env.Printf("  balance %s: %s, reserved %s, effective %s\n", when,
		story.MC(b.Balance), story.MC(b.ReservedBalance), story.MC(b.EffectiveBalance))
	return b.Balance, nil
}
