package autobuy_test

// The gate policy of issue 16, case by case: definite answers are never an
// outage, one exhaustion buys one plan whatever the metric or the holds, an
// event can always be recorded once, keys never collide, no plan is bought
// that can't help, and customers sharing an event id both pay for their own
// actions. policy_limits_test.go has the rest (diagnosis under load,
// suspension, purchase limits, the answers the public docs allow, round trips).

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// runModes runs scenario against every mode of the fake except those named in
// skip (each skip says why where it is used).
func runModes(t *testing.T, scenario func(t *testing.T, mode quotastacktest.Mode), skip ...string) {
	t.Helper()
	quotastacktest.RunModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		for _, s := range skip {
			if mode.Name == s {
				t.Skipf("not meaningful in mode %s", s)
			}
		}
		scenario(t, mode)
	})
}

// clientWith returns a client of the world's fake with key and, when tr is
// not nil, the given transport.
func (w *world) clientWith(t *testing.T, key string, tr http.RoundTripper) *quotastack.Client {
	t.Helper()
	opts := []quotastack.Option{quotastack.WithBaseURL(w.srv.URL), quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond)}
	if tr != nil {
		opts = append(opts, quotastack.WithTransport(tr))
	}
	c, err := quotastack.NewClient(key, opts...)
	require.NoError(t, err)
	return c
}

func (w *world) customerID(t *testing.T, ext string) string {
	t.Helper()
	acct, ok := w.srv.Account(ext)
	require.True(t, ok, "customer %s exists", ext)
	return acct.CustomerID
}

// plansOf counts the plans granted by orders to the customer (any plan type).
func plansOf(srv *quotastacktest.Server, ext string) int {
	n := 0
	for _, e := range srv.Ledger(ext) {
		if e.Kind == "grant" && e.Metadata["source"] == "plan_grant" && e.Metadata["order_id"] != "" {
			n++
		}
	}
	return n
}

// debitsOf counts the customer's executed plan debits (any plan type).
func debitsOf(srv *quotastacktest.Server, ext string) int {
	n := 0
	for _, u := range srv.UsageEvents(ext) {
		if u.Metadata["order_id"] != "" {
			n++
		}
	}
	return n
}

func usageOf(srv *quotastacktest.Server, ext, metric string) []quotastacktest.UsageRecord {
	var out []quotastacktest.UsageRecord
	for _, u := range srv.UsageEvents(ext) {
		if u.MetricKey == metric {
			out = append(out, u)
		}
	}
	return out
}

func walletOf(srv *quotastacktest.Server, ext string) int64 {
	var sum int64
	for _, b := range srv.Blocks(ext) {
		if b.Priority == 0 && b.ExpiresAt == nil {
			sum += b.RemainingAmount
		}
	}
	return sum
}

// usageKeyOf is the documented key of the n-th attempt to record event for
// the customer (for ids and events without ':' or '%', which need no escaping).
func usageKeyOf(customerID, event string, n int) string {
	if n <= 1 {
		return "usage:" + customerID + ":" + event
	}
	return "usage:" + customerID + ":" + event + ":" + strconv.Itoa(n)
}

// checkBarrier holds the answers of the first n entitlement checks until n
// have been answered, so that n gates all see one exhaustion before any of
// them can buy: the interleaving the double purchases needed.
type checkBarrier struct {
	n        int
	mu       sync.Mutex
	seen     int
	all      chan struct{}
	timedOut atomic.Bool
	next     http.RoundTripper
}

func newCheckBarrier(n int) *checkBarrier {
	return &checkBarrier{n: n, all: make(chan struct{}), next: http.DefaultTransport}
}

func (b *checkBarrier) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := b.next.RoundTrip(r)
	if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/entitlements") {
		return resp, err
	}
	b.mu.Lock()
	b.seen++
	k := b.seen
	if k == b.n {
		close(b.all)
	}
	b.mu.Unlock()
	if k <= b.n {
		select {
		case <-b.all:
		case <-time.After(10 * time.Second):
			b.timedOut.Store(true)
		}
	}
	return resp, err
}

