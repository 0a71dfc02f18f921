// Package journaltest is the conformance suite for autobuy.Journal
// implementations: run it from a test of your journal (SQL, Redis, ...) with
// Run, giving it a constructor of empty journals.
//
//	func TestMyJournal(t *testing.T) {
//		journaltest.Run(t, func(t *testing.T) autobuy.Journal { return newEmptyJournal(t) })
//	}
//
// It checks every method's contract as the gate relies on it: optimistic
// revisions (Rev 0 creates, a stale Rev or an existing order id is
// autobuy.ErrJournalConflict, exactly one of concurrent writers wins), open
// intents oldest first, Since by created-or-updated time, Pending across
// customers, the customer's revision (Rev), suspensions stored once while
// active, deep copies, and the plan
// snapshot round-tripping exactly (times by their instant). Retention is the
// journal's own business and is not checked.
package journaltest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
)

// t0 is the suite's base time: recent, with nanoseconds and a zone that is
// neither UTC nor Local, so a journal that truncates or drops the instant shows.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.FixedZone("UTC+5:30", 5*3600+1800))

// Run runs the suite; newJournal must return an empty journal (or one whose
// keys no other test of the run touches) for each subtest. Subtests run in
// parallel.
func Run(t *testing.T, newJournal func(t *testing.T) autobuy.Journal) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, j autobuy.Journal)
	}{
		{"CreateThenUpdate", testCreateThenUpdate},
		{"StaleRevConflicts", testStaleRevConflicts},
		{"RecreateConflicts", testRecreateConflicts},
		{"OpenOnlyOpen", testOpen},
		{"OneOpenIntentPerCustomer", testOneOpenPerCustomer},
		{"SinceCreatedOrUpdated", testSince},
		{"RevIncreasesOnEveryPut", testRev},
		{"PendingAcrossCustomersWithLimit", testPending},
		{"SuspendOnceWhileActive", testSuspend},
		{"SuspendUntilLifted", testSuspendForever},
		{"ConcurrentUpdatesOneWins", testConcurrentUpdates},
		{"ConcurrentCreatesOneWins", testConcurrentCreates},
		{"DeepCopies", testDeepCopies},
		{"SnapshotRoundTrips", testSnapshot},
		{"IDsAreNotConfused", testIDs},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newJournal(t))
		})
	}
}

var ctx = context.Background()

// newIntent returns a pending intent of customer created at created, with
// every snapshot field set.
func newIntent(customer, orderID string, created time.Time) autobuy.Intent {
	return autobuy.Intent{
		OrderID: orderID, CustomerID: customer, Metric: "chat_message",
		Plan: plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour, Priority: 12,
			PurchaseMetric: "plan_purchase_1hr", Metadata: map[string]string{"tier": "gold"}},
		Activation: plan.Queued, Trigger: plan.TriggerAutoBuy, Metadata: map[string]string{"app": "chat"},
		State: autobuy.IntentPending, WalletBeforeMC: 250_000, WalletBlockIDs: []string{"blk_w1", "blk_w2"},
		ExternalCustomerID: "user:" + customer, CreatedAt: created, UpdatedAt: created,
	}
}

// put stores in (which must succeed) and returns it with its new Rev.
func put(t *testing.T, j autobuy.Journal, in autobuy.Intent) autobuy.Intent {
	t.Helper()
	rev := in.Rev
	require.NoError(t, j.Put(ctx, &in), "Put %s at rev %d", in.OrderID, rev)
	require.Equal(t, rev+1, in.Rev, "Put sets the new revision")
	return in
}

// normal returns in with its times in UTC and without monotonic readings, so
// that intents equal by instant compare equal.
func normal(in autobuy.Intent) autobuy.Intent {
	for _, p := range []*time.Time{&in.CreatedAt, &in.UpdatedAt, &in.DebitCreatedAt, &in.ExpiresAt, &in.GrantSentAt} {
		if !p.IsZero() {
			*p = p.Round(0).UTC()
		}
	}
	return in
}

func assertSame(t *testing.T, want, got autobuy.Intent, msgAndArgs ...any) {
	t.Helper()
	assert.Equal(t, normal(want), normal(got), msgAndArgs...)
}

