// Command stacking buys two plans back to back: the first starts now, the
// second is queued (plan.WithActivation(plan.Queued)) so it expires one plan
// duration after the first. The two never merge: each purchase is its own
// credit block, and chat messages burn the block that expires first. It runs
// on an embedded fake QuotaStack, or on a real one when QUOTASTACK_API_KEY is set (a qs_test_
// key: it refuses a live one).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// hourPlan is the recipe's plan: 50,000 mc of plan credits for 100,000 mc of wallet, for an hour.
var hourPlan = plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}

func main() {
	replaceRules := flag.Bool("replace-rules", false, "replace the tenant's active rules of the example's metrics when they differ from the example's")
	flag.Parse()
	if err := run(context.Background(), os.Stdout, os.Getenv, *replaceRules); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer, getenv func(string) string, replaceRules bool) error {
	env, err := start(out, getenv)
	if err != nil {
		return err
	}
	defer env.Close()
	if err := env.setupRecipe(ctx, replaceRules); err != nil {
		return err
	}
	p := hourPlan
	sam := env.customer("sam")

	env.Printf("\n== %s buys two plans ==\n", sam.ID())
	if err := env.fillWallet(ctx, sam, 300_000, "pay_sam_1"); err != nil {
		return err
	}
	a, err := plan.Buy(ctx, env.Client, sam, p, plan.DeriveOrderID("stacking", sam.ID(), "A"))
	if err != nil {
		return err
	}
	env.Printf("Plan A (immediate): %s of plan credits, expires %s.\n", mc(a.Block.OriginalAmount), clock(a.ExpiresAt))
	b, err := plan.Buy(ctx, env.Client, sam, p, plan.DeriveOrderID("stacking", sam.ID(), "B"), plan.WithActivation(plan.Queued))
	if err != nil {
		return err
	}
	env.Printf("Plan B (queued):    %s of plan credits, expires %s, %v after plan A.\n",
		mc(b.Block.OriginalAmount), clock(b.ExpiresAt), b.ExpiresAt.Sub(a.ExpiresAt))
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
	if err := env.printLedger(ctx, sam); err != nil {
		return err
	}
	env.printPurchase(a)
	env.printPurchase(b)
	return nil
}

// chat sends messages from to to (1,000 mc each), one usage event per message.
func chat(ctx context.Context, env *env, c quotastack.Customer, from, to int) error {
	for i := from; i <= to; i++ {
		msgID := fmt.Sprintf("%s-msg-%03d", c.ID(), i)
		if _, err := env.Client.Record(ctx, quotastack.UsageParams{Customer: c, MetricKey: "chat_message", Units: 1},
			quotastack.WithIdempotencyKey("usage:"+msgID)); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
	}
	env.Printf("Messages %d-%d sent (%s).\n", from, to, mc(int64(to-from+1)*1000))
	return nil
}

type labelled struct{ name, blockID string }

// printPlans prints what is left of each plan's block.
func printPlans(ctx context.Context, env *env, c quotastack.Customer, plans []labelled) error {
	bal, err := env.Client.BalanceWithBlocks(ctx, c)
	if err != nil {
		return err
	}
	left := map[string]int64{}
	for _, blk := range bal.PlanBlocks() {
		left[blk.ID] = blk.RemainingAmount
	}
	for _, p := range plans {
		if amount, ok := left[p.blockID]; ok {
			env.Printf("  plan %s: %s left\n", p.name, mc(amount))
		} else {
			env.Printf("  plan %s: used up (spent blocks are no longer listed)\n", p.name)
		}
	}
	return nil
}

func clock(t time.Time) string { return t.UTC().Format("15:04:05 MST") }

// ---- Connecting, and printing the transcript ----

// env is where the example runs: a client, and the embedded fake behind it
// (nil on a real QuotaStack).
type env struct {
	Client *quotastack.Client
	Fake   *quotastacktest.Server
	out    io.Writer
	suffix string // makes customer ids unique per run on a real server
}

// start connects to the QuotaStack named by QUOTASTACK_API_KEY (and
// QUOTASTACK_BASE_URL) when set, else to a new embedded fake. It refuses a
// live key before sending anything: an example creates customers, rules and
// charges, which have no place in live data.
func start(out io.Writer, getenv func(string) string) (*env, error) {
	e := &env{out: out}
	key := getenv(quotastack.EnvAPIKey)
	if key == "" {
		e.Fake = quotastacktest.NewServer()
		e.Client = e.Fake.Client()
		e.Printf("Using the embedded fake QuotaStack at %s (to use a real one, set QUOTASTACK_API_KEY and, for another host than https://api.quotastack.io, QUOTASTACK_BASE_URL).\n", e.Fake.URL)
		return e, nil
	}
	if strings.HasPrefix(key, quotastack.LiveKeyPrefix) {
		return nil, errors.New("refusing to run an example with a live key (" + quotastack.LiveKeyPrefix + "...): use a " + quotastack.TestKeyPrefix + " key")
	}
	var opts []quotastack.Option
	if u := getenv(quotastack.EnvBaseURL); u != "" {
		opts = append(opts, quotastack.WithBaseURL(u))
	}
	c, err := quotastack.NewClient(key, opts...)
	if err != nil {
		return nil, err
	}
	e.Client = c
	e.suffix = "-" + time.Now().UTC().Format("20060102T150405")
	e.Printf("Using QuotaStack at %s (QUOTASTACK_API_KEY is set); customer ids end in %q.\n", c.BaseURL(), e.suffix)
	return e, nil
}

