package autobuy_test

// The cases of issue 21: the purchase path as the recipe describes it (the
// re-check after buying), debit confirmations that can't be fooled,
// ordering without clocks, one default per process.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
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

// docsServer answers with the public docs' samples (the auto-buy recipe's
// entitlement and credits answers, the contract's usage and grant answers),
// keeping only the wallet and the granted plan blocks. allowed decides the
// entitlement answer.
type docsServer struct {
	mu       sync.Mutex
	allowed  func(planBlocks int) bool
	wallet   int64
	plans    []map[string]any
	requests []string
	srv      *httptest.Server
}

const docsUUID = "019d6258-07ba-7418-83be-58f5fde53e4e"

func newDocsServer(t *testing.T, allowed func(planBlocks int) bool) *docsServer {
	t.Helper()
	d := &docsServer{allowed: allowed, wallet: 500_000}
	d.srv = httptest.NewServer(http.HandlerFunc(d.serve))
	t.Cleanup(d.srv.Close)
	return d
}

func (d *docsServer) serve(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	var in map[string]any
	_ = json.Unmarshal(body, &in)
	kind := ""
	answer := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	switch {
	case r.Method == "GET" && strings.Contains(r.URL.Path, "/entitlements/"):
		kind = "check"
		ok := d.allowed(len(d.plans))
		after := int64(-1000)
		if ok {
			after = 49_000
		}
		answer(200, map[string]any{"allowed": ok, "customer_id": docsUUID, "external_customer_id": "user42:companion7",
			"billable_metric_key": "chat_message", "units": 1, "balance": d.wallet, "reserved_balance": 0,
			"effective_balance": d.wallet, "estimated_cost": 1000, "balance_after": after, "overage_policy": "block"})
	case r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/credits"):
		kind = "wallet"
		blocks := []any{map[string]any{"id": "blk_wallet", "remaining_amount": d.wallet, "priority": 0, "expires_at": nil,
			"metadata": map[string]any{"source": "wallet_recharge"}}}
		for _, p := range d.plans {
			blocks = append(blocks, p)
		}
		answer(200, map[string]any{"balance": d.wallet, "effective_balance": d.wallet, "blocks": blocks})
	case r.Method == "POST" && r.URL.Path == "/v1/usage":
		units, _ := in["units"].(float64)
		kind = "record"
		if in["billable_metric_key"] != "chat_message" {
			kind = "debit"
			d.wallet -= int64(units)
		}
		answer(200, map[string]any{"id": fmt.Sprintf("evt_%d", len(d.requests)), "customer_id": docsUUID,
			"billable_metric_key": in["billable_metric_key"], "units": units, "cost": units, "balance_after": d.wallet,
			"created_at": "2026-04-13T13:00:00Z"})
	case r.Method == "POST" && r.URL.Path == "/v1/topup/grant":
		kind = "grant"
		blk := map[string]any{"id": fmt.Sprintf("blk_plan%d", len(d.plans)), "original_amount": in["credits"], "remaining_amount": in["credits"],
			"priority": in["priority"], "expires_at": in["expires_at"], "source": "topup", "metadata": in["metadata"]}
		d.plans = append(d.plans, blk)
		answer(201, map[string]any{"customer_id": docsUUID, "external_customer_id": "user42:companion7", "block": blk,
			"balance": d.wallet, "effective_balance": d.wallet})
	default:
		answer(404, map[string]any{"type": "https://quotastack.io/errors/not-found", "status": 404})
	}
	d.requests = append(d.requests, kind)
}

func (d *docsServer) log() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.requests...)
}

func (d *docsServer) gate(t *testing.T, opts ...autobuy.Option) *autobuy.Gatekeeper {
	t.Helper()
	c, err := quotastack.NewClient("qs_test_docs", quotastack.WithBaseURL(d.srv.URL), quotastack.WithRetry(1, time.Millisecond, time.Millisecond))
	require.NoError(t, err)
	g, err := autobuy.New(c, append([]autobuy.Option{autobuy.WithPlan(hourPlan), autobuy.WithJournal(autobuy.NewMemoryJournal(0)),
		autobuy.WithLocker(autobuy.NewLocalLocker())}, opts...)...)
	require.NoError(t, err)
	return g
}

