package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quotastack/quotastack-go/autobuy"
)

// Journal is an autobuy.Journal on PostgreSQL, for replicas that share the
// database (with the Locker of the same Store). Safe for concurrent use.
//
// Put is one statement: the compare-and-set on the revision (or the insert
// of a new intent, which the partial unique index refuses while the customer
// has an open one), the bump of the customer's revision, and, when this
// process holds the customer's lock from the same Store, the check that the
// lock's fencing token is still the latest. Reads are one statement each.
// Closed intents are deleted after the retention.
type Journal struct{ s *Store }

var _ autobuy.Journal = (*Journal)(nil)

// ErrLockLost is returned by Journal.Put when this process held the
// customer's lock but lost it (its connection ended, or it outlived its TTL)
// and another holder may be running: nothing was written. The purchase
// stays where it was; the next holder finishes it with the same keys.
var ErrLockLost = errors.New("pgstore: the customer's lock was lost")

// statements are the store's SQL, with its table names.
type statements struct {
	putCreate, putUpdate, putCreateFenced, putUpdateFenced string
	readIntent, open, since, pending, rev                  string
	suspension, suspendInsert, suspendLock, suspendReplace string
	lift                                                   string
	claim, claimRead, putCharge                            string
	lease, leaseInsert, leaseUpdate, takeLease             string
	deleteLease, leases                                    string
	fence                                                  string
	prune                                                  []string
}

const fenceCTE = `fence AS (SELECT 1 FROM {locks} WHERE lock_key = $8 AND fence = $9 FOR SHARE), `

const revCTE = `, r AS (
  INSERT INTO {journal_revs} (customer_id, rev) SELECT $1, 1 FROM w
  ON CONFLICT (customer_id) DO UPDATE SET rev = {journal_revs}.rev + 1)
SELECT (SELECT rev FROM w), `