func orderIDs(ins []autobuy.Intent) []string {
	out := make([]string, len(ins))
	for i, in := range ins {
		out[i] = in.OrderID
	}
	return out
}

func openOf(t *testing.T, j autobuy.Journal, customer string) []autobuy.Intent {
	t.Helper()
	ins, err := j.Open(ctx, customer)
	require.NoError(t, err)
	return ins
}

func testCreateThenUpdate(t *testing.T, j autobuy.Journal) {
	in := put(t, j, newIntent("cus_a", "ord_1", t0))
	assert.Equal(t, int64(1), in.Rev, "a new intent is stored at revision 1")
	got := openOf(t, j, "cus_a")
	require.Len(t, got, 1)
	assertSame(t, in, got[0])

	in.State, in.UpdatedAt, in.DebitCreatedAt, in.ExpiresAt = autobuy.IntentDebited, t0.Add(time.Second), t0, t0.Add(time.Hour)
	in = put(t, j, in)
	assert.Equal(t, int64(2), in.Rev)
	got = openOf(t, j, "cus_a")
	require.Len(t, got, 1)
	assertSame(t, in, got[0], "the update is what is read back")

	in.State, in.UpdatedAt, in.BlockID = autobuy.IntentDone, t0.Add(2*time.Second), "blk_1"
	in = put(t, j, in)
	assert.Equal(t, int64(3), in.Rev)
	assert.Empty(t, openOf(t, j, "cus_a"), "done is closed")
	since, err := j.Since(ctx, "cus_a", t0)
	require.NoError(t, err)
	require.Len(t, since, 1)
	assertSame(t, in, since[0])
}

func testStaleRevConflicts(t *testing.T, j autobuy.Journal) {
	in := put(t, j, newIntent("cus_a", "ord_1", t0))
	fresh := in
	fresh.State, fresh.UpdatedAt = autobuy.IntentDebited, t0.Add(time.Second)
	fresh = put(t, j, fresh) // rev 2

	for _, rev := range []int64{1, 3, 7} {
		stale := in
		stale.Rev, stale.State, stale.UpdatedAt = rev, autobuy.IntentFailed, t0.Add(time.Minute)
		err := j.Put(ctx, &stale)
		require.ErrorIs(t, err, autobuy.ErrJournalConflict, "Put at rev %d over rev 2", rev)
		assert.Equal(t, rev, stale.Rev, "a refused Put leaves Rev alone")
	}
	got := openOf(t, j, "cus_a")
	require.Len(t, got, 1)
	assertSame(t, fresh, got[0], "refused writes changed nothing")

	ghost := newIntent("cus_a", "ord_ghost", t0)
	ghost.Rev = 1
	assert.ErrorIs(t, j.Put(ctx, &ghost), autobuy.ErrJournalConflict, "an update of an intent that was never stored")
	assert.Len(t, openOf(t, j, "cus_a"), 1)
}

func testRecreateConflicts(t *testing.T, j autobuy.Journal) {
	in := put(t, j, newIntent("cus_a", "ord_1", t0))
	again := newIntent("cus_a", "ord_1", t0.Add(time.Second))
	again.Plan.PriceMC = 1
	assert.ErrorIs(t, j.Put(ctx, &again), autobuy.ErrJournalConflict, "Rev 0 with an existing order id")
	assert.Equal(t, int64(0), again.Rev)
	got := openOf(t, j, "cus_a")
	require.Len(t, got, 1)
	assertSame(t, in, got[0])

	// Closed intents are still there: re-creating one conflicts too.
	in.State, in.UpdatedAt = autobuy.IntentDone, t0.Add(time.Minute)
	put(t, j, in)
	again.Rev = 0
	assert.ErrorIs(t, j.Put(ctx, &again), autobuy.ErrJournalConflict, "Rev 0 with a closed order id")
}

