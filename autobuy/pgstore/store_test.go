package pgstore_test

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/journaltest"
	"github.com/quotastack/quotastack-go/autobuy/pgstore"
)

// TestRev: the customer's revision starts at 0, goes up by one with each
// successful Put of its intents (creates and updates), not with a refused
// one nor with another customer's, and survives pruning.
func TestRev(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 4)
	s := newStore(t, pool)
	j := s.Journal()
	rev := func(c string) int64 {
		t.Helper()
		r, err := j.Rev(ctx, c)
		require.NoError(t, err)
		return r
	}
	assert.Zero(t, rev("cus_a"), "never written")
	in := pending("cus_a", "ord_1")
	require.NoError(t, j.Put(ctx, &in))
	assert.Equal(t, int64(1), rev("cus_a"))
	stale := in
	in.State = autobuy.IntentDebited
	require.NoError(t, j.Put(ctx, &in))
	assert.Equal(t, int64(2), rev("cus_a"))
	require.ErrorIs(t, j.Put(ctx, &stale), autobuy.ErrJournalConflict)
	second := pending("cus_a", "ord_2")
	require.ErrorIs(t, j.Put(ctx, &second), autobuy.ErrJournalConflict)
	assert.Equal(t, int64(2), rev("cus_a"), "refused writes don't count")
	other := pending("cus_b", "ord_b")
	require.NoError(t, j.Put(ctx, &other))
	assert.Equal(t, int64(2), rev("cus_a"), "another customer's write doesn't count")
	assert.Equal(t, int64(1), rev("cus_b"))
	in.State = autobuy.IntentDone
	require.NoError(t, j.Put(ctx, &in))
	assert.Equal(t, int64(3), rev("cus_a"))

	age(t, pool, s, "intents")
	n, err := s.Prune(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(1), n, "the closed intent is pruned")
	ins, err := j.Since(ctx, "cus_a", time.Time{})
	require.NoError(t, err)
	assert.Empty(t, ins)
	assert.Equal(t, int64(3), rev("cus_a"), "pruning never lowers it")
	next := pending("cus_a", "ord_3")
	require.NoError(t, j.Put(ctx, &next))
	assert.Equal(t, int64(4), rev("cus_a"))
}

// age makes every row of table look written 49 h ago.
func age(t *testing.T, pool *pgxpool.Pool, s *pgstore.Store, table string) {
	t.Helper()
	_, err := pool.Exec(ctx, "UPDATE "+s.Table(table)+" SET written_at = now() - interval '49 hours'")
	require.NoError(t, err)
}

// TestPrune: closed intents and charges written more than the retention ago
// go, in batches; open intents, recent rows and leases stay.
func TestPrune(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 4)
	s := newStore(t, pool)
	j, l := s.Journal(), s.ChargeLog()
	for i := range 3 {
		in := pending(fmt.Sprint("cus_", i), "ord_old")
		require.NoError(t, j.Put(ctx, &in))
		if i > 0 {
			in.State = []autobuy.IntentState{autobuy.IntentDone, autobuy.IntentFailed}[i-1]
			require.NoError(t, j.Put(ctx, &in))
		}
	}
	// 1,200 old charges: more than two batches.
	_, err := pool.Exec(ctx, "INSERT INTO "+s.Table("charges")+` (customer_id, event_id, metric, units, via, ref, attempt,
		state, reason, order_id, rev, written_at) SELECT 'cus_x', 'e' || g, 'm', 1, 'usage', '', 1, 'charged', '', '', 1,
		now() - interval '49 hours' FROM generate_series(1, 1200) g`)
	require.NoError(t, err)
	age(t, pool, s, "intents")
	fresh := autobuy.Charge{CustomerID: "cus_x", EventID: "fresh", State: autobuy.ChargePending, CreatedAt: time.Now().Add(-72 * time.Hour)}
	_, _, err = l.Claim(ctx, &fresh)
	require.NoError(t, err)
	ls := autobuy.Lease{CustomerID: "cus_x", Metric: "m", Held: 5, LastUsed: time.Now().Add(-72 * time.Hour)}
	require.NoError(t, l.PutLease(ctx, &ls))
	recent := pending("cus_9", "ord_new")
	require.NoError(t, j.Put(ctx, &recent))
	recent.State = autobuy.IntentDone
	require.NoError(t, j.Put(ctx, &recent))

	n, err := s.Prune(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(1202), n, "two closed intents and the old charges")
	open, err := j.Open(ctx, "cus_0")
	require.NoError(t, err)
	assert.Len(t, open, 1, "an open intent is never pruned")
	since, err := j.Since(ctx, "cus_9", time.Time{})
	require.NoError(t, err)
	assert.Len(t, since, 1, "a recent closed intent stays")
	probe := fresh
	got, created, err := l.Claim(ctx, &probe)
	require.NoError(t, err)
	assert.False(t, created, "a charge is kept from its last write, whatever its CreatedAt")
	assert.Equal(t, "fresh", got.EventID)
	_, ok, err := l.Lease(ctx, "cus_x", "m")
	require.NoError(t, err)
	assert.True(t, ok, "leases are not pruned")
}

