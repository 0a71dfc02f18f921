package autobuy_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/chargelogtest"
)

// lostTakes is a ChargeLog whose takes from a lease land and then answer an
// error, lose times (the store's answer lost: a connection reset after the
// write). down makes every take fail after landing, until cleared.
type lostTakes struct {
	autobuy.ChargeLog
	lose   atomic.Int32
	down   atomic.Bool
	chance float64      // and each counted take's answer is lost with this chance
	landed atomic.Int32 // takes counted whose answer was lost, by id
	ids    sync.Map
}

func (c *lostTakes) TakeLease(ctx context.Context, customerID, metric string, units int64, now time.Time, take string) (autobuy.Lease, bool, error) {
	l, ok, err := c.ChargeLog.TakeLease(ctx, customerID, metric, units, now, take)
	if err == nil && (c.down.Load() || c.lose.Add(-1) >= 0 || (ok && rand.Float64() < c.chance)) {
		if _, seen := c.ids.LoadOrStore(take, true); ok && !seen {
			c.landed.Add(1)
		}
		return autobuy.Lease{}, false, errors.New("read tcp 127.0.0.1:6379: connection reset by peer")
	}
	return l, ok, err
}

// leasedOnLostTakes returns a lease-mode gate on a lostTakes log, its lease
// reserved by a first message (m0).
func leasedOnLostTakes(t *testing.T, w *world, opts ...autobuy.Option) (*lostTakes, *autobuy.Gatekeeper) {
	t.Helper()
	log := &lostTakes{ChargeLog: autobuy.NewMemoryChargeLog(0)}
	g := w.gate(t, append([]autobuy.Option{autobuy.WithChargeLog(log), leaseOf(10)}, opts...)...)
	w.gateNoted(t, g, w.cust, "m0")
	return log, g
}

// A take from a lease that was counted and whose answer was lost: on the
// code before, the gate went the per-action way, and the action was charged
// twice (a usage record, and the unit committed with the lease). The take is
// sent again under its id, the store answers it counted, and the gate is
// served by it: charged once.
func TestATakeWhoseAnswerIsLostIsCountedOnce(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		log, g := leasedOnLostTakes(t, w)
		log.lose.Store(2)
		d := w.gateNoted(t, g, w.cust, "m1")
		assert.True(t, d.Leased, "served by the take whose answer was lost")
		assert.Equal(t, int32(1), log.landed.Load(), "the first send counted it; the resends found it counted")
		w.gateNoted(t, g, w.cust, "m2")
		require.NoError(t, g.Close(context.Background()))
		assert.Equal(t, int64(3_000), w.chargedChatMC(), "three messages, once each")
	})
}

// The store stops answering right after it counted a take: the gate gets
// an error (the take may have been counted: it must not charge the action
// another way), and the event stays claimed for a lease. Its retry, once the
// store answers again, never charges it a second time.
func TestATakeNeverAnsweredFailsTheGate(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		var reported []string
		log, g := leasedOnLostTakes(t, w, autobuy.WithHooks(autobuy.Hooks{
			LetThrough: func(_ context.Context, c autobuy.CustomerRef, metric string, units int64, event string) {
				reported = append(reported, fmt.Sprintf("%v %s %d %s", c.ID == w.uuid(t), metric, units, event))
			}}))
		log.down.Store(true)
		_, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
		require.Error(t, err)
		require.Equal(t, int32(1), log.landed.Load(), "counted on the lease, never answered")
		w.srv.NoteAllowed(user, "chat_message", "m1", 1) // counted: it is charged with the lease
		log.down.Store(false)
		d, err := g.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
		require.NoError(t, err)
		assert.True(t, d.Allowed)
		assert.True(t, d.Replayed, "answered as let through on a lease")
		assert.Equal(t, []string{"true chat_message 1 m1"}, reported, "Hooks.LetThrough names what may go unpaid")
		require.NoError(t, g.Close(context.Background()))
		assert.Equal(t, int64(2_000), w.chargedChatMC(), "m0 and m1, once each")
	})
}