func testOpen(t *testing.T, j autobuy.Journal) {
	assert.Empty(t, openOf(t, j, "cus_none"), "an unknown customer has no intents")
	// Each customer's history, stored in order (a customer has at most one
	// open intent at a time): only pending, debited and review are open.
	histories := map[string][]autobuy.IntentState{
		"cus_a": {autobuy.IntentDone, autobuy.IntentFailed, autobuy.IntentDebited},
		"cus_p": {autobuy.IntentDone, autobuy.IntentPending},
		"cus_r": {autobuy.IntentFailed, autobuy.IntentReview},
		"cus_c": {autobuy.IntentDone, autobuy.IntentFailed},
	}
	for cust, states := range histories {
		for i, st := range states {
			in := put(t, j, newIntent(cust, fmt.Sprintf("ord_%s_%d", cust, i), t0.Add(time.Duration(i)*time.Second)))
			if st != autobuy.IntentPending {
				in.State, in.UpdatedAt = st, t0.Add(time.Minute)
				put(t, j, in)
			}
		}
	}
	for cust, states := range histories {
		var want []string
		for i, st := range states {
			if st.Open() {
				want = append(want, fmt.Sprintf("ord_%s_%d", cust, i))
			}
		}
		got := openOf(t, j, cust)
		assert.Equal(t, want, nilIfEmpty(orderIDs(got)), cust)
		for _, in := range got {
			assert.True(t, in.State.Open(), "%s is %s", in.OrderID, in.State)
			assert.Equal(t, cust, in.CustomerID)
		}
	}
}

// testOneOpenPerCustomer: a new intent is refused while the customer has an
// open one (so a gate whose lock lapsed can't start a second purchase), and
// allowed again once that one is closed; other customers are not affected.
func testOneOpenPerCustomer(t *testing.T, j autobuy.Journal) {
	first := put(t, j, newIntent("cus_a", "ord_1", t0))
	second := newIntent("cus_a", "ord_2", t0.Add(time.Second))
	require.ErrorIs(t, j.Put(ctx, &second), autobuy.ErrJournalConflict, "a second open intent")
	assert.Equal(t, int64(0), second.Rev)
	put(t, j, newIntent("cus_b", "ord_b", t0)) // another customer

	first.State, first.UpdatedAt = autobuy.IntentReview, t0.Add(time.Minute)
	first = put(t, j, first)
	require.ErrorIs(t, j.Put(ctx, &second), autobuy.ErrJournalConflict, "review is open too")
	first.State = autobuy.IntentDone
	put(t, j, first)
	put(t, j, second)

	// Racing creates of different orders of one customer: exactly one wins.
	const n = 16
	won := race(t, n, func(i int) error {
		in := newIntent("cus_c", fmt.Sprintf("ord_c%d", i), t0)
		return j.Put(ctx, &in)
	})
	assert.Equal(t, 1, won, "one of %d creates for one customer wins", n)
	assert.Len(t, openOf(t, j, "cus_c"), 1)
}

func testSince(t *testing.T, j autobuy.Journal) {
	old := put(t, j, newIntent("cus_a", "ord_old", t0.Add(-time.Hour)))
	old.State, old.UpdatedAt = autobuy.IntentDone, t0.Add(-time.Hour+time.Minute)
	put(t, j, old) // created and closed before t0

	late := put(t, j, newIntent("cus_a", "ord_late", t0.Add(-30*time.Minute)))
	late.State, late.UpdatedAt = autobuy.IntentDone, t0.Add(20*time.Second)
	put(t, j, late) // created before t0, finished after

	b := put(t, j, newIntent("cus_a", "ord_new", t0.Add(10*time.Second)))
	b.State, b.UpdatedAt = autobuy.IntentFailed, t0.Add(11*time.Second)
	put(t, j, b)
	put(t, j, newIntent("cus_a", "ord_at", t0)) // exactly at t0; the one open intent
	put(t, j, newIntent("cus_b", "ord_other", t0.Add(time.Second)))

	cases := []struct {
		from time.Time
		want []string
	}{
		{t0.Add(-2 * time.Hour), []string{"ord_old", "ord_late", "ord_at", "ord_new"}},
		{t0, []string{"ord_late", "ord_at", "ord_new"}},
		{t0.Add(time.Nanosecond), []string{"ord_late", "ord_new"}},
		{t0.Add(11 * time.Second), []string{"ord_late", "ord_new"}},
		{t0.Add(11*time.Second + time.Nanosecond), []string{"ord_late"}},
		{t0.Add(time.Hour), nil},
	}
	for _, c := range cases {
		got, err := j.Since(ctx, "cus_a", c.from)
		require.NoError(t, err)
		assert.Equal(t, c.want, nilIfEmpty(orderIDs(got)), "Since(t0%+v)", c.from.Sub(t0))
	}
	got, err := j.Since(ctx, "cus_none", t0.Add(-24*time.Hour))
	require.NoError(t, err)
	assert.Empty(t, got)
}

