// Package story is what the examples share: it starts the embedded fake
// QuotaStack (or connects to a real one when QUOTASTACK_API_KEY is set),
// seeds the recipe's world through the SDK, and prints ledgers.
package story

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// HourPlan is the recipe's plan: 50,000 mc of plan credits for 100,000 mc of wallet, for an hour.
var HourPlan = plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}

// Env is where an example runs: a client, and the fake behind it (nil when
// the example talks to a real QuotaStack).
type Env struct {
	Client *quotastack.Client
	Fake   *quotastacktest.Server
	out    io.Writer
	suffix string // makes customer ids unique per run on a real server
}

// Start connects to QuotaStack: to the server named by QUOTASTACK_API_KEY
// (and QUOTASTACK_BASE_URL) when set, else to a new embedded fake. Call Close when done.
func Start(out io.Writer, getenv func(string) string, opts ...quotastacktest.Option) (*Env, error) {
	e := &Env{out: out}
	if getenv(quotastack.EnvAPIKey) != "" {
		c, err := quotastack.NewClientFromEnv()
		if err != nil {
			return nil, err
		}
		e.Client = c
		e.suffix = "-" + time.Now().UTC().Format("20060102T150405")
		e.Printf("Using QuotaStack at %s (QUOTASTACK_API_KEY is set); customer ids end in %q.\n", c.BaseURL(), e.suffix)
		return e, nil
	}
	e.Fake = quotastacktest.NewServer(opts...)
	e.Client = e.Fake.Client()
	e.Printf("Using the embedded fake QuotaStack at %s (set QUOTASTACK_API_KEY to use a real one).\n", e.Fake.URL)
	return e, nil
}

// Close stops the fake, if any.
func (e *Env) Close() {
	if e.Fake != nil {
		e.Fake.Close()
	}
}

// Printf writes to the example's transcript.
func (e *Env) Printf(format string, args ...any) { _, _ = fmt.Fprintf(e.out, format, args...) }

// Customer returns the external id for name (unique per run on a real server).
func (e *Env) Customer(name string) quotastack.Customer {
	return quotastack.ExternalID(name + e.suffix)
}

// SeedRecipe creates the recipe's metrics and rules through the SDK: chat
// messages at 1,000 mc paid from plan credits only, and plan purchases at
// 1 mc per unit paid from the wallet only. Existing metrics are fine.
func (e *Env) SeedRecipe(ctx context.Context) error {
	ten, zero, no := 10, 0, false
	metrics := []quotastack.Metric{
		{Key: "chat_message", Name: "Chat message"},
		{Key: HourPlan.Metric(), Name: "1-hour plan purchase"},
	}
	for _, m := range metrics {
		if _, err := e.Client.CreateMetric(ctx, m); err != nil && !errors.Is(err, quotastack.ErrConflict) {
			return err
		}
	}
	rules := []quotastack.Rule{
		{BillableMetricKey: "chat_message", CostType: quotastack.CostPerUnit, UnitCost: 1000,
			Eligible: &quotastack.Eligibility{MinPriority: &ten}},
		{BillableMetricKey: HourPlan.Metric(), CostType: quotastack.CostPerUnit, UnitCost: 1,
			Eligible: &quotastack.Eligibility{MaxPriority: &zero, Expiring: &no}},
	}
	for _, r := range rules {
		if _, err := e.Client.CreateRule(ctx, r, quotastack.WithIdempotencyKey(quotastack.DeriveKey("rule", r.BillableMetricKey, "v1"))); err != nil {
			return err
		}
	}
	e.Printf("Metrics: chat_message costs 1,000 mc and only plan credits pay for it; %s costs 1 mc per unit and only the wallet pays for it.\n", HourPlan.Metric())
	e.Printf("Plan %q: %s of plan credits for %s from the wallet, valid for %v.\n", HourPlan.Type, MC(HourPlan.CreditsMC), MC(HourPlan.PriceMC), strings.TrimSuffix(HourPlan.Duration.String(), "0m0s"))
	return nil
}

// FillWallet tops up the customer's wallet (priority 0, no expiry) once per paymentID.
func (e *Env) FillWallet(ctx context.Context, c quotastack.Customer, mc int64, paymentID string) error {
	_, err := e.Client.Topup(ctx, quotastack.TopupParams{Customer: c, Credits: mc, Currency: "mc",
		ExternalPaymentID: paymentID + e.suffix, Metadata: map[string]string{"source": "wallet_recharge"}},
		quotastack.WithIdempotencyKey(quotastack.DeriveKey("topup", paymentID+e.suffix)))
	if err == nil {
		e.Printf("%s: wallet topped up with %s.\n", c.ID(), MC(mc))
	}
	return err
}

// PrintLedger prints the customer's balances and live blocks.
func (e *Env) PrintLedger(ctx context.Context, c quotastack.Customer) error {
	b, err := e.Client.BalanceWithBlocks(ctx, c)
	if err != nil {
		return err
	}
	e.Printf("%s: balance %s, reserved %s, effective %s, lifetime earned %s, wallet %s, plan credits %s\n",
		c.ID(), MC(b.Balance), MC(b.ReservedBalance), MC(b.EffectiveBalance), MC(b.LifetimeEarned), MC(b.WalletMC()), MC(b.PlanMC()))
	for _, blk := range b.Blocks {
		exp := "never"
		if blk.ExpiresAt != nil {
			exp = blk.ExpiresAt.UTC().Format(time.RFC3339)
		}
		e.Printf("  block %-30s priority %2d  %9s of %9s left  expires %-20s  %s\n", blk.ID, blk.Priority,
			MC(blk.RemainingAmount), MC(blk.OriginalAmount), exp, Meta(blockMeta(blk.Metadata)))
	}
	return nil
}

// PrintPurchase prints a plan purchase with its two idempotency keys.
func (e *Env) PrintPurchase(p *plan.Purchase) {
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

// MC formats millicredits with thousands separators, e.g. "250,000 mc".
func MC(mc int64) string {
	s := fmt.Sprint(mc)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String() + " mc"
	}
	return b.String() + " mc"
}

// Meta formats metadata as sorted key=value pairs.
func Meta(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, " ")
}

// blockMeta keeps the string values of a block's metadata, for printing.
func blockMeta(m quotastack.Metadata) map[string]string {
	out := make(map[string]string, len(m))
	for k := range m {
		if v := m.Get(k); v != "" {
			out[k] = v
		}
	}
	return out
}
