package pgstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/chargelogtest"
	"github.com/quotastack/quotastack-go/autobuy/pgstore"
)

// takesResent counts the takes the gates sent again under their id (their log).
type takesResent struct{ n atomic.Int64 }

func (l *takesResent) Enabled(context.Context, slog.Level) bool { return true }
func (l *takesResent) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *takesResent) WithGroup(string) slog.Handler            { return l }

func (l *takesResent) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "autobuy: a take from a lease went unanswered; sent again under its id" {
		l.n.Add(1)
	}
	return nil
}

// TestLeaseSoak: chargelogtest.LeaseSoak on a Store (journal, lock, and the
// ChargeLog with its leases and take ids), each replica on a pool of its
// own, while a killer terminates their connections every 40 ms, mid-take
// included. It found a renewal whose lock was lost taking another replica's
// activation of its reserve for its own (its gates let through, never
// charged), and gates failing for good on pooled connections the server had
// terminated.
func TestLeaseSoak(t *testing.T) {
	t.Parallel()
	admin := testPool(t, 2)
	schema := freshSchema(t, admin)
	app := schema + "_lease"
	migrated, err := pgstore.New(admin, pgstore.WithSchema(schema))
	require.NoError(t, err)
	require.NoError(t, migrated.Migrate(ctx))
	pcfg, err := pgxpool.ParseConfig(postgresURL(t))
	require.NoError(t, err)
	pcfg.MaxConns = 4
	pcfg.ConnConfig.RuntimeParams["application_name"] = app
	resent := &takesResent{}
	k := &killer{}
	figs := chargelogtest.LeaseSoak(t, chargelogtest.LeaseSoakConfig{
		Replica: func(t *testing.T, _ int) []autobuy.Option {
			pool, err := pgxpool.NewWithConfig(ctx, pcfg.Copy()) // connects lazily
			require.NoError(t, err)
			t.Cleanup(pool.Close)
			s, err := pgstore.New(pool, pgstore.WithSchema(schema))
			require.NoError(t, err)
			return []autobuy.Option{autobuy.WithJournal(s.Journal()), autobuy.WithLocker(s.Locker()),
				autobuy.WithChargeLog(s.ChargeLog()), autobuy.WithLogger(slog.New(resent))}
		},
		Faults: func(stop <-chan struct{}) {
			kctx, cancel := context.WithCancel(ctx)
			go func() { <-stop; cancel() }()
			k.run(kctx, t, admin, app, time.Now().UnixNano(), 40*time.Millisecond)
		},
	})
	killed := k.locks.Load() + k.others.Load()
	t.Logf("lease soak (PostgreSQL): %+v; %d connections killed, %d takes sent again under their id", figs, killed, resent.n.Load())
	if path := os.Getenv("QUOTASTACK_SOAK_REPORT"); path != "" {
		if fh, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			_, _ = fmt.Fprintf(fh, "pgstore lease soak: %+v; %d connections killed, %d takes sent again under their id\n",
				figs, killed, resent.n.Load())
			_ = fh.Close()
		}
	}
	assert.Positive(t, killed, "connections were killed")
}