// TestMigrateConcurrently: every replica migrating at once at start-up
// succeeds, and again later.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 10)
	schema := freshSchema(t, pool)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := pgstore.New(pool, pgstore.WithSchema(schema), pgstore.WithTablePrefix("app_"))
			if err == nil {
				err = s.Migrate(ctx)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		assert.NoError(t, err, "replica %d", i)
	}
	s, err := pgstore.New(pool, pgstore.WithSchema(schema), pgstore.WithTablePrefix("app_"))
	require.NoError(t, err)
	require.NoError(t, s.Migrate(ctx), "idempotent")
	var tables int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename LIKE 'app\_%'`, schema).Scan(&tables))
	assert.Equal(t, 8, tables)
	in := pending("cus_a", "ord_1")
	require.NoError(t, s.Journal().Put(ctx, &in))
}

// TestMigrateWithoutSuperuser: a role that owns only its schema migrates and
// runs the store (skipped when the test role may not create roles).
func TestMigrateWithoutSuperuser(t *testing.T) {
	t.Parallel()
	admin := testPool(t, 2)
	var may bool
	require.NoError(t, admin.QueryRow(ctx, "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user").Scan(&may))
	if !may {
		t.Skip("the test role can't create roles")
	}
	schema := freshSchema(t, admin)
	role := schema + "_app"
	_, err := admin.Exec(ctx, fmt.Sprintf(`CREATE ROLE %q LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'pw';
		CREATE SCHEMA %q AUTHORIZATION %q`, role, schema, role))
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = admin.Exec(ctx, fmt.Sprintf(`DROP SCHEMA IF EXISTS %q CASCADE; DROP ROLE IF EXISTS %q`, schema, role))
	})
	pool := testPool(t, 4, func(c *pgxpool.Config) { c.ConnConfig.User, c.ConnConfig.Password = role, "pw" })
	var super bool
	require.NoError(t, pool.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super))
	require.False(t, super)
	s, err := pgstore.New(pool, pgstore.WithSchema(schema))
	require.NoError(t, err)
	require.NoError(t, s.Migrate(ctx))
	unlock, err := s.Locker().Lock(ctx, "quotastack:autobuy:cus_a")
	require.NoError(t, err)
	in := pending("cus_a", "ord_1")
	require.NoError(t, s.Journal().Put(ctx, &in), "a fenced write")
	require.NoError(t, unlock(ctx))
}

// TestDatabaseSQL: the store on a *sql.DB of pgx connections passes the
// journal's conformance suite and locks.
func TestDatabaseSQL(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 24)
	db := stdlib.OpenDBFromPool(pool)
	t.Cleanup(func() { _ = db.Close() })
	newSQLStore := func(t *testing.T) *pgstore.Store {
		s, err := pgstore.NewFromDB(db, pgstore.WithSchema(freshSchema(t, pool)))
		require.NoError(t, err)
		require.NoError(t, s.Migrate(ctx))
		return s
	}
	journaltest.Run(t, func(t *testing.T) autobuy.Journal { return newSQLStore(t).Journal() })
	t.Run("Lock", func(t *testing.T) {
		s := newSQLStore(t)
		unlock, err := s.Locker().Lock(ctx, "quotastack:autobuy:cus_a")
		require.NoError(t, err)
		in := pending("cus_a", "ord_1")
		require.NoError(t, s.Journal().Put(ctx, &in))
		require.NoError(t, unlock(ctx))
	})
}

func TestOptionsChecked(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(ctx, "postgres://127.0.0.1:1/none") // not dialled
	require.NoError(t, err)
	defer pool.Close()
	for _, o := range []pgstore.Option{pgstore.WithTablePrefix("bad-prefix"), pgstore.WithTablePrefix(`x"; DROP`),
		pgstore.WithRetention(time.Hour), pgstore.WithLockTTL(0), pgstore.WithMaxLocks(0)} {
		_, err := pgstore.New(pool, o)
		assert.Error(t, err)
	}
	_, err = pgstore.New(nil)
	assert.Error(t, err)
	s, err := pgstore.New(pool, pgstore.WithSchema(`my "schema"`), pgstore.WithTablePrefix("billing_"))
	require.NoError(t, err)
	assert.Contains(t, s.Schema(), `CREATE TABLE IF NOT EXISTS "my ""schema"""."billing_intents"`, "names are quoted")
}

