package autobuy_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

func TestGateBranches(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		walletMC   int64
		planMC     int64
		opts       []autobuy.GateOption
		gateOpts   []autobuy.Option
		allowed    bool
		reason     autobuy.Reason
		purchased  bool
		roundTrips int
		paywall    bool
	}{
		{name: "entitled: record and go", walletMC: 250_000, planMC: 5_000, allowed: true, reason: autobuy.ReasonEntitled, roundTrips: 2},
		{name: "exhausted, wallet pays: auto-buy", walletMC: 250_000, allowed: true, reason: autobuy.ReasonAutoBought, purchased: true, roundTrips: 6},
		{name: "exhausted, preference off: plan picker", walletMC: 250_000, allowed: false, reason: autobuy.ReasonPlanExpired, roundTrips: 1, paywall: true,
			gateOpts: []autobuy.Option{autobuy.WithPreference(func(context.Context, autobuy.CustomerRef) (bool, error) { return false, nil })}},
		{name: "exhausted, per-call opt-out: plan picker", walletMC: 250_000, allowed: false, reason: autobuy.ReasonPlanExpired, roundTrips: 1, paywall: true,
			opts: []autobuy.GateOption{autobuy.WithAutoBuy(false)}},
		{name: "exhausted, wallet short: paywall", walletMC: 99_000, allowed: false, reason: autobuy.ReasonEmptyWallet, roundTrips: 2, paywall: true},
		{name: "exhausted, empty wallet: paywall", walletMC: 0, allowed: false, reason: autobuy.ReasonEmptyWallet, roundTrips: 2, paywall: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, tt.walletMC)
			if tt.planMC > 0 {
				w.grantPlanCredits(t, tt.planMC)
			}
			var paywalls, bought atomic.Int32
			hooks := autobuy.WithHooks(autobuy.Hooks{
				Paywall:    func(context.Context, autobuy.CustomerRef, autobuy.Decision) { paywalls.Add(1) },
				AutoBought: func(context.Context, autobuy.CustomerRef, *plan.Purchase) { bought.Add(1) },
			})
			g := w.gate(t, append(tt.gateOpts, hooks)...)
			w.srv.ResetRequests()
			walletBefore := w.wallet()

			d, err := g.Gate(context.Background(), w.cust, "chat_message", append(tt.opts, autobuy.WithEventID("msg_1"))...)
			require.NoError(t, err)
			assert.Equal(t, tt.allowed, d.Allowed)
			assert.Equal(t, tt.reason, d.Reason)
			assert.False(t, d.Fallback)
			assert.Len(t, w.srv.Requests(), tt.roundTrips, "round trips")
			require.NotNil(t, d.Entitlement)

			chat := w.usageFor("chat_message")
			if tt.allowed {
				require.NotNil(t, d.Usage)
				require.Len(t, chat, 1)
				assert.Equal(t, "usage:"+d.CustomerID+":msg_1", chat[0].IdempotencyKey)
			} else {
				assert.Nil(t, d.Usage)
				assert.Empty(t, chat, "a denied action has no usage event")
			}
			if tt.purchased {
				require.NotNil(t, d.Purchase)
				assert.Equal(t, plan.TriggerAutoBuy, d.Purchase.Trigger)
				assert.Equal(t, 1, w.planGrants())
				assert.Equal(t, walletBefore-hourPlan.PriceMC, w.wallet())
				assert.Equal(t, "auto_buy", w.usageFor("plan_purchase_1hr")[0].Metadata["trigger"])
				assert.Equal(t, int32(1), bought.Load())
			} else {
				assert.Nil(t, d.Purchase)
				assert.Equal(t, 0, w.planGrants())
				assert.Equal(t, walletBefore, w.wallet(), "wallet untouched")
			}
			assert.Equal(t, tt.paywall, paywalls.Load() == 1)
		})
	}
}

