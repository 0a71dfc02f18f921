package redislock_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/redislock"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// Two replicas on leases, sharing an EventStore: an event gated on both is
// let through (and counted) once.
func TestLeaseEventsOnceAcrossReplicas(t *testing.T) {
	t.Parallel()
	_, rdb := miniClient(t)
	w := setup(t)
	exp := w.srv.Now().Add(time.Hour)
	_, err := w.srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: 100_000, Priority: 10, ExpiresAt: &exp})
	require.NoError(t, err)
	lease := autobuy.WithLease(autobuy.LeaseConfig{Actions: 20, Linger: time.Hour, Events: redislock.NewEventStore(rdb, "t:")})
	a := w.replica(t, redislock.New(rdb), lease)
	b := w.replica(t, redislock.New(rdb), lease)
	for i := range 10 {
		for _, g := range []*autobuy.Gatekeeper{a, b} {
			d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("m%d", i)))
			require.NoError(t, err)
			assert.True(t, d.Allowed)
			assert.True(t, d.Leased)
		}
	}
	require.NoError(t, a.Close(context.Background()))
	require.NoError(t, b.Close(context.Background()))
	var charged int64
	for _, e := range w.srv.Ledger("user42:companion7") {
		if e.Kind == "commit" && e.MetricKey == "chat_message" {
			charged -= e.Amount
		}
	}
	assert.Equal(t, int64(10_000), charged, "10 events, each charged once across the two replicas")
}
