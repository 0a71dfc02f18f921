package pgstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/quotastack/quotastack-go/autobuy/pgstore"
)

// The tests need a PostgreSQL server: QUOTASTACK_TEST_POSTGRES_URL, a
// postgres:// URL of a database the tests may create schemas in (.ci/run
// starts one on loopback). Without it they are skipped.
const envURL = "QUOTASTACK_TEST_POSTGRES_URL"

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// pgxpool's background health check ends with Close; puddle may still be
		// returning a resource when the last test's cleanup runs.
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreTopFunction("github.com/jackc/puddle/v2.(*Pool[...]).destroyAcquiredResource"))
}

func postgresURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(envURL)
	if u == "" {
		t.Skip(envURL + " is not set: no PostgreSQL to test against (.ci/run starts one; see autobuy/pgstore)")
	}
	return u
}

// testPool connects to the test database with up to maxConns connections.
func testPool(t testing.TB, maxConns int32, tweak ...func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(postgresURL(t))
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	cfg.ConnConfig.RuntimeParams["application_name"] = "quotastack-pgstore-test"
	for _, f := range tweak {
		f(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	require.NoError(t, pool.Ping(ctx), "connecting to %s", envURL)
	t.Cleanup(pool.Close)
	return pool
}

// freshSchema returns the name of a schema no other test uses, dropped at
// the end of the test.
func freshSchema(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "qs_test_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`)
		if err != nil {
			t.Logf("dropping schema %s: %v", schema, err)
		}
	})
	return schema
}

// newStore returns a migrated store in a fresh schema of pool.
func newStore(t testing.TB, pool *pgxpool.Pool, opts ...pgstore.Option) *pgstore.Store {
	t.Helper()
	s, err := pgstore.New(pool, append([]pgstore.Option{pgstore.WithSchema(freshSchema(t, pool))}, opts...)...)
	require.NoError(t, err)
	require.NoError(t, s.Migrate(context.Background()))
	return s
}
