package pgstore_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/pgstore"
)

var ctx = context.Background()

// replicas returns n stores on one schema, each with its own pool: n
// processes sharing the database.
func replicas(t *testing.T, n int, opts ...pgstore.Option) []*pgstore.Store {
	t.Helper()
	first := testPool(t, 8)
	schema := freshSchema(t, first)
	out := make([]*pgstore.Store, n)
	for i := range out {
		pool := first
		if i > 0 {
			pool = testPool(t, 8)
		}
		s, err := pgstore.New(pool, append([]pgstore.Option{pgstore.WithSchema(schema)}, opts...)...)
		require.NoError(t, err)
		require.NoError(t, s.Migrate(ctx))
		out[i] = s
	}
	return out
}

// advisory selects the pg_locks rows of the store's lock of key.
const advisory = `FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
	AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid
	AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`

// lockBackend returns the pid of the backend holding s's lock of key.
func lockBackend(t *testing.T, pool *pgxpool.Pool, s *pgstore.Store, key string) int32 {
	t.Helper()
	var pid int32
	require.NoError(t, pool.QueryRow(ctx, "SELECT pid "+advisory+" AND granted", s.LockID(key)).Scan(&pid))
	return pid
}

// lock takes key and makes sure it is released by the end of the test.
func lock(t *testing.T, s *pgstore.Store, key string) func(context.Context) error {
	t.Helper()
	unlock, err := s.Locker().Lock(ctx, key)
	require.NoError(t, err)
	t.Cleanup(func() { _ = unlock(ctx) })
	return unlock
}

// TestLockExcludesReplicas: a lock held by one process keeps another's Lock
// waiting until its deadline, and is obtained once released.
func TestLockExcludesReplicas(t *testing.T) {
	t.Parallel()
	r := replicas(t, 2)
	unlock := lock(t, r[0], "k")
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r[1].Locker().Lock(wctx, "k")
	require.ErrorIs(t, err, context.DeadlineExceeded, "held by the other replica")
	assert.Less(t, time.Since(start), 3*time.Second, "gave up at its deadline")
	other, err := r[1].Locker().Lock(ctx, "other key")
	require.NoError(t, err, "another key is free")
	require.NoError(t, other(ctx))

	require.NoError(t, unlock(ctx))
	require.NoError(t, unlock(ctx), "a second unlock is a no-op")
	got, err := r[1].Locker().Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, got(ctx))
}

// TestLockSerialises: goroutines of two replicas incrementing under one lock
// never overlap.
func TestLockSerialises(t *testing.T) {
	t.Parallel()
	r := replicas(t, 2)
	var inside, overlaps, done atomic.Int32
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				unlock, err := r[i%2].Locker().Lock(ctx, "shared")
				if !assert.NoError(t, err) {
					return
				}
				if inside.Add(1) > 1 {
					overlaps.Add(1)
				}
				time.Sleep(time.Millisecond)
				inside.Add(-1)
				done.Add(1)
				assert.NoError(t, unlock(ctx))
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, overlaps.Load(), "two holders at once")
	assert.Equal(t, int32(60), done.Load())
}

func pending(customer, order string) autobuy.Intent {
	now := time.Now()
	return autobuy.Intent{OrderID: order, CustomerID: customer, Metric: "chat", State: autobuy.IntentPending,
		CreatedAt: now, UpdatedAt: now}
}

// TestLostLockFencesWrites: the lock's connection is killed while its holder
// is mid-purchase (pg_terminate_backend). Another replica takes the lock; the
// old holder's next journal write is refused with ErrLockLost (nothing
// written), and the new holder finishes the intent. Without the fence the old
// holder would close its intent behind the new holder's back, which could
// then start a second purchase.
func TestLostLockFencesWrites(t *testing.T) {
	t.Parallel()
	r := replicas(t, 2)
	pool := testPool(t, 2)
	const cust = "cus_fenced"
	key := "quotastack:autobuy:" + cust
	unlockA := lock(t, r[0], key)
	in := pending(cust, "ord_a")
	require.NoError(t, r[0].Journal().Put(ctx, &in), "written under the held lock")

	var ok bool
	require.NoError(t, pool.QueryRow(ctx, "SELECT pg_terminate_backend($1)", lockBackend(t, pool, r[0], key)).Scan(&ok))
	require.True(t, ok)
	unlockB := lock(t, r[1], key) // the lock died with its connection

	stale := in
	stale.State, stale.UpdatedAt = autobuy.IntentDone, time.Now()
	err := r[0].Journal().Put(ctx, &stale)
	require.ErrorIs(t, err, pgstore.ErrLockLost, "the old holder can't write")
	assert.Equal(t, in.Rev, stale.Rev)

	open, err := r[1].Journal().Open(ctx, cust)
	require.NoError(t, err)
	require.Len(t, open, 1, "the old holder's intent is still open: the new holder finishes it")
	assert.Equal(t, autobuy.IntentPending, open[0].State)
	open[0].State = autobuy.IntentDebited
	require.NoError(t, r[1].Journal().Put(ctx, &open[0]))
	second := pending(cust, "ord_b")
	require.ErrorIs(t, r[1].Journal().Put(ctx, &second), autobuy.ErrJournalConflict, "no second purchase beside it")

	require.ErrorIs(t, unlockA(ctx), pgstore.ErrLockLost)
	require.NoError(t, unlockB(ctx))
	// Without a held lock the journal writes unfenced (the CAS still applies).
	open[0].State = autobuy.IntentDone
	require.NoError(t, r[0].Journal().Put(ctx, &open[0]))
}