// testRev checks the customer's revision: 0 before any write, strictly
// increased by every successful Put of the customer's intents (creates,
// every transition, a failed intent closed as done by hand), unchanged by a
// refused Put and by other customers' writes.
func testRev(t *testing.T, j autobuy.Journal) {
	rev := func(cust string) int64 {
		t.Helper()
		r, err := j.Rev(ctx, cust)
		require.NoError(t, err)
		return r
	}
	assert.Equal(t, int64(0), rev("cus_a"), "a customer never written")
	last := rev("cus_a")
	step := func(what string, in autobuy.Intent) autobuy.Intent {
		t.Helper()
		in = put(t, j, in)
		now := rev("cus_a")
		assert.Greater(t, now, last, "Rev after %s", what)
		last = now
		return in
	}
	a := step("a create", newIntent("cus_a", "ord_1", t0))
	stale := a
	a.State, a.UpdatedAt = autobuy.IntentDebited, t0.Add(time.Second)
	a = step("pending → debited", a)
	require.ErrorIs(t, j.Put(ctx, &stale), autobuy.ErrJournalConflict)
	assert.Equal(t, last, rev("cus_a"), "a conflict leaves Rev")
	second := newIntent("cus_a", "ord_2", t0.Add(time.Minute))
	require.ErrorIs(t, j.Put(ctx, &second), autobuy.ErrJournalConflict, "one open intent per customer")
	assert.Equal(t, last, rev("cus_a"), "a refused create leaves Rev")
	a.State, a.UpdatedAt = autobuy.IntentFailed, t0.Add(2*time.Second)
	a = step("debited → failed", a)
	a.State, a.UpdatedAt = autobuy.IntentDone, t0.Add(3*time.Second)
	a = step("failed → done", a)
	b := step("another create", second)
	b.State, b.UpdatedAt = autobuy.IntentReview, t0.Add(2*time.Minute)
	step("pending → review", b)

	before := rev("cus_a")
	put(t, j, newIntent("cus_b", "ord_b", t0))
	assert.Equal(t, before, rev("cus_a"), "another customer's write")
	assert.Positive(t, rev("cus_b"))
	assert.Equal(t, int64(0), rev("cus_none"))

	// Concurrent writes: Rev moves once per successful Put.
	const n = 8
	base := rev("cus_c")
	won := race(t, n, func(i int) error {
		in := newIntent("cus_c", fmt.Sprintf("ord_c%d", i), t0)
		return j.Put(ctx, &in)
	})
	require.Equal(t, 1, won)
	assert.Greater(t, rev("cus_c"), base)
	after := rev("cus_c")
	open := openOf(t, j, "cus_c")
	require.Len(t, open, 1)
	open[0].State, open[0].UpdatedAt = autobuy.IntentDone, t0.Add(time.Second)
	put(t, j, open[0])
	assert.Greater(t, rev("cus_c"), after)
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func testPending(t *testing.T, j autobuy.Journal) {
	got, err := j.Pending(ctx, 10)
	require.NoError(t, err)
	assert.Empty(t, got)

	put(t, j, newIntent("cus_b", "ord_b1", t0.Add(2*time.Second)))
	done := put(t, j, newIntent("cus_a", "ord_a0", t0))
	done.State, done.UpdatedAt = autobuy.IntentDone, t0.Add(time.Second)
	put(t, j, done)
	a := put(t, j, newIntent("cus_a", "ord_a1", t0.Add(time.Second)))
	a.State, a.UpdatedAt = autobuy.IntentDebited, t0.Add(time.Minute)
	put(t, j, a)
	put(t, j, newIntent("cus_c", "ord_c1", t0.Add(3*time.Second)))
	put(t, j, newIntent("cus_d", "ord_d1", t0.Add(4*time.Second)))

	got, err = j.Pending(ctx, 100)
	require.NoError(t, err)
	assert.Equal(t, []string{"ord_a1", "ord_b1", "ord_c1", "ord_d1"}, orderIDs(got), "every open intent, oldest first")
	got, err = j.Pending(ctx, 2)
	require.NoError(t, err)
	assert.Equal(t, []string{"ord_a1", "ord_b1"}, orderIDs(got), "the oldest, up to the limit")
	got, err = j.Pending(ctx, 1)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, autobuy.IntentDebited, got[0].State)
	assert.Equal(t, "cus_a", got[0].CustomerID)
}