// The recipe's sequence on a server answering with the docs' samples: an
// auto-buy is check, wallet, debit, grant, re-check, record (6 requests); a
// paywall check and wallet; an entitled action check and record.
func TestRecipeSequenceOnDocsSamples(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		wallet  int64
		allowed func(planBlocks int) bool
		want    []string
		reason  autobuy.Reason
	}{
		{"auto-buy", 500_000, func(n int) bool { return n > 0 }, []string{"check", "wallet", "debit", "grant", "check", "record"}, autobuy.ReasonAutoBought},
		{"paywall", 50_000, func(int) bool { return false }, []string{"check", "wallet"}, autobuy.ReasonEmptyWallet},
		{"happy path", 500_000, func(int) bool { return true }, []string{"check", "record"}, autobuy.ReasonEntitled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := newDocsServer(t, c.allowed)
			s.wallet = c.wallet
			d, err := s.gate(t).Gate(context.Background(), quotastack.ExternalID(user), "chat_message", autobuy.WithEventID("msg_abc123"))
			require.NoError(t, err)
			assert.Equal(t, c.reason, d.Reason)
			assert.Equal(t, c.want, s.log())
		})
	}
}

// Case 1: a rule that doesn't let the bought plan pay for the action, with a
// usage answer that is accepted anyway: the re-check refuses, auto-buy is
// suspended (entitlement_failed_after_purchase), the action is never
// recorded, and the next messages buy nothing.
func TestCase1ReCheckStopsTheLoop(t *testing.T) {
	t.Parallel()
	s := newDocsServer(t, func(int) bool { return false })
	var suspended atomic.Int32
	g := s.gate(t, autobuy.WithHooks(autobuy.Hooks{Suspended: func(context.Context, autobuy.CustomerRef, autobuy.Suspension) { suspended.Add(1) }}))
	var reasons []autobuy.Reason
	for i := range 4 {
		d, err := g.Gate(context.Background(), quotastack.ExternalID(user), "chat_message", autobuy.WithEventID(fmt.Sprint("msg_", i)))
		require.NoError(t, err)
		assert.False(t, d.Allowed)
		reasons = append(reasons, d.Reason)
	}
	assert.Equal(t, []autobuy.Reason{autobuy.ReasonEntitlementFailedAfterPurchase, autobuy.ReasonAutoBuySuspended,
		autobuy.ReasonAutoBuySuspended, autobuy.ReasonAutoBuySuspended}, reasons)
	debits, records := 0, 0
	for _, k := range s.log() {
		debits += map[bool]int{true: 1}[k == "debit"]
		records += map[bool]int{true: 1}[k == "record"]
	}
	assert.Equal(t, 1, debits, "one plan bought, not one per message")
	assert.Zero(t, records, "a refused re-check is never followed by the record")
	assert.Equal(t, int32(1), suspended.Load())
}

// Case 2: a held wallet (a reservation on wallet credits) doesn't defeat the
// loop guard: a misconfigured plan is bought once and auto-buy is suspended.
func TestCase2HeldWalletDoesNotDefeatTheLoopGuard(t *testing.T) {
	t.Parallel()
	w := setup(t, 1_000_000)
	bad := hourPlan
	bad.Priority = 5 // below chat_message's min_priority 10
	c := w.client(t)
	_, err := c.Reserve(context.Background(), quotastack.ReserveParams{Customer: w.cust, MetricKey: hourPlan.Metric(), EstimatedUnits: 300_000})
	require.NoError(t, err)
	g, err := autobuy.New(c, autobuy.WithPlan(bad), autobuy.WithClock(w.srv.Now))
	require.NoError(t, err)
	var reasons []autobuy.Reason
	for i := range 3 {
		d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprint("m", i)))
		require.NoError(t, err)
		reasons = append(reasons, d.Reason)
	}
	assert.Equal(t, []autobuy.Reason{autobuy.ReasonEntitlementFailedAfterPurchase, autobuy.ReasonAutoBuySuspended, autobuy.ReasonAutoBuySuspended}, reasons)
	assert.Equal(t, 1, w.planGrants(), "one useless plan, not one per message")
}

// topupAfterDebit tops the wallet up right after the plan debit is answered.
type topupAfterDebit struct {
	w    *world
	done atomic.Bool
}

func (x *topupAfterDebit) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && isPlanDebit(r) && x.done.CompareAndSwap(false, true) {
		if _, gerr := x.w.srv.Grant(user, quotastacktest.BlockSpec{Credits: 100_000}); gerr != nil {
			return nil, gerr
		}
	}
	return resp, err
}

