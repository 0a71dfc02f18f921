package pgstore_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/pgstore"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// hookTransport calls before once, before the first request whose path has
// prefix.
type hookTransport struct {
	prefix string
	before func()
	once   sync.Once
}

func (h *hookTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(r.URL.Path, h.prefix) && r.Method == http.MethodPost {
		h.once.Do(h.before)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestGateLockLostMidPurchase: a Gatekeeper on replica A is buying a plan
// when its lock's connection is killed and replica B takes the customer's
// lock. A's next journal write is refused (the lock key the gate uses is the
// one the journal fences), so A stops (purchase_unavailable, ErrLockLost)
// with its intent open; B finishes it with the same keys: one debit, one
// grant, one AutoBought hook.
func TestGateLockLostMidPurchase(t *testing.T) {
	t.Parallel()
	r := replicas(t, 2)
	admin := testPool(t, 2)
	srv := quotastacktest.Start(t)
	require.NoError(t, srv.SeedRecipe())
	_, err := srv.Grant("user42", quotastacktest.BlockSpec{Credits: 250_000})
	require.NoError(t, err)
	acct, ok := srv.Account("user42")
	require.True(t, ok)
	key := "quotastack:autobuy:" + acct.CustomerID
	hourPlan := plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}

	var hooks int
	var mu sync.Mutex
	gate := func(s *pgstore.Store, tr http.RoundTripper) *autobuy.Gatekeeper {
		c, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL), quotastack.WithTransport(tr))
		require.NoError(t, err)
		g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithJournal(s.Journal()), autobuy.WithLocker(s.Locker()),
			autobuy.WithHooks(autobuy.Hooks{AutoBought: func(context.Context, autobuy.CustomerRef, *plan.Purchase) {
				mu.Lock()
				hooks++
				mu.Unlock()
			}}))
		require.NoError(t, err)
		return g
	}
	var unlockB func(context.Context) error
	tr := &hookTransport{prefix: "/v1/usage", before: func() {
		// A's debit is about to go: kill A's lock connection; B takes the lock.
		_, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) "+advisory+" AND granted", r[0].LockID(key))
		require.NoError(t, err)
		unlockB, err = r[1].Locker().Lock(ctx, key)
		require.NoError(t, err)
		t.Cleanup(func() { _ = unlockB(ctx) }) // before the pools close, also when the test fails
	}}
	a := gate(r[0], tr)
	d, err := a.Gate(ctx, quotastack.ExternalID("user42"), "chat_message", autobuy.WithEventID("m1"))
	require.NoError(t, err)
	assert.Equal(t, autobuy.ReasonPurchaseUnavailable, d.Reason)
	require.ErrorIs(t, d.Err, pgstore.ErrLockLost, "A's write after its debit was fenced")
	open, err := r[1].Journal().Open(ctx, acct.CustomerID)
	require.NoError(t, err)
	require.Len(t, open, 1)
	assert.Equal(t, autobuy.IntentPending, open[0].State, "A wrote nothing after losing the lock")
	require.NoError(t, unlockB(ctx))

	b := gate(r[1], http.DefaultTransport)
	n, err := b.Resume(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "B finished A's purchase")
	require.NoError(t, srv.CheckInvariants())
	orders := srv.PlanOrders("user42")
	require.Len(t, orders, 1)
	assert.Len(t, orders[0].Debits, 1, "one debit")
	assert.Len(t, orders[0].GrantBlockIDs, 1, "one grant")
	d, err = b.Gate(ctx, quotastack.ExternalID("user42"), "chat_message", autobuy.WithEventID("m1"))
	require.NoError(t, err)
	assert.True(t, d.Allowed, "%+v", d)
	assert.Nil(t, d.Purchase, "no second purchase")
	assert.Equal(t, 1, hooks)
}
