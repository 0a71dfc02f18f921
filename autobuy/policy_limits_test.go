package autobuy_test

// The gate policy of issue 16, continued: no plan bought that can't let the
// action through, no false diagnosis under load, suspension, purchase limits,
// the two answers the public docs allow, and the gate's round trips.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// Case 6: WithUnits(120) at 1,000 mc a unit against 50,000 mc plans is
// refused before any purchase, on every retry, unless the credits left and
// one plan together cover it.
func TestActionBiggerThanAPlanBuysNothing(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		planLeft  int64
		want      autobuy.Reason
		purchased bool
	}{
		{"no plan credits", 0, autobuy.ReasonActionTooLarge, false},
		{"60,000 mc left, 110,000 with a plan", 60_000, autobuy.ReasonActionTooLarge, false},
		{"70,000 mc left, 120,000 with a plan", 70_000, autobuy.ReasonAutoBought, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
				t.Parallel()
				w := setup(t, 1_000_000, mode.Options...)
				if tc.planLeft > 0 {
					w.grantPlanCredits(t, tc.planLeft)
				}
				g := w.gate(t)
				gates := 3 // the user's retries
				if tc.purchased {
					gates = 1
				}
				for i := range gates {
					d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("big"), autobuy.WithUnits(120))
					require.NoError(t, err)
					assert.Equal(t, tc.purchased, d.Allowed, "gate %d", i)
					assert.Equal(t, tc.want, d.Reason, "gate %d", i)
					assert.True(t, d.Reason.Final())
					assert.Equal(t, tc.purchased, d.Purchase != nil)
				}
				w.srv.FlushAsyncUsage()
				if !tc.purchased {
					assert.Equal(t, 0, w.planGrants())
					assert.Empty(t, w.usageFor("plan_purchase_1hr"), "zero debits")
					assert.Equal(t, int64(1_000_000), w.wallet())
					assert.Empty(t, w.usageFor("chat_message"))
					return
				}
				assert.Equal(t, 1, w.planGrants())
				assert.Equal(t, int64(900_000), w.wallet())
				chat := w.usageFor("chat_message")
				require.Len(t, chat, 1)
				assert.Equal(t, int64(120_000), chat[0].Cost)
			})
		})
	}
}