// gateResult is one concurrent gate's outcome.
type gateResult struct {
	d   autobuy.Decision
	err error
}

// gateTogether runs the calls at once and returns their outcomes in order.
func gateTogether(calls ...func() (autobuy.Decision, error)) []gateResult {
	out := make([]gateResult, len(calls))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i].d, out[i].err = call()
		}()
	}
	close(start)
	wg.Wait()
	return out
}

// failingLocker fails every Lock, as a Redis that is down; it counts calls.
type failingLocker struct{ calls atomic.Int32 }

var errLockerDown = errors.New("redis: connection refused")

func (l *failingLocker) Lock(context.Context, string) (func(context.Context) error, error) {
	l.calls.Add(1)
	return nil, errLockerDown
}

// failingJournal fails to list the customer's open intents, as a database that is down.
type failingJournal struct{ *autobuy.MemoryJournal }

var errJournalDown = errors.New("sql: database is closed")

func (failingJournal) Open(context.Context, string) ([]autobuy.Intent, error) {
	return nil, errJournalDown
}

// Case 1: a definite answer is its own decision or an error whatever the
// fallback policy; FailOpen never turns it into a free action, and a failing
// Locker, Journal or preference refuses the purchase only.
func TestFallbackNeverFreesADefiniteAnswer(t *testing.T) {
	t.Parallel()
	type check func(t *testing.T, w *world, policy autobuy.FallbackPolicy)
	cases := []struct {
		name string
		run  check
	}{
		{"revoked key (401)", func(t *testing.T, w *world, policy autobuy.FallbackPolicy) {
			w.grantPlanCredits(t, 5_000)
			const revoked = "qs_test_revoked_0123456789"
			g, err := autobuy.New(w.clientWith(t, revoked, nil), autobuy.WithPlan(hourPlan), autobuy.WithFallback(policy))
			require.NoError(t, err)
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.Error(t, err)
			assert.ErrorIs(t, err, quotastack.ErrUnauthorized)
			assert.NotContains(t, err.Error(), revoked)
			assert.False(t, d.Allowed)
			assert.False(t, d.Fallback)
		}},
		{"unknown customer (404): no_account", func(t *testing.T, w *world, policy autobuy.FallbackPolicy) {
			var paywalls atomic.Int32
			g := w.gate(t, autobuy.WithFallback(policy), autobuy.WithHooks(autobuy.Hooks{
				Paywall: func(context.Context, quotastack.Customer, autobuy.Decision) { paywalls.Add(1) }}))
			for _, c := range []quotastack.Customer{quotastack.ExternalID("nobody"), quotastack.CustomerID("cus_nobody")} {
				w.srv.ResetRequests()
				d, err := g.Gate(context.Background(), c, "chat_message", autobuy.WithEventID("m1"))
				require.NoError(t, err, "a decision, not an error")
				assert.False(t, d.Allowed)
				assert.Equal(t, autobuy.ReasonNoAccount, d.Reason)
				assert.True(t, d.Reason.Final())
				assert.False(t, d.Fallback)
				assert.NoError(t, d.Err)
				assert.Len(t, w.srv.Requests(), 1, "one check, nothing bought")
			}
			assert.Zero(t, paywalls.Load())
			_, ok := w.srv.Account("nobody")
			assert.False(t, ok, "no customer was created")
		}},
		{"unknown metric (404): an error", func(t *testing.T, w *world, policy autobuy.FallbackPolicy) {
			w.grantPlanCredits(t, 5_000)
			d, err := w.gate(t, autobuy.WithFallback(policy)).Gate(context.Background(), w.cust, "no_such_metric", autobuy.WithEventID("m1"))
			require.Error(t, err)
			assert.ErrorIs(t, err, quotastack.ErrNotFound)
			assert.False(t, d.Allowed)
			assert.False(t, d.Fallback)
		}},
		{"event id reused with another body (409): an error", func(t *testing.T, w *world, policy autobuy.FallbackPolicy) {
			w.grantPlanCredits(t, 10_000)
			g := w.gate(t, autobuy.WithFallback(policy))
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.NoError(t, err)
			require.True(t, d.Allowed)
			d, err = g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"), autobuy.WithUnits(2))
			require.Error(t, err)
			assert.ErrorIs(t, err, quotastack.ErrIdempotencyConflict)
			assert.False(t, d.Allowed)
			assert.False(t, d.Fallback)
			assert.Len(t, w.usageFor("chat_message"), 1, "the first action only")
		}},
		{"Locker down: purchase_unavailable, entitled customers served", func(t *testing.T, w *world, policy autobuy.FallbackPolicy) {
			w.grantPlanCredits(t, 1_000) // one action
			l := &failingLocker{}
			g := w.gate(t, autobuy.WithFallback(policy), autobuy.WithLocker(l))
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.NoError(t, err)
			assert.True(t, d.Allowed)
			assert.Equal(t, autobuy.ReasonEntitled, d.Reason)
			assert.Zero(t, l.calls.Load(), "an entitled action never touches the locker")

			d, err = g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m2"))
			require.NoError(t, err)
			assert.False(t, d.Allowed)
			assert.Equal(t, autobuy.ReasonPurchaseUnavailable, d.Reason)
			assert.False(t, d.Reason.Final())
			assert.False(t, d.Fallback)
			assert.ErrorIs(t, d.Err, errLockerDown)
			assert.Equal(t, int32(1), l.calls.Load())
		}},
		{"Journal down: purchase_unavailable", func(t *testing.T, w *world, policy autobuy.FallbackPolicy) {
			g := w.gate(t, autobuy.WithFallback(policy), autobuy.WithJournal(failingJournal{autobuy.NewMemoryJournal(0)}))
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.NoError(t, err)
			assert.False(t, d.Allowed)
			assert.Equal(t, autobuy.ReasonPurchaseUnavailable, d.Reason)
			assert.False(t, d.Fallback)
			assert.ErrorIs(t, d.Err, errJournalDown)
		}},
		{"preference callback fails: purchase_unavailable", func(t *testing.T, w *world, policy autobuy.FallbackPolicy) {
			errPrefs := errors.New("prefs service: 500")
			g := w.gate(t, autobuy.WithFallback(policy),
				autobuy.WithPreference(func(context.Context, quotastack.Customer) (bool, error) { return false, errPrefs }))
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.NoError(t, err)
			assert.False(t, d.Allowed)
			assert.Equal(t, autobuy.ReasonPurchaseUnavailable, d.Reason)
			assert.False(t, d.Fallback)
			assert.ErrorIs(t, d.Err, errPrefs)
		}},
	}
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		for _, policy := range []autobuy.FallbackPolicy{autobuy.FailOpen, autobuy.FailClosed, autobuy.ReturnError} {
			for _, tc := range cases {
				t.Run(policy.String()+"/"+tc.name, func(t *testing.T) {
					t.Parallel()
					w := setup(t, 250_000, mode.Options...)
					tc.run(t, w, policy)
					assert.Equal(t, 0, w.planGrants(), "nothing bought")
					assert.Empty(t, w.usageFor("plan_purchase_1hr"), "nothing debited")
					assert.Equal(t, int64(250_000), w.wallet())
				})
			}
		}
	})
}

