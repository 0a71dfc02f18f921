// Command http-middleware serves a /chat endpoint gated by
// autobuy.Middleware: each request is checked (and a plan auto-bought from
// the wallet when the plan credits have run out) before the handler runs, and
// a denied request gets 402 with what the front end should show. The example
// sends a few requests to itself. It runs on an embedded fake QuotaStack, or
// on a real one when QUOTASTACK_API_KEY is set.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
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
	if err := seed(ctx, env); err != nil {
		return err
	}

	optedOut := map[string]bool{env.Customer("dave").ID(): true}
	gate, err := autobuy.New(env.Client,
		autobuy.WithPlan(story.HourPlan),
		autobuy.WithPreference(func(_ context.Context, c quotastack.Customer) (bool, error) { return !optedOut[c.ID()], nil }))
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
		c := env.Customer(user)
		return autobuy.Action{Customer: c, Metric: "chat_message", EventID: c.ID() + ":" + r.Header.Get("X-Message-Id")}, nil
	}
	mux := http.NewServeMux()
	mux.Handle("POST /chat", autobuy.Middleware(gate, action)(http.HandlerFunc(chat)))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	env.Printf("\n== Requests to POST %s/chat ==\n", srv.URL)

	for _, rq := range []struct{ user, msgID, who string }{
		{"alice", "m1", "has plan credits"},
		{"bob", "m1", "used up his plan, wallet full"},
		{"carol", "m1", "has an empty wallet"},
		{"dave", "m1", "turned auto-buy off"},
	} {
		env.Printf("%s (%s):\n", rq.user, rq.who)
		status, body, err := send(ctx, srv.URL+"/chat", rq.user, rq.msgID)
		if err != nil {
			return err
		}
		env.Printf("  %d %s %s\n", status, http.StatusText(status), body)
	}

	env.Printf("\n== Bob's ledger: the auto-bought plan paid for his message ==\n")
	return env.PrintLedger(ctx, env.Customer("bob"))
}

// chat is the paid action. It runs only for allowed requests; the gate's
// decision is in the request context.
func chat(w http.ResponseWriter, r *http.Request) {
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
func send(ctx context.Context, url, user, msgID string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("X-User", user)
	req.Header.Set("X-Message-Id", msgID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(bytes.TrimSpace(body)), err
}

// seed gives each customer the state of their story, through the SDK.
func seed(ctx context.Context, env *story.Env) error {
	p := story.HourPlan
	alice, bob, carol, dave := env.Customer("alice"), env.Customer("bob"), env.Customer("carol"), env.Customer("dave")
	for _, c := range []quotastack.Customer{alice, bob} {
		if err := env.FillWallet(ctx, c, 250_000, "pay_"+c.ID()); err != nil {
			return err
		}
		if _, err := plan.Buy(ctx, env.Client, c, p, plan.DeriveOrderID("checkout", c.ID())); err != nil {
			return err
		}
		env.Printf("%s: bought plan %q (%s of plan credits).\n", c.ID(), p.Type, story.MC(p.CreditsMC))
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
	return env.FillWallet(ctx, dave, 500_000, "pay_"+dave.ID())
}