// Case 8: many gates of several customers on a correct configuration never
// diagnose entitlement_failed_after_purchase (nor suspend), and every plan
// bought was needed. rate-limited is skipped: a soak is far over 100
// requests a minute on a clock that doesn't move.
func TestNoFalseDiagnosisUnderLoad(t *testing.T) {
	t.Parallel()
	customers := []string{"soak_a", "soak_b", "soak_c"}
	for _, style := range gateStyles {
		t.Run(style.name, func(t *testing.T) {
			t.Parallel()
			runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
				t.Parallel()
				w := setup(t, 0, mode.Options...)
				w.srv.SetLatency(time.Millisecond) // widens every race window
				for _, ext := range customers {
					_, err := w.srv.Grant(ext, quotastacktest.BlockSpec{Credits: 1_000_000})
					require.NoError(t, err)
				}
				custs := map[string]quotastack.Customer{}
				extOf := map[string]string{} // the id the Decided hook sees -> external id
				for _, ext := range customers {
					custs[ext] = w.customerFor(t, style.name, ext)
					extOf[custs[ext].ID()] = ext
				}
				var mu sync.Mutex
				reasons := map[autobuy.Reason]int{}
				allowed := map[string]int{}
				var errs []error
				var suspended atomic.Int32
				hooks := autobuy.WithHooks(autobuy.Hooks{
					Suspended: func(context.Context, autobuy.CustomerRef, autobuy.Suspension) { suspended.Add(1) },
					Decided: func(_ context.Context, c autobuy.CustomerRef, _ string, d autobuy.Decision, err error) {
						mu.Lock()
						defer mu.Unlock()
						if err != nil {
							errs = append(errs, err)
							return
						}
						reasons[d.Reason]++
						if d.Allowed {
							allowed[extOf[c.Given.ID()]]++
						}
					},
				})
				// Five actions a plan: an exhaustion every few actions, each met by
				// many gates at once.
				small := plan.Plan{Type: "1hr", PriceMC: 10_000, CreditsMC: 5_000, Duration: time.Hour}
				shared := append([]autobuy.Option{hooks, autobuy.WithPlan(small), autobuy.WithJournal(autobuy.NewMemoryJournal(0)),
					autobuy.WithLocker(autobuy.NewLocalLocker())}, style.opts...)
				replicas := []*autobuy.Gatekeeper{w.styledGate(t, style.name, shared...), w.styledGate(t, style.name, shared...),
					w.styledGate(t, style.name, shared...)}

				const workers, perWorker = 24, 10
				var wg sync.WaitGroup
				start := make(chan struct{})
				for g := range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						for i := range perWorker {
							ext := customers[(g+i)%len(customers)]
							_, _ = replicas[(g+i)%len(replicas)].Gate(context.Background(), custs[ext], "chat_message",
								autobuy.WithEventID(fmt.Sprintf("w%d_%d", g, i)))
						}
					}()
				}
				close(start)
				wg.Wait()
				w.srv.SetLatency(0)
				w.srv.FlushAsyncUsage()

				assert.Empty(t, errs)
				t.Logf("reasons: %v", reasons)
				assert.Zero(t, reasons[autobuy.ReasonEntitlementFailedAfterPurchase], "no false diagnosis")
				assert.Zero(t, reasons[autobuy.ReasonAutoBuySuspended])
				assert.Zero(t, suspended.Load())
				rejected := map[string]int{}
				for _, r := range w.srv.RejectedUsage() {
					if r.MetricKey == "chat_message" {
						rejected[r.CustomerID]++
					}
				}
				for _, ext := range customers {
					executed := len(usageOf(w.srv, ext, "chat_message"))
					plans := plansOf(w.srv, ext)
					assert.Equal(t, allowed[ext], executed+rejected[w.customerID(t, ext)], "%s: one usage event per allowed action", ext)
					assert.LessOrEqual(t, executed, 5*plans, ext)
					assert.Greater(t, executed, 5*(plans-1), "%s: every plan but the last was used up (%d plans, %d actions)", ext, plans, executed)
					assert.Equal(t, plans, debitsOf(w.srv, ext), ext)
				}
			}, "rate-limited")
		})
	}
}

