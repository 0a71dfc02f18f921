package pgstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// Store holds the tables of one schema and prefix and hands out the Journal,
// Locker and ChargeLog on them. Build it once and share it; safe for
// concurrent use.
type Store struct {
	db        backend
	schema    string
	prefix    string
	retention time.Duration
	lockTTL   time.Duration
	maxLocks  int
	log       *slog.Logger

	// held maps the lock keys this process holds to their fencing tokens.
	heldMu sync.Mutex
	held   map[string]int64

	lastPrune atomic.Int64 // unix nanos of the last automatic prune

	journal *Journal
	locker  *Locker
	charges *ChargeLog
	sql     statements
}

// Option configures a Store.
type Option func(*Store)

// WithSchema puts the tables in schema (default: the connection's
// search_path, usually "public"). Migrate creates the schema if it is missing
// and the role may.
func WithSchema(schema string) Option { return func(s *Store) { s.schema = schema } }

// WithTablePrefix names the tables prefix + "intents", prefix + "charges", ...
// (default "quotastack_"). Letters, digits and underscores only.
func WithTablePrefix(prefix string) Option { return func(s *Store) { s.prefix = prefix } }

// WithRetention sets how long closed intents and charged events are kept
// after their last update (default 48 h; at least 24 h, the server's
// idempotency window). Keep it longer than any purchase-limit period.
func WithRetention(d time.Duration) Option { return func(s *Store) { s.retention = d } }

// WithLockTTL bounds how long a lock is held (default 2 min): PostgreSQL ends
// the lock's session after that long idle in its transaction, so a process
// that hangs or loses the network can't hold a customer's lock for good.
// Keep it above the gate's purchase timeout; a purchase that outlives it is
// stopped at its next journal write and finished by the next gate.
func WithLockTTL(d time.Duration) Option { return func(s *Store) { s.lockTTL = d } }

// WithMaxLocks caps the locks held at once by this process (default: half
// the pool's MaxConns, at least 1; 4 with database/sql). Each held lock pins
// one connection; the cap leaves the others to the journal's writes, which
// the lock holders wait for.
func WithMaxLocks(n int) Option { return func(s *Store) { s.maxLocks = n } }

// WithLogger logs what the store does by itself (pruning) to l (silent by
// default).
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

var prefixRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// New returns a Store on pool. Run Migrate once before use (each replica may
// run it at start-up).
func New(pool *pgxpool.Pool, opts ...Option) (*Store, error) {
	if pool == nil {
		return nil, errors.New("pgstore: nil pool")
	}
	return newStore(poolBackend{pool}, int(pool.Config().MaxConns), opts)
}

// NewFromDB returns a Store on a *sql.DB opened with the pgx driver
// (github.com/jackc/pgx/v5/stdlib: sql.Open("pgx", url) or
// stdlib.OpenDBFromPool); another driver is refused at its first call.
func NewFromDB(db *sql.DB, opts ...Option) (*Store, error) {
	if db == nil {
		return nil, errors.New("pgstore: nil *sql.DB")
	}
	maxConns := 8
	if n := db.Stats().MaxOpenConnections; n > 0 {
		maxConns = n
	}
	return newStore(sqlBackend{db}, maxConns, opts)
}

