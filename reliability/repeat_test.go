package reliability_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
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

// envBugs, when set, runs the tests that are skipped for a known bug, so they
// can be seen failing (and un-skipped once fixed).
const envBugs = "QUOTASTACK_BUGS"

// seedRecipe gives srv the recipe's rules: chat_message at 1,000 mc from plan
// credits only, and the purchase metric of p at 1 mc per unit from the
// wallet only.
func seedRecipe(t *testing.T, srv *quotastacktest.Server, p plan.Plan) {
	t.Helper()
	require.NoError(t, srv.SeedRecipe(p.Metric()))
}

// seedCustomer gives c its wallet and its credits of plan p, if any.
func seedCustomer(t *testing.T, srv *quotastacktest.Server, p plan.Plan, c soakCustomer) {
	t.Helper()
	_, err := srv.Grant(c.id, quotastacktest.BlockSpec{Credits: c.walletMC})
	require.NoError(t, err)
	if c.planMC > 0 {
		exp := srv.Now().Add(p.Duration)
		_, err = srv.Grant(c.id, quotastacktest.BlockSpec{Credits: c.planMC, Priority: p.BlockPriority(), ExpiresAt: &exp,
			Metadata: map[string]string{"plan_type": p.Type, "source": "plan_grant"}})
		require.NoError(t, err)
	}
}

// startRecipe starts a fake with the recipe's rules and one customer with
// walletMC of wallet and planMC of plan p's credits; its ledger invariants
// are checked at the end.
func startRecipe(t *testing.T, p plan.Plan, customer string, walletMC, planMC int64) *quotastacktest.Server {
	t.Helper()
	srv := quotastacktest.Start(t)
	seedRecipe(t, srv, p)
	seedCustomer(t, srv, p, soakCustomer{id: customer, walletMC: walletMC, planMC: planMC})
	t.Cleanup(func() { assert.NoError(t, srv.CheckInvariants()) })
	return srv
}

// hookedClient is a client of srv whose every attempt goes through hook,
// which may act before or after passing the request on with next.
func hookedClient(t *testing.T, srv *quotastacktest.Server, hook func(r *http.Request, next http.RoundTripper) (*http.Response, error)) *quotastack.Client {
	t.Helper()
	base := newCountingTransport()
	c, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL), quotastack.WithRetry(3, time.Millisecond, 2*time.Millisecond),
		quotastack.WithTransport(roundTripFunc(func(r *http.Request) (*http.Response, error) { return hook(r, base) })))
	require.NoError(t, err)
	t.Cleanup(base.CloseIdleConnections)
	return c
}

// lostAnswer sends r, lets the server execute it, then loses the answer, as
// a connection dropped after the server executed the request.
func lostAnswer(r *http.Request, next http.RoundTripper) (*http.Response, error) {
	resp, err := next.RoundTrip(r)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
	return nil, errors.New("connection reset by peer (after the server executed the request)")
}

// TestRepeatedGateOfAChargedAction: an action that was charged under its
// second usage key (usage:{event}:2, after a 402 on usage:{event}) and whose
// answer was lost must be reported allowed when the caller repeats the gate,
// even if the customer's plan credits have run out meanwhile (they went to
// this very action: its keys are resent, and no plan is bought for it).
func TestRepeatedGateOfAChargedAction(t *testing.T) {
	t.Parallel()
	const user = "repeat:user1"
	// A plan of one action makes the repeat find the credits exhausted.
	onePlan := plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: chatCostMC, Duration: time.Hour}
	srv := startRecipe(t, onePlan, user, 200_000, chatCostMC)
	cust := quotastack.ExternalID(user)
	other := srv.Client()

	var raced, loseSecond atomic.Bool
	loseSecond.Store(true)
	client := hookedClient(t, srv, func(r *http.Request, next http.RoundTripper) (*http.Response, error) {
		switch k := r.Header.Get("Idempotency-Key"); {
		case strings.HasSuffix(k, ":evt-1"):
			if raced.CompareAndSwap(false, true) {
				// A concurrent action takes the last plan credits between the
				// gate's check and its record: the record gets a 402.
				_, err := other.Record(r.Context(), quotastack.UsageParams{Customer: cust, MetricKey: chatMetric, Units: 1},
					quotastack.WithIdempotencyKey("usage:evt-other"))
				if err != nil {
					return nil, err
				}
			}
		case strings.HasSuffix(k, ":evt-1:2"):
			if loseSecond.Load() {
				return lostAnswer(r, next)
			}
		}
		return next.RoundTrip(r)
	})
	gate, err := autobuy.New(client, autobuy.WithPlan(onePlan))
	require.NoError(t, err)

	// First gate: 402 on usage:{customer}:evt-1, a plan bought, usage:{customer}:evt-1:2 charged,
	// its answer lost on every attempt: the caller doesn't know.
	_, err = gate.Gate(context.Background(), cust, chatMetric, autobuy.WithEventID("evt-1"))
	var reqErr *quotastack.RequestError
	require.ErrorAs(t, err, &reqErr)
	charged := usageByKey(srv, user)
	require.Contains(t, charged, "evt-1:2", "the server executed the record")

	// The caller repeats the gate. The plan's one action went to evt-1.
	loseSecond.Store(false)
	d, err := gate.Gate(context.Background(), cust, chatMetric, autobuy.WithEventID("evt-1"))
	require.NoError(t, err)
	assert.True(t, d.Allowed, "the action was charged, so it is allowed (got reason %q)", d.Reason)
	if assert.NotNil(t, d.Usage) {
		assert.Equal(t, charged["evt-1:2"], d.Usage.ID, "the decision names the charge")
	}
	after := usageByKey(srv, user)
	assert.NotContains(t, after, "evt-1", "never charged under its first key")
	assert.Len(t, after, len(charged), "nothing new: no plan bought for an action already paid")
}

