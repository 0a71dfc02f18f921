package plan_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// failGrants fails every grant request (the server never sees it).
type failGrants struct{ base http.RoundTripper }

func (f failGrants) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/v1/topup/grant" {
		return nil, errors.New("connection reset")
	}
	return f.base.RoundTrip(r)
}

// Issue 20 #10: Buy retried with the other id form of the same customer
// finishes the order (its debit replays, the plan is granted) instead of
// getting 409 on the resent debit: the order is sent for the QuotaStack id,
// whichever form the caller passed.
func TestBuyRetriedWithTheOtherIDFormFinishesTheOrder(t *testing.T) {
	t.Parallel()
	for _, first := range []string{"external", "uuid"} {
		t.Run("first by "+first, func(t *testing.T) {
			t.Parallel()
			w := setup(t, 250_000)
			acct, ok := w.srv.Account(user)
			require.True(t, ok)
			ext, uuid := quotastack.ExternalID(user), quotastack.CustomerID(acct.CustomerID)
			a, b := ext, uuid
			if first == "uuid" {
				a, b = uuid, ext
			}
			broken, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL),
				quotastack.WithRetry(1, time.Millisecond, time.Millisecond), quotastack.WithTransport(failGrants{http.DefaultTransport}))
			require.NoError(t, err)
			_, err = plan.Buy(context.Background(), broken, a, hourPlan, "ord_forms", plan.WithClock(w.clock.Now))
			require.ErrorIs(t, err, plan.ErrHalfDone)

			p, err := plan.Buy(context.Background(), w.client, b, hourPlan, "ord_forms", plan.WithClock(w.clock.Now))
			require.NoError(t, err)
			assert.True(t, p.DebitReplayed)
			assert.Equal(t, uuid, p.Customer, "the order's customer is the QuotaStack id")
			assert.Equal(t, user, p.ExternalCustomerID)
			assert.Equal(t, 1, w.entries("debit", ""), "one debit")
			assert.Equal(t, 1, w.entries("grant", p.GrantKey), "one grant")
			assert.Equal(t, int64(150_000), w.wallet())
		})
	}
}
