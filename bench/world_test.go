package bench

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// The recipe's world (as in autobuy's tests): chat_message costs 1,000 mc and
// is payable from plan credits only; the 1hr plan costs 100,000 mc of wallet
// credits and grants 50,000 mc of plan credits for an hour.
const (
	metric   = "chat_message"
	happyExt = "bench-user"
	memKey   = "qs_test_bench_0123456789abcdef"
)

var hourPlan = plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}

// newServer starts a fresh fake with the recipe's two rules; it closes with tb.
func newServer(tb testing.TB) *quotastacktest.Server {
	tb.Helper()
	srv := quotastacktest.Start(tb)
	if err := srv.SeedRecipe(hourPlan.Metric()); err != nil {
		tb.Fatal(err)
	}
	return srv
}

// grantPlanCredits gives ext live plan credits (priority 10, a day to live).
func grantPlanCredits(tb testing.TB, srv *quotastacktest.Server, ext string, mc int64) {
	tb.Helper()
	exp := srv.Now().Add(24 * time.Hour)
	if _, err := srv.Grant(ext, quotastacktest.BlockSpec{Credits: mc, Priority: quotastack.PlanPriority, ExpiresAt: &exp,
		Metadata: map[string]string{"plan_type": hourPlan.Type, "source": "plan_grant"}}); err != nil {
		tb.Fatal(err)
	}
}

// grantWallet gives ext wallet credits (priority 0, never expiring).
func grantWallet(tb testing.TB, srv *quotastacktest.Server, ext string, mc int64) {
	tb.Helper()
	if _, err := srv.Grant(ext, quotastacktest.BlockSpec{Credits: mc}); err != nil {
		tb.Fatal(err)
	}
}

// pooledTransport is the baseline's transport on loopback: Go's default
// transport with the idle pool the SDK's default transport has, so the two
// clients differ in client code only.
func pooledTransport(tb testing.TB) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 512, 256
	tb.Cleanup(t.CloseIdleConnections)
	return t
}

func sdkGate(tb testing.TB, c *quotastack.Client, opts ...autobuy.Option) *autobuy.Gatekeeper {
	tb.Helper()
	g, err := autobuy.New(c, append([]autobuy.Option{autobuy.WithPlan(hourPlan)}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	return g
}

// pair is one side of a comparison: the same operations through the baseline
// or through the SDK, over one transport.
type pair struct {
	raw      *rawClient
	sdk      *quotastack.Client
	gate     *autobuy.Gatekeeper
	srv      *quotastacktest.Server // nil in memory
	requests func() int64           // requests sent so far
}

// newPair wires both clients to an in-memory transport (via "mem") or to a
// fresh loopback server (via "loop").
func newPair(tb testing.TB, via string, autoBuy bool) *pair {
	tb.Helper()
	p := &pair{}
	switch via {
	case "mem":
		mt := &memTransport{autoBuy: autoBuy}
		p.raw = newRawClient(&http.Client{Transport: mt}, quotastack.DefaultBaseURL, memKey)
		// A budget that never binds: the pacing code runs as shipped (the
		// default base URL is paced), but a benchmark isn't held to 100/min.
		c, err := quotastack.NewClient(memKey, quotastack.WithTransport(mt), quotastack.WithRateBudget(1_000_000_000, time.Second))
		if err != nil {
			tb.Fatal(err)
		}
		p.sdk = c
		p.requests = mt.requests.Load
	case "loop":
		p.srv = newServer(tb)
		p.raw = newRawClient(&http.Client{Transport: pooledTransport(tb)}, p.srv.URL, p.srv.APIKey)
		p.sdk = p.srv.Client()
		tb.Cleanup(p.sdk.CloseIdleConnections)
		p.requests = func() int64 { return int64(len(p.srv.Requests())) }
	default:
		tb.Fatalf("unknown transport %q", via)
	}
	p.gate = sdkGate(tb, p.sdk)
	return p
}

// scenario is one measured operation.
type scenario string

const (
	opCheck       scenario = "Check"
	opRecord      scenario = "Record"
	opGateHappy   scenario = "GateHappy"
	opGateAutoBuy scenario = "GateAutoBuy"
)

// wantRoundTrips is what each operation costs the baseline in requests; the
// SDK must match it, except that an auto-buy may cost it fewer.
var wantRoundTrips = map[scenario]int64{opCheck: 1, opRecord: 1, opGateHappy: 2, opGateAutoBuy: 6}

// setup prepares n operations of s through client ("raw" or "sdk") over via
// and returns the operation (i in [0, n)) and the request counter.
func setup(tb testing.TB, s scenario, via, client string, n int) (op func(ctx context.Context, i int) error, requests func() int64) {
	tb.Helper()
	p := newPair(tb, via, s == opGateAutoBuy)
	raw := client == "raw"
	cust := quotastack.ExternalID(happyExt)
	if p.srv != nil && s != opGateAutoBuy {
		grantPlanCredits(tb, p.srv, happyExt, 1<<50)
	}
	switch s {
	case opCheck:
		if raw {
			return func(ctx context.Context, _ int) error {
				ent, err := p.raw.check(ctx, happyExt, metric, 1)
				return allowed(err, ent != nil && ent.Allowed)
			}, p.requests
		}
		return func(ctx context.Context, _ int) error {
			ent, err := p.sdk.Check(ctx, cust, metric, 1)
			return allowed(err, ent != nil && ent.Allowed)
		}, p.requests
	case opRecord:
		if raw {
			return func(ctx context.Context, _ int) error {
				_, err := p.raw.record(ctx, happyExt, metric, 1, nil)
				return err
			}, p.requests
		}
		return func(ctx context.Context, _ int) error {
			_, err := p.sdk.Record(ctx, quotastack.UsageParams{Customer: cust, MetricKey: metric, Units: 1})
			return err
		}, p.requests
	case opGateHappy:
		return gateOp(p, raw, func(int) string { return happyExt }, autobuy.ReasonEntitled), p.requests
	case opGateAutoBuy:
		exts := []string{happyExt}
		if p.srv != nil {
			// A fresh customer per gate, holding exactly one plan's price in
			// its wallet and no plan credits: every gate buys.
			exts = make([]string, n)
			for i := range exts {
				exts[i] = fmt.Sprintf("ab-%d", i)
				grantWallet(tb, p.srv, exts[i], hourPlan.PriceMC)
			}
		}
		return gateOp(p, raw, func(i int) string { return exts[i%len(exts)] }, autobuy.ReasonAutoBought), p.requests
	}
	tb.Fatalf("unknown scenario %q", s)
	return nil, nil
}

func gateOp(p *pair, raw bool, ext func(int) string, want autobuy.Reason) func(context.Context, int) error {
	if raw {
		return func(ctx context.Context, i int) error {
			ok, reason, err := p.raw.gate(ctx, ext(i), metric, hourPlan)
			if err == nil && (!ok || reason != string(want)) {
				err = fmt.Errorf("baseline gate: allowed %v, reason %s, want %s", ok, reason, want)
			}
			return err
		}
	}
	return func(ctx context.Context, i int) error {
		d, err := p.gate.Gate(ctx, quotastack.ExternalID(ext(i)), metric)
		if err == nil && (!d.Allowed || d.Reason != want) {
			err = fmt.Errorf("gate: allowed %v, reason %s, want %s", d.Allowed, d.Reason, want)
		}
		return err
	}
}

func allowed(err error, ok bool) error {
	if err == nil && !ok {
		return fmt.Errorf("not allowed")
	}
	return err
}