// Case 8 and suspension: a plan whose credits can't pay for the metric is
// bought once; that gate says entitlement_failed_after_purchase, the
// Suspended hook fires once, and every later gate (other events too) says
// auto_buy_suspended with Decision.Limit, until the application lifts it or
// the suspension's time passes on the gate's clock.
func TestMisconfiguredPlanSuspendsAutoBuy(t *testing.T) {
	t.Parallel()
	bad := hourPlan
	bad.Priority = 5 // below the metric's min_priority 10
	fixedPlan := plan.Plan{Type: "1hr_v2", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}
	const suspendFor = 2 * time.Hour
	for _, how := range []string{"lifted", "expired"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
				t.Parallel()
				w := setup(t, 1_000_000, mode.Options...)
				require.NoError(t, w.srv.SeedRecipe(fixedPlan.Metric()))
				cid := w.customerID(t, user)
				var fixed atomic.Bool
				choose := func(context.Context, autobuy.CustomerRef, string, *quotastack.Entitlement) (plan.Plan, bool) {
					if fixed.Load() {
						return fixedPlan, true
					}
					return bad, true
				}
				var mu sync.Mutex
				var suspensions []autobuy.Suspension
				g, err := autobuy.New(w.client(t), autobuy.WithPlanChooser(choose), autobuy.WithClock(w.srv.Now),
					autobuy.WithSuspension(suspendFor), autobuy.WithHooks(autobuy.Hooks{Suspended: func(_ context.Context, _ autobuy.CustomerRef, s autobuy.Suspension) {
						mu.Lock()
						suspensions = append(suspensions, s)
						mu.Unlock()
					}}))
				require.NoError(t, err)
				gate := func(ev string) (autobuy.Decision, error) {
					return g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(ev))
				}
				t0 := w.srv.Now()
				var calls []func() (autobuy.Decision, error)
				for i := range 6 {
					calls = append(calls, func() (autobuy.Decision, error) { return gate(fmt.Sprintf("r1_%d", i)) })
				}
				reasons := map[autobuy.Reason]int{}
				for _, r := range gateTogether(calls...) {
					require.NoError(t, r.err)
					assert.False(t, r.d.Allowed)
					reasons[r.d.Reason]++
					if assert.NotNil(t, r.d.Limit) {
						assert.Equal(t, "suspended", r.d.Limit.Kind)
						assert.Equal(t, t0.Add(suspendFor), r.d.Limit.ResetsAt)
					}
				}
				assert.Equal(t, map[autobuy.Reason]int{autobuy.ReasonEntitlementFailedAfterPurchase: 1, autobuy.ReasonAutoBuySuspended: 5}, reasons)
				mu.Lock()
				require.Len(t, suspensions, 1, "the hook fires once")
				assert.Equal(t, cid, suspensions[0].CustomerID)
				assert.Equal(t, "chat_message", suspensions[0].Metric)
				assert.Equal(t, t0.Add(suspendFor), suspensions[0].Until)
				mu.Unlock()
				for _, ev := range []string{"r1_0", "later"} { // the same event again, and another
					d, err := gate(ev)
					require.NoError(t, err)
					assert.Equal(t, autobuy.ReasonAutoBuySuspended, d.Reason, ev)
					require.NotNil(t, d.Limit)
				}
				assert.Equal(t, 1, w.planGrants(), "one purchase, however many gates")
				assert.Equal(t, int64(900_000), w.wallet())

				switch how {
				case "lifted":
					fixed.Store(true) // the tenant fixes the plan, then lifts the suspension
					require.NoError(t, g.LiftSuspension(context.Background(), cid, "chat_message"))
					d, err := gate("after")
					require.NoError(t, err)
					assert.True(t, d.Allowed)
					assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
					require.NotNil(t, d.Purchase)
					assert.Equal(t, "1hr_v2", d.Purchase.Plan.Type)
					assert.Equal(t, 2, plansOf(w.srv, user))
					w.srv.FlushAsyncUsage()
					chat := w.usageFor("chat_message")
					require.Len(t, chat, 1, "only the action on the fixed plan went through")
					assert.Contains(t, chat[0].IdempotencyKey, ":after")
				case "expired":
					w.clock.Advance(suspendFor - time.Second)
					d, err := gate("almost")
					require.NoError(t, err)
					assert.Equal(t, autobuy.ReasonAutoBuySuspended, d.Reason, "a second before it ends")
					w.clock.Advance(time.Second)
					// Still misconfigured: one more purchase per period, no more.
					d, err = gate("after")
					require.NoError(t, err)
					assert.Equal(t, autobuy.ReasonEntitlementFailedAfterPurchase, d.Reason)
					d, err = gate("after2")
					require.NoError(t, err)
					assert.Equal(t, autobuy.ReasonAutoBuySuspended, d.Reason)
					assert.Equal(t, 2, w.planGrants())
					mu.Lock()
					assert.Len(t, suspensions, 2)
					mu.Unlock()
					w.srv.FlushAsyncUsage()
					assert.Empty(t, w.usageFor("chat_message"), "no action went through on the bad plan")
				}
			})
		})
	}
}

