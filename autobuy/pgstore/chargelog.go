package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/quotastack/quotastack-go/autobuy"
)

// ChargeLog is an autobuy.ChargeLog on PostgreSQL: one row per customer and
// event (the primary key refuses a second claim), one per customer and
// metric for leases. Every method is one statement (a claim that finds a
// record another claimer committed meanwhile reads it with a second one).
// Times are kept to the microsecond. Charges are deleted after the retention
// (48 h by default), leases when deleted. Safe for concurrent use.
type ChargeLog struct{ s *Store }

var _ autobuy.ChargeLog = (*ChargeLog)(nil)

func chargeArgs(c *autobuy.Charge) []any {
	return []any{esc(c.CustomerID), esc(c.EventID), esc(c.Metric), c.Units, esc(c.Via), esc(c.Ref), c.Attempt,
		esc(string(c.State)), esc(string(c.Reason)), esc(c.OrderID), ts(c.CreatedAt), ts(c.UpdatedAt)}
}

// timeOf returns a scanned timestamptz as a time (zero for NULL), in UTC.
func timeOf(t pgtype.Timestamptz) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
}

func scanCharge(row pgx.Row) (autobuy.Charge, error) {
	var c autobuy.Charge
	var state, reason string
	var created, updated pgtype.Timestamptz
	err := row.Scan(&c.CustomerID, &c.EventID, &c.Metric, &c.Units, &c.Via, &c.Ref, &c.Attempt, &state, &reason,
		&c.OrderID, &created, &updated, &c.Rev)
	c.CustomerID, c.EventID, c.Metric, c.Via, c.Ref, c.OrderID = unesc(c.CustomerID), unesc(c.EventID), unesc(c.Metric),
		unesc(c.Via), unesc(c.Ref), unesc(c.OrderID)
	c.State, c.Reason = autobuy.ChargeState(unesc(state)), autobuy.Reason(unesc(reason))
	c.CreatedAt, c.UpdatedAt = timeOf(created), timeOf(updated)
	return c, err
}

// Claim implements autobuy.ChargeLog: INSERT ... ON CONFLICT DO NOTHING,
// then, if the event was claimed already, a read of that record.
func (l *ChargeLog) Claim(ctx context.Context, c *autobuy.Charge) (autobuy.Charge, bool, error) {
	args := chargeArgs(c)
	var inserted bool
	err := l.s.db.run(ctx, func(conn *pgx.Conn) error {
		tag, err := conn.Exec(ctx, l.s.sql.claim, args...)
		inserted = tag.RowsAffected() == 1
		return err
	})
	if err != nil && !isUnknownOutcome(err) {
		return autobuy.Charge{}, false, fmt.Errorf("pgstore: claim: %w", err)
	}
	if err == nil && inserted {
		c.Rev = 1
		l.s.maybePrune(ctx)
		return l.readBack(c), true, nil
	}
	var stored autobuy.Charge
	rerr := l.s.db.run(ctx, func(conn *pgx.Conn) error {
		var err error
		stored, err = scanCharge(conn.QueryRow(ctx, l.s.sql.claimRead, args[0], args[1]))
		return err
	})
	if rerr != nil {
		return autobuy.Charge{}, false, fmt.Errorf("pgstore: claim: %w", errors.Join(err, rerr))
	}
	if err != nil {
		// The connection failed after the insert was sent: ours if the
		// stored record is exactly what we sent.
		mine := l.readBack(c)
		mine.Rev = 1
		if stored == mine {
			c.Rev = 1
			return stored, true, nil
		}
	}
	return stored, false, nil
}

// readBack returns c as the table gives it back (times to the microsecond,
// in UTC).
func (l *ChargeLog) readBack(c *autobuy.Charge) autobuy.Charge {
	out := *c
	for _, p := range []*time.Time{&out.CreatedAt, &out.UpdatedAt} {
		if !p.IsZero() {
			*p = p.Truncate(time.Microsecond).UTC()
		}
	}
	return out
}

