// Command reservations holds credits for an expensive action while it runs:
// client.RunReserved reserves the estimated cost, runs the action, then
// commits the units actually used (returning the rest of the hold), or
// releases everything when the action fails. It runs on an embedded fake
// QuotaStack, or on a real one when QUOTASTACK_API_KEY is set (a qs_test_
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
	"github.com/quotastack/quotastack-go/quotastacktest"
)

const (
	metric     = "image_generation"
	unitCostMC = 2_000
)

var errModel = errors.New("the image model timed out")

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
	if err := seed(ctx, env, replaceRules); err != nil {
		return err
	}
	ivy := env.customer("ivy")
	if err := env.fillWallet(ctx, ivy, 50_000, "pay_ivy_1"); err != nil {
		return err
	}
	before, err := printBalance(ctx, env, ivy, "before")
	if err != nil {
		return err
	}

	env.Printf("\n== Generation 1: 10 images estimated, 7 made ==\n")
	res, err := env.Client.RunReserved(ctx, quotastack.ReserveParams{
		Customer: ivy, MetricKey: metric, EstimatedUnits: 10, TTL: time.Minute,
		Metadata: map[string]string{"job": "gen_1"},
	}, func(ctx context.Context, r *quotastack.Reservation) (int64, error) {
		env.Printf("Reserved %s for %d images (%s, %s, expires in a minute).\n",
			mc(r.ReservedAmount), r.EstimatedUnits, r.ID, r.Status)
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
		res.ID, res.Status, res.ActualUnits, mc(before-after), mc(res.ReservedAmount-(before-after)))

	env.Printf("\n== Generation 2: the model fails ==\n")
	res, err = env.Client.RunReserved(ctx, quotastack.ReserveParams{
		Customer: ivy, MetricKey: metric, EstimatedUnits: 10, TTL: time.Minute,
		Metadata: map[string]string{"job": "gen_2"},
	}, func(ctx context.Context, r *quotastack.Reservation) (int64, error) {
		env.Printf("Reserved %s for %d images (%s).\n", mc(r.ReservedAmount), r.EstimatedUnits, r.ID)
		if _, err := printBalance(ctx, env, ivy, "while generating"); err != nil {
			return 0, err
		}
		return 0, errModel
	})
	if !errors.Is(err, errModel) {
		return fmt.Errorf("expected the model's error, got %w", err)
	}
	env.Printf("RunReserved returned the action's error (%q) and released reservation %s.\n", err, res.ID)
	final, err := printBalance(ctx, env, ivy, "after the release")
	if err != nil {
		return err
	}
	env.Printf("Debited by the failed generation: %s.\n", mc(after-final))

	env.Printf("\n== The ledger ==\n")
	return env.printLedger(ctx, ivy)
}

// seed makes sure the metric and its rule exist: 2,000 mc per image, paid
// from any block. An active rule that differs is left alone (an error) unless
// replaceRules is set: the tenant may have priced images on purpose.
func seed(ctx context.Context, env *env, replaceRules bool) error {
	if _, err := env.Client.CreateMetric(ctx, quotastack.Metric{Key: metric, Name: "Image generation"}); err != nil && !errors.Is(err, quotastack.ErrConflict) {
		return err
	}
	want := quotastack.Rule{BillableMetricKey: metric, CostType: quotastack.CostPerUnit, UnitCost: unitCostMC}
	replaced := "none" // the rule this write replaces: part of its key, so replacing again later is a new write
	for r, err := range env.Client.Rules(ctx, 100) {
		if err != nil {
			return err
		}
		if !r.Active || r.BillableMetricKey != metric {
			continue
		}
		if autobuy.SameRule(r, want) {
			env.Printf("Metric %s costs %s per image, paid from any block (rule %s, already active).\n", metric, mc(unitCostMC), r.ID)
			return nil
		}
		if !replaceRules {
			return fmt.Errorf("metric %s has another active rule (%s, %d mc per unit); run with -replace-rules to replace it", metric, r.CostType, r.UnitCost)
		}
		replaced = r.ID
	}
	if _, err := env.Client.CreateRule(ctx, want, quotastack.WithIdempotencyKey(quotastack.DeriveKey("rule", metric, "per_unit", "2000", replaced))); err != nil {
		return err
	}
	env.Printf("Metric %s costs %s per image, paid from any block.\n", metric, mc(unitCostMC))
	return nil
}

// printBalance prints the customer's balances and returns the balance.
func printBalance(ctx context.Context, env *env, c quotastack.Customer, when string) (int64, error) {
	b, err := env.Client.Balance(ctx, c)
	if err != nil {
		return 0, err
	}
	env.Printf("  balance %s: %s, reserved %s, effective %s\n", when,
		mc(b.Balance), mc(b.ReservedBalance), mc(b.EffectiveBalance))
	return b.Balance, nil
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