// Case 3: a topup during a 202 debit doesn't hide it: the debit is confirmed
// from the wallet blocks that existed before it, the plan is granted at once,
// and the action goes through.
func TestCase3TopupDuring202DebitDoesNotHideIt(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{Defer: true}))
	c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL), quotastack.WithTransport(&topupAfterDebit{w: w}),
		quotastack.WithRetry(2, time.Millisecond, time.Millisecond))
	require.NoError(t, err)
	g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithClock(w.srv.Now), autobuy.WithJournal(autobuy.NewMemoryJournal(0)))
	require.NoError(t, err)
	start := time.Now()
	d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
	require.NoError(t, err)
	assert.Equal(t, autobuy.ReasonAutoBought, d.Reason, "%v", d.Err)
	assert.Less(t, time.Since(start), 3*time.Second, "confirmed by the first read")
	w.srv.FlushAsyncUsage()
	assert.Equal(t, 1, w.planGrants())
	assert.Equal(t, int64(250_000), w.wallet(), "250,000 - 100,000 + the 100,000 topup")
}

// Case 4: two replicas sharing the journal and lock, with clocks 10 s (and a
// minute) apart, buy one plan for one exhaustion: B's check ran before A's
// purchase, and the journal's revision, not a clock, tells B to check again.
func TestCase4ClockSkewBuysOnePlan(t *testing.T) {
	t.Parallel()
	for _, skew := range []time.Duration{-10 * time.Second, 10 * time.Second, -time.Minute, time.Minute} {
		t.Run(skew.String(), func(t *testing.T) {
			t.Parallel()
			runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
				t.Parallel()
				w := newJWorld(t, 1_000_000, mode)
				bChecked := make(chan struct{})
				var once sync.Once
				aT := &hookTransport{before: func(r *http.Request) {
					if isPlanDebit(r) {
						<-bChecked // A buys only after B's check refused
					}
				}}
				bT := &hookTransport{after: func(r *http.Request) {
					if r.Method == "GET" && strings.Contains(r.URL.Path, "/entitlements/") {
						once.Do(func() { close(bChecked) })
					}
				}}
				// B knows the customer's id (an earlier gate of its process resolved it).
				ga := w.gatekeeper(t, aT, autobuy.WithClock(func() time.Time { return w.srv.Now().Add(skew) }))
				gb := w.gatekeeper(t, bT, autobuy.WithClock(w.srv.Now))
				results := make(chan autobuy.Decision, 2)
				aStarted := make(chan struct{})
				aT.onLock = func() { close(aStarted) }
				go func() {
					d, err := ga.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("a"))
					assert.NoError(t, err)
					results <- d
				}()
				<-aStarted
				d, err := gb.Gate(context.Background(), quotastack.CustomerID(w.customerID), "chat_message", autobuy.WithEventID("b"))
				require.NoError(t, err)
				results <- d
				for range 2 {
					d := <-results
					assert.True(t, d.Allowed, d.Reason)
				}
				assert.Equal(t, 1, w.planGrants(), "one plan for one exhaustion")
			})
		})
	}
}

// hookTransport runs before and after hooks around each request; onLock,
// when set, runs once at the first wallet read (the gate holds the lock).
type hookTransport struct {
	before, after func(r *http.Request)
	onLock        func()
	once          sync.Once
}

func (h *hookTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if h.onLock != nil && r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/credits") {
		h.once.Do(h.onLock)
	}
	if h.before != nil {
		h.before(r)
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if h.after != nil {
		h.after(r)
	}
	return resp, err
}

// Case 5: two Gatekeepers of one process on the defaults share the journal
// and the lock: one plan for one exhaustion.
func TestCase5TwoGatekeepersOnDefaultsBuyOnePlan(t *testing.T) {
	t.Parallel()
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := setup(t, 1_000_000, mode.Options...)
		bChecked := make(chan struct{})
		var once sync.Once
		aT := &hookTransport{before: func(r *http.Request) {
			if isPlanDebit(r) {
				<-bChecked
			}
		}}
		bT := &hookTransport{after: func(r *http.Request) {
			if r.Method == "GET" && strings.Contains(r.URL.Path, "/entitlements/") {
				once.Do(func() { close(bChecked) })
			}
		}}
		newGate := func(rt http.RoundTripper) *autobuy.Gatekeeper {
			c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL), quotastack.WithTransport(rt))
			require.NoError(t, err)
			g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithClock(w.srv.Now))
			require.NoError(t, err)
			return g
		}
		ga, gb := newGate(aT), newGate(bT)
		aStarted := make(chan struct{})
		aT.onLock = func() { close(aStarted) }
		results := make(chan autobuy.Decision, 2)
		go func() {
			d, err := ga.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("a"))
			assert.NoError(t, err)
			results <- d
		}()
		<-aStarted
		d, err := gb.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("b"))
		require.NoError(t, err)
		results <- d
		for range 2 {
			d := <-results
			assert.True(t, d.Allowed, d.Reason)
		}
		assert.Equal(t, 1, w.planGrants(), "one plan for one exhaustion")
	})
}

