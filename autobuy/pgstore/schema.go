package pgstore

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// schemaVersion is the version of the tables Migrate creates.
const schemaVersion = 2

// ddl is the schema; {name} stands for the qualified table name, {name:bare}
// for an unqualified index name.
const ddl = `
-- Purchase intents (autobuy.Intent), one row per order. The intent column
-- holds the whole intent as JSON (times to the nanosecond); the other columns
-- are for the constraints, the indexes and you.
CREATE TABLE IF NOT EXISTS {intents} (
  customer_id text        NOT NULL,
  order_id    text        NOT NULL,
  state       text        NOT NULL CHECK (state IN ('pending', 'debited', 'done', 'failed', 'review')),
  rev         bigint      NOT NULL,
  created_at  timestamptz NOT NULL,
  touched_at  timestamptz NOT NULL, -- greatest(created, updated): Since reads by it
  intent      json        NOT NULL,
  written_at  timestamptz NOT NULL DEFAULT now(), -- the last write, by the database's clock: pruning
  PRIMARY KEY (customer_id, order_id)
);
-- One open intent per customer: the database refuses the second.
CREATE UNIQUE INDEX IF NOT EXISTS {ix:intents_one_open} ON {intents} (customer_id)
  WHERE state IN ('pending', 'debited', 'review');
CREATE INDEX IF NOT EXISTS {ix:intents_touched} ON {intents} (customer_id, touched_at);
CREATE INDEX IF NOT EXISTS {ix:intents_open_age} ON {intents} (created_at)
  WHERE state IN ('pending', 'debited', 'review');
CREATE INDEX IF NOT EXISTS {ix:intents_closed_age} ON {intents} (written_at)
  WHERE state IN ('done', 'failed');

-- Per customer, a revision bumped with every write of its intents (Journal.Rev).
CREATE TABLE IF NOT EXISTS {journal_revs} (
  customer_id text   PRIMARY KEY,
  rev         bigint NOT NULL
);

-- Auto-buy suspensions (autobuy.Suspension); until_at NULL: until lifted.
CREATE TABLE IF NOT EXISTS {suspensions} (
  customer_id text        NOT NULL,
  metric      text        NOT NULL,
  since_at    timestamptz NOT NULL,
  until_at    timestamptz,
  reason      text        NOT NULL,
  suspension  json        NOT NULL,
  written_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (customer_id, metric)
);

-- Charged events (autobuy.Charge): one per customer and event, kept for the
-- retention after their last write.
CREATE TABLE IF NOT EXISTS {charges} (
  customer_id text        NOT NULL,
  event_id    text        NOT NULL,
  metric      text        NOT NULL,
  units       bigint      NOT NULL,
  via         text        NOT NULL,
  ref         text        NOT NULL,
  attempt     integer     NOT NULL,
  state       text        NOT NULL,
  reason      text        NOT NULL,
  order_id    text        NOT NULL,
  created_at  timestamptz,
  updated_at  timestamptz,
  rev         bigint      NOT NULL,
  written_at  timestamptz NOT NULL DEFAULT now(), -- the last write, by the database's clock: pruning
  PRIMARY KEY (customer_id, event_id)
);
CREATE INDEX IF NOT EXISTS {ix:charges_age} ON {charges} (written_at);

-- Leases (autobuy.Lease): one per customer and metric.
CREATE TABLE IF NOT EXISTS {leases} (
  customer_id     text        NOT NULL,
  metric          text        NOT NULL,
  reservation_id  text        NOT NULL,
  units_per_event bigint      NOT NULL,
  held            bigint      NOT NULL,
  used            bigint      NOT NULL,
  committing      boolean     NOT NULL,
  expires_at      timestamptz,
  created_at      timestamptz,
  last_used       timestamptz,
  rev             bigint      NOT NULL,
  PRIMARY KEY (customer_id, metric)
);
CREATE INDEX IF NOT EXISTS {ix:leases_last_used} ON {leases} (last_used);

-- The ids of the takes from each customer's leases of the last minute (by
-- the database's clock; version 2): a take sent again after its answer was
-- lost is not counted twice.
CREATE TABLE IF NOT EXISTS {lease_takes} (
  customer_id text        NOT NULL,
  metric      text        NOT NULL,
  take_id     text        NOT NULL,
  taken_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (customer_id, metric, take_id)
);
CREATE INDEX IF NOT EXISTS {ix:lease_takes_age} ON {lease_takes} (taken_at);

-- Fencing tokens of the customer locks: the latest holder's token.
CREATE SEQUENCE IF NOT EXISTS {lock_fences};
CREATE TABLE IF NOT EXISTS {locks} (
  lock_key  text        PRIMARY KEY,
  fence     bigint      NOT NULL,
  locked_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS {schema_version} (
  version integer NOT NULL
);
`