// Limits: WithPurchaseLimit(3, 24h) denies the 4th auto-buy in the window
// (purchase_limit, Decision.Limit, the Paywall hook), counted across
// replicas sharing a journal; entitled actions go on; once the oldest
// purchase leaves the window, buying works again.
func TestPurchaseLimitPerPeriod(t *testing.T) {
	t.Parallel()
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := setup(t, 1_000_000, mode.Options...)
		var paywalls atomic.Int32
		shared := []autobuy.Option{autobuy.WithPurchaseLimit(3, 24*time.Hour), autobuy.WithClock(w.srv.Now),
			autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker()),
			autobuy.WithHooks(autobuy.Hooks{Paywall: func(_ context.Context, _ autobuy.CustomerRef, d autobuy.Decision) {
				if d.Reason == autobuy.ReasonPurchaseLimit {
					paywalls.Add(1)
				}
			}})}
		replicas := []*autobuy.Gatekeeper{w.gate(t, shared...), w.gate(t, shared...), w.gate(t, shared...)}
		// 50 units use up a whole plan: every gate meets a new exhaustion.
		buy := func(i int) (autobuy.Decision, error) {
			return replicas[i%3].Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("p"+strconv.Itoa(i)), autobuy.WithUnits(50))
		}
		t0 := w.srv.Now()
		for i := range 3 {
			d, err := buy(i)
			require.NoError(t, err)
			require.Equal(t, autobuy.ReasonAutoBought, d.Reason, "purchase %d", i)
			w.clock.Advance(time.Minute)
		}
		d, err := buy(3)
		require.NoError(t, err)
		assert.False(t, d.Allowed)
		assert.Equal(t, autobuy.ReasonPurchaseLimit, d.Reason)
		assert.True(t, d.Reason.Final())
		require.NotNil(t, d.Limit)
		assert.Equal(t, autobuy.Limit{Kind: "purchases_per_period", Max: 3, Period: 24 * time.Hour, ResetsAt: t0.Add(24 * time.Hour)}, *d.Limit)
		assert.Equal(t, int32(1), paywalls.Load())
		assert.Equal(t, 3, w.planGrants())
		assert.Equal(t, int64(700_000), w.wallet())

		w.grantPlanCredits(t, 1_000)
		d, err = replicas[1].Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("small"))
		require.NoError(t, err)
		assert.Equal(t, autobuy.ReasonEntitled, d.Reason, "the limit is on purchases only")

		w.clock.Set(t0.Add(24*time.Hour + time.Second)) // the first purchase left the window
		d, err = buy(4)
		require.NoError(t, err)
		assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
		d, err = buy(5)
		require.NoError(t, err)
		assert.Equal(t, autobuy.ReasonPurchaseLimit, d.Reason, "the window slides")
		require.NotNil(t, d.Limit)
		assert.Equal(t, t0.Add(time.Minute+24*time.Hour), d.Limit.ResetsAt)
		assert.Equal(t, 4, w.planGrants())
		assert.Equal(t, int32(2), paywalls.Load())
	})
}

// A limit of 0 auto-buys a period denies every auto-buy (purchase_limit,
// never resetting), rather than panicking on an empty window.
func TestPurchaseLimitZero(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	g := w.gate(t, autobuy.WithPurchaseLimit(0, 24*time.Hour))
	d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
	require.NoError(t, err)
	assert.False(t, d.Allowed)
	assert.Equal(t, autobuy.ReasonPurchaseLimit, d.Reason)
	require.NotNil(t, d.Limit)
	assert.Equal(t, autobuy.Limit{Kind: "purchases_per_period", Max: 0, Period: 24 * time.Hour}, *d.Limit)
	assert.Equal(t, 0, w.planGrants())
	assert.Equal(t, int64(250_000), w.wallet())
}

// 202: a usage record answered 202 Accepted with no body is a recorded,
// accepted event, on the entitled path and after an auto-buy.
func TestUsageAnswered202WithoutBody(t *testing.T) {
	t.Parallel()
	for _, entitled := range []bool{true, false} {
		t.Run(fmt.Sprintf("entitled=%t", entitled), func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{Defer: true}))
			if entitled {
				w.grantPlanCredits(t, 5_000)
			}
			d, err := w.gate(t).Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.NoError(t, err)
			assert.True(t, d.Allowed)
			require.NotNil(t, d.Usage)
			assert.True(t, d.Usage.Accepted)
			assert.False(t, d.Usage.Confirmed())
			if entitled {
				assert.Equal(t, autobuy.ReasonEntitled, d.Reason)
			} else {
				assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
				assert.True(t, d.Purchase.Debit.Accepted)
			}
			reqs := w.srv.Requests()
			last := reqs[len(reqs)-1]
			assert.Equal(t, http.StatusAccepted, last.Status)
			w.srv.FlushAsyncUsage()
			assert.Len(t, w.usageFor("chat_message"), 1)
			assert.Empty(t, w.srv.RejectedUsage())
		})
	}
}