func buildStatements(s *Store) statements {
	create := `w AS (
  INSERT INTO {intents} (customer_id, order_id, state, rev, created_at, touched_at, intent)
  SELECT $1, $2, $3, 1, $5::timestamptz, $6::timestamptz, $7::json WHERE $4::bigint = 0 %s
  ON CONFLICT DO NOTHING
  RETURNING rev)`
	update := `w AS (
  UPDATE {intents} SET state = $3, rev = rev + 1, created_at = $5::timestamptz, touched_at = $6::timestamptz,
    intent = $7::json, written_at = now()
  WHERE customer_id = $1 AND order_id = $2 AND rev = $4 %s
  RETURNING rev)`
	unfenced := func(w string) string {
		return s.expand("WITH " + fmt.Sprintf(w, "") + revCTE + "true")
	}
	fenced := func(w string) string {
		return s.expand("WITH " + fenceCTE + fmt.Sprintf(w, "AND EXISTS (SELECT 1 FROM fence)") + revCTE +
			"EXISTS (SELECT 1 FROM fence)")
	}
	const cols = `customer_id, metric, reservation_id, units_per_event, held, used, committing, expires_at, created_at, last_used, rev`
	const chargeCols = `customer_id, event_id, metric, units, via, ref, attempt, state, reason, order_id, created_at, updated_at, rev`
	cutoff := `now() - $1::bigint * interval '1 microsecond'`
	return statements{
		putCreate:       unfenced(create),
		putUpdate:       unfenced(update),
		putCreateFenced: fenced(create),
		putUpdateFenced: fenced(update),
		readIntent:      s.expand(`SELECT rev, intent::text FROM {intents} WHERE customer_id = $1 AND order_id = $2`),
		open: s.expand(`SELECT rev, intent::text FROM {intents}
  WHERE customer_id = $1 AND state IN ('pending', 'debited', 'review') ORDER BY created_at, order_id`),
		since: s.expand(`SELECT rev, intent::text FROM {intents}
  WHERE customer_id = $1 AND touched_at >= $2 ORDER BY created_at, order_id`),
		pending: s.expand(`SELECT rev, intent::text FROM {intents}
  WHERE state IN ('pending', 'debited', 'review') ORDER BY created_at, customer_id, order_id LIMIT $1`),
		rev:        s.expand(`SELECT coalesce((SELECT rev FROM {journal_revs} WHERE customer_id = $1), 0)`),
		suspension: s.expand(`SELECT suspension::text FROM {suspensions} WHERE customer_id = $1 AND metric = $2`),
		suspendInsert: s.expand(`INSERT INTO {suspensions} (customer_id, metric, since_at, until_at, reason, suspension)
  VALUES ($1, $2, $3, $4, $5, $6::json) ON CONFLICT DO NOTHING`),
		suspendLock: s.expand(`SELECT suspension::text FROM {suspensions} WHERE customer_id = $1 AND metric = $2 FOR UPDATE`),
		suspendReplace: s.expand(`UPDATE {suspensions} SET since_at = $3, until_at = $4, reason = $5, suspension = $6::json,
    written_at = now() WHERE customer_id = $1 AND metric = $2`),
		lift: s.expand(`DELETE FROM {suspensions} WHERE customer_id = $1 AND metric = $2`),

		claim: s.expand(`INSERT INTO {charges} (` + chargeCols + `)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1) ON CONFLICT DO NOTHING`),
		claimRead: s.expand(`SELECT ` + chargeCols + ` FROM {charges} WHERE customer_id = $1 AND event_id = $2`),
		putCharge: s.expand(`UPDATE {charges} SET metric = $3, units = $4, via = $5, ref = $6, attempt = $7, state = $8,
  reason = $9, order_id = $10, created_at = $11, updated_at = $12, rev = rev + 1, written_at = now()
  WHERE customer_id = $1 AND event_id = $2 AND rev = $13 RETURNING rev`),
		lease: s.expand(`SELECT ` + cols + ` FROM {leases} WHERE customer_id = $1 AND metric = $2`),
		leaseInsert: s.expand(`INSERT INTO {leases} (` + cols + `)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1) ON CONFLICT DO NOTHING`),
		leaseUpdate: s.expand(`UPDATE {leases} SET reservation_id = $3, units_per_event = $4, held = $5, used = $6,
  committing = $7, expires_at = $8, created_at = $9, last_used = $10, rev = rev + 1
  WHERE customer_id = $1 AND metric = $2 AND rev = $11 RETURNING rev`),
		// A take counts once per id: a take whose id is recorded answers the
		// lease as it is (or a stand-in if it is gone) and counts nothing. Two
		// copies of one take racing both pass the check; the second's insert
		// of the id then fails, and with it the whole statement (its caller
		// sends it again). The ids of more than a minute ago go once the
		// take holds the lease's row, so two takes never lock them in
		// opposite orders.
		takeLease: s.expand(`WITH prior AS (
  SELECT 1 FROM {lease_takes} WHERE customer_id = $1 AND metric = $2 AND take_id = $5
), took AS (
  UPDATE {leases} SET used = used + $3, last_used = $4, rev = rev + 1
  WHERE customer_id = $1 AND metric = $2 AND NOT committing AND $3::bigint > 0 AND held - used >= $3::bigint
    AND NOT EXISTS (SELECT 1 FROM prior)
  RETURNING ` + cols + `
), kept AS (
  INSERT INTO {lease_takes} (customer_id, metric, take_id) SELECT $1, $2, $5 FROM took
), dropped AS (
  DELETE FROM {lease_takes} WHERE customer_id = $1 AND metric = $2 AND take_id <> $5
    AND taken_at < now() - interval '1 minute' AND EXISTS (SELECT 1 FROM took)
)
SELECT ` + cols + ` FROM took
UNION ALL
SELECT ` + cols + ` FROM {leases} WHERE customer_id = $1 AND metric = $2 AND EXISTS (SELECT 1 FROM prior)
UNION ALL
SELECT $1::text, $2::text, ''::text, 0::bigint, 0::bigint, 0::bigint, true, NULL::timestamptz, NULL::timestamptz,
  NULL::timestamptz, 0::bigint
WHERE EXISTS (SELECT 1 FROM prior) AND NOT EXISTS (SELECT 1 FROM {leases} WHERE customer_id = $1 AND metric = $2)`),
		deleteLease: s.expand(`DELETE FROM {leases} WHERE customer_id = $1 AND metric = $2 AND rev = $3`),
		leases: s.expand(`SELECT ` + cols + ` FROM {leases}
  WHERE $1::timestamptz IS NULL OR last_used < $1 ORDER BY last_used, customer_id, metric LIMIT $2`),

		// The token needs no flush to disk (synchronous_commit off): it is
		// visible at once, and a crash that loses it ends every lock's
		// connection too; the next holder replaces it before reading.
		fence: s.expand(`INSERT INTO {locks} (lock_key, fence, locked_at)
  SELECT $1, nextval('{lock_fences}'), now() FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
  ON CONFLICT (lock_key) DO UPDATE SET fence = EXCLUDED.fence, locked_at = EXCLUDED.locked_at RETURNING fence`),
		prune: []string{
			s.expand(`DELETE FROM {intents} WHERE (customer_id, order_id) IN (SELECT customer_id, order_id FROM {intents}
  WHERE state IN ('done', 'failed') AND written_at < ` + cutoff + ` LIMIT $2 FOR UPDATE SKIP LOCKED)`),
			s.expand(`DELETE FROM {charges} WHERE (customer_id, event_id) IN (SELECT customer_id, event_id FROM {charges}
  WHERE written_at < ` + cutoff + ` LIMIT $2 FOR UPDATE SKIP LOCKED)`),
			s.expand(`DELETE FROM {suspensions} WHERE (customer_id, metric) IN (SELECT customer_id, metric FROM {suspensions}
  WHERE until_at < ` + cutoff + ` AND written_at < ` + cutoff + ` LIMIT $2 FOR UPDATE SKIP LOCKED)`),
			s.expand(`DELETE FROM {locks} WHERE lock_key IN (SELECT lock_key FROM {locks}
  WHERE locked_at < ` + cutoff + ` LIMIT $2 FOR UPDATE SKIP LOCKED)`),
			// Take ids live a minute, whatever the retention ($1 is unused).
			s.expand(`DELETE FROM {lease_takes} WHERE (customer_id, metric, take_id) IN (
  SELECT customer_id, metric, take_id FROM {lease_takes}
  WHERE $1::bigint IS NOT NULL AND taken_at < now() - interval '1 minute' LIMIT $2 FOR UPDATE SKIP LOCKED)`),
		},
	}
}

