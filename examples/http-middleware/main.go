// Command http-middleware serves a /chat endpoint gated by
// autobuy.Middleware: each request is checked (and a plan auto-bought from
// the wallet when the plan credits have run out) before the handler runs, and
// a denied request gets 402 with what the front end should show. It runs in
// two-phase mode: the credits are held before the handler runs and charged
// only when it answers below 400, so a failed reply costs nothing. The
// example sends a few requests to itself. It runs on an embedded fake QuotaStack, or
// on a real one when QUOTASTACK_API_KEY is set (a qs_test_
// key: it refuses a live one).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
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
	if err := seed(ctx, env); err != nil {
		return err
	}

	optedOut := map[string]bool{env.customer("dave").ID(): true}
	gate, err := autobuy.New(env.Client,
		autobuy.WithPlan(hourPlan),
		autobuy.WithPreference(func(_ context.Context, c autobuy.CustomerRef) (bool, error) { return !optedOut[c.Given.ID()], nil }))
	if err != nil {
		return err
	}
	// The action of a request: who pays (X-User), for one chat message, with
	// the client's message id (scoped by user) as the business event, so a
	// retried request is never charged twice.
	action := func(r *http.Request) (autobuy.Action, error) {
		user := r.Header.Get("X-User")
		if user == "" {
			return autobuy.Action{}, errors.New("missing X-User")
		}
		c := env.customer(user)
		return autobuy.Action{Customer: c, Metric: "chat_message", EventID: c.ID() + ":" + r.Header.Get("X-Message-Id")}, nil
	}
	mux := http.NewServeMux()
	// TwoPhase: hold the credits, run chat, commit when it answers < 400,
	// release when it fails (or panics).
	mux.Handle("POST /chat", autobuy.Middleware(gate, action, autobuy.TwoPhase(time.Minute))(http.HandlerFunc(chat)))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	env.Printf("\n== Requests to POST %s/chat ==\n", srv.URL)

	for _, rq := range []struct {
		user, msgID, who string
		modelDown        bool
	}{
		{"alice", "m1", "has plan credits", false},
		{"alice", "m2", "the model fails: the hold is released", true},
		{"bob", "m1", "used up his plan, wallet full", false},
		{"carol", "m1", "has an empty wallet", false},
		{"dave", "m1", "turned auto-buy off", false},
	} {
		env.Printf("%s %s (%s):\n", rq.user, rq.msgID, rq.who)
		status, body, err := send(ctx, srv.URL+"/chat", rq.user, rq.msgID, rq.modelDown)
		if err != nil {
			return err
		}
		env.Printf("  %d %s %s\n", status, http.StatusText(status), body)
	}

	env.Printf("\n== Alice's ledger: m1 was charged, the failed m2 was not ==\n")
	if err := env.printLedger(ctx, env.customer("alice")); err != nil {
		return err
	}
	env.Printf("\n== Bob's ledger: the auto-bought plan paid for his message ==\n")
	return env.printLedger(ctx, env.customer("bob"))
}

// chat is the paid action. It runs only for allowed requests; the gate's
// decision is in the request context.
func chat(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Model") == "down" {
		http.Error(w, "the model is unavailable", http.StatusBadGateway)
		return
	}
	d, _ := autobuy.DecisionFrom(r.Context())
	resp := struct {
		Reply     string         `json:"reply"`
		Reason    autobuy.Reason `json:"reason"`
		BoughtFor string         `json:"auto_bought_plan,omitempty"`
	}{Reply: "Hi! How can I help?", Reason: d.Reason}
	if d.Purchase != nil {
		resp.BoughtFor = d.Purchase.Plan.Type
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// send posts one chat message as user and returns the status and body.
func send(ctx context.Context, url, user, msgID string, modelDown bool) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("X-User", user)
	req.Header.Set("X-Message-Id", msgID)
	if modelDown {
		req.Header.Set("X-Model", "down") // a stand-in for a failing model
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(bytes.TrimSpace(body)), err
}

// seed gives each customer the state of their story, through the SDK.
func seed(ctx context.Context, env *env) error {
	p := hourPlan
	alice, bob, carol, dave := env.customer("alice"), env.customer("bob"), env.customer("carol"), env.customer("dave")
	for _, c := range []quotastack.Customer{alice, bob} {
		if err := env.fillWallet(ctx, c, 250_000, "pay_"+c.ID()); err != nil {
			return err
		}
		if _, err := plan.Buy(ctx, env.Client, c, p, plan.DeriveOrderID("checkout", c.ID())); err != nil {
			return err
		}
		env.Printf("%s: bought plan %q (%s of plan credits).\n", c.ID(), p.Type, mc(p.CreditsMC))
	}
	// Bob spends his whole plan: 50 messages recorded as one event.
	if _, err := env.Client.Record(ctx, quotastack.UsageParams{Customer: bob, MetricKey: "chat_message", Units: p.CreditsMC / 1000},
		quotastack.WithIdempotencyKey("usage:"+bob.ID()+":earlier-chats")); err != nil {
		return err
	}
	env.Printf("%s: used up the plan credits (%d messages).\n", bob.ID(), p.CreditsMC/1000)
	if _, err := env.Client.CreateCustomer(ctx, carol.ID(), "Carol"); err != nil && !errors.Is(err, quotastack.ErrConflict) {
		return err
	}
	env.Printf("%s: signed up, never paid (empty wallet).\n", carol.ID())
	return env.fillWallet(ctx, dave, 500_000, "pay_"+dave.ID())
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
