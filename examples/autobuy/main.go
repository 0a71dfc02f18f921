// Command autobuy plays the auto-buy-from-wallet recipe end to end: messages
// on plan credits, an automatic plan purchase from the wallet when they run
// out, the paywall when the wallet can't pay, and the plan picker for a
// customer who turned auto-buy off. It runs on an embedded fake QuotaStack,
// or on a real one when QUOTASTACK_API_KEY is set (a qs_test_ key: it refuses
// a live one). On a real tenant it creates the metrics and rules it needs and
// never replaces an active rule that differs, unless run with -replace-rules.
//
//	go run ./examples/autobuy [-replace-rules]
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
	replaceRules := flag.Bool("replace-rules", false, "replace the tenant's active rules of chat_message and plan_purchase_1hr when they differ from the recipe's")
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

	alice := env.customer("user42:companion7") // opted in to auto-buy
	bob := env.customer("user7:companion2")    // prefers to choose plans himself
	optedOut := map[string]bool{bob.ID(): true}

	var purchases []*plan.Purchase
	var autoBuys, paywalls int // what the product team's hooks would send to analytics
	gate, err := autobuy.New(env.Client,
		autobuy.WithPlan(hourPlan),
		autobuy.WithPreference(func(_ context.Context, c autobuy.CustomerRef) (bool, error) { return !optedOut[c.Given.ID()], nil }),
		autobuy.WithHooks(autobuy.Hooks{
			AutoBought: func(context.Context, autobuy.CustomerRef, *plan.Purchase) { autoBuys++ },
			Paywall:    func(context.Context, autobuy.CustomerRef, autobuy.Decision) { paywalls++ },
		}))
	if err != nil {
		return err
	}

	env.Printf("\n== %s buys a plan by hand, then chats ==\n", alice.ID())
	if err := env.fillWallet(ctx, alice, 250_000, "pay_alice_1"); err != nil {
		return err
	}
	first, err := plan.Buy(ctx, env.Client, alice, hourPlan, plan.DeriveOrderID("checkout", alice.ID(), "1"))
	if err != nil {
		return err
	}
	env.Printf("%s bought plan %q by hand: %s from the wallet for %s of plan credits.\n", alice.ID(), first.Plan.Type, mc(first.Plan.PriceMC), mc(first.Plan.CreditsMC))
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
				d.Purchase.Plan.Type, mc(d.WalletMC-d.Purchase.Plan.PriceMC), d.Purchase.OrderID)
		}
	}
	runs.flush()

	env.Printf("\n== %s has auto-buy off ==\n", bob.ID())
	if err := env.fillWallet(ctx, bob, 500_000, "pay_bob_1"); err != nil {
		return err
	}
	d, err := gate.Gate(ctx, bob, "chat_message", autobuy.WithEventID("msg_bob_1"))
	if err != nil {
		return err
	}
	env.Printf("message 1: %s\n", describe(d))
	env.Printf("  (plan_expired: no live plan credits, whether a plan ran out or was never bought, and auto-buy is off.)\n")
	env.Printf("\nHooks fired: auto-bought %d, paywall or plan picker %d.\n", autoBuys, paywalls)

	env.Printf("\n== The ledger ==\n")
	env.Printf("(balance: all live credits; reserved: held for actions in progress; effective: balance minus reserved,\n" +
		" what can be spent now; lifetime earned: every credit ever granted, which debits never lower;\n" +
		" priority 0 with no expiry is the wallet, priority 10 with an expiry is a plan's credits.)\n")
	for _, c := range []quotastack.Customer{alice, bob} {
		if err := env.printLedger(ctx, c); err != nil {
			return err
		}
	}
	env.Printf("Purchases of %s:\n", alice.ID())
	for _, p := range purchases {
		env.printPurchase(p)
	}
	return nil
}

func describe(d autobuy.Decision) string {
	if d.Allowed {
		return fmt.Sprintf("allowed (%s)", d.Reason)
	}
	return fmt.Sprintf("denied (%s): %s", d.Reason, screen(d.Reason))
}

// screen says what the app shows for a denial: Reason.Show, the table the
// HTTP middleware answers from too.
func screen(r autobuy.Reason) string {
	switch show := r.Show(); show {
	case "paywall", "plan_picker":
		return "show the " + strings.ToUpper(strings.ReplaceAll(show, "_", " "))
	case "retry":
		return "ask to try again"
	}
	return "show an error"
}

// runPrinter prints consecutive messages with the same outcome as one line.
type runPrinter struct {
	env      *env
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