// TestLockTTL: a lock held past its TTL is ended by the server (the process
// hung): another replica gets it without the old holder's unlock, and the
// old holder's writes are refused from then on.
func TestLockTTL(t *testing.T) {
	t.Parallel()
	r := replicas(t, 2, pgstore.WithLockTTL(time.Second))
	key := "quotastack:autobuy:cus_slow"
	unlock := lock(t, r[0], key)
	in := pending("cus_slow", "ord_1")
	require.NoError(t, r[0].Journal().Put(ctx, &in))
	time.Sleep(1500 * time.Millisecond)
	// The old holder never unlocks: only the server ending its session frees
	// the lock. The deadline is generous (CI runs this beside other race-
	// enabled packages: 200 ms was once too short for the fencing token).
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	other, err := r[1].Locker().Lock(wctx, key)
	require.NoError(t, err, "the server ended the idle lock")
	t.Cleanup(func() { _ = other(ctx) })
	in.State = autobuy.IntentDebited
	require.ErrorIs(t, r[0].Journal().Put(ctx, &in), pgstore.ErrLockLost)
	require.ErrorIs(t, unlock(ctx), pgstore.ErrLockLost)
	require.NoError(t, other(ctx))
}

// TestLockSlotsLeaveConnections: with a pool of 2 connections one lock may be
// held at a time, so the holder's journal writes always find a connection;
// a second lock waits for the slot, and a cancelled wait leaks nothing.
func TestLockSlotsLeaveConnections(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 2)
	s := newStore(t, pool)
	unlock := lock(t, s, "quotastack:autobuy:a")
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err := s.Locker().Lock(wctx, "quotastack:autobuy:b")
	require.ErrorIs(t, err, context.DeadlineExceeded, "no slot while a is held")
	in := pending("a", "ord_1")
	require.NoError(t, s.Journal().Put(ctx, &in), "the holder's write has a connection")
	require.NoError(t, unlock(ctx))
	unlockB, err := s.Locker().Lock(ctx, "quotastack:autobuy:b")
	require.NoError(t, err)
	require.NoError(t, unlockB(ctx))
	assert.Zero(t, pool.Stat().AcquiredConns(), "every connection is back")
}

// TestLockWaitCancelled: a Lock waiting in the database gives up when its
// context is cancelled, and its connection goes back to the pool.
func TestLockWaitCancelled(t *testing.T) {
	t.Parallel()
	r := replicas(t, 2)
	unlock := lock(t, r[0], "k")
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := r[1].Locker().Lock(cctx, "k")
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("Lock kept waiting after its context was cancelled")
	}
	require.NoError(t, unlock(ctx))
	got, err := r[1].Locker().Lock(ctx, "k")
	require.NoError(t, err, "the cancelled wait left no lock behind")
	require.NoError(t, got(ctx))
}

// TestLockOnePerKeyInProcess: a process's waiters of one key queue in memory:
// at most one connection of the process waits in the database per key.
func TestLockOnePerKeyInProcess(t *testing.T) {
	t.Parallel()
	r := replicas(t, 2)
	unlock := lock(t, r[0], "k")
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := r[1].Locker().Lock(ctx, "k")
			if assert.NoError(t, err, "waiter %d", i) {
				assert.NoError(t, u(ctx))
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	pool := testPool(t, 1)
	var waiting int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) "+advisory+" AND NOT granted", r[1].LockID("k")).Scan(&waiting))
	assert.Equal(t, 1, waiting, "one of the four waiters waits in the database")
	require.NoError(t, unlock(ctx))
	wg.Wait()
}
