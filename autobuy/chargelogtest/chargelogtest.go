// Package chargelogtest is the conformance suite for autobuy.ChargeLog
// implementations: run it from a test of your store with Run, giving it a
// constructor of empty logs.
//
//	func TestMyChargeLog(t *testing.T) {
//		chargelogtest.Run(t, func(t *testing.T) autobuy.ChargeLog { return newEmptyLog(t) })
//	}
//
// It checks what the gate relies on: a claim creates once (exactly one of
// concurrent claimers wins, and the others read the winner's record),
// compare-and-set on revisions, records keyed by customer and event (never
// confused across customers), lease creation once per customer and metric,
// TakeLease never letting Used pass Held under concurrency, refusing a
// committing lease and counting a take sent again under its id once (also
// when the lease was deleted since, or when the two race), and round trips
// of every field (times by their instant).
//
// LeaseSoak runs replicas in lease mode on a store against the in-memory
// QuotaStack, under the faults a test injects (killed connections, lost
// replies), and checks that every action allowed was charged exactly once.
package chargelogtest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
)

// t0 is the suite's base time, with nanoseconds and an odd zone, so a store
// that truncates or drops the instant beyond microseconds shows.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535897000, time.FixedZone("UTC+5:30", 5*3600+1800))

var ctx = context.Background()

var takes atomic.Int64

// newTake returns a take id no other take of the run has.
func newTake() string { return fmt.Sprintf("take-%d-%d", time.Now().UnixNano(), takes.Add(1)) }

// Run runs the suite; newLog must return an empty log (or one whose keys no
// other test of the run touches) for each subtest. Subtests run in parallel.
func Run(t *testing.T, newLog func(t *testing.T) autobuy.ChargeLog) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, l autobuy.ChargeLog)
	}{
		{"ClaimOnce", testClaimOnce},
		{"ClaimRoundTrips", testClaimRoundTrips},
		{"PutChargeCompareAndSet", testPutCharge},
		{"ConcurrentClaimsOneWins", testConcurrentClaims},
		{"ChargesKeyedByCustomerAndEvent", testChargeKeys},
		{"LeaseCreateOnce", testLeaseCreate},
		{"LeaseRoundTrips", testLeaseRoundTrips},
		{"TakeLeaseBounded", testTakeLease},
		{"TakeLeaseConcurrent", testTakeLeaseConcurrent},
		{"TakeLeaseRefusesCommitting", testTakeCommitting},
		{"TakeLeaseCountsATakeOnce", testTakeOnce},
		{"DeleteLeaseCompareAndSet", testDeleteLease},
		{"LeasesIdleOldestFirst", testLeases},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newLog(t))
		})
	}
}

func newCharge(customer, event string) autobuy.Charge {
	return autobuy.Charge{CustomerID: customer, EventID: event, Metric: "chat_message", Units: 3, Via: "usage",
		Ref: "usage:" + customer + ":" + event, Attempt: 1, State: autobuy.ChargeClaimed, Reason: autobuy.ReasonEntitled,
		OrderID: "ord_1", CreatedAt: t0, UpdatedAt: t0.Add(time.Second)}
}

func equalCharge(t *testing.T, want, got autobuy.Charge) {
	t.Helper()
	assert.True(t, want.CreatedAt.Equal(got.CreatedAt), "CreatedAt %v != %v", want.CreatedAt, got.CreatedAt)
	assert.True(t, want.UpdatedAt.Equal(got.UpdatedAt), "UpdatedAt %v != %v", want.UpdatedAt, got.UpdatedAt)
	want.CreatedAt, got.CreatedAt, want.UpdatedAt, got.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	assert.Equal(t, want, got)
}

func testClaimOnce(t *testing.T, l autobuy.ChargeLog) {
	c := newCharge("cus_a", "evt_1")
	stored, created, err := l.Claim(ctx, &c)
	require.NoError(t, err)
	require.True(t, created)
	require.NotZero(t, c.Rev)
	equalCharge(t, c, stored)

	again := newCharge("cus_a", "evt_1")
	again.Via, again.Ref = "lease", "rsv_other"
	stored2, created2, err := l.Claim(ctx, &again)
	require.NoError(t, err)
	assert.False(t, created2, "a second claim of the same event must not create")
	equalCharge(t, c, stored2)
}