func TestNeverBuysTwiceWhenThePlanDoesNotEntitle(t *testing.T) {
	t.Parallel()
	w := setup(t, 1_000_000)
	// Misconfigured plan: its credits sit below the metric's min_priority 10.
	bad := hourPlan
	bad.Priority = 5
	g, err := autobuy.New(w.client(t), autobuy.WithPlan(bad))
	require.NoError(t, err)

	want := []autobuy.Reason{autobuy.ReasonEntitlementFailedAfterPurchase, autobuy.ReasonAutoBuySuspended, autobuy.ReasonAutoBuySuspended}
	for i, reason := range want {
		d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("m%d", i)))
		require.NoError(t, err)
		assert.False(t, d.Allowed)
		assert.Equal(t, reason, d.Reason, "gate %d", i)
		require.NotNil(t, d.Limit)
		assert.Equal(t, "suspended", d.Limit.Kind)
	}
	assert.Equal(t, 1, w.planGrants(), "one purchase, no loop, not even across calls")
	assert.Empty(t, w.usageFor("chat_message"))
}

// spendFirst spends the customer's plan credits right before the gate's
// first chat usage record reaches the server, as a concurrent request would.
type spendFirst struct {
	once  sync.Once
	spend func()
	next  http.RoundTripper
}

func (s *spendFirst) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && r.URL.Path == "/v1/usage" && strings.HasSuffix(r.Header.Get("Idempotency-Key"), ":msg_race") {
		s.once.Do(s.spend)
	}
	return s.next.RoundTrip(r)
}

func TestRecord402AfterPositiveCheckBuysInsteadOfFailing(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	w.grantPlanCredits(t, 1_000)
	other := w.client(t)
	tr := &spendFirst{next: http.DefaultTransport, spend: func() {
		_, err := other.Record(context.Background(), quotastack.UsageParams{Customer: w.cust, MetricKey: "chat_message", Units: 1})
		assert.NoError(t, err)
	}}
	c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL), quotastack.WithTransport(tr))
	require.NoError(t, err)
	g, err := autobuy.New(c, autobuy.WithPlan(hourPlan))
	require.NoError(t, err)

	d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("msg_race"))
	require.NoError(t, err, "a 402 from the record is not an outage")
	assert.True(t, d.Allowed)
	assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
	assert.Equal(t, 1, w.planGrants())
	assert.Len(t, w.usageFor("chat_message"), 2, "the spender's and ours")
}

func TestOutagePolicies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		policy  autobuy.FallbackPolicy
		wantErr bool
		allowed bool
	}{
		{autobuy.ReturnError, true, false},
		{autobuy.FailClosed, false, false},
		{autobuy.FailOpen, false, true},
	}
	for _, tt := range tests {
		w := setup(t, 250_000)
		w.grantPlanCredits(t, 5_000)
		g := w.gate(t, autobuy.WithFallback(tt.policy))
		w.srv.FailNext(100, 503)
		d, err := g.Gate(context.Background(), w.cust, "chat_message")
		if tt.wantErr {
			require.Error(t, err)
			assert.ErrorIs(t, err, quotastack.ErrServer)
			continue
		}
		require.NoError(t, err)
		assert.True(t, d.Fallback)
		assert.Equal(t, autobuy.ReasonUnavailable, d.Reason)
		assert.Equal(t, tt.allowed, d.Allowed)
		assert.ErrorIs(t, d.Err, quotastack.ErrServer)
		assert.Empty(t, w.usageFor("chat_message"))
	}
}

func TestHalfDonePurchaseIsFinishedByALaterGate(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	journal := autobuy.NewMemoryJournal(0) // stands for a durable journal both processes share
	g := w.gate(t, autobuy.WithJournal(journal))
	w.srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503, Count: 10})

	_, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
	require.Error(t, err, "an outage with the default ReturnError policy")
	assert.ErrorIs(t, err, plan.ErrHalfDone)
	assert.ErrorIs(t, err, plan.ErrUnknownOutcome)
	assert.Equal(t, int64(150_000), w.wallet(), "debited once")
	assert.Equal(t, 0, w.planGrants())

	w.srv.ClearFaults()
	// Another gate (a new process, say) meets the same exhaustion.
	d, err := w.gate(t, autobuy.WithJournal(journal)).Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	assert.Equal(t, autobuy.ReasonEntitled, d.Reason, "the finished plan covered it; nothing new was bought")
	assert.Nil(t, d.Purchase)
	assert.Equal(t, int64(150_000), w.wallet())
	assert.Equal(t, 1, w.planGrants())
	assert.Len(t, w.usageFor("plan_purchase_1hr"), 1)
	assert.Len(t, w.usageFor("chat_message"), 1)
}

