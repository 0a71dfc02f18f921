package autobuy_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

const user = "user42:companion7"

var hourPlan = plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}

type world struct {
	srv   *quotastacktest.Server
	clock *quotastacktest.ManualClock
	cust  quotastack.Customer
}

// setup starts a fake with the recipe's world: chat_message at 1,000 mc
// payable from plan credits only, plan_purchase_1hr payable from the wallet
// only, and the customer's wallet. Ledger invariants are checked at the end.
func setup(t *testing.T, walletMC int64, opts ...quotastacktest.Option) *world {
	t.Helper()
	clock := quotastacktest.NewManualClock(time.Now().UTC().Truncate(time.Second))
	srv := quotastacktest.Start(t, append([]quotastacktest.Option{quotastacktest.WithClock(clock.Now)}, opts...)...)
	require.NoError(t, srv.SeedRecipe())
	var err error
	if walletMC > 0 {
		_, err = srv.Grant(user, quotastacktest.BlockSpec{Credits: walletMC})
		require.NoError(t, err)
	} else {
		_, err = srv.CreateCustomer(user, "")
		require.NoError(t, err)
	}
	t.Cleanup(func() { assert.NoError(t, srv.CheckInvariants()) })
	return &world{srv: srv, clock: clock, cust: quotastack.ExternalID(user)}
}

func (w *world) client(t *testing.T) *quotastack.Client {
	t.Helper()
	c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL),
		quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond))
	require.NoError(t, err)
	return c
}

func (w *world) gate(t *testing.T, opts ...autobuy.Option) *autobuy.Gatekeeper {
	t.Helper()
	g, err := autobuy.New(w.client(t), append([]autobuy.Option{autobuy.WithPlan(hourPlan)}, opts...)...)
	require.NoError(t, err)
	return g
}

// grantPlanCredits gives the customer live plan credits directly.
func (w *world) grantPlanCredits(t *testing.T, mc int64) {
	t.Helper()
	exp := w.clock.Now().Add(time.Hour)
	_, err := w.srv.Grant(user, quotastacktest.BlockSpec{Credits: mc, Priority: 10, ExpiresAt: &exp,
		Metadata: map[string]string{"plan_type": "1hr", "source": "plan_grant"}})
	require.NoError(t, err)
}

func (w *world) planGrants() int {
	n := 0
	for _, e := range w.srv.Ledger(user) {
		if e.Kind == "grant" && e.Metadata["source"] == "plan_grant" && e.Metadata["order_id"] != "" {
			n++
		}
	}
	return n
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

func (w *world) usageFor(metric string) []quotastacktest.UsageRecord {
	var out []quotastacktest.UsageRecord
	for _, u := range w.srv.UsageEvents(user) {
		if u.MetricKey == metric {
			out = append(out, u)
		}
	}
	return out
}