var tables = []string{"intents", "journal_revs", "suspensions", "charges", "leases", "lease_takes", "lock_fences", "locks",
	"schema_version"}

// Schema returns the SQL that Migrate runs, with the store's table names.
func (s *Store) Schema() string {
	return strings.TrimSpace(s.expand(ddl)) + "\n"
}

var indexRe = regexp.MustCompile(`\{ix:(\w+)\}`)

// expand replaces {table} with the table's qualified name and {ix:name} with
// an index's name, in q.
func (s *Store) expand(q string) string {
	for _, t := range tables {
		q = strings.ReplaceAll(q, "{"+t+"}", s.table(t))
	}
	return indexRe.ReplaceAllStringFunc(q, func(m string) string {
		return pgx.Identifier{s.prefix + indexRe.FindStringSubmatch(m)[1]}.Sanitize()
	})
}

// Migrate creates the schema's tables, indexes and sequence where missing
// (CREATE ... IF NOT EXISTS), in one transaction under an advisory lock:
// idempotent, and safe to run from every replica at start-up at once. It
// needs the right to create tables in the schema (and to create the schema
// itself if WithSchema names one that doesn't exist), never a superuser.
func (s *Store) Migrate(ctx context.Context) error {
	err := s.db.run(ctx, func(c *pgx.Conn) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", s.lockID("migrate")); err != nil {
				return err
			}
			if s.schema != "" {
				var exists bool
				if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", s.schema).Scan(&exists); err != nil {
					return err
				}
				if !exists {
					if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{s.schema}.Sanitize()); err != nil {
						return err
					}
				}
			}
			if _, err := tx.Exec(ctx, s.Schema()); err != nil {
				return err
			}
			var v int
			err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+s.table("schema_version")).Scan(&v)
			switch {
			case err != nil:
				return err
			case v > schemaVersion:
				return fmt.Errorf("the tables are at version %d, newer than this module's %d: upgrade the module", v, schemaVersion)
			case v < schemaVersion:
				_, err = tx.Exec(ctx, "DELETE FROM "+s.table("schema_version")+"; INSERT INTO "+s.table("schema_version")+
					" (version) VALUES ("+fmt.Sprint(schemaVersion)+")")
				return err
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	return nil
}

// pruneBatch is the most rows one pruning statement deletes: each batch
// holds its row locks briefly and skips rows others have locked.
const pruneBatch = 500

// pruneEvery is how often the store prunes by itself, one batch per table,
// on the write that finds it due.
const pruneEvery = time.Minute

// Prune deletes, in batches, closed intents and charged events last written
// more than the retention ago, suspensions that ended and were written that
// long ago, and fencing tokens of locks not taken within the retention; by
// the database's clock. It returns how many rows it
// deleted. The store also prunes one batch per table by itself at most once
// a minute; run Prune from a job if you'd rather.
func (s *Store) Prune(ctx context.Context) (int64, error) {
	var total int64
	for _, q := range s.sql.prune {
		for {
			var n int64
			err := s.db.run(ctx, func(c *pgx.Conn) error {
				tag, err := c.Exec(ctx, q, s.retention.Microseconds(), pruneBatch)
				n = tag.RowsAffected()
				return err
			})
			if err != nil {
				return total, fmt.Errorf("pgstore: prune: %w", err)
			}
			total += n
			if n < pruneBatch {
				break
			}
		}
	}
	return total, nil
}

// maybePrune runs one batch per table if the last automatic prune is older
// than pruneEvery; errors are logged, never returned (pruning is upkeep).
func (s *Store) maybePrune(ctx context.Context) {
	now := time.Now().UnixNano()
	last := s.lastPrune.Load()
	if now-last < int64(pruneEvery) || !s.lastPrune.CompareAndSwap(last, now) {
		return
	}
	for _, q := range s.sql.prune {
		err := s.db.run(ctx, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, q, s.retention.Microseconds(), pruneBatch)
			return err
		})
		if err != nil && !errors.Is(err, context.Canceled) {
			s.log.WarnContext(ctx, "pgstore: pruning", "error", err)
		}
	}
}