func testSuspend(t *testing.T, j autobuy.Journal) {
	_, ok, err := j.Suspension(ctx, "cus_a", "chat_message")
	require.NoError(t, err)
	assert.False(t, ok, "none stored yet")

	s := autobuy.Suspension{CustomerID: "cus_a", Metric: "chat_message", Since: t0, Until: t0.Add(time.Hour), Reason: "plan 1hr didn't entitle"}
	created, err := j.Suspend(ctx, s, t0)
	require.NoError(t, err)
	assert.True(t, created, "the first Suspend stores it")
	got, ok, err := j.Suspension(ctx, "cus_a", "chat_message")
	require.NoError(t, err)
	require.True(t, ok)
	assertSameSuspension(t, s, got)

	other := s
	other.Reason, other.Until = "a second gate", t0.Add(3*time.Hour)
	created, err = j.Suspend(ctx, other, t0.Add(59*time.Minute))
	require.NoError(t, err)
	assert.False(t, created, "an active one exists: not stored again")
	got, _, err = j.Suspension(ctx, "cus_a", "chat_message")
	require.NoError(t, err)
	assertSameSuspension(t, s, got, "the first stays")

	// Other metrics and customers are separate.
	created, err = j.Suspend(ctx, autobuy.Suspension{CustomerID: "cus_a", Metric: "image", Since: t0, Until: t0.Add(time.Hour)}, t0)
	require.NoError(t, err)
	assert.True(t, created)
	created, err = j.Suspend(ctx, autobuy.Suspension{CustomerID: "cus_b", Metric: "chat_message", Since: t0, Until: t0.Add(time.Hour)}, t0)
	require.NoError(t, err)
	assert.True(t, created)

	// Past its Until the suspension no longer counts: a new one is stored.
	created, err = j.Suspend(ctx, other, t0.Add(time.Hour))
	require.NoError(t, err)
	assert.True(t, created, "expired at Until")
	got, ok, err = j.Suspension(ctx, "cus_a", "chat_message")
	require.NoError(t, err)
	require.True(t, ok)
	assertSameSuspension(t, other, got, "the new one replaced it")

	require.NoError(t, j.Lift(ctx, "cus_a", "chat_message"))
	_, ok, err = j.Suspension(ctx, "cus_a", "chat_message")
	require.NoError(t, err)
	assert.False(t, ok, "lifted")
	_, ok, err = j.Suspension(ctx, "cus_a", "image")
	require.NoError(t, err)
	assert.True(t, ok, "Lift removes only its metric")
	require.NoError(t, j.Lift(ctx, "cus_a", "chat_message"), "lifting nothing is fine")
	created, err = j.Suspend(ctx, s, t0.Add(2*time.Hour))
	require.NoError(t, err)
	assert.True(t, created, "stored again after Lift")
}

func testSuspendForever(t *testing.T, j autobuy.Journal) {
	s := autobuy.Suspension{CustomerID: "cus_a", Metric: "chat_message", Since: t0, Reason: "until lifted"}
	created, err := j.Suspend(ctx, s, t0)
	require.NoError(t, err)
	assert.True(t, created)
	created, err = j.Suspend(ctx, s, t0.Add(10*365*24*time.Hour))
	require.NoError(t, err)
	assert.False(t, created, "a zero Until never expires")
	got, ok, err := j.Suspension(ctx, "cus_a", "chat_message")
	require.NoError(t, err)
	require.True(t, ok)
	assertSameSuspension(t, s, got)
	assert.True(t, got.Until.IsZero())
	require.NoError(t, j.Lift(ctx, "cus_a", "chat_message"))
	created, err = j.Suspend(ctx, s, t0)
	require.NoError(t, err)
	assert.True(t, created)
}

