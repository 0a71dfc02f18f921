package plan_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

const user = "user42:companion7"

var hourPlan = plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}

type world struct {
	srv    *quotastacktest.Server
	clock  *quotastacktest.ManualClock
	client *quotastack.Client
	cust   quotastack.Customer
}

// setup starts a fake with the recipe's world: a plan-only chat metric, a
// wallet-only purchase metric and a customer with walletMC in the wallet.
// The ledger invariants are checked when the test ends.
func setup(t *testing.T, walletMC int64) *world {
	t.Helper()
	clock := quotastacktest.NewManualClock(time.Now().UTC().Truncate(time.Second))
	srv := quotastacktest.Start(t, quotastacktest.WithClock(clock.Now))
	require.NoError(t, srv.SeedRecipe())
	_, err := srv.Grant(user, quotastacktest.BlockSpec{Credits: walletMC})
	require.NoError(t, err)
	client, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL),
		quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, srv.CheckInvariants()) })
	return &world{srv: srv, clock: clock, client: client, cust: quotastack.ExternalID(user)}
}

// entries counts the customer's ledger entries of kind (and key, if not empty).
func (w *world) entries(kind, key string) int {
	n := 0
	for _, e := range w.srv.Ledger(user) {
		if e.Kind == kind && (key == "" || e.IdempotencyKey == key) {
			n++
		}
	}
	return n
}

func (w *world) planBlocks() []quotastacktest.Block {
	var out []quotastacktest.Block
	for _, b := range w.srv.Blocks(user) {
		if b.Priority == 10 {
			out = append(out, b)
		}
	}
	return out
}

func (w *world) wallet() int64 {
	var sum int64
	for _, b := range w.srv.Blocks(user) {
		if b.Priority == 0 && b.ExpiresAt == nil {
			sum += b.RemainingAmount
		}
	}
	return sum
}

func TestBuyMovesPriceAndGrantsOnePlanBlock(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	start := w.clock.Now()

	p, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_1", plan.WithTrigger(plan.TriggerAutoBuy))
	require.NoError(t, err)

	assert.Equal(t, int64(150_000), w.wallet(), "exactly the price leaves the wallet")
	blocks := w.planBlocks()
	require.Len(t, blocks, 1)
	assert.Equal(t, int64(50_000), blocks[0].RemainingAmount)
	require.NotNil(t, blocks[0].ExpiresAt)
	assert.Equal(t, start.Add(time.Hour), blocks[0].ExpiresAt.UTC())
	assert.Equal(t, quotastack.Metadata{"source": "plan_grant", "plan_type": "1hr", "order_id": "ord_1", "trigger": "auto_buy"}, blocks[0].Metadata)

	assert.Equal(t, "ord_1", p.OrderID)
	assert.Equal(t, blocks[0].ID, p.Block.ID)
	assert.Equal(t, start.Add(time.Hour), p.ExpiresAt)
	assert.Equal(t, "plan-debit:1hr:ord_1", p.DebitKey)
	assert.Equal(t, "plan-grant:1hr:ord_1", p.GrantKey)
	assert.False(t, p.DebitReplayed)
	assert.False(t, p.GrantReplayed)
	assert.Equal(t, int64(100_000), p.Debit.Cost)
	assert.Equal(t, 1, w.entries("debit", p.DebitKey))
	assert.Equal(t, 1, w.entries("grant", p.GrantKey))

	events := w.srv.UsageEvents(user)
	require.Len(t, events, 1)
	assert.Equal(t, map[string]string{"plan_type": "1hr", "order_id": "ord_1", "trigger": "auto_buy"}, events[0].Metadata)
}

func TestBuyAgainWithSameOrderIsAReplay(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	first, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_same")
	require.NoError(t, err)
	w.clock.Advance(5 * time.Minute)
	second, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_same")
	require.NoError(t, err)

	assert.True(t, second.DebitReplayed)
	assert.True(t, second.GrantReplayed)
	assert.Equal(t, first.Block.ID, second.Block.ID)
	assert.Equal(t, first.ExpiresAt, second.ExpiresAt)
	assert.Equal(t, int64(150_000), w.wallet())
	assert.Len(t, w.planBlocks(), 1)
	assert.Equal(t, 1, w.entries("debit", ""))
}