// anyMetadata adds non-string members to the metadata of every block the
// server sends, as a real server may for blocks granted with free-form
// metadata (the fake's grants take string values only).
type anyMetadata struct {
	rewritten atomic.Int32
	next      http.RoundTripper
}

func (a *anyMetadata) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := a.next.RoundTrip(r)
	if err != nil || resp.StatusCode >= 300 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if json.Unmarshal(body, &doc) == nil {
		blocks, _ := doc["blocks"].([]any)
		if b, ok := doc["block"]; ok {
			blocks = append(blocks, b)
		}
		for _, b := range blocks {
			if m, ok := b.(map[string]any); ok {
				meta, _ := m["metadata"].(map[string]any)
				if meta == nil {
					meta = map[string]any{}
				}
				meta["invoice_no"], meta["gift"] = 10042, false
				m["metadata"] = meta
				a.rewritten.Add(1)
			}
		}
		body, _ = json.Marshal(doc)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return resp, nil
}

// Block metadata is free-form: blocks carrying {"invoice_no": 10042, "gift":
// false} don't stop an auto-buy, nor the diagnosis that finds the plan's
// block by its order id.
func TestBlockMetadataOfAnyJSON(t *testing.T) {
	t.Parallel()
	bad := hourPlan
	bad.Priority = 5
	for _, tc := range []struct {
		p    plan.Plan
		want autobuy.Reason
	}{{hourPlan, autobuy.ReasonAutoBought}, {bad, autobuy.ReasonEntitlementFailedAfterPurchase}} {
		t.Run(string(tc.want), func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000)
			tr := &anyMetadata{next: http.DefaultTransport}
			c := w.clientWith(t, w.srv.APIKey, tr)
			g, err := autobuy.New(c, autobuy.WithPlan(tc.p))
			require.NoError(t, err)
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.NoError(t, err)
			assert.Equal(t, tc.want, d.Reason)
			assert.Positive(t, tr.rewritten.Load(), "the gate read blocks with such metadata")
			assert.Equal(t, 1, w.planGrants())

			bal, err := c.BalanceWithBlocks(context.Background(), w.cust)
			require.NoError(t, err)
			require.NotEmpty(t, bal.Blocks)
			for _, b := range bal.Blocks {
				assert.Equal(t, "10042", fmt.Sprint(b.Metadata["invoice_no"]))
				assert.Equal(t, false, b.Metadata["gift"])
			}
		})
	}
}

// The gate's round trips on each mode of the fake: 2 when entitled, 2 for a
// paywall, 6 for an auto-buy (the recipe's re-check after buying; 7 where
// usage is answered 202: a wallet read confirms the debit). On
// execute-then-5xx the retries that fetch a lost answer's replay are not
// counted; rate-limited counts like kind.
func TestGateRoundTrips(t *testing.T) {
	t.Parallel()
	want := map[string][3]int{ // entitled, paywall, auto-buy
		"kind": {2, 2, 6}, "usage202": {2, 2, 7}, "sparse": {2, 2, 6}, "execute-then-5xx": {2, 2, 6}, "rate-limited": {2, 2, 6},
	}
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		for i, name := range []string{"entitled", "paywall", "auto-buy"} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				wallet := int64(250_000)
				if name == "paywall" {
					wallet = 50_000
				}
				w := setup(t, wallet, mode.Options...)
				if name == "entitled" {
					w.grantPlanCredits(t, 5_000)
				}
				g := w.gate(t)
				w.srv.ResetRequests()
				d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
				require.NoError(t, err)
				assert.Equal(t, name != "paywall", d.Allowed, d.Reason)
				n := 0
				for _, r := range w.srv.Requests() {
					if r.Fault != "execute-then-status" {
						n++
					}
				}
				assert.Equal(t, want[mode.Name][i], n, "round trips")
			})
		}
	})
}
