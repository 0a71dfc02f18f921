// Command free-credits grants free credits with deterministic idempotency
// keys: a signup bonus (GrantSignupBonus: the customer first, then the grant
// keyed by the customer) and per-action bonuses keyed by user and action
// (ActionGrantKey). Sending a grant again
// (a retried request, a redelivered webhook) replays the first answer and
// never grants twice. It runs on an embedded fake QuotaStack, or on a real
// one when QUOTASTACK_API_KEY is set (a qs_test_
// key: it refuses a live one).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
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
	env, err := start(out, getenv)
	if err != nil {
		return err
	}
	defer env.Close()
	mia := env.customer("user_81")

	env.Printf("\n== %s signs up ==\n", mia.ID())
	// A credit grant needs an existing customer (only a topup creates one),
	// and a grant sent before it exists keeps its 404 under its key for 24 h.
	// EnsureCustomer gets or creates it, safe to repeat.
	rec, err := env.Client.EnsureCustomer(ctx, mia.ID(), "Mia")
	if err != nil {
		return err
	}
	env.Printf("Customer %s ready (QuotaStack id %s).\n", mia.ID(), rec.CustomerID)
	// The signup handler may run twice (a double submit, a retried job):
	// GrantSignupBonus makes sure of the customer, then grants under a key
	// derived from the customer's QuotaStack id, so the second run replays the
	// first grant. Its expiry counts from the customer's creation (a time the
	// server stores): a retry sends the same body.
	for attempt := 1; attempt <= 2; attempt++ {
		g, err := env.Client.GrantSignupBonus(ctx, mia.ID(), quotastack.SignupBonus{
			Credits: signupBonusMC, ValidFor: 30 * 24 * time.Hour, Reason: "signup bonus",
			Metadata: map[string]string{"bonus": "signup"},
		})
		if err != nil {
			return err
		}
		env.Printf("signup bonus, attempt %d: key %q, replayed %v, block %s, balance %s\n",
			attempt, g.Meta.IdempotencyKey, g.Meta.Replayed, g.Block.ID, mc(g.Balance))
	}
	if err := printBalance(ctx, env, mia, "after the signup bonus"); err != nil {
		return err
	}

	env.Printf("\n== %s earns action bonuses (%s each) ==\n", mia.ID(), mc(actionBonusMC))
	// Webhook deliveries from the product; "invite_friend" arrives twice.
	deliveries := []string{"first_chat", "profile_complete", "invite_friend", "invite_friend"}
	for _, action := range deliveries {
		// Keyed by the customer's QuotaStack id (one id form for every key).
		g, err := env.Client.GrantCredits(ctx, quotastack.CustomerID(rec.CustomerID), quotastack.CreditGrantParams{
			Credits: actionBonusMC, Source: "promotional", Reason: "action bonus: " + action,
			Metadata: map[string]string{"action": action},
		}, quotastack.WithIdempotencyKey(quotastack.ActionGrantKey(rec.CustomerID, action)))
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
	return env.printLedger(ctx, mia)
}

func printBalance(ctx context.Context, env *env, c quotastack.Customer, when string) error {
	b, err := env.Client.BalanceWithBlocks(ctx, c)
	if err != nil {
		return err
	}
	env.Printf("Balance %s: %s in %d block(s).\n", when, mc(b.Balance), len(b.Blocks))
	return nil
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