// Case 1, the other side: when QuotaStack could not answer, the policy decides.
func TestFallbackStillCoversOutages(t *testing.T) {
	t.Parallel()
	outages := []struct {
		name   string
		client func(t *testing.T, w *world) *quotastack.Client
		is     error
	}{
		{"503 after retries", func(t *testing.T, w *world) *quotastack.Client {
			w.srv.FailNext(100, 503)
			return w.client(t)
		}, quotastack.ErrServer},
		{"429 after retries", func(t *testing.T, w *world) *quotastack.Client {
			w.srv.InjectFault(quotastacktest.Fault{Status: 429, RetryAfter: "0", Count: 100})
			return w.client(t)
		}, quotastack.ErrRateLimited},
		{"transport error (nothing listening)", func(t *testing.T, w *world) *quotastack.Client {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			addr := ln.Addr().String()
			require.NoError(t, ln.Close())
			c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL("http://"+addr),
				quotastack.WithRetry(2, time.Millisecond, time.Millisecond))
			require.NoError(t, err)
			return c
		}, nil},
		{"timeout", func(t *testing.T, w *world) *quotastack.Client {
			w.srv.SetLatency(5 * time.Second)
			c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL), quotastack.WithTimeout(100*time.Millisecond),
				quotastack.WithRetry(1, time.Millisecond, time.Millisecond))
			require.NoError(t, err)
			return c
		}, nil},
	}
	for _, tc := range outages {
		for _, policy := range []autobuy.FallbackPolicy{autobuy.FailOpen, autobuy.FailClosed, autobuy.ReturnError} {
			t.Run(tc.name+"/"+policy.String(), func(t *testing.T) {
				t.Parallel()
				w := setup(t, 250_000)
				w.grantPlanCredits(t, 5_000)
				g, err := autobuy.New(tc.client(t, w), autobuy.WithPlan(hourPlan), autobuy.WithFallback(policy))
				require.NoError(t, err)
				d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
				w.srv.ClearFaults()
				if policy == autobuy.ReturnError {
					require.Error(t, err)
					if tc.is != nil {
						assert.ErrorIs(t, err, tc.is)
					}
					assert.False(t, d.Allowed)
					return
				}
				require.NoError(t, err)
				assert.True(t, d.Fallback)
				assert.Equal(t, autobuy.ReasonUnavailable, d.Reason)
				assert.Equal(t, policy == autobuy.FailOpen, d.Allowed)
				require.Error(t, d.Err)
				if tc.is != nil {
					assert.ErrorIs(t, d.Err, tc.is)
				}
				assert.Empty(t, w.usageFor("chat_message"), "a fallback records nothing")
			})
		}
	}
}

