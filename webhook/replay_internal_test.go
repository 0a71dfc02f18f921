package webhook

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMemoryReplayStoreExpiresAndIsBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	s := NewMemoryReplayStore(3)
	s.now = func() time.Time { return now }

	res, err := s.Claim(ctx, "a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, ClaimNew, res)
	res, _ = s.Claim(ctx, "a", time.Minute)
	require.Equal(t, ClaimInFlight, res)
	require.NoError(t, s.Complete(ctx, "a", 11*time.Minute))
	res, _ = s.Claim(ctx, "a", time.Minute)
	require.Equal(t, ClaimDone, res)

	now = now.Add(10 * time.Minute)
	res, _ = s.Claim(ctx, "a", time.Minute)
	require.Equal(t, ClaimDone, res, "within retention")
	now = now.Add(2 * time.Minute)
	res, _ = s.Claim(ctx, "a", time.Minute)
	require.Equal(t, ClaimNew, res, "forgotten after retention")

	now = now.Add(2 * time.Minute) // the claim on "a" lapsed
	res, _ = s.Claim(ctx, "a", time.Minute)
	require.Equal(t, ClaimNew, res, "a lapsed claim is as if abandoned")
	require.NoError(t, s.Abandon(ctx, "a"))
	res, _ = s.Claim(ctx, "a", time.Minute)
	require.Equal(t, ClaimNew, res)

	for i := range 1000 {
		id := fmt.Sprintf("id_%d", i)
		_, _ = s.Claim(ctx, id, time.Minute)
		require.NoError(t, s.Complete(ctx, id, time.Hour))
		require.LessOrEqual(t, s.Len(), 3, "bounded memory")
	}
	res, _ = s.Claim(ctx, "id_999", time.Minute)
	require.Equal(t, ClaimDone, res, "the newest ids are kept")
}

func TestDefaultRetentionOutlastsTheTolerance(t *testing.T) {
	t.Parallel()
	v, err := NewVerifier("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	require.NoError(t, err)
	require.Greater(t, v.retention, 2*v.tolerance, "a delivery passes the timestamp check for twice the tolerance")
	require.IsType(t, &MemoryReplayStore{}, v.replay)
}

func TestReplayRetentionSaturates(t *testing.T) {
	t.Parallel()
	require.Equal(t, 11*time.Minute, replayRetention(5*time.Minute))
	for _, tol := range []time.Duration{150 * 365 * 24 * time.Hour, math.MaxInt64, math.MaxInt64 / 2} {
		require.Positive(t, replayRetention(tol), tol)
		require.GreaterOrEqual(t, replayRetention(tol), tol, tol)
	}
}