// The same on the purchase path: a gate without lease mode whose check is
// refused because one of our leases holds the credits takes from that lease;
// a take of it counted and unanswered was followed, on the code before, by a
// settle, a check and a usage record: the action charged twice.
func TestATakeOnThePurchasePathWhoseAnswerIsLostIsCountedOnce(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		shared := &lostTakes{ChargeLog: autobuy.NewMemoryChargeLog(0)}
		opts := []autobuy.Option{autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker()),
			autobuy.WithChargeLog(shared)}
		leased := w.gate(t, append(opts, leaseOf(50))...)
		plain := w.gate(t, opts...)
		d := w.gateNoted(t, leased, w.cust, "l1") // the lease holds all 50 actions' credits
		require.True(t, d.Leased)
		shared.lose.Store(1)
		d = w.gateNoted(t, plain, w.cust, "p1")
		assert.True(t, d.Allowed)
		assert.Nil(t, d.Purchase)
		assert.Equal(t, int32(1), shared.landed.Load())
		require.NoError(t, leased.Close(context.Background()))
		require.NoError(t, plain.Close(context.Background()))
		assert.Zero(t, w.planGrants())
		assert.Equal(t, int64(2_000), w.chargedChatMC(), "l1 and p1, once each")
	})
}

// chargelogtest.LeaseSoak on the in-process stores, the answers of 15% of
// the counted takes lost: every take is sent again under its id and counted
// once.
func TestLeaseSoakInMemory(t *testing.T) {
	t.Parallel()
	shared := newStores()
	log := &lostTakes{ChargeLog: shared.charges, chance: 0.15}
	figs := chargelogtest.LeaseSoak(t, chargelogtest.LeaseSoakConfig{
		Replica: func(*testing.T, int) []autobuy.Option {
			return []autobuy.Option{autobuy.WithJournal(shared.journal), autobuy.WithLocker(shared.locker), autobuy.WithChargeLog(log)}
		},
	})
	t.Logf("lease soak (memory): %+v; %d take answers lost after the take was counted", figs, log.landed.Load())
	assert.Positive(t, log.landed.Load(), "take answers were lost")
}

// cancelAtLeaseRead is a ChargeLog that cancels a gate's context when it
// reads the customer's lease on the purchase path (armed): the take that
// follows is never sent.
type cancelAtLeaseRead struct {
	autobuy.ChargeLog
	armed  atomic.Bool
	cancel context.CancelFunc
}

func (c *cancelAtLeaseRead) Lease(ctx context.Context, customerID, metric string) (autobuy.Lease, bool, error) {
	if c.armed.CompareAndSwap(true, false) {
		c.cancel()
	}
	return c.ChargeLog.Lease(ctx, customerID, metric)
}

// On the purchase path the event is marked for the lease before the take; a
// take never sent (the gate's context ended first) must un-mark it: left
// claimed for a lease, its retry was answered as let through, and the action
// was never charged.
func TestATakeNeverSentOnThePurchasePathLeavesTheEventToCharge(t *testing.T) {
	t.Parallel()
	inChargeModes(t, 50_000, func(t *testing.T, w *world) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		shared := &cancelAtLeaseRead{ChargeLog: autobuy.NewMemoryChargeLog(0), cancel: cancel}
		opts := []autobuy.Option{autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker()),
			autobuy.WithChargeLog(shared)}
		leased := w.gate(t, append(opts, leaseOf(50))...)
		var letThrough atomic.Int64
		plain := w.gate(t, append(opts, autobuy.WithHooks(autobuy.Hooks{
			LetThrough: func(context.Context, autobuy.CustomerRef, string, int64, string) { letThrough.Add(1) }}))...)
		d := w.gateNoted(t, leased, w.cust, "l1") // the lease holds all 50 actions' credits
		require.True(t, d.Leased)
		shared.armed.Store(true)
		_, err := plain.Gate(ctx, w.cust, "chat_message", autobuy.WithEventID("p1"))
		require.Error(t, err, "its context ended before the take")
		d = w.gateNoted(t, plain, w.cust, "p1") // the caller repeats the event
		assert.True(t, d.Allowed)
		assert.Zero(t, letThrough.Load(), "nothing was counted for p1: it is charged, not let through")
		require.NoError(t, leased.Close(context.Background()))
		require.NoError(t, plain.Close(context.Background()))
		assert.Equal(t, int64(2_000), w.chargedChatMC(), "l1 and p1, once each")
	})
}
