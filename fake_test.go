package quotastack_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// Behaviour of the rest of the API against the fake, through the SDK.

func fakeWithWallet(t *testing.T, walletMC int64) (*quotastacktest.Server, *quotastacktest.ManualClock, *quotastack.Client, quotastack.Customer) {
	t.Helper()
	clock := quotastacktest.NewManualClock(time.Now().UTC().Truncate(time.Second))
	srv := quotastacktest.Start(t, quotastacktest.WithClock(clock.Now))
	_, err := srv.CreateRule(quotastack.Rule{BillableMetricKey: "image_generation", CostType: "per_unit", UnitCost: 2000})
	require.NoError(t, err)
	_, err = srv.Grant("ivy", quotastacktest.BlockSpec{Credits: walletMC})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, srv.CheckInvariants()) })
	return srv, clock, srv.Client(quotastack.WithRetry(3, time.Millisecond, 5*time.Millisecond)), quotastack.ExternalID("ivy")
}

func TestReservationsAgainstTheFake(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	balance := func(t *testing.T, c *quotastack.Client, cust quotastack.Customer) *quotastack.Credits {
		t.Helper()
		b, err := c.Balance(ctx, cust)
		require.NoError(t, err)
		return b
	}

	t.Run("hold lowers the effective balance, partial commit returns the rest", func(t *testing.T) {
		t.Parallel()
		_, _, c, ivy := fakeWithWallet(t, 50_000)
		r, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: ivy, MetricKey: "image_generation", EstimatedUnits: 10, TTL: time.Minute})
		require.NoError(t, err)
		assert.Equal(t, "active", r.Status)
		assert.Equal(t, int64(20_000), r.ReservedAmount)
		b := balance(t, c, ivy)
		assert.Equal(t, int64(50_000), b.Balance)
		assert.Equal(t, int64(20_000), b.ReservedBalance)
		assert.Equal(t, int64(30_000), b.EffectiveBalance)

		done, err := c.Commit(ctx, r.ID, 7)
		require.NoError(t, err)
		assert.Equal(t, "committed", done.Status)
		assert.Equal(t, int64(14_000), done.CommittedAmount)
		b = balance(t, c, ivy)
		assert.Equal(t, int64(36_000), b.Balance)
		assert.Equal(t, int64(0), b.ReservedBalance)

		_, err = c.Commit(ctx, r.ID, 7)
		assert.ErrorIs(t, err, quotastack.ErrConflict, "a second commit (new key) is refused")
		var apiErr *quotastack.APIError
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, 409, apiErr.StatusCode)
	})

	t.Run("release returns all", func(t *testing.T) {
		t.Parallel()
		_, _, c, ivy := fakeWithWallet(t, 50_000)
		r, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: ivy, MetricKey: "image_generation", EstimatedUnits: 10})
		require.NoError(t, err)
		rel, err := c.Release(ctx, r.ID)
		require.NoError(t, err)
		assert.Equal(t, "released", rel.Status)
		b := balance(t, c, ivy)
		assert.Equal(t, int64(50_000), b.EffectiveBalance)
		_, err = c.Release(ctx, r.ID)
		assert.ErrorIs(t, err, quotastack.ErrConflict)
	})

	t.Run("an unfinished hold expires after its TTL", func(t *testing.T) {
		t.Parallel()
		_, clock, c, ivy := fakeWithWallet(t, 50_000)
		r, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: ivy, MetricKey: "image_generation", EstimatedUnits: 5, TTL: 30 * time.Second})
		require.NoError(t, err)
		assert.Equal(t, int64(40_000), balance(t, c, ivy).EffectiveBalance)
		clock.Advance(31 * time.Second)
		assert.Equal(t, int64(50_000), balance(t, c, ivy).EffectiveBalance)
		_, err = c.Commit(ctx, r.ID, 5)
		assert.ErrorIs(t, err, quotastack.ErrConflict, "an expired reservation is not active")
	})

	t.Run("a hold the credits can't cover is a 402", func(t *testing.T) {
		t.Parallel()
		_, _, c, ivy := fakeWithWallet(t, 5_000)
		_, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: ivy, MetricKey: "image_generation", EstimatedUnits: 10})
		assert.ErrorIs(t, err, quotastack.ErrInsufficientCredits)
	})

	t.Run("RunReserved commits on success and releases on failure", func(t *testing.T) {
		t.Parallel()
		_, _, c, ivy := fakeWithWallet(t, 50_000)
		p := quotastack.ReserveParams{Customer: ivy, MetricKey: "image_generation", EstimatedUnits: 10}
		r, err := c.RunReserved(ctx, p, func(ctx context.Context, r *quotastack.Reservation) (int64, error) {
			b, err := c.Balance(ctx, ivy)
			if err != nil {
				return 0, err
			}
			if b.EffectiveBalance != 30_000 {
				return 0, fmt.Errorf("effective balance %d during the action", b.EffectiveBalance)
			}
			return 3, nil
		})
		require.NoError(t, err)
		assert.Equal(t, "committed", r.Status)
		assert.Equal(t, int64(44_000), balance(t, c, ivy).Balance)

		boom := errors.New("model timed out")
		r, err = c.RunReserved(ctx, p, func(context.Context, *quotastack.Reservation) (int64, error) { return 0, boom })
		assert.ErrorIs(t, err, boom)
		assert.Equal(t, "released", r.Status)
		b := balance(t, c, ivy)
		assert.Equal(t, int64(44_000), b.Balance)
		assert.Equal(t, int64(44_000), b.EffectiveBalance)
	})
}

