package autobuy_test

// The gate policy of issue 16, with the helpers of the policy tests: definite
// answers are never an outage (case 1), one exhaustion buys one plan whatever
// the metric (case 2) or the holds (case 3). policy_events_test.go has cases
// 4, 5 and 7; policy_limits_test.go cases 6 and 8, suspension, purchase
// limits, the answers the public docs allow and the round trips.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	held     atomic.Int32 // checks held until all n had answered
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
	if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/entitlements/") {
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
		b.held.Add(1)
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

// lockedBuffer is a bytes.Buffer safe for concurrent writes (a slog sink).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
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
	type check func(t *testing.T, w *world, base []autobuy.Option)
	cases := []struct {
		name string
		run  check
	}{
		{"revoked key (401)", func(t *testing.T, w *world, base []autobuy.Option) {
			w.grantPlanCredits(t, 5_000)
			const revoked = "qs_test_revoked_0123456789"
			g, err := autobuy.New(w.clientWith(t, revoked, nil), append(base, autobuy.WithPlan(hourPlan))...)
			require.NoError(t, err)
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.Error(t, err)
			assert.ErrorIs(t, err, quotastack.ErrUnauthorized)
			assert.NotContains(t, err.Error(), revoked)
			assert.False(t, d.Allowed)
			assert.False(t, d.Fallback)
		}},
		{"unknown customer (404): no_account", func(t *testing.T, w *world, base []autobuy.Option) {
			var paywalls atomic.Int32
			g := w.gate(t, append(base, autobuy.WithHooks(autobuy.Hooks{
				Paywall: func(context.Context, autobuy.CustomerRef, autobuy.Decision) { paywalls.Add(1) }}))...)
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
			assert.Equal(t, int32(2), paywalls.Load(), "no_account is a 402 paywall: the Paywall hook fires (a topup creates the account)")
			_, ok := w.srv.Account("nobody")
			assert.False(t, ok, "no customer was created")
		}},
		{"unknown metric (404): an error", func(t *testing.T, w *world, base []autobuy.Option) {
			w.grantPlanCredits(t, 5_000)
			d, err := w.gate(t, base...).Gate(context.Background(), w.cust, "no_such_metric", autobuy.WithEventID("m1"))
			require.Error(t, err)
			assert.ErrorIs(t, err, quotastack.ErrNotFound)
			assert.False(t, d.Allowed)
			assert.False(t, d.Fallback)
		}},
		{"event id reused with another body (409): an error", func(t *testing.T, w *world, base []autobuy.Option) {
			w.grantPlanCredits(t, 10_000)
			g := w.gate(t, base...)
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.NoError(t, err)
			require.True(t, d.Allowed)
			d, err = g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"), autobuy.WithUnits(2))
			require.Error(t, err)
			assert.ErrorIs(t, err, quotastack.ErrIdempotencyConflict)
			assert.False(t, d.Allowed)
			assert.False(t, d.Fallback)
			w.srv.FlushAsyncUsage() // the refusal sent nothing that would have run a deferred debit
			assert.Len(t, w.usageFor("chat_message"), 1, "the first action only")
		}},
		{"Locker down: purchase_unavailable, entitled customers served", func(t *testing.T, w *world, base []autobuy.Option) {
			w.grantPlanCredits(t, 1_000) // one action
			l := &failingLocker{}
			g := w.gate(t, append(base, autobuy.WithLocker(l))...)
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
		{"Journal down: purchase_unavailable", func(t *testing.T, w *world, base []autobuy.Option) {
			g := w.gate(t, append(base, autobuy.WithJournal(failingJournal{autobuy.NewMemoryJournal(0)}))...)
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
			require.NoError(t, err)
			assert.False(t, d.Allowed)
			assert.Equal(t, autobuy.ReasonPurchaseUnavailable, d.Reason)
			assert.False(t, d.Fallback)
			assert.ErrorIs(t, d.Err, errJournalDown)
		}},
		{"preference callback fails: purchase_unavailable", func(t *testing.T, w *world, base []autobuy.Option) {
			errPrefs := errors.New("prefs service: 500")
			g := w.gate(t, append(base,
				autobuy.WithPreference(func(context.Context, autobuy.CustomerRef) (bool, error) { return false, errPrefs }))...)
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
					logs := &lockedBuffer{}
					tc.run(t, w, []autobuy.Option{autobuy.WithFallback(policy),
						autobuy.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})))})
					assert.Empty(t, logs.String(), "a definite answer is no outage: no warning")
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
				_, err := w.srv.CreateRule(quotastack.Rule{BillableMetricKey: "voice_message", CostType: "per_unit", UnitCost: 1000,
					Eligible: &quotastacktest.Eligibility{MinPriority: quotastacktest.Ptr(10)}})
				require.NoError(t, err)
				require.NoError(t, w.srv.SeedRecipe(voicePlan.Metric()))
				perMetric := func(_ context.Context, _ autobuy.CustomerRef, metric string, _ *quotastack.Entitlement) (plan.Plan, bool) {
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
				assert.Equal(t, int32(2), bar.held.Load())
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
		_, err := w.srv.CreateRule(quotastack.Rule{BillableMetricKey: "export_job", CostType: "per_unit", UnitCost: 1,
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
		assert.Equal(t, int32(2), bar.held.Load())
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