func TestGrantFailuresAfterDebit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		fault        quotastacktest.Fault
		grantReplay  bool
		grantCallsGE int
	}{
		{"503 once is retried in the same call", quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503, Count: 1}, false, 2},
		{"response dropped after the grant executed", quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Drop: true, Count: 1}, true, 2},
		{"429 with Retry-After", quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 429, RetryAfter: "0", Count: 2}, false, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000)
			w.srv.InjectFault(tt.fault)

			p, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_f")
			require.NoError(t, err)
			assert.Equal(t, tt.grantReplay, p.GrantReplayed)
			assert.False(t, p.DebitReplayed)

			grants := 0
			for _, r := range w.srv.Requests() {
				if r.Path == "/v1/topup/grant" {
					grants++
					assert.Equal(t, "plan-grant:1hr:ord_f", r.IdempotencyKey, "every attempt carries the same key")
				}
			}
			assert.GreaterOrEqual(t, grants, tt.grantCallsGE)
			assert.Len(t, w.planBlocks(), 1)
			assert.Equal(t, 1, w.entries("grant", "plan-grant:1hr:ord_f"))
			assert.Equal(t, 1, w.entries("debit", "plan-debit:1hr:ord_f"))
			assert.Equal(t, int64(150_000), w.wallet())
		})
	}
}

func TestHalfDonePurchaseIsFinishedByTheNextBuy(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	// The grant keeps failing longer than the client retries.
	w.srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503, Count: 10})

	_, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_half")
	require.Error(t, err)
	assert.ErrorIs(t, err, plan.ErrHalfDone)
	assert.ErrorIs(t, err, quotastack.ErrServer)
	var perr *plan.Error
	require.ErrorAs(t, err, &perr)
	assert.Equal(t, "ord_half", perr.OrderID)
	assert.Equal(t, plan.StageGrant, perr.Stage)
	assert.Contains(t, err.Error(), `order id "ord_half"`)
	assert.Equal(t, int64(150_000), w.wallet(), "debited")
	assert.Empty(t, w.planBlocks(), "not granted")

	w.srv.ClearFaults()
	p, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_half")
	require.NoError(t, err)
	assert.True(t, p.DebitReplayed, "the debit is recognised, not repeated")
	assert.False(t, p.GrantReplayed)
	assert.Equal(t, int64(150_000), w.wallet())
	assert.Len(t, w.planBlocks(), 1)
	assert.Equal(t, 1, w.entries("debit", ""))
	assert.Equal(t, 1, w.entries("grant", p.GrantKey))
}

func TestCrashAfterDebitIsFinishedWithOneDebitAndOneGrant(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	// The process "crashed" right after its debit: only the first step ran
	// (sent, as every order is, for the customer's QuotaStack id).
	acct, ok := w.srv.Account(user)
	require.True(t, ok)
	_, err := w.client.Record(context.Background(), quotastack.UsageParams{
		Customer: quotastack.CustomerID(acct.CustomerID), MetricKey: "plan_purchase_1hr", Units: hourPlan.PriceMC,
		Metadata: map[string]string{"plan_type": "1hr", "order_id": "ord_crash", "trigger": "manual"},
	}, quotastack.WithIdempotencyKey(plan.DebitKey(hourPlan, "ord_crash")))
	require.NoError(t, err)
	debitTime := w.clock.Now()
	w.clock.Advance(10 * time.Minute)

	p, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_crash", plan.WithClock(w.clock.Now))
	require.NoError(t, err)
	assert.True(t, p.DebitReplayed)
	assert.Equal(t, debitTime.Add(time.Hour), p.ExpiresAt, "the plan runs from its debit")
	assert.Equal(t, 1, w.entries("debit", ""))
	assert.Equal(t, 1, w.entries("grant", p.GrantKey))
	assert.Len(t, w.planBlocks(), 1)
	assert.Equal(t, int64(150_000), w.wallet())
}

func TestLateFinishStartsThePlanNow(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	w.srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503, Count: 10})
	_, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_late", plan.WithClock(w.clock.Now))
	require.ErrorIs(t, err, plan.ErrHalfDone)
	w.srv.ClearFaults()

	w.clock.Advance(45 * time.Minute) // more than half the plan would be gone
	p, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_late", plan.WithClock(w.clock.Now))
	require.NoError(t, err)
	assert.Equal(t, w.clock.Now().Add(time.Hour), p.ExpiresAt)

	// Finishing again later is a conflict on the grant body; the granted block is found.
	w.clock.Advance(20 * time.Minute)
	again, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_late", plan.WithClock(w.clock.Now))
	require.NoError(t, err)
	assert.True(t, again.GrantReplayed)
	assert.Equal(t, p.Block.ID, again.Block.ID)
	assert.Len(t, w.planBlocks(), 1)
	assert.Equal(t, 1, w.entries("debit", ""))
}

func TestWalletShortEndsCleanly(t *testing.T) {
	t.Parallel()
	w := setup(t, 99_999)
	_, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_short")
	require.Error(t, err)
	assert.ErrorIs(t, err, plan.ErrWalletShort)
	assert.ErrorIs(t, err, quotastack.ErrInsufficientCredits)
	assert.NotErrorIs(t, err, plan.ErrHalfDone)
	assert.Equal(t, int64(99_999), w.wallet(), "nothing debited")
	assert.Empty(t, w.planBlocks(), "nothing granted")
	assert.Equal(t, 0, w.entries("debit", ""))
	for _, r := range w.srv.Requests() {
		assert.NotEqual(t, "/v1/topup/grant", r.Path, "no grant is attempted")
	}
}