func TestCustomersGrantsAndCatalogAgainstTheFake(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := quotastacktest.Start(t)
	c := srv.Client()

	created, err := c.CreateCustomer(ctx, "user 7/companion:2", "Seven")
	require.NoError(t, err)
	assert.Equal(t, "user 7/companion:2", created.ExternalCustomerID)
	byExt, err := c.GetCustomer(ctx, quotastack.ExternalID("user 7/companion:2"))
	require.NoError(t, err)
	byID, err := c.GetCustomer(ctx, created.Ref())
	require.NoError(t, err)
	assert.Equal(t, created.CustomerID, byExt.CustomerID)
	assert.Equal(t, "Seven", byID.DisplayName)
	_, err = c.CreateCustomer(ctx, "user 7/companion:2", "Seven", quotastack.WithIdempotencyKey("customer:other-key"))
	assert.ErrorIs(t, err, quotastack.ErrConflict)
	_, err = c.GetCustomer(ctx, quotastack.ExternalID("nobody"))
	assert.ErrorIs(t, err, quotastack.ErrNotFound)

	bonus := quotastack.CreditGrantParams{Credits: 25_000, Source: "promotional", Reason: "signup bonus"}
	g1, err := c.GrantCredits(ctx, created.Ref(), bonus, quotastack.WithIdempotencyKey(quotastack.SignupGrantKey("user7")))
	require.NoError(t, err)
	g2, err := c.GrantCredits(ctx, created.Ref(), bonus, quotastack.WithIdempotencyKey(quotastack.SignupGrantKey("user7")))
	require.NoError(t, err)
	assert.True(t, g2.Meta.Replayed)
	assert.Equal(t, g1.Block.ID, g2.Block.ID)
	b, err := c.Balance(ctx, created.Ref())
	require.NoError(t, err)
	assert.Equal(t, int64(25_000), b.Balance, "granted once")

	for i := range 7 {
		_, err := c.CreateMetric(ctx, quotastack.Metric{Key: fmt.Sprintf("metric_%d", i), Name: "M"})
		require.NoError(t, err)
	}
	rule, err := c.CreateRule(ctx, quotastack.Rule{BillableMetricKey: "metric_3", CostType: quotastack.CostPerUnit, UnitCost: 5})
	require.NoError(t, err)
	got, err := c.GetRule(ctx, rule.ID)
	require.NoError(t, err)
	assert.Equal(t, int64(5), got.UnitCost)
	m, err := c.GetMetric(ctx, "metric_3")
	require.NoError(t, err)
	assert.Equal(t, "M", m.Name)

	var keys []string
	for m, err := range c.Metrics(ctx, 3) { // three pages of 3, 3 and 1
		require.NoError(t, err)
		keys = append(keys, m.Key)
	}
	assert.Len(t, keys, 7)
	pages := 0
	for _, r := range srv.Requests() {
		if r.Method == "GET" && r.Path == "/v1/billable-metrics" {
			pages++
		}
	}
	assert.Equal(t, 3, pages, "the iterator stops at has_more: false")
}