// Case 2: two metrics payable from any plan credits, gated together for one
// exhausted customer, with a chooser that picks a plan per metric: one plan
// is bought, and with a wallet for only one plan the second action is
// allowed on it (not empty_wallet).
func TestTwoMetricsOneExhaustionBuyOnePlan(t *testing.T) {
	t.Parallel()
	voicePlan := plan.Plan{Type: "voice1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}
	for _, wallet := range []int64{250_000, 150_000} {
		t.Run(fmt.Sprintf("wallet %d mc", wallet), func(t *testing.T) {
			t.Parallel()
			runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
				t.Parallel()
				w := setup(t, wallet, mode.Options...)
				_, err := w.srv.CreateRule(quotastacktest.Rule{MetricKey: "voice_message", CostType: "per_unit", UnitCost: 1000,
					Eligible: &quotastacktest.Eligibility{MinPriority: quotastacktest.Ptr(10)}})
				require.NoError(t, err)
				require.NoError(t, w.srv.SeedRecipe(voicePlan.Metric()))
				perMetric := func(_ context.Context, _ quotastack.Customer, metric string, _ *quotastack.Entitlement) (plan.Plan, bool) {
					if metric == "voice_message" {
						return voicePlan, true
					}
					return hourPlan, true
				}
				bar := newCheckBarrier(2)
				g, err := autobuy.New(w.clientWith(t, w.srv.APIKey, bar), autobuy.WithPlanChooser(perMetric))
				require.NoError(t, err)

				res := gateTogether(
					func() (autobuy.Decision, error) {
						return g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("c1"))
					},
					func() (autobuy.Decision, error) {
						return g.Gate(context.Background(), w.cust, "voice_message", autobuy.WithEventID("v1"))
					},
				)
				assert.False(t, bar.timedOut.Load(), "both checks saw the exhaustion")
				reasons := map[autobuy.Reason]int{}
				for _, r := range res {
					require.NoError(t, r.err)
					assert.True(t, r.d.Allowed, "reason %s", r.d.Reason)
					reasons[r.d.Reason]++
				}
				assert.Equal(t, map[autobuy.Reason]int{autobuy.ReasonAutoBought: 1, autobuy.ReasonEntitled: 1}, reasons)
				assert.Equal(t, 1, plansOf(w.srv, user), "one plan for one exhaustion")
				assert.Equal(t, 1, debitsOf(w.srv, user))
				assert.Equal(t, wallet-100_000, w.wallet())
				w.srv.FlushAsyncUsage() // usage202: the last record may still be pending
				assert.Len(t, w.usageFor("chat_message"), 1)
				assert.Len(t, w.usageFor("voice_message"), 1)
			})
		})
	}
}

