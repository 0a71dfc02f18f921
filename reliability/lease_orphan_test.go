package reliability_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// Found by the soak (every mode on one shared ChargeLog, faults, the rate
// limit, crashes): a lease reservation whose POST /v1/reserve executed but
// whose answer was lost on every attempt held the customer's plan credits
// until its TTL, and no Gatekeeper knew it: the next gate's check was refused
// and it bought a plan the customer didn't need. A lease is now recorded in
// the ChargeLog before its reserve is sent, and resolved with the same key.
func TestLeaseReserveWithALostAnswerMakesNoGateBuy(t *testing.T) {
	t.Parallel()
	srv := startRecipe(t, soakPlan, "user42", 250_000, 10_000) // a wallet for two plans, ten actions of plan credits
	client, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL), quotastack.WithRetry(3, time.Millisecond, 2*time.Millisecond))
	require.NoError(t, err)
	shared := []autobuy.Option{autobuy.WithPlan(soakPlan), autobuy.WithJournal(autobuy.NewMemoryJournal(0)),
		autobuy.WithLocker(autobuy.NewLocalLocker()), autobuy.WithChargeLog(autobuy.NewMemoryChargeLog(0))}
	leased, err := autobuy.New(client, append(shared, autobuy.WithLease(autobuy.LeaseConfig{Actions: 10, Linger: time.Hour}))...)
	require.NoError(t, err)
	plain, err := autobuy.New(client, shared...)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, leased.Close(context.Background())) })
	cust := quotastack.ExternalID("user42")

	// The lease's reserve executes; its answer is lost on every attempt.
	srv.InjectFault(quotastacktest.Fault{Method: http.MethodPost, PathPrefix: "/v1/reserve", Drop: true, Count: 10})
	_, err = leased.Gate(context.Background(), cust, chatMetric, autobuy.WithEventID("m1"))
	require.Error(t, err)
	srv.ClearFaults()

	d, err := plain.Gate(context.Background(), cust, chatMetric, autobuy.WithEventID("m2"))
	require.NoError(t, err)
	if d.Allowed {
		srv.NoteAllowed("user42", chatMetric, "m2", 1)
	}
	assert.True(t, d.Allowed)
	assert.Nil(t, d.Purchase, "no plan: the customer's ten actions of plan credits are held by a lease nobody knows")
}