func testClaimRoundTrips(t *testing.T, l autobuy.ChargeLog) {
	c := newCharge("019d6258-07ba-7418-83be-58f5fde53e4e", "msg:with spaces/and:colons\x00nul")
	_, _, err := l.Claim(ctx, &c)
	require.NoError(t, err)
	c.State, c.Reason, c.Attempt, c.UpdatedAt = autobuy.ChargeCharged, autobuy.ReasonAutoBought, 7, t0.Add(time.Hour)
	require.NoError(t, l.PutCharge(ctx, &c))
	probe := newCharge(c.CustomerID, c.EventID)
	got, created, err := l.Claim(ctx, &probe)
	require.NoError(t, err)
	require.False(t, created)
	equalCharge(t, c, got)
}

func testPutCharge(t *testing.T, l autobuy.ChargeLog) {
	missing := newCharge("cus_a", "nope")
	missing.Rev = 1
	assert.ErrorIs(t, l.PutCharge(ctx, &missing), autobuy.ErrChargeConflict, "an update of a record never claimed")

	c := newCharge("cus_a", "evt_1")
	_, _, err := l.Claim(ctx, &c)
	require.NoError(t, err)
	stale := c
	c.State = autobuy.ChargeCharged
	require.NoError(t, l.PutCharge(ctx, &c))
	assert.Greater(t, c.Rev, stale.Rev)
	stale.State = autobuy.ChargeVoid
	assert.ErrorIs(t, l.PutCharge(ctx, &stale), autobuy.ErrChargeConflict, "a stale revision")
	probe := newCharge("cus_a", "evt_1")
	got, _, err := l.Claim(ctx, &probe)
	require.NoError(t, err)
	assert.Equal(t, autobuy.ChargeCharged, got.State)
}

func testConcurrentClaims(t *testing.T, l autobuy.ChargeLog) {
	const n = 16
	var wins atomic.Int32
	var wg sync.WaitGroup
	refs := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newCharge("cus_a", "evt_race")
			c.Ref = fmt.Sprint("ref_", i)
			stored, created, err := l.Claim(ctx, &c)
			if !assert.NoError(t, err) {
				return
			}
			if created {
				wins.Add(1)
			}
			refs[i] = stored.Ref
		}()
	}
	wg.Wait()
	assert.Equal(t, int32(1), wins.Load(), "exactly one claim creates")
	for i := 1; i < n; i++ {
		assert.Equal(t, refs[0], refs[i], "every claimer reads the winner's record")
	}
}

func testChargeKeys(t *testing.T, l autobuy.ChargeLog) {
	// Pairs that a naive "customer:event" concatenation would confuse.
	pairs := [][2]string{{"a:b", "c"}, {"a", "b:c"}, {"a", "bc"}, {"ab", "c"}}
	for _, p := range pairs {
		c := newCharge(p[0], p[1])
		_, created, err := l.Claim(ctx, &c)
		require.NoError(t, err)
		assert.True(t, created, "claim %q/%q must not collide with another pair", p[0], p[1])
	}
}

func newLease(customer, metric string) autobuy.Lease {
	return autobuy.Lease{CustomerID: customer, Metric: metric, ReservationID: "rsv_" + customer, UnitsPerEvent: 1,
		Held: 10, ExpiresAt: t0.Add(5 * time.Minute), CreatedAt: t0, LastUsed: t0}
}

func testLeaseCreate(t *testing.T, l autobuy.ChargeLog) {
	_, ok, err := l.Lease(ctx, "cus_a", "chat")
	require.NoError(t, err)
	assert.False(t, ok)
	a := newLease("cus_a", "chat")
	require.NoError(t, l.PutLease(ctx, &a))
	require.NotZero(t, a.Rev)
	b := newLease("cus_a", "chat")
	b.ReservationID = "rsv_second"
	assert.ErrorIs(t, l.PutLease(ctx, &b), autobuy.ErrChargeConflict, "one lease per customer and metric")
	other := newLease("cus_a", "image")
	require.NoError(t, l.PutLease(ctx, &other), "another metric is another lease")
	got, ok, err := l.Lease(ctx, "cus_a", "chat")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, "rsv_cus_a", got.ReservationID)
}