// Case 3: a hold on a wallet-paid metric doesn't make a replica whose check
// came earlier buy a second plan under a shared lock and journal.
func TestWalletHoldDoesNotBuyASecondPlan(t *testing.T) {
	t.Parallel()
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := setup(t, 400_000, mode.Options...)
		_, err := w.srv.CreateRule(quotastacktest.Rule{MetricKey: "export_job", CostType: "per_unit", UnitCost: 1,
			Eligible: &quotastacktest.Eligibility{MaxPriority: quotastacktest.Ptr(0), Expiring: quotastacktest.Ptr(false)}})
		require.NoError(t, err)
		c := w.client(t)
		hold, err := c.Reserve(context.Background(), quotastack.ReserveParams{Customer: w.cust, MetricKey: "export_job",
			EstimatedUnits: 60_000, TTL: time.Hour})
		require.NoError(t, err)

		bar := newCheckBarrier(2)
		shared := []autobuy.Option{autobuy.WithPlan(hourPlan), autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker())}
		var replicas [2]*autobuy.Gatekeeper
		for i := range replicas {
			replicas[i], err = autobuy.New(w.clientWith(t, w.srv.APIKey, bar), shared...)
			require.NoError(t, err)
		}
		res := gateTogether(
			func() (autobuy.Decision, error) {
				return replicas[0].Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("a"))
			},
			func() (autobuy.Decision, error) {
				return replicas[1].Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("b"))
			},
		)
		assert.False(t, bar.timedOut.Load(), "both checks saw the exhaustion")
		for _, r := range res {
			require.NoError(t, r.err)
			assert.True(t, r.d.Allowed, "reason %s", r.d.Reason)
		}
		assert.Equal(t, 1, w.planGrants(), "the hold is on the wallet, the plan covers both")
		assert.Len(t, w.usageFor("plan_purchase_1hr"), 1)
		assert.Equal(t, int64(300_000), w.wallet())
		acct, _ := w.srv.Account(user)
		assert.Equal(t, int64(60_000), acct.ReservedBalance, "the hold is untouched")
		_, err = c.Release(context.Background(), hold.ID)
		require.NoError(t, err)
	})
}

// Case 4: any number of refused attempts (stored 402s) before a record still
// lets a later gate of that event record it, exactly once, through the
// entitled path and through an auto-buy. usage202 is skipped: there the server
// never answers 402 (it accepts and rejects later).
func TestEventIsRecordedOnceAfterAnyNumberOf402s(t *testing.T) {
	t.Parallel()
	for _, refused := range []int{1, 2, 5} {
		for _, path := range []string{"entitled", "auto-buy"} {
			t.Run(fmt.Sprintf("%d refused/%s", refused, path), func(t *testing.T) {
				t.Parallel()
				runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
					t.Parallel()
					w := setup(t, 0, mode.Options...)
					cid := w.customerID(t, user)
					c := w.client(t)
					for n := 1; n <= refused; n++ {
						_, err := c.Record(context.Background(), quotastack.UsageParams{Customer: quotastack.CustomerID(cid), MetricKey: "chat_message", Units: 1},
							quotastack.WithIdempotencyKey(usageKeyOf(cid, "e", n)))
						require.ErrorIs(t, err, quotastack.ErrInsufficientCredits, "attempt %d refused and stored", n)
					}
					want := autobuy.ReasonEntitled
					if path == "entitled" {
						w.grantPlanCredits(t, 5_000)
					} else {
						_, err := w.srv.Grant(user, quotastacktest.Grant{Credits: 250_000})
						require.NoError(t, err)
						want = autobuy.ReasonAutoBought
					}
					g := w.gate(t)
					for i := range 3 {
						d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("e"))
						require.NoError(t, err)
						assert.True(t, d.Allowed, "gate %d", i)
						if i == 0 {
							assert.Equal(t, want, d.Reason)
						}
						chat := w.usageFor("chat_message")
						require.Len(t, chat, 1, "recorded exactly once (gate %d)", i)
						assert.Equal(t, usageKeyOf(cid, "e", refused+1), chat[0].IdempotencyKey)
					}
					assert.LessOrEqual(t, w.planGrants(), 1)
				}, "usage202")
			})
		}
	}
}

