package quotastack_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// The idempotency traps of issue 25, against the fake (which, like the
// contract, stores 4xx answers under their key for 24 hours).

func trapFake(t *testing.T) (*quotastacktest.ManualClock, *quotastack.Client) {
	t.Helper()
	clock := quotastacktest.NewManualClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	srv := quotastacktest.Start(t, quotastacktest.WithClock(clock.Now))
	t.Cleanup(func() { assert.NoError(t, srv.CheckInvariants()) })
	return clock, srv.Client(quotastack.WithRetry(2, time.Millisecond, 5*time.Millisecond))
}

// A grant sent before the customer exists stores a 404 under its key: every
// retry with that key replays the 404 for 24 hours, and the error says so.
func TestReplayedFailureSaysReplayed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, c := trapFake(t)
	grant := func() error {
		_, err := c.GrantCredits(ctx, quotastack.ExternalID("newbie"), quotastack.CreditGrantParams{Credits: 5_000},
			quotastack.WithIdempotencyKey(quotastack.SignupGrantKey("newbie")))
		return err
	}
	first := grant()
	require.ErrorIs(t, first, quotastack.ErrNotFound)
	assert.NotContains(t, first.Error(), "replayed")

	_, err := c.CreateCustomer(ctx, "newbie", "Newbie")
	require.NoError(t, err)
	again := grant()
	require.ErrorIs(t, again, quotastack.ErrNotFound, "the stored 404 is replayed although the customer exists now")
	var ae *quotastack.APIError
	require.ErrorAs(t, again, &ae)
	assert.True(t, ae.Replayed)
	assert.Contains(t, again.Error(), "(replayed)")
}

// GrantSignupBonus makes sure the customer exists before it grants, keys the
// grant by the customer's QuotaStack id, and is not poisoned by a 404 stored
// under SignupGrantKey(externalID) by an earlier, premature grant.
func TestGrantSignupBonusEnsuresTheCustomer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name      string
		premature bool // a bare GrantCredits before the customer existed stored a 404
		existing  bool // the customer exists already
	}{
		{name: "new customer"},
		{name: "existing customer", existing: true},
		{name: "after a premature grant stored a 404", premature: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, c := trapFake(t)
			if tt.premature {
				_, err := c.GrantCredits(ctx, quotastack.ExternalID("mia"), quotastack.CreditGrantParams{Credits: 5_000},
					quotastack.WithIdempotencyKey(quotastack.SignupGrantKey("mia")))
				require.ErrorIs(t, err, quotastack.ErrNotFound)
			}
			if tt.existing {
				_, err := c.CreateCustomer(ctx, "mia", "Mia")
				require.NoError(t, err)
			}
			var ids []string
			for range 2 { // the signup handler runs twice (a double submit)
				g, err := c.GrantSignupBonus(ctx, "mia", quotastack.SignupBonus{Credits: 5_000, Reason: "signup bonus"})
				require.NoError(t, err)
				ids = append(ids, g.Block.ID)
				assert.Equal(t, int64(5_000), g.Balance)
			}
			assert.Equal(t, ids[0], ids[1], "one block: the second call is a replay")
			b, err := c.Balance(ctx, quotastack.ExternalID("mia"))
			require.NoError(t, err)
			assert.Equal(t, int64(5_000), b.Balance)
		})
	}
}

// An expiry computed from the clock changes the body between a call and its
// retry (a 409 idempotency conflict). GrantSignupBonus computes it from the
// customer's creation time, which the server stores: a retry minutes later
// replays the grant.
func TestGrantSignupBonusExpiryIsStableAcrossRetries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock, c := trapFake(t)
	// The trap, with the plain call: the body's expiry moved with the clock.
	expiry := func() *time.Time { e := clock.Now().Add(30 * 24 * time.Hour); return &e }
	_, err := c.CreateCustomer(ctx, "ivy", "")
	require.NoError(t, err)
	_, err = c.GrantCredits(ctx, quotastack.ExternalID("ivy"), quotastack.CreditGrantParams{Credits: 1_000, ExpiresAt: expiry()},
		quotastack.WithIdempotencyKey("bonus:ivy"))
	require.NoError(t, err)
	clock.Advance(time.Minute)
	_, err = c.GrantCredits(ctx, quotastack.ExternalID("ivy"), quotastack.CreditGrantParams{Credits: 1_000, ExpiresAt: expiry()},
		quotastack.WithIdempotencyKey("bonus:ivy"))
	require.ErrorIs(t, err, quotastack.ErrIdempotencyConflict)

	// The helper: the same body on every retry.
	created := clock.Now()
	first, err := c.GrantSignupBonus(ctx, "zoe", quotastack.SignupBonus{Credits: 2_000, ValidFor: 30 * 24 * time.Hour})
	require.NoError(t, err)
	require.NotNil(t, first.Block.ExpiresAt)
	assert.True(t, first.Block.ExpiresAt.Equal(created.Add(30*24*time.Hour)), "expires ValidFor after the customer was created: %v", first.Block.ExpiresAt)
	clock.Advance(10 * time.Minute)
	again, err := c.GrantSignupBonus(ctx, "zoe", quotastack.SignupBonus{Credits: 2_000, ValidFor: 30 * 24 * time.Hour})
	require.NoError(t, err)
	assert.True(t, again.Meta.Replayed)
	assert.Equal(t, first.Block.ID, again.Block.ID)
}

// CreateCustomer's documented answers: a repeat within 24 h replays (same
// display name) or conflicts on the key (another display name); later, an
// existing external id is ErrConflict. EnsureCustomer returns the customer in
// every case.
func TestCreateCustomerRepeatsAndEnsureCustomer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock, c := trapFake(t)
	first, err := c.CreateCustomer(ctx, "lea", "Lea")
	require.NoError(t, err)
	assert.False(t, first.Meta.Replayed)

	same, err := c.CreateCustomer(ctx, "lea", "Lea")
	require.NoError(t, err, "same external id and name within 24 h: the first answer, replayed")
	assert.True(t, same.Meta.Replayed)
	assert.Equal(t, first.CustomerID, same.CustomerID)

	_, err = c.CreateCustomer(ctx, "lea", "Léa")
	require.ErrorIs(t, err, quotastack.ErrIdempotencyConflict, "another name within 24 h: the key's stored request differs")
	assert.False(t, errors.Is(err, quotastack.ErrConflict))

	clock.Advance(25 * time.Hour)
	_, err = c.CreateCustomer(ctx, "lea", "Lea")
	require.ErrorIs(t, err, quotastack.ErrConflict, "after 24 h the key is gone: the customer exists")

	for _, name := range []string{"Lea", "Léa", ""} {
		rec, err := c.EnsureCustomer(ctx, "lea", name)
		require.NoError(t, err)
		assert.Equal(t, first.CustomerID, rec.CustomerID)
	}
	rec, err := c.EnsureCustomer(ctx, "noor", "Noor")
	require.NoError(t, err)
	assert.Equal(t, "noor", rec.ExternalCustomerID)
	_, err = c.EnsureCustomer(ctx, "", "x")
	require.ErrorIs(t, err, quotastack.ErrInvalidInput)
}