func assertSameSuspension(t *testing.T, want, got autobuy.Suspension, msgAndArgs ...any) {
	t.Helper()
	norm := func(s autobuy.Suspension) autobuy.Suspension {
		if !s.Since.IsZero() {
			s.Since = s.Since.Round(0).UTC()
		}
		if !s.Until.IsZero() {
			s.Until = s.Until.Round(0).UTC()
		}
		return s
	}
	assert.Equal(t, norm(want), norm(got), msgAndArgs...)
}

// race runs n writers at once and returns how many Puts succeeded; every
// other one must be a conflict.
func race(t *testing.T, n int, write func(i int) error) int {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = write(i)
		}()
	}
	close(start)
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, autobuy.ErrJournalConflict):
			t.Errorf("writer %d: %v (want nil or ErrJournalConflict)", i, err)
		}
	}
	return won
}

func testConcurrentUpdates(t *testing.T, j autobuy.Journal) {
	put(t, j, newIntent("cus_a", "ord_1", t0))
	read := openOf(t, j, "cus_a")
	require.Len(t, read, 1)
	const n = 16
	won := race(t, n, func(i int) error {
		in := read[0]
		in.Metadata = map[string]string{"writer": fmt.Sprint(i)}
		in.State, in.UpdatedAt = autobuy.IntentDebited, t0.Add(time.Duration(i+1)*time.Second)
		return j.Put(ctx, &in)
	})
	assert.Equal(t, 1, won, "exactly one of %d updates at the same revision wins", n)
	got := openOf(t, j, "cus_a")
	require.Len(t, got, 1)
	assert.Equal(t, int64(2), got[0].Rev)
	assert.Equal(t, autobuy.IntentDebited, got[0].State)
	assert.Contains(t, got[0].Metadata, "writer", "the winner's write is stored whole")
}

func testConcurrentCreates(t *testing.T, j autobuy.Journal) {
	const n = 16
	won := race(t, n, func(i int) error {
		in := newIntent("cus_a", "ord_1", t0.Add(time.Duration(i)*time.Millisecond))
		return j.Put(ctx, &in)
	})
	assert.Equal(t, 1, won, "exactly one of %d creates of one order id wins", n)
	got := openOf(t, j, "cus_a")
	require.Len(t, got, 1)
	assert.Equal(t, int64(1), got[0].Rev)
}

func testDeepCopies(t *testing.T, j autobuy.Journal) {
	in := newIntent("cus_a", "ord_1", t0)
	want := newIntent("cus_a", "ord_1", t0)
	require.NoError(t, j.Put(ctx, &in))
	want.Rev = in.Rev
	in.Metadata["app"], in.Plan.Metadata["tier"] = "changed", "changed" // the caller's maps after Put

	check := func(what string, got []autobuy.Intent) {
		t.Helper()
		require.Len(t, got, 1, what)
		assertSame(t, want, got[0], what)
		got[0].Metadata["app"], got[0].Plan.Metadata["tier"] = "mutated", "mutated"
		got[0].Metadata["new"], got[0].Plan.Metadata["new"] = "x", "x"
	}
	check("Open after the caller's maps changed", openOf(t, j, "cus_a"))
	check("Open after a returned intent's maps changed", openOf(t, j, "cus_a"))
	since, err := j.Since(ctx, "cus_a", t0)
	require.NoError(t, err)
	check("Since", since)
	pending, err := j.Pending(ctx, 10)
	require.NoError(t, err)
	check("Pending", pending)
	check("Open at the end", openOf(t, j, "cus_a"))
}

