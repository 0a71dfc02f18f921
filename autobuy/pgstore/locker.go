package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quotastack/quotastack-go/autobuy"
)

// Locker is an autobuy.Locker on PostgreSQL. Safe for concurrent use.
//
// A lock is pg_advisory_xact_lock in a transaction that a dedicated
// connection keeps open until unlock (a ROLLBACK: the transaction writes
// nothing). It is never a session lock, so a connection back in the pool
// holds nothing; if the connection dies, PostgreSQL releases the lock, and
// it ends the session by itself once the transaction has idled for the TTL
// (WithLockTTL). Within a process, waiters of one key queue in memory, so one
// connection per key waits in the database.
//
// A lock released that way, while its holder still runs, must not let two
// purchases run. So taking a lock also stores a fencing token, drawn from a
// sequence, as the key's latest; the Journal of the same Store writes a
// customer's intents, while this process holds that customer's lock, only if
// the token is still the latest, and share-locks the token's row while it
// writes. The next holder replaces the token (waiting for such a write to
// commit) before it reads the journal: it sees every write of the old
// holder, and the old holder writes nothing more (Put returns ErrLockLost).
// The old holder's purchase stays open in the journal, and the new holder
// finishes it with the same idempotency keys; the one-open-intent index and
// the revisions keep it single even if a lock came from elsewhere.
type Locker struct {
	s     *Store
	local *autobuy.LocalLocker
	sem   chan struct{}
}

var _ autobuy.Locker = (*Locker)(nil)

func newLocker(s *Store) *Locker {
	return &Locker{s: s, local: autobuy.NewLocalLocker(), sem: make(chan struct{}, s.maxLocks)}
}

// releaseTimeout bounds an unlock, whatever its context.
const releaseTimeout = 5 * time.Second

// Lock blocks until key is held or ctx ends, and returns the function that
// releases it. Taking a lock costs two round trips (the advisory lock, then
// the fencing token); releasing it one. The unlock returns an error matching
// ErrLockLost if the lock's connection had ended before.
func (l *Locker) Lock(ctx context.Context, key string) (func(context.Context) error, error) {
	localUnlock, err := l.local.Lock(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("pgstore: lock %q: %w", key, err)
	}
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		_ = localUnlock(ctx)
		return nil, fmt.Errorf("pgstore: lock %q: waiting for a free lock slot: %w", key, ctx.Err())
	}
	fail := func(err error) (func(context.Context) error, error) {
		<-l.sem
		_ = localUnlock(ctx)
		return nil, fmt.Errorf("pgstore: lock %q: %w", key, err)
	}
	hc, err := l.s.db.hold(ctx)
	if err != nil {
		return fail(err)
	}
	wait := "0" // no lock_timeout: ctx cancels the wait
	if dl, ok := ctx.Deadline(); ok {
		wait = strconv.FormatInt(max(1, time.Until(dl).Milliseconds()), 10)
	}
	err = hc.do(ctx, func(c *pgx.Conn) error {
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue("SELECT set_config('lock_timeout', $1, true), set_config('idle_in_transaction_session_timeout', $2, true)",
			wait, strconv.FormatInt(l.s.lockTTL.Milliseconds(), 10))
		b.Queue("SELECT pg_advisory_xact_lock($1)", l.s.lockID(key))
		return c.SendBatch(ctx, b).Close()
	})
	if err != nil {
		_ = l.rollback(hc) // the lock failed: the connection is closed if it is unusable
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "55P03":
			err = fmt.Errorf("%w (%w)", context.DeadlineExceeded, err) // lock_timeout: the deadline, by the server's clock
		case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return fail(err)
	}
	var token int64
	err = l.s.db.run(ctx, func(c *pgx.Conn) error { return c.QueryRow(ctx, l.s.sql.fence, esc(key)).Scan(&token) })
	if err != nil {
		_ = l.rollback(hc) // the lock failed: the connection is closed if it is unusable
		return fail(fmt.Errorf("storing the fencing token: %w", err))
	}
	l.s.heldMu.Lock()
	l.s.held[key] = token
	l.s.heldMu.Unlock()

	var once sync.Once
	var uerr error
	return func(ctx context.Context) error {
		once.Do(func() {
			l.s.heldMu.Lock()
			delete(l.s.held, key)
			l.s.heldMu.Unlock()
			if err := l.rollback(hc); err != nil {
				uerr = fmt.Errorf("%w: lock %q: %w", ErrLockLost, key, err)
			}
			<-l.sem
			_ = localUnlock(ctx)
		})
		return uerr
	}, nil
}

// rollback ends the lock's transaction and returns its connection (closed
// instead if the rollback failed: the connection is gone or unusable).
func (l *Locker) rollback(hc heldConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	err := hc.do(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "ROLLBACK")
		return err
	})
	hc.release(err != nil)
	return err
}