// PutCharge implements autobuy.ChargeLog: a compare-and-set on c.Rev. When
// the connection fails after the update was sent, it reads the record back
// to learn whether it landed.
func (l *ChargeLog) PutCharge(ctx context.Context, c *autobuy.Charge) error {
	args := append(chargeArgs(c), c.Rev)
	var rev int64
	err := l.s.db.run(ctx, func(conn *pgx.Conn) error { return conn.QueryRow(ctx, l.s.sql.putCharge, args...).Scan(&rev) })
	if errors.Is(err, pgx.ErrNoRows) {
		return autobuy.ErrChargeConflict
	}
	if isUnknownOutcome(err) {
		// Did it land? The record says: ours exactly, at the next revision.
		var stored autobuy.Charge
		rerr := l.s.db.run(ctx, func(conn *pgx.Conn) error {
			var err error
			stored, err = scanCharge(conn.QueryRow(ctx, l.s.sql.claimRead, args[0], args[1]))
			return err
		})
		mine := l.readBack(c)
		mine.Rev = c.Rev + 1
		if rerr == nil && stored == mine {
			c.Rev = mine.Rev
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("pgstore: put charge: %w", err)
	}
	c.Rev = rev
	return nil
}

func scanLease(row pgx.Row) (autobuy.Lease, error) {
	var ls autobuy.Lease
	var expires, created, last pgtype.Timestamptz
	err := row.Scan(&ls.CustomerID, &ls.Metric, &ls.ReservationID, &ls.UnitsPerEvent, &ls.Held, &ls.Used, &ls.Committing,
		&expires, &created, &last, &ls.Rev)
	ls.CustomerID, ls.Metric, ls.ReservationID = unesc(ls.CustomerID), unesc(ls.Metric), unesc(ls.ReservationID)
	ls.ExpiresAt, ls.CreatedAt, ls.LastUsed = timeOf(expires), timeOf(created), timeOf(last)
	return ls, err
}

// Lease implements autobuy.ChargeLog.
func (l *ChargeLog) Lease(ctx context.Context, customerID, metric string) (autobuy.Lease, bool, error) {
	var ls autobuy.Lease
	err := l.s.db.run(ctx, func(conn *pgx.Conn) error {
		var err error
		ls, err = scanLease(conn.QueryRow(ctx, l.s.sql.lease, esc(customerID), esc(metric)))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return autobuy.Lease{}, false, nil
	}
	if err != nil {
		return autobuy.Lease{}, false, fmt.Errorf("pgstore: lease: %w", err)
	}
	return ls, true, nil
}

// PutLease implements autobuy.ChargeLog: an insert for Rev 0 (refused if the
// customer has a lease on the metric), else a compare-and-set on l.Rev.
func (l *ChargeLog) PutLease(ctx context.Context, ls *autobuy.Lease) error {
	args := []any{esc(ls.CustomerID), esc(ls.Metric), esc(ls.ReservationID), ls.UnitsPerEvent, ls.Held, ls.Used,
		ls.Committing, ts(ls.ExpiresAt), ts(ls.CreatedAt), ts(ls.LastUsed)}
	var rev int64
	err := l.s.db.run(ctx, func(conn *pgx.Conn) error {
		if ls.Rev == 0 {
			tag, err := conn.Exec(ctx, l.s.sql.leaseInsert, args...)
			if err == nil && tag.RowsAffected() == 1 {
				rev = 1
			}
			return err
		}
		err := conn.QueryRow(ctx, l.s.sql.leaseUpdate, append(args, ls.Rev)...).Scan(&rev)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("pgstore: put lease: %w", err)
	}
	if rev == 0 {
		return autobuy.ErrChargeConflict
	}
	ls.Rev = rev
	return nil
}

// TakeLease implements autobuy.ChargeLog: one statement that adds units to
// Used only while the lease is not committing and Held covers them, and
// records the take's id for a minute (a resend of it counts nothing). When
// the connection fails after it was sent, it is sent again under its id.
func (l *ChargeLog) TakeLease(ctx context.Context, customerID, metric string, units int64, now time.Time, take string) (autobuy.Lease, bool, error) {
	if take == "" {
		return autobuy.Lease{}, false, errors.New("pgstore: take lease: a take needs an id")
	}
	var ls autobuy.Lease
	send := func() error {
		return l.s.db.run(ctx, func(conn *pgx.Conn) error {
			var err error
			ls, err = scanLease(conn.QueryRow(ctx, l.s.sql.takeLease, esc(customerID), esc(metric), units, ts(now), esc(take)))
			return err
		})
	}
	err := send()
	if isUnknownOutcome(err) {
		err = send() // under the same id: counted once, whether or not the first landed
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return autobuy.Lease{}, false, nil
	}
	if err != nil {
		return autobuy.Lease{}, false, fmt.Errorf("pgstore: take lease: %w", err)
	}
	return ls, true, nil
}

// DeleteLease implements autobuy.ChargeLog.
func (l *ChargeLog) DeleteLease(ctx context.Context, ls autobuy.Lease) error {
	var n int64
	err := l.s.db.run(ctx, func(conn *pgx.Conn) error {
		tag, err := conn.Exec(ctx, l.s.sql.deleteLease, esc(ls.CustomerID), esc(ls.Metric), ls.Rev)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return fmt.Errorf("pgstore: delete lease: %w", err)
	}
	if n == 0 {
		return autobuy.ErrChargeConflict
	}
	return nil
}

// Leases implements autobuy.ChargeLog.
func (l *ChargeLog) Leases(ctx context.Context, idleSince time.Time, limit int) ([]autobuy.Lease, error) {
	var lim any
	if limit > 0 {
		lim = limit
	}
	var out []autobuy.Lease
	err := l.s.db.run(ctx, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, l.s.sql.leases, ts(idleSince), lim)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			ls, err := scanLease(rows)
			if err != nil {
				return err
			}
			out = append(out, ls)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: leases: %w", err)
	}
	return out, nil
}