func testSnapshot(t *testing.T, j autobuy.Journal) {
	loc := time.FixedZone("UTC-3", -3*3600)
	in := autobuy.Intent{
		OrderID: "ord_0123456789abcdef", CustomerID: "0b6f1d3e-9c1a-4c53-8a52-6b9e6f3b1d2a", Metric: "image_render",
		Plan: plan.Plan{Type: "pro-day", PriceMC: 9_223_372_036_854_775_807, CreditsMC: 1, Duration: 36*time.Hour + 7*time.Nanosecond,
			Priority: 42, PurchaseMetric: "buy_pro", Metadata: map[string]string{"k": "v", "unicode": "é ✓", "empty": "", "quote": `"{}:`}},
		Activation: plan.Queued, Trigger: plan.TriggerManual,
		Metadata:       map[string]string{"a": "1", "b": "two words"},
		State:          autobuy.IntentPending,
		WalletBeforeMC: -5, WalletBlockIDs: []string{"blk_{a}:1", "blk é"}, ExternalCustomerID: "user42:companion7/ü",
		CreatedAt: time.Date(2026, 2, 28, 23, 59, 59, 999999999, loc),
		UpdatedAt: time.Now(), // with a monotonic reading
	}
	want := in
	want.Plan.Metadata, want.Metadata = clone(in.Plan.Metadata), clone(in.Metadata)
	want.WalletBlockIDs = append([]string(nil), in.WalletBlockIDs...)
	require.NoError(t, j.Put(ctx, &in))
	want.Rev = in.Rev
	got := openOf(t, j, in.CustomerID)
	require.Len(t, got, 1)
	assertSame(t, want, got[0], "pending, every snapshot field")
	assert.True(t, got[0].CreatedAt.Equal(want.CreatedAt), "the instant of CreatedAt, to the nanosecond")

	next := got[0]
	next.State, next.UpdatedAt = autobuy.IntentDebited, time.Date(2026, 3, 1, 0, 0, 0, 1, time.UTC)
	next.DebitCreatedAt = time.Date(2026, 3, 1, 2, 59, 59, 123456789, time.FixedZone("UTC+3", 3*3600))
	next.ExpiresAt = next.DebitCreatedAt.Add(36 * time.Hour)
	next = put(t, j, next)
	next.GrantSentAt = time.Date(2026, 3, 1, 0, 0, 1, 2, time.FixedZone("UTC+1", 3600))
	next.State, next.BlockID, next.Note = autobuy.IntentDone, "blk_9", "line one\nline two: {x}"
	next = put(t, j, next)
	v := reflect.ValueOf(next)
	for i := range v.NumField() {
		assert.False(t, v.Field(i).IsZero(), "the suite sets every Intent field; add %s to it", v.Type().Field(i).Name)
	}
	since, err := j.Since(ctx, in.CustomerID, in.CreatedAt)
	require.NoError(t, err)
	require.Len(t, since, 1)
	assertSame(t, next, since[0], "closed, every field")
	for _, p := range [][2]time.Time{{next.DebitCreatedAt, since[0].DebitCreatedAt}, {next.ExpiresAt, since[0].ExpiresAt},
		{next.UpdatedAt, since[0].UpdatedAt}, {next.GrantSentAt, since[0].GrantSentAt}} {
		assert.True(t, p[0].Equal(p[1]), "%v != %v", p[0], p[1])
	}
}

func clone(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// testIDs stores ids that a naive key scheme ("intent:" + customer + ":" +
// order) would confuse: each customer sees only its own.
func testIDs(t *testing.T, j autobuy.Journal) {
	pairs := [][2]string{
		{"a:b", "c"}, {"a", "b:c"}, {"a:b:c", ""}, {"{a}", "x"}, {"a}", "{x"}, {"a%3Ab", "c"}, {"a b", "c"}, {"é", "c"},
	}
	for i, p := range pairs {
		in := newIntent(p[0], p[1]+"#"+fmt.Sprint(i), t0.Add(time.Duration(i)*time.Second))
		put(t, j, in)
		s := autobuy.Suspension{CustomerID: p[0], Metric: p[1], Since: t0, Until: t0.Add(time.Hour)}
		created, err := j.Suspend(ctx, s, t0)
		require.NoError(t, err)
		assert.True(t, created, "suspension %q/%q", p[0], p[1])
	}
	for i, p := range pairs {
		got := openOf(t, j, p[0])
		assert.Equal(t, []string{p[1] + "#" + fmt.Sprint(i)}, orderIDs(got), "customer %q", p[0])
		s, ok, err := j.Suspension(ctx, p[0], p[1])
		require.NoError(t, err)
		assert.True(t, ok && s.CustomerID == p[0] && s.Metric == p[1], "suspension %q/%q: %+v", p[0], p[1], s)
	}
	pending, err := j.Pending(ctx, 100)
	require.NoError(t, err)
	assert.Len(t, pending, len(pairs))
}