// Put implements autobuy.Journal: one statement, a compare-and-set on in.Rev.
// It returns ErrLockLost, writing nothing, if this process held the
// customer's lock and lost it. When the connection fails after the statement
// was sent, Put reads the intent back to learn whether it was stored.
func (j *Journal) Put(ctx context.Context, in *autobuy.Intent) error {
	stored := *in
	stored.Rev = in.Rev + 1
	data, err := json.Marshal(&stored)
	if err != nil {
		return fmt.Errorf("pgstore: encoding intent %s: %w", in.OrderID, err)
	}
	touched := in.CreatedAt
	if in.UpdatedAt.After(touched) {
		touched = in.UpdatedAt
	}
	q := j.s.sql.putUpdate
	if in.Rev == 0 {
		q = j.s.sql.putCreate
	}
	args := []any{esc(in.CustomerID), esc(in.OrderID), string(in.State), in.Rev, floorMicro(in.CreatedAt), floorMicro(touched), string(data)}
	if key, token, ok := j.s.fenceFor(in.CustomerID); ok {
		q = j.s.sql.putUpdateFenced
		if in.Rev == 0 {
			q = j.s.sql.putCreateFenced
		}
		args = append(args, esc(key), token)
	}
	var rev *int64
	var fenceOK bool
	err = j.s.db.run(ctx, func(c *pgx.Conn) error { return c.QueryRow(ctx, q, args...).Scan(&rev, &fenceOK) })
	if isUnknownOutcome(err) {
		// Did it land? The intent says: our exact record at the next revision.
		var cur int64
		var got string
		rerr := j.s.db.run(ctx, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, j.s.sql.readIntent, esc(in.CustomerID), esc(in.OrderID)).Scan(&cur, &got)
		})
		if rerr == nil && cur == stored.Rev && got == string(data) {
			in.Rev = stored.Rev
			return nil
		}
	}
	switch {
	case err != nil:
		return fmt.Errorf("pgstore: journal put %s: %w", in.OrderID, err)
	case !fenceOK:
		return ErrLockLost
	case rev == nil:
		return autobuy.ErrJournalConflict
	}
	in.Rev = *rev
	if !in.State.Open() {
		j.s.maybePrune(ctx)
	}
	return nil
}

// Rev returns the customer's journal revision: 0 for a customer never
// written, bumped by every successful Put of the customer's intents (never
// by a refused one) and never lowered, pruning included.
func (j *Journal) Rev(ctx context.Context, customerID string) (int64, error) {
	var rev int64
	err := j.s.db.run(ctx, func(c *pgx.Conn) error { return c.QueryRow(ctx, j.s.sql.rev, esc(customerID)).Scan(&rev) })
	if err != nil {
		return 0, fmt.Errorf("pgstore: journal rev: %w", err)
	}
	return rev, nil
}