// Close stops the fake, if any.
func (e *env) Close() {
	if e.Fake != nil {
		e.Fake.Close()
	}
}

// Printf writes to the example's transcript.
func (e *env) Printf(format string, args ...any) { _, _ = fmt.Fprintf(e.out, format, args...) }

// customer returns the external id for name (unique per run on a real server).
func (e *env) customer(name string) quotastack.Customer {
	return quotastack.ExternalID(name + e.suffix)
}

// setupRecipe makes sure the tenant has the recipe's metrics and rules:
// chat_message at 1,000 mc paid from plan credits only, and plan purchases at
// 1 mc per unit paid from the wallet only. An active rule that differs is
// left alone (an error) unless replaceRules is set.
func (e *env) setupRecipe(ctx context.Context, replaceRules bool) error {
	setup := autobuy.Setup{Metric: "chat_message", MetricName: "Chat message", UnitCostMC: 1000,
		Plans: []plan.Plan{hourPlan}, ReplaceRules: replaceRules}
	if _, err := setup.Apply(ctx, e.Client); err != nil {
		if errors.Is(err, autobuy.ErrRuleDiffers) {
			return fmt.Errorf("%w\n(run with -replace-rules to replace it)", err)
		}
		return err
	}
	e.Printf("Metrics: chat_message costs 1,000 mc and only plan credits pay for it; %s costs 1 mc per unit and only the wallet pays for it.\n", hourPlan.Metric())
	e.Printf("Plan %q: %s of plan credits for %s from the wallet, valid for %v.\n", hourPlan.Type, mc(hourPlan.CreditsMC), mc(hourPlan.PriceMC), strings.TrimSuffix(hourPlan.Duration.String(), "0m0s"))
	return nil
}

// fillWallet tops up the customer's wallet (priority 0, no expiry) once per paymentID.
func (e *env) fillWallet(ctx context.Context, c quotastack.Customer, amount int64, paymentID string) error {
	_, err := e.Client.Topup(ctx, quotastack.TopupParams{Customer: c, Credits: amount, Currency: "mc",
		ExternalPaymentID: paymentID + e.suffix, Metadata: map[string]string{"source": "wallet_recharge"}},
		quotastack.WithIdempotencyKey(quotastack.DeriveKey("topup", paymentID+e.suffix)))
	if err == nil {
		e.Printf("%s: wallet topped up with %s.\n", c.ID(), mc(amount))
	}
	return err
}

// printLedger prints the customer's balances and live blocks.
func (e *env) printLedger(ctx context.Context, c quotastack.Customer) error {
	b, err := e.Client.BalanceWithBlocks(ctx, c)
	if err != nil {
		return err
	}
	e.Printf("%s: balance %s, reserved %s, effective %s, lifetime earned %s, wallet %s, plan credits %s\n",
		c.ID(), mc(b.Balance), mc(b.ReservedBalance), mc(b.EffectiveBalance), mc(b.LifetimeEarned), mc(b.WalletMC()), mc(b.PlanMC()))
	for _, blk := range b.Blocks {
		exp := "never"
		if blk.ExpiresAt != nil {
			exp = blk.ExpiresAt.UTC().Format(time.RFC3339)
		}
		e.Printf("  block %-30s priority %2d  %9s of %9s left  expires %-20s  %s\n", blk.ID, blk.Priority,
			mc(blk.RemainingAmount), mc(blk.OriginalAmount), exp, meta(blk.Metadata))
	}
	return nil
}

// meta formats the string values of a block's metadata as sorted key=value pairs.
func meta(m quotastack.Metadata) string {
	var parts []string
	for k := range m {
		if v := m.Get(k); v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// printPurchase prints a plan purchase with its two idempotency keys.
func (e *env) printPurchase(p *plan.Purchase) {
	e.Printf("  purchase %s (%s, trigger %s): debit key %q%s, grant key %q%s, block %s expires %s\n",
		p.OrderID, p.Plan.Type, p.Trigger, p.DebitKey, replayed(p.DebitReplayed), p.GrantKey, replayed(p.GrantReplayed),
		p.Block.ID, p.ExpiresAt.Format(time.RFC3339))
}

func replayed(r bool) string {
	if r {
		return " (replayed)"
	}
	return ""
}

// mc formats millicredits with thousands separators, e.g. "250,000 mc".
func mc(amount int64) string {
	s := strconv.FormatInt(amount, 10)
	sign := ""
	if strings.HasPrefix(s, "-") {
		sign, s = "-", s[1:]
	}
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return sign + b.String() + " mc"
}