func TestEscapeInjective(t *testing.T) {
	t.Parallel()
	seen := map[string]string{}
	for _, s := range []string{"", "a", "%", "%25", "a\x00b", "a%00b", "\xff", "%FF", "é", "\xc3", "uuid-0b6f1d3e"} {
		e := pgstore.Esc(s)
		assert.NotContains(t, e, "\x00")
		assert.Equal(t, s, pgstore.Unesc(e), "round trip of %q", s)
		if prev, ok := seen[e]; ok {
			t.Errorf("%q and %q both escape to %q", prev, s, e)
		}
		seen[e] = s
	}
	assert.Equal(t, "0b6f1d3e-9c1a-4c53", pgstore.Esc("0b6f1d3e-9c1a-4c53"), "ordinary ids are stored as they are")
}

// The ids of takes from leases live a minute: the next take of the
// customer drops the older ones of its lease, and Prune every table's.
func TestTakeIDsLiveAMinute(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 4)
	s := newStore(t, pool)
	l := s.ChargeLog()
	takes := func() (n int) {
		require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+s.Table("lease_takes")).Scan(&n))
		return n
	}
	for _, c := range []string{"cus_a", "cus_b"} {
		ls := autobuy.Lease{CustomerID: c, Metric: "m", Held: 50, LastUsed: time.Now()}
		require.NoError(t, l.PutLease(ctx, &ls))
		for i := range 5 {
			_, ok, err := l.TakeLease(ctx, c, "m", 1, time.Now(), fmt.Sprint("old-", i))
			require.NoError(t, err)
			require.True(t, ok)
		}
	}
	_, err := pool.Exec(ctx, "UPDATE "+s.Table("lease_takes")+" SET taken_at = now() - interval '61 seconds'")
	require.NoError(t, err)
	_, ok, err := l.TakeLease(ctx, "cus_a", "m", 1, time.Now(), "new")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, 6, takes(), "cus_a's old ids went with its take; cus_b's wait for Prune")
	_, err = s.Prune(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, takes(), "the one of the last minute stays")
}

// Tables of version 1 (no take ids) are brought to version 2 by Migrate.
func TestMigrateFromVersion1(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 4)
	s := newStore(t, pool)
	_, err := pool.Exec(ctx, "DROP TABLE "+s.Table("lease_takes")+"; UPDATE "+s.Table("schema_version")+" SET version = 1")
	require.NoError(t, err)
	l := s.ChargeLog()
	ls := autobuy.Lease{CustomerID: "cus_a", Metric: "m", Held: 5, LastUsed: time.Now()}
	require.NoError(t, l.PutLease(ctx, &ls))
	_, _, err = l.TakeLease(ctx, "cus_a", "m", 1, time.Now(), "t1")
	require.Error(t, err, "version 1 tables: run Migrate")
	require.NoError(t, s.Migrate(ctx))
	_, ok, err := l.TakeLease(ctx, "cus_a", "m", 1, time.Now(), "t1")
	require.NoError(t, err)
	require.True(t, ok)
	var v int
	require.NoError(t, pool.QueryRow(ctx, "SELECT version FROM "+s.Table("schema_version")).Scan(&v))
	assert.Equal(t, 2, v)
}

// The README shows the schema Migrate runs, exactly.
func TestREADMEShowsTheSchema(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(ctx, "postgres://127.0.0.1:1/none") // not dialled
	require.NoError(t, err)
	defer pool.Close()
	s, err := pgstore.New(pool)
	require.NoError(t, err)
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(readme), "```sql\n")
	require.True(t, ok, "the README has an sql block")
	block, _, ok := strings.Cut(rest, "```")
	require.True(t, ok)
	assert.Equal(t, s.Schema(), block)
}
