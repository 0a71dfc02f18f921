package redislock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy/redislock"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

var _ quotastack.Pacer = (*redislock.Pacer)(nil)

// Two replicas (two clients) share one budget through Redis: together they
// get the burst (n/20, at least 1) and one slot per period/(0.9 n), and a
// call whose slot comes too late is refused at once, whichever replica makes it.
func TestPacerSharedAcrossReplicas(t *testing.T) {
	t.Parallel()
	_, rdb := miniClient(t)
	srv := quotastacktest.Start(t)
	newReplica := func() *quotastack.Client {
		p, err := redislock.NewPacer(rdb, "budget:tenant", 40, time.Hour) // burst 2, then one per 100 s
		require.NoError(t, err)
		return srv.Client(quotastack.WithPacer(p))
	}
	a, b := newReplica(), newReplica()
	ctx := context.Background()
	call := func(c *quotastack.Client) error {
		short, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := c.GetCustomer(short, quotastack.ExternalID("nobody"))
		if errors.Is(err, quotastack.ErrNotFound) {
			return nil // answered: the request was sent
		}
		return err
	}
	for i := range 2 {
		c := a
		if i%2 == 1 {
			c = b
		}
		require.NoError(t, call(c), "call %d", i)
	}
	for _, c := range []*quotastack.Client{a, b} {
		err := call(c)
		var rl *quotastack.RateLimitError
		require.ErrorAs(t, err, &rl)
		assert.Equal(t, "budget", rl.Reason)
		assert.InDelta(t, float64(100*time.Second), float64(rl.Wait), float64(2*time.Second))
	}
	assert.Len(t, srv.Requests(), 2, "refused calls send nothing")
}

// Past the burst, calls wait for their slot and go.
func TestPacerPaces(t *testing.T) {
	t.Parallel()
	_, rdb := miniClient(t)
	p, err := redislock.NewPacer(rdb, "budget:paced", 20, time.Second) // burst 1, then one per 55 ms
	require.NoError(t, err)
	ctx := context.Background()
	start := time.Now()
	for range 6 {
		require.NoError(t, p.Wait(ctx, time.Time{}))
	}
	assert.GreaterOrEqual(t, time.Since(start), 5*55*time.Millisecond-10*time.Millisecond)

	_, err = redislock.NewPacer(rdb, "x", 0, time.Second)
	require.Error(t, err)
}

func TestPacerRedisDown(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	p, err := redislock.NewPacer(rdb, "budget:down", 10, time.Second)
	require.NoError(t, err)
	mr.Close()
	err = p.Wait(context.Background(), time.Time{})
	require.Error(t, err)
	require.ErrorContains(t, err, "pacer")
}