func testLeaseRoundTrips(t *testing.T, l autobuy.ChargeLog) {
	a := newLease("019d6258-07ba-7418-83be-58f5fde53e4e", "chat_message")
	require.NoError(t, l.PutLease(ctx, &a))
	a.Used, a.Committing, a.LastUsed = 4, true, t0.Add(time.Minute)
	require.NoError(t, l.PutLease(ctx, &a))
	got, ok, err := l.Lease(ctx, a.CustomerID, a.Metric)
	require.NoError(t, err)
	require.True(t, ok)
	for _, p := range [][2]time.Time{{a.ExpiresAt, got.ExpiresAt}, {a.CreatedAt, got.CreatedAt}, {a.LastUsed, got.LastUsed}} {
		assert.True(t, p[0].Equal(p[1]), "%v != %v", p[0], p[1])
	}
	a.ExpiresAt, got.ExpiresAt, a.CreatedAt, got.CreatedAt, a.LastUsed, got.LastUsed = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
	assert.Equal(t, a, got)
	stale := a
	stale.Rev--
	assert.ErrorIs(t, l.PutLease(ctx, &stale), autobuy.ErrChargeConflict)
}

func testTakeLease(t *testing.T, l autobuy.ChargeLog) {
	_, ok, err := l.TakeLease(ctx, "cus_a", "chat", 1, t0, newTake())
	require.NoError(t, err)
	assert.False(t, ok, "no lease")
	a := newLease("cus_a", "chat")
	require.NoError(t, l.PutLease(ctx, &a))
	got, ok, err := l.TakeLease(ctx, "cus_a", "chat", 4, t0.Add(time.Second), newTake())
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(4), got.Used)
	assert.True(t, got.LastUsed.Equal(t0.Add(time.Second)))
	assert.Greater(t, got.Rev, a.Rev, "a take is a new revision")
	_, ok, err = l.TakeLease(ctx, "cus_a", "chat", 7, t0, newTake())
	require.NoError(t, err)
	assert.False(t, ok, "4+7 > 10 held")
	got, ok, err = l.TakeLease(ctx, "cus_a", "chat", 6, t0, newTake())
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(10), got.Used)
	stale := a
	assert.ErrorIs(t, l.PutLease(ctx, &stale), autobuy.ErrChargeConflict, "a take moves the revision")
}

func testTakeLeaseConcurrent(t *testing.T, l autobuy.ChargeLog) {
	a := newLease("cus_a", "chat")
	a.Held = 25
	require.NoError(t, l.PutLease(ctx, &a))
	var taken atomic.Int64
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ok, err := l.TakeLease(ctx, "cus_a", "chat", 1, t0, newTake()); assert.NoError(t, err) && ok {
				taken.Add(1)
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, int64(25), taken.Load(), "exactly Held units are let through")
	got, _, err := l.Lease(ctx, "cus_a", "chat")
	require.NoError(t, err)
	assert.Equal(t, int64(25), got.Used)
}

func testTakeCommitting(t *testing.T, l autobuy.ChargeLog) {
	a := newLease("cus_a", "chat")
	require.NoError(t, l.PutLease(ctx, &a))
	a.Committing = true
	require.NoError(t, l.PutLease(ctx, &a))
	_, ok, err := l.TakeLease(ctx, "cus_a", "chat", 1, t0, newTake())
	require.NoError(t, err)
	assert.False(t, ok, "a committing lease serves nothing")
}

// used is the Used of the customer's lease on chat.
func used(t *testing.T, l autobuy.ChargeLog, customer string) int64 {
	t.Helper()
	got, ok, err := l.Lease(ctx, customer, "chat")
	require.NoError(t, err)
	require.True(t, ok)
	return got.Used
}