// lostDoneReply stores every write, then loses the reply of the first write
// that closes an intent as done.
type lostDoneReply struct {
	*autobuy.MemoryJournal
	lost atomic.Bool
}

func (j *lostDoneReply) Put(ctx context.Context, in *autobuy.Intent) error {
	err := j.MemoryJournal.Put(ctx, in)
	if err == nil && in.State == autobuy.IntentDone && j.lost.CompareAndSwap(false, true) {
		in.Rev-- // the caller never learnt the new revision
		return context.DeadlineExceeded
	}
	return err
}

// Case 6: a done write whose reply is lost (it landed): the AutoBought hook
// fires once and the customer, who has the plan, is let through.
func TestCase6LostDoneReply(t *testing.T) {
	t.Parallel()
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := setup(t, 250_000, mode.Options...)
		var bought []autobuy.CustomerRef
		var mu sync.Mutex
		g := w.gate(t, autobuy.WithJournal(&lostDoneReply{MemoryJournal: autobuy.NewMemoryJournal(0)}), autobuy.WithClock(w.srv.Now),
			autobuy.WithHooks(autobuy.Hooks{AutoBought: func(_ context.Context, c autobuy.CustomerRef, _ *plan.Purchase) {
				mu.Lock()
				bought = append(bought, c)
				mu.Unlock()
			}}))
		d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		assert.Equal(t, autobuy.ReasonAutoBought, d.Reason, "%v", d.Err)
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, bought, 1, "the hook fires once")
		assert.Equal(t, w.cust, bought[0].Given, "the caller's form")
		assert.Equal(t, w.customerID(t, user), bought[0].ID, "and the QuotaStack id")
	})
}

// storedGrantRefusal makes the grant key's first answer a stored 4xx: before
// the gate's grant, a request with another body is sent under its key.
type storedGrantRefusal struct{ done atomic.Bool }