func TestFaultsDuringTheGate(t *testing.T) {
	t.Parallel()
	faults := map[string]quotastacktest.Fault{
		"503 on the grant":          {Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503, Count: 2},
		"debit response dropped":    {Method: "POST", PathPrefix: "/v1/usage", Drop: true, Count: 1},
		"429 with Retry-After":      {Method: "POST", PathPrefix: "/v1/usage", Status: 429, RetryAfter: "0", Count: 2},
		"check 500 then fine":       {Method: "GET", PathPrefix: "/v1/customer-by-external-id/", Status: 500, Count: 1},
		"record response dropped":   {Method: "POST", PathPrefix: "/v1/usage", Drop: true, Count: 2},
		"grant response dropped":    {Method: "POST", PathPrefix: "/v1/topup/grant", Drop: true, Count: 1},
		"balance read 503 twice":    {Method: "GET", PathPrefix: "/v1/customer-by-external-id/user42%3Acompanion7/credits", Status: 503, Count: 2},
		"everything slow and a 503": {Method: "POST", PathPrefix: "", Status: 503, Count: 1},
	}
	for name, f := range faults {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000)
			g := w.gate(t)
			w.srv.InjectFault(f)
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("evt_f"))
			require.NoError(t, err)
			assert.True(t, d.Allowed)
			assert.Equal(t, autobuy.ReasonAutoBought, d.Reason)
			assert.Equal(t, 1, w.planGrants(), "purchase completed once")
			assert.Len(t, w.usageFor("plan_purchase_1hr"), 1, "debited once")
			assert.Equal(t, int64(150_000), w.wallet())
			chat := w.usageFor("chat_message")
			require.Len(t, chat, 1, "usage recorded exactly once")
			assert.Equal(t, "usage:"+d.CustomerID+":evt_f", chat[0].IdempotencyKey)
		})
	}
}

func TestReservationMode(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	w.grantPlanCredits(t, 10_000)
	g := w.gate(t)
	c := w.client(t)

	d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithUnits(3), autobuy.WithReservation(0))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	require.NotNil(t, d.Hold)
	assert.Nil(t, d.Usage)
	assert.Equal(t, int64(3_000), d.Hold.ReservedAmount)
	acct, _ := w.srv.Account(user)
	assert.Equal(t, int64(3_000), acct.ReservedBalance)

	r, err := c.Commit(context.Background(), d.Hold.ID, 2)
	require.NoError(t, err)
	assert.Equal(t, "committed", r.Status)
	acct, _ = w.srv.Account(user)
	assert.Equal(t, int64(0), acct.ReservedBalance)
	assert.Equal(t, int64(250_000+8_000), acct.Balance)
}

func TestPackageLevelGateUsesTheDefault(t *testing.T) { //nolint:paralleltest // sets the package default
	_, err := autobuy.Gate(context.Background(), quotastack.ExternalID("x"), "chat_message")
	if autobuy.Default() == nil {
		assert.ErrorIs(t, err, autobuy.ErrNoDefault)
	}
	w := setup(t, 250_000)
	w.grantPlanCredits(t, 5_000)
	autobuy.SetDefault(w.gate(t))
	t.Cleanup(func() { autobuy.SetDefault(nil) })
	d, err := autobuy.Gate(context.Background(), w.cust, "chat_message")
	require.NoError(t, err)
	assert.True(t, d.Allowed)
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	g := w.gate(t)
	w.srv.ResetRequests()
	for _, tc := range []struct {
		c      quotastack.Customer
		metric string
		opts   []autobuy.GateOption
	}{
		{quotastack.Customer{}, "chat_message", nil},
		{w.cust, "", nil},
		{w.cust, "chat_message", []autobuy.GateOption{autobuy.WithUnits(-1)}},
		{w.cust, "chat_message", []autobuy.GateOption{autobuy.WithUnits(0)}},
	} {
		_, err := g.Gate(context.Background(), tc.c, tc.metric, tc.opts...)
		assert.ErrorIs(t, err, quotastack.ErrInvalidInput)
	}
	assert.Empty(t, w.srv.Requests(), "refused before any request")
	_, err := autobuy.New(w.client(t))
	assert.Error(t, err, "a plan is required")
}