func (j *Journal) query(ctx context.Context, what, q string, args ...any) ([]autobuy.Intent, error) {
	var out []autobuy.Intent
	err := j.s.db.run(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var rev int64
			var data string
			if err := rows.Scan(&rev, &data); err != nil {
				return err
			}
			var in autobuy.Intent
			if err := json.Unmarshal([]byte(data), &in); err != nil {
				return fmt.Errorf("decoding an intent: %w", err)
			}
			in.Rev = rev
			out = append(out, in)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: journal %s: %w", what, err)
	}
	return out, nil
}

// byCreated orders intents by their exact CreatedAt (the columns hold
// microseconds).
func byCreated(ins []autobuy.Intent) {
	slices.SortStableFunc(ins, func(a, b autobuy.Intent) int { return a.CreatedAt.Compare(b.CreatedAt) })
}

// Open implements autobuy.Journal.
func (j *Journal) Open(ctx context.Context, customerID string) ([]autobuy.Intent, error) {
	ins, err := j.query(ctx, "open", j.s.sql.open, esc(customerID))
	byCreated(ins)
	return ins, err
}

// Since implements autobuy.Journal. Closed intents past the retention are
// forgotten.
func (j *Journal) Since(ctx context.Context, customerID string, t time.Time) ([]autobuy.Intent, error) {
	ins, err := j.query(ctx, "since", j.s.sql.since, esc(customerID), floorMicro(t))
	if err != nil {
		return nil, err
	}
	ins = slices.DeleteFunc(ins, func(in autobuy.Intent) bool { return in.CreatedAt.Before(t) && in.UpdatedAt.Before(t) })
	byCreated(ins)
	return ins, nil
}

// Pending implements autobuy.Journal.
func (j *Journal) Pending(ctx context.Context, limit int) ([]autobuy.Intent, error) {
	var lim any
	if limit > 0 {
		lim = limit
	}
	ins, err := j.query(ctx, "pending", j.s.sql.pending, lim)
	byCreated(ins)
	return ins, err
}

// Suspension implements autobuy.Journal.
func (j *Journal) Suspension(ctx context.Context, customerID, metric string) (autobuy.Suspension, bool, error) {
	var data string
	err := j.s.db.run(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, j.s.sql.suspension, esc(customerID), esc(metric)).Scan(&data)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return autobuy.Suspension{}, false, nil
	}
	if err != nil {
		return autobuy.Suspension{}, false, fmt.Errorf("pgstore: journal suspension: %w", err)
	}
	var s autobuy.Suspension
	if err := json.Unmarshal([]byte(data), &s); err != nil {
		return autobuy.Suspension{}, false, fmt.Errorf("pgstore: journal suspension: %w", err)
	}
	return s, true, nil
}

// Suspend implements autobuy.Journal: one transaction that inserts s, or
// replaces the stored suspension under its row lock if that one is no longer
// active at now (compared to the nanosecond).
func (j *Journal) Suspend(ctx context.Context, s autobuy.Suspension, now time.Time) (bool, error) {
	data, err := json.Marshal(&s)
	if err != nil {
		return false, fmt.Errorf("pgstore: encoding suspension: %w", err)
	}
	args := []any{esc(s.CustomerID), esc(s.Metric), s.Since, ts(s.Until), esc(s.Reason), string(data)}
	created := false
	err = j.s.db.run(ctx, func(c *pgx.Conn) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, j.s.sql.suspendInsert, args...)
			if err != nil || tag.RowsAffected() == 1 {
				created = err == nil
				return err
			}
			var old string
			if err := tx.QueryRow(ctx, j.s.sql.suspendLock, esc(s.CustomerID), esc(s.Metric)).Scan(&old); err != nil {
				return err // gone since the insert (lifted): the caller may retry
			}
			var o autobuy.Suspension
			if err := json.Unmarshal([]byte(old), &o); err != nil {
				return err
			}
			if o.Active(now) {
				return nil
			}
			_, err = tx.Exec(ctx, j.s.sql.suspendReplace, args...)
			created = err == nil
			return err
		})
	})
	if err != nil {
		return false, fmt.Errorf("pgstore: journal suspend: %w", err)
	}
	return created, nil
}

// Lift implements autobuy.Journal.
func (j *Journal) Lift(ctx context.Context, customerID, metric string) error {
	err := j.s.db.run(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, j.s.sql.lift, esc(customerID), esc(metric))
		return err
	})
	if err != nil {
		return fmt.Errorf("pgstore: journal lift: %w", err)
	}
	return nil
}