func (s *storedGrantRefusal) RoundTrip(r *http.Request) (*http.Response, error) {
	if isPlanGrant(r) && s.done.CompareAndSwap(false, true) {
		bad, _ := http.NewRequestWithContext(r.Context(), "POST", r.URL.String(), strings.NewReader(`{"credits": 0}`))
		bad.Header = r.Header.Clone()
		for attempt := 0; ; attempt++ { // a 5xx after executing: the retry gets the stored answer
			resp, err := http.DefaultTransport.RoundTrip(bad)
			if err != nil {
				return nil, err
			}
			_ = resp.Body.Close()
			if resp.StatusCode == 400 {
				break
			}
			if resp.StatusCode < 500 || attempt == 3 {
				return nil, fmt.Errorf("want a 400 stored, got %d", resp.StatusCode)
			}
			bad, _ = http.NewRequestWithContext(r.Context(), "POST", r.URL.String(), strings.NewReader(`{"credits": 0}`))
			bad.Header = r.Header.Clone()
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Case 7: a grant 409 is not read as success: the key's stored answer is a
// 4xx and no block of the order is listed, so the order is not closed as done
// (no plan): a person is told (review), and nothing is bought again.
func TestCase7Grant409OnAStored4xx(t *testing.T) {
	t.Parallel()
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := newJWorld(t, 250_000, mode)
		g := w.gatekeeper(t, &storedGrantRefusal{})
		d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.False(t, d.Allowed)
		assert.Equal(t, autobuy.ReasonPurchaseInReview, d.Reason)
		assert.Zero(t, w.bought.Load(), "no AutoBought for a plan never granted")
		assert.Equal(t, int32(1), w.reviews.Load())
		open, err := w.journal.Open(context.Background(), w.customerID)
		require.NoError(t, err)
		require.Len(t, open, 1)
		assert.Equal(t, autobuy.IntentReview, open[0].State)
		d, err = g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m2"))
		require.NoError(t, err)
		assert.Equal(t, autobuy.ReasonPurchaseInReview, d.Reason)
		assert.Equal(t, 1, w.planDebits(), "nothing debited again")
		// A person grants by hand and closes it.
		exp := w.srv.Now().Add(time.Hour)
		_, err = w.srv.Grant(user, quotastacktest.BlockSpec{Credits: hourPlan.CreditsMC, Priority: 10, ExpiresAt: &exp,
			Metadata: map[string]string{"source": "plan_grant", "plan_type": "1hr", "order_id": open[0].OrderID}})
		require.NoError(t, err)
		require.NoError(t, g.ResolveReview(context.Background(), w.customerID, open[0].OrderID, true))
		d, err = g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m3"))
		require.NoError(t, err)
		assert.Equal(t, autobuy.ReasonEntitled, d.Reason)
	})
}

// Case 8: replicas without a shared store. A purchase half done on one
// (debit landed, grant failed) is not bought again by another: both derive
// the same order for the exhaustion, so the other's debit replays and it
// grants the plan: one debit, one plan.
func TestCase8ReplicasWithoutSharedStoreFinishTheSameOrder(t *testing.T) {
	t.Parallel()
	runModes(t, func(t *testing.T, mode quotastacktest.Mode) {
		t.Parallel()
		w := setup(t, 1_000_000, mode.Options...)
		replica := func() *autobuy.Gatekeeper {
			return w.gate(t, autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker()), autobuy.WithClock(w.srv.Now))
		}
		a, b, c := replica(), replica(), replica()
		w.srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503, Count: 100})
		_, err := a.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
		require.ErrorIs(t, err, plan.ErrHalfDone)
		w.srv.ClearFaults()
		d, err := b.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
		require.NotNil(t, d.Purchase)
		assert.True(t, d.Purchase.DebitReplayed, "B's debit is A's, replayed")
		d, err = c.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m2"))
		require.NoError(t, err)
		assert.Equal(t, autobuy.ReasonEntitled, d.Reason)
		assert.Len(t, w.usageFor(hourPlan.Metric()), 1, "one debit")
		assert.Equal(t, 1, w.planGrants(), "one plan")
		// A finishes its own intent from its journal: the grant replays.
		d, err = a.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m3"))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		assert.Equal(t, 1, w.planGrants())
	}, "sparse") // no lifetime_earned: random order ids, the derived-order protection is off
}

// Hooks compose: OpenTelemetry-style hooks added after the user's; both
// AutoBought and PurchaseNeedsReview fire, the user's first.
func TestWithHooksComposes(t *testing.T) {
	t.Parallel()
	w := newJWorld(t, 250_000, quotastacktest.Mode{Name: "kind"})
	var order []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	otel := autobuy.Hooks{
		AutoBought:          func(context.Context, autobuy.CustomerRef, *plan.Purchase) { note("otel bought") },
		PurchaseNeedsReview: func(context.Context, autobuy.Intent, string) { note("otel review") },
	}
	g := w.gatekeeper(t, &storedGrantRefusal{}, autobuy.WithHooks(otel)) // the world's own hooks come first
	_, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
	require.NoError(t, err)
	assert.Equal(t, int32(1), w.reviews.Load(), "the user's PurchaseNeedsReview")
	w2 := newJWorld(t, 250_000, quotastacktest.Mode{Name: "kind"})
	d, err := w2.gatekeeper(t, nil, autobuy.WithHooks(otel)).Gate(context.Background(), w2.cust, "chat_message", autobuy.WithEventID("m2"))
	require.NoError(t, err)
	assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
	assert.Equal(t, int32(1), w2.bought.Load(), "the user's AutoBought")
	mu.Lock()
	assert.Equal(t, []string{"otel review", "otel bought"}, order)
	mu.Unlock()
	// The review is settled by a person (the debit landed: grant by hand).
	open, err := w.journal.Open(context.Background(), w.customerID)
	require.NoError(t, err)
	exp := w.srv.Now().Add(time.Hour)
	_, err = w.srv.Grant(user, quotastacktest.BlockSpec{Credits: hourPlan.CreditsMC, Priority: 10, ExpiresAt: &exp,
		Metadata: map[string]string{"source": "plan_grant", "plan_type": "1hr", "order_id": open[0].OrderID}})
	require.NoError(t, err)
	require.NoError(t, g.ResolveReview(context.Background(), w.customerID, open[0].OrderID, true))
}

