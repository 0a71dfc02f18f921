// Command stacking buys two plans back to back: the first starts now, the
// second is queued (plan.WithActivation(plan.Queued)) so it expires one plan
// duration after the first. The two never merge: each purchase is its own
// credit block, and chat messages burn the block that expires first. It runs
// on an embedded fake QuotaStack, or on a real one when QUOTASTACK_API_KEY is set.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/quotastack/quotastack-go"
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
	p := story.HourPlan
	sam := env.Customer("sam")

	env.Printf("\n== %s buys two plans ==\n", sam.ID())
	if err := env.FillWallet(ctx, sam, 300_000, "pay_sam_1"); err != nil {
		return err
	}
	a, err := plan.Buy(ctx, env.Client, sam, p, plan.DeriveOrderID("stacking", sam.ID(), "A"))
	if err != nil {
		return err
	}
	env.Printf("Plan A (immediate): %s of plan credits, expires %s.\n", story.MC(a.Block.OriginalAmount), clock(a.ExpiresAt))
	b, err := plan.Buy(ctx, env.Client, sam, p, plan.DeriveOrderID("stacking", sam.ID(), "B"), plan.WithActivation(plan.Queued))
	if err != nil {
		return err
	}
	env.Printf("Plan B (queued):    %s of plan credits, expires %s, %v after plan A.\n",
		story.MC(b.Block.OriginalAmount), clock(b.ExpiresAt), b.ExpiresAt.Sub(a.ExpiresAt))
	env.Printf("Plans never merge: A and B are two blocks (%s and %s), each with its own expiry.\n", a.Block.ID, b.Block.ID)
	plans := []labelled{{"A", a.Block.ID}, {"B", b.Block.ID}}
	if err := printPlans(ctx, env, sam, plans); err != nil {
		return err
	}

	env.Printf("\n== %s chats: which block pays? ==\n", sam.ID())
	for _, msgs := range [][2]int{{1, 30}, {31, 60}} {
		if err := chat(ctx, env, sam, msgs[0], msgs[1]); err != nil {
			return err
		}
		if err := printPlans(ctx, env, sam, plans); err != nil {
			return err
		}
	}
	env.Printf("Block A, which expires first, paid until it ran out; then B took over.\n")

	env.Printf("\n== The ledger ==\n")
	if err := env.PrintLedger(ctx, sam); err != nil {
		return err
	}
	env.PrintPurchase(a)
	env.PrintPurchase(b)
	return nil
}

// chat sends messages from to to (1,000 mc each), one usage event per message.
func chat(ctx context.Context, env *story.Env, c quotastack.Customer, from, to int) error {
	for i := from; i <= to; i++ {
		msgID := fmt.Sprintf("%s-msg-%03d", c.ID(), i)
		if _, err := env.Client.Record(ctx, quotastack.UsageParams{Customer: c, MetricKey: "chat_message", Units: 1},
			quotastack.WithIdempotencyKey("usage:"+msgID)); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
	}
	env.Printf("Messages %d-%d sent (%s).\n", from, to, story.MC(int64(to-from+1)*1000))
	return nil
}

type labelled struct{ name, blockID string }

// printPlans prints what is left of each plan's block.
func printPlans(ctx context.Context, env *story.Env, c quotastack.Customer, plans []labelled) error {
	bal, err := env.Client.BalanceWithBlocks(ctx, c)
	if err != nil {
		return err
	}
	left := map[string]int64{}
	for _, blk := range bal.PlanBlocks() {
		left[blk.ID] = blk.RemainingAmount
	}
	for _, p := range plans {
		if mc, ok := left[p.blockID]; ok {
			env.Printf("  plan %s: %s left\n", p.name, story.MC(mc))
		} else {
			env.Printf("  plan %s: used up (spent blocks are no longer listed)\n", p.name)
		}
	}
	return nil
}

func clock(t time.Time) string { return t.UTC().Format("15:04:05 MST") }
