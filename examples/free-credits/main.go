// Command free-credits grants free credits with deterministic idempotency
// keys: a signup bonus keyed by the user (SignupGrantKey) and per-action
// bonuses keyed by user and action (ActionGrantKey). Sending a grant again
// (a retried request, a redelivered webhook) replays the first answer and
// never grants twice. It runs on an embedded fake QuotaStack, or on a real
// one when QUOTASTACK_API_KEY is set.
package main

import (
	"context"
	"errors"
	"io"
	"log"
	"os"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/examples/internal/story"
)

const (
	signupBonusMC = 25_000
	actionBonusMC = 5_000
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
	mia := env.Customer("user_81")

	env.Printf("\n== %s signs up ==\n", mia.ID())
	// A credit grant needs an existing customer (only a topup creates one).
	rec, err := env.Client.CreateCustomer(ctx, mia.ID(), "Mia")
	if err != nil && !errors.Is(err, quotastack.ErrConflict) {
		return err
	}
	if rec != nil {
		env.Printf("Customer %s created (QuotaStack id %s).\n", mia.ID(), rec.CustomerID)
	}
	// The signup handler may run twice (a double submit, a retried job): the
	// key, derived from the user id, makes the bonus a one-time grant.
	for attempt := 1; attempt <= 2; attempt++ {
		g, err := env.Client.GrantCredits(ctx, mia, quotastack.CreditGrantParams{
			Credits: signupBonusMC, Source: "promotional", Reason: "signup bonus",
			Metadata: map[string]string{"bonus": "signup"},
		}, quotastack.WithIdempotencyKey(quotastack.SignupGrantKey(mia.ID())))
		if err != nil {
			return err
		}
		env.Printf("signup bonus, attempt %d: key %q, replayed %v, block %s, balance %s\n",
			attempt, g.Meta.IdempotencyKey, g.Meta.Replayed, g.Block.ID, story.MC(g.Balance))
	}
	if err := printBalance(ctx, env, mia, "after the signup bonus"); err != nil {
		return err
	}

	env.Printf("\n== %s earns action bonuses (%s each) ==\n", mia.ID(), story.MC(actionBonusMC))
	// Webhook deliveries from the product; "invite_friend" arrives twice.
	deliveries := []string{"first_chat", "profile_complete", "invite_friend", "invite_friend"}
	for _, action := range deliveries {
		g, err := env.Client.GrantCredits(ctx, mia, quotastack.CreditGrantParams{
			Credits: actionBonusMC, Source: "promotional", Reason: "action bonus: " + action,
			Metadata: map[string]string{"action": action},
		}, quotastack.WithIdempotencyKey(quotastack.ActionGrantKey(mia.ID(), action)))
		if err != nil {
			return err
		}
		outcome := "granted"
		if g.Meta.Replayed {
			outcome = "already granted (a redelivery): replayed, nothing added"
		}
		env.Printf("webhook %-17s key %q: %s, block %s\n", action, g.Meta.IdempotencyKey, outcome, g.Block.ID)
	}
	if err := printBalance(ctx, env, mia, "after the action bonuses"); err != nil {
		return err
	}

	env.Printf("\n== The ledger ==\n")
	return env.PrintLedger(ctx, mia)
}

func printBalance(ctx context.Context, env *story.Env, c quotastack.Customer, when string) error {
	b, err := env.Client.BalanceWithBlocks(ctx, c)
	if err != nil {
		return err
	}
	env.Printf("Balance %s: %s in %d block(s).\n", when, story.MC(b.Balance), len(b.Blocks))
	return nil
}