func newStore(db backend, maxConns int, opts []Option) (*Store, error) {
	s := &Store{db: db, prefix: "quotastack_", retention: 48 * time.Hour, lockTTL: 2 * time.Minute,
		maxLocks: max(1, maxConns/2), held: map[string]int64{}}
	for _, o := range opts {
		o(s)
	}
	switch {
	case !prefixRe.MatchString(s.prefix + "x"):
		return nil, fmt.Errorf("pgstore: table prefix %q: letters, digits and underscores only", s.prefix)
	case len(s.prefix) > 30:
		return nil, fmt.Errorf("pgstore: table prefix %q: 30 characters at most", s.prefix)
	case strings.ContainsRune(s.schema, 0) || !utf8.ValidString(s.schema):
		return nil, fmt.Errorf("pgstore: schema %q: not a valid name", s.schema)
	case s.retention < 24*time.Hour:
		return nil, fmt.Errorf("pgstore: retention %s: at least 24 h (the server keeps idempotency keys that long)", s.retention)
	case s.lockTTL < time.Second:
		return nil, fmt.Errorf("pgstore: lock TTL %s: at least a second", s.lockTTL)
	case s.maxLocks < 1:
		return nil, fmt.Errorf("pgstore: max locks %d: at least 1", s.maxLocks)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.sql = buildStatements(s)
	s.journal = &Journal{s: s}
	s.locker = newLocker(s)
	s.charges = &ChargeLog{s: s}
	return s, nil
}

// Journal returns the store's autobuy.Journal.
func (s *Store) Journal() *Journal { return s.journal }

// Locker returns the store's autobuy.Locker.
func (s *Store) Locker() *Locker { return s.locker }

// ChargeLog returns the store's autobuy.ChargeLog.
func (s *Store) ChargeLog() *ChargeLog { return s.charges }

// table returns the quoted, schema-qualified name of table name.
func (s *Store) table(name string) string {
	if s.schema == "" {
		return pgx.Identifier{s.prefix + name}.Sanitize()
	}
	return pgx.Identifier{s.schema, s.prefix + name}.Sanitize()
}

// lockID maps a lock key to the advisory lock's 64-bit key, within the
// store's schema and prefix (two stores in one database never contend).
func (s *Store) lockID(key string) int64 {
	h := sha256.Sum256([]byte("quotastack-go/pgstore\x00" + s.schema + "\x00" + s.prefix + "\x00" + key))
	return int64(binary.BigEndian.Uint64(h[:8])) //nolint:gosec // a hash, any bits
}

// fenceFor returns the fencing token of the customer's purchase lock if this
// process holds it (the key the Gatekeeper locks: "quotastack:autobuy:" and
// the customer id).
func (s *Store) fenceFor(customerID string) (key string, token int64, ok bool) {
	key = gateLockPrefix + customerID
	s.heldMu.Lock()
	token, ok = s.held[key]
	s.heldMu.Unlock()
	return key, token, ok
}

// gateLockPrefix is how autobuy.Gatekeeper names a customer's purchase lock.
const gateLockPrefix = "quotastack:autobuy:"

// ---- connections ----

// backend runs one operation on a connection: a pgx pool or a database/sql
// pool of pgx connections.
type backend interface {
	run(ctx context.Context, fn func(*pgx.Conn) error) error
	// hold returns a connection kept until release, for a lock.
	hold(ctx context.Context) (heldConn, error)
}

type heldConn interface {
	do(ctx context.Context, fn func(*pgx.Conn) error) error
	// release returns the connection; broken closes it instead.
	release(broken bool)
}

type poolBackend struct{ p *pgxpool.Pool }

func (b poolBackend) run(ctx context.Context, fn func(*pgx.Conn) error) error {
	return runAgainIfNotRun(func() error {
		c, err := b.p.Acquire(ctx)
		if err != nil {
			return err
		}
		defer c.Release()
		return fn(c.Conn())
	})
}

// runTries bounds the runs of one operation whose connection had died.
const runTries = 3

// runAgainIfNotRun runs op, again (on another connection) while it fails
// without having run: nothing was sent, or the server had ended the session
// (a pooled connection terminated while idle, a failover), which rolls back
// whatever it was running. An operation is one statement or one transaction,
// so running it again never applies it twice.
func runAgainIfNotRun(op func() error) error {
	var err error
	for range runTries {
		if err = op(); err == nil || !notRun(err) {
			return err
		}
	}
	return err
}

// notRun reports whether err says the operation did not run: nothing was
// sent, or the session was terminated before it completed (SQLSTATE class
// 57P: admin or crash shutdown, cannot connect now).
func notRun(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "57P")
	}
	return pgconn.SafeToRetry(err)
}

func (b poolBackend) hold(ctx context.Context) (heldConn, error) {
	c, err := b.p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return poolHeld{c}, nil
}

type poolHeld struct{ c *pgxpool.Conn }

func (h poolHeld) do(_ context.Context, fn func(*pgx.Conn) error) error { return fn(h.c.Conn()) }
func (h poolHeld) release(broken bool) {
	if broken {
		// Hijacked connections leave the pool for good; close it ourselves.
		conn := h.c.Hijack()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(ctx)
		cancel()
		return
	}
	h.c.Release()
}

type sqlBackend struct{ db *sql.DB }

var errNotPgx = errors.New("pgstore: the *sql.DB must use the pgx driver (github.com/jackc/pgx/v5/stdlib)")

func rawPgx(c *sql.Conn, fn func(*pgx.Conn) error) error {
	return c.Raw(func(dc any) error {
		pc, ok := dc.(*stdlib.Conn)
		if !ok {
			return errNotPgx
		}
		return fn(pc.Conn())
	})
}

func (b sqlBackend) run(ctx context.Context, fn func(*pgx.Conn) error) error {
	return runAgainIfNotRun(func() error {
		c, err := b.db.Conn(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		return rawPgx(c, fn)
	})
}

func (b sqlBackend) hold(ctx context.Context) (heldConn, error) {
	c, err := b.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return sqlHeld{c}, nil
}

type sqlHeld struct{ c *sql.Conn }

func (h sqlHeld) do(_ context.Context, fn func(*pgx.Conn) error) error { return rawPgx(h.c, fn) }
func (h sqlHeld) release(broken bool) {
	if broken {
		_ = rawPgx(h.c, func(c *pgx.Conn) error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			return c.Close(ctx) // database/sql drops a closed connection
		})
	}
	_ = h.c.Close()
}

// ---- values ----

// esc makes s storable in a text column, injectively: '%', NUL and bytes
// that aren't UTF-8 become %XX. Ordinary ids are stored as they are.
func esc(s string) string {
	clean := utf8.ValidString(s)
	for i := 0; clean && i < len(s); i++ {
		clean = s[i] != '%' && s[i] != 0
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || r == '%' || r == 0 {
			fmt.Fprintf(&b, "%%%02X", s[i])
			i++
			continue
		}
		b.WriteString(s[i : i+n])
		i += n
	}
	return b.String()
}

// unesc reverses esc.
func unesc(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ts is a time for a timestamptz column: NULL for the zero time.
func ts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// floorMicro truncates t to PostgreSQL's microseconds, towards the past.
func floorMicro(t time.Time) time.Time {
	f := t.Truncate(time.Microsecond)
	if f.After(t) {
		f = f.Add(-time.Microsecond)
	}
	return f
}

// isUnknownOutcome reports whether err leaves unknown whether a statement
// committed: the connection failed after it may have been sent.
func isUnknownOutcome(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return false // the server answered with an error: the statement did not commit
	}
	return !pgconn.SafeToRetry(err) // sent, and the connection failed before the answer
}