func TestQueuedActivationStacksExpiries(t *testing.T) {
	t.Parallel()
	w := setup(t, 1_000_000)
	start := w.clock.Now()
	ctx := context.Background()

	a, err := plan.Buy(ctx, w.client, w.cust, hourPlan, "ord_a")
	require.NoError(t, err)
	w.clock.Advance(10 * time.Minute)
	b, err := plan.Buy(ctx, w.client, w.cust, hourPlan, "ord_b", plan.WithActivation(plan.Queued))
	require.NoError(t, err)
	c, err := plan.Buy(ctx, w.client, w.cust, hourPlan, "ord_c", plan.WithActivation(plan.Queued))
	require.NoError(t, err)
	d, err := plan.Buy(ctx, w.client, w.cust, hourPlan, "ord_d") // immediate: not stacked

	require.NoError(t, err)
	assert.Equal(t, start.Add(time.Hour), a.ExpiresAt)
	assert.Equal(t, start.Add(2*time.Hour), b.ExpiresAt)
	assert.Equal(t, start.Add(3*time.Hour), c.ExpiresAt)
	assert.Equal(t, start.Add(10*time.Minute+time.Hour), d.ExpiresAt)
	assert.Len(t, w.planBlocks(), 4, "plans never merge")

	// A retry of a queued order computes the same expiry (its own block is ignored).
	again, err := plan.Buy(ctx, w.client, w.cust, hourPlan, "ord_c", plan.WithActivation(plan.Queued))
	require.NoError(t, err)
	assert.True(t, again.GrantReplayed)
	assert.Equal(t, c.ExpiresAt, again.ExpiresAt)
}

func TestBuyRefusesBadInputBeforeAnyRequest(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	tests := []struct {
		name  string
		cust  quotastack.Customer
		p     plan.Plan
		order string
	}{
		{"empty order", w.cust, hourPlan, ""},
		{"order with space", w.cust, hourPlan, "a b"},
		{"no customer", quotastack.Customer{}, hourPlan, "o"},
		{"no price", w.cust, plan.Plan{Type: "x", CreditsMC: 1, Duration: time.Hour}, "o"},
		{"no credits", w.cust, plan.Plan{Type: "x", PriceMC: 1, Duration: time.Hour}, "o"},
		{"no duration", w.cust, plan.Plan{Type: "x", PriceMC: 1, CreditsMC: 1}, "o"},
		{"no type", w.cust, plan.Plan{PriceMC: 1, CreditsMC: 1, Duration: time.Hour}, "o"},
	}
	for _, tt := range tests {
		_, err := plan.Buy(context.Background(), w.client, tt.cust, tt.p, tt.order)
		assert.ErrorIs(t, err, quotastack.ErrInvalidInput, tt.name)
	}
	assert.Empty(t, w.srv.Requests())
}

func TestOrderIDs(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 10_000 {
		id := plan.NewOrderID()
		require.False(t, seen[id], "collision")
		seen[id] = true
	}
	assert.Equal(t, plan.DeriveOrderID("pay_1", "1hr"), plan.DeriveOrderID("pay_1", "1hr"))
	assert.NotEqual(t, plan.DeriveOrderID("ab", "c"), plan.DeriveOrderID("a", "bc"))
	assert.NotEqual(t, plan.DeriveOrderID("pay_1"), plan.DeriveOrderID("pay_2"))
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	day := plan.Plan{Type: "1d", PriceMC: 900_000, CreditsMC: 600_000, Duration: 24 * time.Hour}
	cat, err := plan.NewCatalog(day, hourPlan)
	require.NoError(t, err)
	cheap, ok := cat.Cheapest()
	require.True(t, ok)
	assert.Equal(t, "1hr", cheap.Type)
	got, ok := cat.Get("1d")
	assert.True(t, ok)
	assert.Equal(t, day, got)
	assert.Equal(t, "plan_purchase_1d", got.Metric())
	assert.Equal(t, 10, got.BlockPriority())

	_, err = plan.NewCatalog(hourPlan, hourPlan)
	assert.Error(t, err)
	_, err = plan.NewCatalog(plan.Plan{Type: "bad"})
	assert.Error(t, err)
}

func TestSameOrderWithAnotherTriggerIsRefused(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	_, err := plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_x")
	require.NoError(t, err)

	_, err = plan.Buy(context.Background(), w.client, w.cust, hourPlan, "ord_x", plan.WithTrigger(plan.TriggerAutoBuy))
	require.Error(t, err)
	assert.ErrorIs(t, err, quotastack.ErrIdempotencyConflict)
	var perr *plan.Error
	require.ErrorAs(t, err, &perr)
	assert.Equal(t, plan.StageDebit, perr.Stage)
	assert.Equal(t, int64(150_000), w.wallet(), "charged once")
	assert.Len(t, w.planBlocks(), 1)
}