// New checks everything it can without a request.
func TestNewValidatesAtConstruction(t *testing.T) {
	t.Parallel()
	c, err := quotastack.NewClient("qs_test_x", quotastack.WithBaseURL("http://127.0.0.1:1"))
	require.NoError(t, err)
	zero := hourPlan
	zero.CreditsMC = 0
	negative := hourPlan
	negative.PriceMC = -1
	short := hourPlan
	short.Duration = time.Millisecond
	cases := map[string][]autobuy.Option{
		"a plan of 0 credits":     {autobuy.WithPlan(zero)},
		"a negative price":        {autobuy.WithPlan(negative)},
		"a duration under 1 s":    {autobuy.WithPlan(short)},
		"no plan":                 nil,
		"a zero purchase timeout": {autobuy.WithPlan(hourPlan), autobuy.WithPurchaseTimeout(0)},
		"a limit without period":  {autobuy.WithPlan(hourPlan), autobuy.WithPurchaseLimit(3, 0)},
		"a negative suspension":   {autobuy.WithPlan(hourPlan), autobuy.WithSuspension(-time.Second)},
		"an unknown fallback":     {autobuy.WithPlan(hourPlan), autobuy.WithFallback(autobuy.FallbackPolicy(7))},
		"a nil clock":             {autobuy.WithPlan(hourPlan), autobuy.WithClock(nil)},
	}
	for name, opts := range cases {
		_, err := autobuy.New(c, opts...)
		assert.ErrorIs(t, err, quotastack.ErrInvalidInput, name)
	}
	_, err = autobuy.New(nil, autobuy.WithPlan(hourPlan))
	assert.ErrorIs(t, err, quotastack.ErrInvalidInput, "a nil client")
}

// waitOr waits for ch, at most d.
func waitOr(ch <-chan struct{}, d time.Duration) {
	select {
	case <-ch:
	case <-time.After(d):
	}
}

// Case 3, the other way to fool a 202 confirmation: another pending wallet
// debit. Two Gatekeepers of one process buy for one customer on a server
// that debits later (202): each read the wallet before the other's debit, so
// the other's debit would "confirm" one whose own debit is rejected (a free
// plan). On the defaults their purchases are serialised by the shared lock
// and journal: one debit, one plan, nothing granted on a rejected debit.
func TestCase3AnotherPendingDebitConfirmsNothing(t *testing.T) {
	t.Parallel()
	w := setup(t, 100_000, quotastacktest.WithAsyncUsage(quotastacktest.AsyncUsage{Defer: true}))
	aDebited, bRead := make(chan struct{}), make(chan struct{})
	var aOnce, bOnce sync.Once
	aT := &hookTransport{before: func(r *http.Request) {
		if isPlanDebit(r) {
			waitOr(bRead, 500*time.Millisecond) // B has read the wallet
		}
	}, after: func(r *http.Request) {
		if isPlanDebit(r) {
			aOnce.Do(func() { close(aDebited) })
		}
	}}
	bT := &hookTransport{before: func(r *http.Request) {
		if isPlanDebit(r) {
			waitOr(aDebited, 500*time.Millisecond) // A's debit is pending
		}
	}, after: func(r *http.Request) {
		if r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/credits") {
			bOnce.Do(func() { close(bRead) })
		}
	}}
	newGate := func(rt http.RoundTripper) *autobuy.Gatekeeper {
		c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL), quotastack.WithTransport(rt))
		require.NoError(t, err)
		g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithClock(w.srv.Now))
		require.NoError(t, err)
		return g
	}
	ga, gb := newGate(aT), newGate(bT)
	var wg sync.WaitGroup
	ds := make([]autobuy.Decision, 2)
	for i, g := range []*autobuy.Gatekeeper{ga, gb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprint("m", i)))
			assert.NoError(t, err)
			ds[i] = d
		}()
	}
	wg.Wait()
	w.srv.FlushAsyncUsage()
	assert.Empty(t, w.srv.RejectedUsage(), "no debit was rejected after its plan was granted")
	assert.Equal(t, 1, w.planGrants(), "one plan, on its own debit")
	assert.Equal(t, int64(0), w.wallet())
}