// Case 4, concurrently: gates of one event race gates of other events for
// three actions' credits (so some of the event's attempts are refused); the
// event is charged at most once, and once credits come back a later gate of
// it records it exactly once.
func TestConcurrentGatesOfOneEventChargeItOnce(t *testing.T) {
	t.Parallel()
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := setup(t, 0, mode.Options...)
		w.srv.SetLatency(time.Millisecond)
		w.grantPlanCredits(t, 3_000)
		cid := w.customerID(t, user)
		g := w.gate(t)
		var calls []func() (autobuy.Decision, error)
		for i := range 16 {
			ev := "e"
			if i%2 == 1 {
				ev = fmt.Sprintf("x_%d", i)
			}
			calls = append(calls, func() (autobuy.Decision, error) {
				return g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(ev))
			})
		}
		allowedX := 0
		for i, r := range gateTogether(calls...) {
			require.NoError(t, r.err)
			if r.d.Allowed && i%2 == 1 {
				allowedX++
			}
		}
		ofE := func() int {
			n := 0
			for _, u := range w.usageFor("chat_message") {
				if strings.HasPrefix(u.IdempotencyKey, usageKeyOf(cid, "e", 1)) {
					n++
				}
			}
			return n
		}
		assert.LessOrEqual(t, ofE(), 1, "one event, at most one charge")
		assert.Equal(t, allowedX+ofE(), len(w.usageFor("chat_message")))
		refusedKeys := map[string]bool{}
		for _, r := range w.srv.Requests() {
			if r.Status == http.StatusPaymentRequired && strings.HasPrefix(r.IdempotencyKey, usageKeyOf(cid, "e", 1)) {
				refusedKeys[r.IdempotencyKey] = true
			}
		}
		t.Logf("event e: %d keys refused with 402", len(refusedKeys))

		w.srv.SetLatency(0)
		w.grantPlanCredits(t, 5_000)
		d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("e"))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		assert.Equal(t, 1, ofE(), "recorded exactly once")
	}, "usage202", "rate-limited")
}

// Case 4, on a server whose answers are lost after the commit: the record's
// 402 comes back as a replay of the gate's own first attempt. That is a fresh
// refusal (the credits went to a concurrent action), not an earlier gate's:
// the gate buys and records under the event's next key, instead of walking
// keys (two requests each) until it gives up.
func TestOwnReplayed402IsAFreshRefusal(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000, quotastacktest.WithExecuteThenStatus(500))
	w.grantPlanCredits(t, 1_000)
	cid := w.customerID(t, user)
	other := w.client(t)
	tr := &spendFirst{next: http.DefaultTransport, spend: func() {
		_, err := other.Record(context.Background(), quotastack.UsageParams{Customer: w.cust, MetricKey: "chat_message", Units: 1})
		assert.NoError(t, err)
	}}
	g, err := autobuy.New(w.clientWith(t, w.srv.APIKey, tr), autobuy.WithPlan(hourPlan))
	require.NoError(t, err)

	d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("msg_race"))
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
	assert.Equal(t, 1, w.planGrants())
	chat := w.usageFor("chat_message")
	require.Len(t, chat, 2, "the spender's and ours")
	assert.Equal(t, usageKeyOf(cid, "msg_race", 2), chat[1].IdempotencyKey)
	keys := map[string]bool{}
	for _, r := range w.srv.Requests() {
		if strings.Contains(r.IdempotencyKey, "msg_race") {
			keys[r.IdempotencyKey] = true
		}
	}
	assert.Len(t, keys, 2, "two keys: the refused attempt and the record")
}

