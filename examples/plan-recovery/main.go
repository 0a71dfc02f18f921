// Command plan-recovery shows how a plan purchase that stops halfway is
// finished: the wallet was debited but the plan credits were not granted.
// Calling plan.Buy again with the same order id completes it without a
// second debit, whether the grant failed (an outage) or the process died
// between the two steps (a crash). It runs on an embedded fake QuotaStack,
// or on a real one when QUOTASTACK_API_KEY is set (a qs_test_ key: it refuses
// a live one).
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

	env.Printf("\n== 1. The grant fails after the debit (an outage) ==\n")
	ana := env.customer("ana")
	var anaPurchase *plan.Purchase
	if env.Fake == nil {
		env.Printf("Skipped: it needs the fake's fault injection, and this is a real QuotaStack.\n")
	} else if anaPurchase, err = outage(ctx, env, ana); err != nil {
		return err
	}

	env.Printf("\n== 2. The process crashes right after the debit ==\n")
	bo := env.customer("bo")
	boPurchase, err := crash(ctx, env, bo)
	if err != nil {
		return err
	}

	env.Printf("\n== The ledger ==\n")
	for _, p := range []*plan.Purchase{anaPurchase, boPurchase} {
		if p == nil {
			continue
		}
		// p.Customer is the QuotaStack id the order was sent for; the ledger is
		// printed under the external id the purchase was made with.
		if err := env.printLedger(ctx, quotastack.ExternalID(p.ExternalCustomerID)); err != nil {
			return err
		}
		env.printPurchase(p)
	}
	return nil
}

// outage makes every topup grant fail with 503 for longer than the client
// retries, so plan.Buy stops after its debit; then QuotaStack comes back.
func outage(ctx context.Context, env *env, c quotastack.Customer) (*plan.Purchase, error) {
	p := hourPlan
	if err := env.fillWallet(ctx, c, 250_000, "pay_ana_1"); err != nil {
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
		pur.DebitReplayed, pur.GrantReplayed, mc(pur.Block.RemainingAmount), pur.ExpiresAt.Format("15:04:05 MST"))
	debits, grants := countSteps(env, c, order)
	env.Printf("  the fake's ledger holds %d debit and %d grant for this order\n", debits, grants)
	return pur, printWallet(ctx, env, c)
}

// crash sends only the debit of a purchase, exactly as plan.Buy would, as if
// the process died before the grant; then a restarted process finishes it.
func crash(ctx context.Context, env *env, c quotastack.Customer) (*plan.Purchase, error) {
	p := hourPlan
	if err := env.fillWallet(ctx, c, 250_000, "pay_bo_1"); err != nil {
		return nil, err
	}
	order := plan.DeriveOrderID("checkout", c.ID(), "1")
	// plan.Buy sends every order for the customer's QuotaStack id.
	rec, err := env.Client.GetCustomer(ctx, c)
	if err != nil {
		return nil, err
	}
	debit, err := env.Client.Record(ctx, quotastack.UsageParams{
		Customer: quotastack.CustomerID(rec.CustomerID), MetricKey: p.Metric(), Units: p.PriceMC,
		Metadata: map[string]string{"plan_type": p.Type, "order_id": order, "trigger": string(plan.TriggerManual)},
	}, quotastack.WithIdempotencyKey(plan.DebitKey(p, order)))
	if err != nil {
		return nil, err
	}
	env.Printf("Debit %s recorded (key %q, %s), then the process died before the grant.\n",
		debit.ID, debit.Meta.IdempotencyKey, mc(debit.Cost))
	if err := printWallet(ctx, env, c); err != nil {
		return nil, err
	}

	env.Printf("After the restart, the order id is read back and plan.Buy is called with it:\n")
	pur, err := plan.Buy(ctx, env.Client, c, p, order)
	if err != nil {
		return nil, err
	}
	env.Printf("  finished: debit replayed %v (same event %s), grant replayed %v, %s of plan credits\n",
		pur.DebitReplayed, pur.Debit.ID, pur.GrantReplayed, mc(pur.Block.RemainingAmount))
	if env.Fake != nil {
		debits, grants := countSteps(env, c, order)
		env.Printf("  the fake's ledger holds %d debit and %d grant for this order\n", debits, grants)
	}
	return pur, printWallet(ctx, env, c)
}

func printWallet(ctx context.Context, env *env, c quotastack.Customer) error {
	b, err := env.Client.BalanceWithBlocks(ctx, c)
	if err != nil {
		return err
	}
	env.Printf("  %s: wallet %s, plan credits %s\n", c.ID(), mc(b.WalletMC()), mc(b.PlanMC()))
	return nil
}

// countSteps counts the executed debits and grants of an order on the fake.
func countSteps(env *env, c quotastack.Customer, order string) (debits, grants int) {
	for _, u := range env.Fake.UsageEvents(c.ID()) {
		if u.MetricKey == hourPlan.Metric() && u.Metadata["order_id"] == order {
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