// Every callback that hands out a customer gets both id forms: the caller's
// (here the external id) and the QuotaStack id.
func TestBothIDFormsInEveryCallback(t *testing.T) {
	t.Parallel()
	w := setup(t, 150_000)
	uuid := w.customerID(t, user)
	var mu sync.Mutex
	seen := map[string]autobuy.CustomerRef{}
	note := func(hook string, c autobuy.CustomerRef) {
		mu.Lock()
		seen[hook] = c
		mu.Unlock()
	}
	var intents []autobuy.Intent
	j := &recordingJournal{MemoryJournal: autobuy.NewMemoryJournal(0), put: func(in autobuy.Intent) {
		mu.Lock()
		intents = append(intents, in)
		mu.Unlock()
	}}
	g, err := autobuy.New(w.client(t), autobuy.WithClock(w.srv.Now), autobuy.WithJournal(j),
		autobuy.WithPlanChooser(func(_ context.Context, c autobuy.CustomerRef, _ string, _ *quotastack.Entitlement) (plan.Plan, bool) {
			note("PlanChooser", c)
			return hourPlan, true
		}),
		autobuy.WithPreference(func(_ context.Context, c autobuy.CustomerRef) (bool, error) { note("Preference", c); return true, nil }),
		autobuy.WithHooks(autobuy.Hooks{
			AutoBought: func(_ context.Context, c autobuy.CustomerRef, p *plan.Purchase) {
				note("AutoBought", c)
				note("Purchase", autobuy.CustomerRef{Given: quotastack.ExternalID(p.ExternalCustomerID), ID: p.Customer.ID()})
			},
			Paywall: func(_ context.Context, c autobuy.CustomerRef, _ autobuy.Decision) { note("Paywall", c) },
			Decided: func(_ context.Context, c autobuy.CustomerRef, _ string, d autobuy.Decision, _ error) {
				note("Decided", c)
				note("Decision", d.Ref())
			},
		}))
	require.NoError(t, err)
	// An auto-buy, then 49 actions on the plan, then a paywall (50,000 mc left in the wallet).
	for i := range 51 {
		_, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprint("m", i)))
		require.NoError(t, err)
	}
	want := autobuy.CustomerRef{Given: w.cust, ID: uuid}
	for _, hook := range []string{"PlanChooser", "Preference", "AutoBought", "Purchase", "Paywall", "Decided", "Decision"} {
		assert.Equal(t, want, seen[hook], hook)
	}
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, intents)
	for _, in := range intents {
		assert.Equal(t, uuid, in.CustomerID)
		assert.Equal(t, user, in.ExternalCustomerID)
	}
}

// recordingJournal reports every intent it stores.
type recordingJournal struct {
	*autobuy.MemoryJournal
	put func(autobuy.Intent)
}

func (j *recordingJournal) Put(ctx context.Context, in *autobuy.Intent) error {
	err := j.MemoryJournal.Put(ctx, in)
	if err == nil {
		j.put(*in)
	}
	return err
}

// Case 8, the stale check: replicas without a shared store, B checks before
// A's purchase and reads the wallet after it. B finds plan credits its check
// didn't count and checks again instead of buying a second plan.
func TestCase8StaleCheckOnAnotherReplicaBuysNothing(t *testing.T) {
	t.Parallel()
	w := setup(t, 1_000_000)
	bChecked, aDone := make(chan struct{}), make(chan struct{})
	var once sync.Once
	bT := &hookTransport{
		before: func(r *http.Request) {
			if r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/credits") {
				<-aDone // A's purchase lands between B's check and B's wallet read
			}
		},
		after: func(r *http.Request) {
			if r.Method == "GET" && strings.Contains(r.URL.Path, "/entitlements/") {
				once.Do(func() { close(bChecked) })
			}
		},
	}
	replica := func(rt http.RoundTripper) *autobuy.Gatekeeper {
		c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL), quotastack.WithTransport(rt))
		require.NoError(t, err)
		g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithClock(w.srv.Now),
			autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker()))
		require.NoError(t, err)
		return g
	}
	a, b := replica(http.DefaultTransport), replica(bT)
	go func() {
		defer close(aDone)
		<-bChecked
		d, err := a.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("a"))
		assert.NoError(t, err)
		assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
	}()
	d, err := b.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("b"))
	require.NoError(t, err)
	assert.Equal(t, autobuy.ReasonEntitled, d.Reason, "on A's plan")
	assert.Equal(t, 1, w.planGrants(), "one plan for one exhaustion")
}