// Case 5: the gate's keys never collide with a caller's event ids: event "m1"
// charged under its second key (after a stored 402) and event "m1:2" are two
// actions, each charged once. (keys_internal_test.go fuzzes the key function.)
func TestGateKeysNeverCollideWithCallersEventIDs(t *testing.T) {
	t.Parallel()
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := setup(t, 0, mode.Options...)
		cid := w.customerID(t, user)
		_, err := w.client(t).Record(context.Background(), quotastack.UsageParams{Customer: quotastack.CustomerID(cid), MetricKey: "chat_message", Units: 1},
			quotastack.WithIdempotencyKey(usageKeyOf(cid, "m1", 1)))
		require.ErrorIs(t, err, quotastack.ErrInsufficientCredits)
		w.grantPlanCredits(t, 5_000)
		g := w.gate(t)
		for _, ev := range []string{"m1", "m1:2", "m1", "m1:2"} {
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(ev))
			require.NoError(t, err)
			assert.True(t, d.Allowed, ev)
		}
		chat := w.usageFor("chat_message")
		require.Len(t, chat, 2, "two actions, each charged once")
		assert.Equal(t, usageKeyOf(cid, "m1", 2), chat[0].IdempotencyKey)
		assert.NotEqual(t, chat[0].IdempotencyKey, chat[1].IdempotencyKey)
		assert.Equal(t, int64(3_000), w.srv.Blocks(user)[0].RemainingAmount)
	}, "usage202")
	assert.NotEqual(t, quotastack.ActionGrantKey("user42:companion7", "like"), quotastack.ActionGrantKey("user42", "companion7:like"))
}

// Case 7: two customers send the same event id; each is charged for their
// own action and nobody pays for an action that didn't happen.
func TestTwoCustomersOneEventID(t *testing.T) {
	t.Parallel()
	const alice, bob = "alice", "bob"
	for _, both := range []bool{false, true} {
		name := "alice entitled, bob auto-buys"
		if both {
			name = "both auto-buy"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
				t.Parallel()
				w := setup(t, 0, mode.Options...)
				for _, ext := range []string{alice, bob} {
					_, err := w.srv.Grant(ext, quotastacktest.Grant{Credits: 250_000})
					require.NoError(t, err)
				}
				if !both {
					exp := w.clock.Now().Add(time.Hour)
					_, err := w.srv.Grant(alice, quotastacktest.Grant{Credits: 5_000, Priority: 10, ExpiresAt: &exp,
						Metadata: map[string]string{"plan_type": "1hr", "source": "plan_grant"}})
					require.NoError(t, err)
				}
				g := w.gate(t)
				gateAs := func(ext string) func() (autobuy.Decision, error) {
					return func() (autobuy.Decision, error) {
						return g.Gate(context.Background(), quotastack.ExternalID(ext), "chat_message", autobuy.WithEventID("msg_1"))
					}
				}
				for round := range 2 { // the second round is both users' retry
					for _, r := range gateTogether(gateAs(alice), gateAs(bob)) {
						require.NoError(t, r.err)
						assert.True(t, r.d.Allowed, "round %d: %s", round, r.d.Reason)
					}
				}
				for _, ext := range []string{alice, bob} {
					assert.Len(t, usageOf(w.srv, ext, "chat_message"), 1, "%s charged once for msg_1", ext)
					wantPlans := 1
					if ext == alice && !both {
						wantPlans = 0
					}
					assert.Equal(t, wantPlans, plansOf(w.srv, ext), ext)
					assert.Equal(t, wantPlans, debitsOf(w.srv, ext), ext)
					assert.Equal(t, int64(250_000-wantPlans*100_000), walletOf(w.srv, ext), ext)
				}
			})
		})
	}
}