// usageByKey maps the idempotency key of each of the customer's usage events,
// less its "usage:{customer_id}:" scope, to the event id.
func usageByKey(srv *quotastacktest.Server, user string) map[string]string {
	out := map[string]string{}
	for _, u := range srv.UsageEvents(user) {
		out[strings.TrimPrefix(u.IdempotencyKey, "usage:"+u.CustomerID+":")] = u.EventID
	}
	return out
}

// A wallet topup is a grant: it changes lifetime_earned, from which the
// auto-buy order id is derived (autobuy/purchase.go orderID).
var walletTopup = quotastacktest.BlockSpec{Credits: 100_000}

// TestHalfDonePurchaseFinishedAfterATopup: a purchase whose grant failed
// (debited, not granted) must be finished by the next gate, not paid again,
// even when the customer topped up the wallet in between.
func TestHalfDonePurchaseFinishedAfterATopup(t *testing.T) {
	t.Parallel()
	const user = "topup:user1"
	srv := startRecipe(t, soakPlan, user, 200_000, 0)
	cust := quotastack.ExternalID(user)
	gate, err := autobuy.New(srv.Client(quotastack.WithRetry(2, time.Millisecond, 2*time.Millisecond)), autobuy.WithPlan(soakPlan))
	require.NoError(t, err)

	// The debit goes through, both attempts of the grant fail.
	srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/topup/grant", Status: 503, Count: 2})
	_, err = gate.Gate(context.Background(), cust, chatMetric, autobuy.WithEventID("evt-1"))
	require.ErrorIs(t, err, plan.ErrHalfDone)

	_, err = srv.Grant(user, walletTopup)
	require.NoError(t, err)
	d, err := gate.Gate(context.Background(), cust, chatMetric, autobuy.WithEventID("evt-1"))
	require.NoError(t, err)
	assert.True(t, d.Allowed)

	v := &violations{t: t}
	purchases, _ := checkPurchases(v, srv, soakCustomer{id: user})
	v.done()
	assert.Equal(t, 1, purchases)
	assert.Equal(t, int64(200_000), walletOf(srv, user), "one plan paid: 200,000 + 100,000 − 100,000")
}

// TestReplicasRaceWithATopup: two replicas, each with its own (default)
// LocalLocker, gate the same exhausted customer; the package promises that
// the derived purchase keys keep it to one plan even without a shared lock.
// A wallet topup landing between their balance reads gives them two order
// ids, and two plans.
func TestReplicasRaceWithATopup(t *testing.T) {
	if os.Getenv(envBugs) == "" {
		// A known limit, documented on autobuy.Locker and in the README: only a
		// shared Locker serialises replicas across a topup. (A shared lock can't
		// be shown here: replica B runs inside replica A's locked purchase.)
		t.Skip("LIMIT: replicas without a shared Locker that read lifetime_earned on either side of a wallet topup derive different order ids; set " + envBugs + "=1 to watch it")
	}
	t.Parallel()
	const user = "topup:user2"
	srv := startRecipe(t, soakPlan, user, 200_000, 0)
	cust := quotastack.ExternalID(user)
	gateB, err := autobuy.New(srv.Client(), autobuy.WithPlan(soakPlan))
	require.NoError(t, err)

	var once atomic.Bool
	clientA := hookedClient(t, srv, func(r *http.Request, next http.RoundTripper) (*http.Response, error) {
		if strings.HasPrefix(r.Header.Get("Idempotency-Key"), "plan-debit:") && once.CompareAndSwap(false, true) {
			// Replica A has read the balance and is about to debit. The
			// customer tops up; replica B gates an action.
			if _, err := srv.Grant(user, walletTopup); err != nil {
				return nil, err
			}
			d, err := gateB.Gate(r.Context(), cust, chatMetric, autobuy.WithEventID("evt-B"))
			if err != nil || !d.Allowed {
				return nil, errors.New("replica B did not get its action through")
			}
		}
		return next.RoundTrip(r)
	})
	gateA, err := autobuy.New(clientA, autobuy.WithPlan(soakPlan))
	require.NoError(t, err)

	d, err := gateA.Gate(context.Background(), cust, chatMetric, autobuy.WithEventID("evt-A"))
	require.NoError(t, err)
	assert.True(t, d.Allowed)

	v := &violations{t: t}
	purchases, _ := checkPurchases(v, srv, soakCustomer{id: user})
	v.done()
	assert.Equal(t, 1, purchases, "one exhaustion, one plan")
}

func walletOf(srv *quotastacktest.Server, user string) int64 {
	var sum int64
	for _, b := range srv.Blocks(user) {
		if b.Priority == quotastack.WalletPriority && b.ExpiresAt == nil {
			sum += b.RemainingAmount
		}
	}
	return sum
}