func testTakeOnce(t *testing.T, l autobuy.ChargeLog) {
	empty := newLease("cus_c", "chat")
	require.NoError(t, l.PutLease(ctx, &empty))
	_, _, err := l.TakeLease(ctx, "cus_c", "chat", 1, t0, "")
	require.Error(t, err, "a take without an id could never be told from another")
	assert.Zero(t, used(t, l, "cus_c"))

	first := newTake()
	_, ok, err := l.TakeLease(ctx, "cus_a", "chat", 2, t0, first)
	require.NoError(t, err)
	require.False(t, ok, "no lease: a refused take records nothing")
	a := newLease("cus_a", "chat")
	a.Held = 20
	require.NoError(t, l.PutLease(ctx, &a))
	b := newLease("cus_b", "chat")
	require.NoError(t, l.PutLease(ctx, &b))

	_, ok, err = l.TakeLease(ctx, "cus_a", "chat", 2, t0, first)
	require.NoError(t, err)
	require.True(t, ok)
	got, ok, err := l.TakeLease(ctx, "cus_a", "chat", 2, t0, first)
	require.NoError(t, err)
	require.True(t, ok, "the same take sent again: counted, once")
	assert.Equal(t, "cus_a", got.CustomerID)
	assert.Equal(t, int64(2), used(t, l, "cus_a"))
	_, ok, err = l.TakeLease(ctx, "cus_b", "chat", 2, t0, first)
	require.NoError(t, err)
	require.True(t, ok, "another customer's take of the same id is its own")
	assert.Equal(t, int64(2), used(t, l, "cus_b"))

	// Concurrent sends of one take (a resend racing the first attempt): one unit.
	racing := newTake()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A store may refuse a racing copy with an error (it is sent again);
			// none counts a second unit.
			if _, ok, err := l.TakeLease(ctx, "cus_a", "chat", 1, t0, racing); err == nil {
				assert.True(t, ok)
			}
		}()
	}
	wg.Wait()
	_, ok, err = l.TakeLease(ctx, "cus_a", "chat", 1, t0, racing)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(3), used(t, l, "cus_a"), "16 copies of one take: one unit")

	// The lease is settled and deleted before the take's resend: the resend
	// answers counted, and counts nothing on the next lease.
	cur, _, err := l.Lease(ctx, "cus_a", "chat")
	require.NoError(t, err)
	require.NoError(t, l.DeleteLease(ctx, cur))
	got, ok, err = l.TakeLease(ctx, "cus_a", "chat", 1, t0, racing)
	require.NoError(t, err)
	require.True(t, ok, "counted on the lease deleted since")
	assert.Equal(t, "cus_a", got.CustomerID)
	assert.Equal(t, "chat", got.Metric)
	next := newLease("cus_a", "chat")
	require.NoError(t, l.PutLease(ctx, &next))
	_, ok, err = l.TakeLease(ctx, "cus_a", "chat", 1, t0, racing)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Zero(t, used(t, l, "cus_a"), "not counted again on the next lease")
}

func testDeleteLease(t *testing.T, l autobuy.ChargeLog) {
	a := newLease("cus_a", "chat")
	require.NoError(t, l.PutLease(ctx, &a))
	stale := a
	_, _, err := l.TakeLease(ctx, "cus_a", "chat", 1, t0, newTake())
	require.NoError(t, err)
	assert.ErrorIs(t, l.DeleteLease(ctx, stale), autobuy.ErrChargeConflict, "moved since read")
	cur, _, err := l.Lease(ctx, "cus_a", "chat")
	require.NoError(t, err)
	require.NoError(t, l.DeleteLease(ctx, cur))
	_, ok, err := l.Lease(ctx, "cus_a", "chat")
	require.NoError(t, err)
	assert.False(t, ok)
	again := newLease("cus_a", "chat")
	require.NoError(t, l.PutLease(ctx, &again), "a deleted lease can be created anew")
}

func testLeases(t *testing.T, l autobuy.ChargeLog) {
	for i, c := range []string{"cus_c", "cus_a", "cus_b"} {
		ls := newLease(c, "chat")
		ls.LastUsed = t0.Add(time.Duration(3-i) * time.Minute) // c newest, b oldest
		require.NoError(t, l.PutLease(ctx, &ls))
	}
	all, err := l.Leases(ctx, time.Time{}, 0)
	require.NoError(t, err)
	require.Len(t, all, 3)
	assert.Equal(t, []string{"cus_b", "cus_a", "cus_c"}, []string{all[0].CustomerID, all[1].CustomerID, all[2].CustomerID})
	idle, err := l.Leases(ctx, t0.Add(150*time.Second), 0)
	require.NoError(t, err)
	require.Len(t, idle, 2, "only the leases last used before idleSince")
	one, err := l.Leases(ctx, time.Time{}, 1)
	require.NoError(t, err)
	require.Len(t, one, 1)
	assert.Equal(t, "cus_b", one[0].CustomerID)
}
