package autobuy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/internal/idem"
	"github.com/quotastack/quotastack-go/internal/retry"
)

// How an event is charged (Charge.Via).
const (
	viaUsage = "usage"
	viaHold  = "hold"
	viaLease = "lease"
)

// tenantDefaults are the in-process defaults of one tenant (Client.Tenant),
// shared by every Gatekeeper of the process on that tenant: two Gatekeepers
// (or two id forms) never charge one event twice, and a lease is one per
// customer. Tenants are kept apart: their leases are settled with their own key.
type tenantDefaults struct {
	charges ChargeLog
	ids     *idCache
}

var (
	defaultsMu sync.Mutex
	defaultsBy = map[string]*tenantDefaults{}
)

func defaultsFor(c *quotastack.Client) *tenantDefaults {
	defaultsMu.Lock()
	defer defaultsMu.Unlock()
	t := c.Tenant()
	d := defaultsBy[t]
	if d == nil {
		d = &tenantDefaults{charges: NewMemoryChargeLog(0), ids: &idCache{}}
		defaultsBy[t] = d
	}
	return d
}

// canonicalID returns the customer's QuotaStack id when it is known without
// a request: the id itself, or an external id resolved before on this
// tenant (two tenants may use one external id for different customers).
func (g *Gatekeeper) canonicalID(customer quotastack.Customer) (string, bool) {
	if !customer.IsExternal() {
		return customer.ID(), true
	}
	return g.ids.get(customer.ID())
}

// eventRecord is the gate's handle on the Charge of the event it gates.
type eventRecord struct {
	c       Charge
	claimed bool // this gate holds the claim (created it, took over a claimed or pending one, or reclaimed a void one)
	// resend: the claim was taken over pending on a usage record or a hold
	// whose request may have executed (its answer lost): it is sent again
	// under the same key before the event is decided any other way
	// (resendPending, resendRefused).
	resend bool
}

// chargeLogError is a failure of the ChargeLog itself.
type chargeLogError struct{ err error }

func (e *chargeLogError) Error() string { return "autobuy: charge log: " + e.err.Error() }
func (e *chargeLogError) Unwrap() error { return e.err }

// leasedWait bounds how long a gate waits for another gate that is letting
// the same event through on a lease (a store write or two) before taking it
// as let through.
const leasedWait = time.Second

// claimEvent claims the event before anything is charged for it. A non-nil
// replay is the event's original decision: it was charged already (or is held
// by another request), and the gate answers it without a request.
func (g *Gatekeeper) claimEvent(ctx context.Context, rec *eventRecord, customerID, metric string, cfg gateConfig, via string) (*Decision, error) {
	waitUntil := time.Now().Add(leasedWait)
	for tries := 0; ; tries++ {
		now := g.now()
		c := Charge{CustomerID: customerID, EventID: cfg.eventID, Metric: metric, Units: cfg.units, Via: via,
			Attempt: 1, State: ChargeClaimed, CreatedAt: now, UpdatedAt: now}
		stored, created, err := g.charges.Claim(ctx, &c)
		if err != nil {
			return nil, &chargeLogError{err}
		}
		switch {
		case created:
			rec.c, rec.claimed = c, true
			return nil, nil
		case (stored.State.Final() || stored.State == ChargeHeld) && (stored.Metric != metric || stored.Units != cfg.units):
			// The caller reused the event id for another action: what the
			// server answers a key reused with another body.
			return nil, fmt.Errorf("%w: autobuy: event %q was charged for %d units of %s, not %d of %s",
				quotastack.ErrIdempotencyConflict, cfg.eventID, stored.Units, stored.Metric, cfg.units, metric)
		case stored.State == ChargeHeld && cfg.reserve:
			// A retry of a held action (its first attempt dead, or still
			// working): it holds anew under the next attempt's key and is
			// the one charged; the first attempt's Settle finds the record
			// moved and releases its hold. A commit already under way (the
			// record committing) is never raced: it is pending, not held.
			next := stored
			next.State, next.Ref, next.Attempt, next.UpdatedAt = ChargeClaimed, "", stored.Attempt+1, now
			err := g.charges.PutCharge(ctx, &next)
			if err == nil {
				// The old hold can never be committed now (its attempt finds the
				// record moved): give its credits back for the new one.
				if _, rerr := g.client.Release(ctx, stored.Ref, quotastack.WithIdempotencyKey(idem.Join("release", stored.Ref))); rerr != nil && !isNotActive(rerr) {
					g.log.WarnContext(ctx, "autobuy: releasing a replaced hold failed; it expires by itself", "reservation", stored.Ref, "error", rerr)
				}
				rec.c, rec.claimed = next, true
				return nil, nil
			}
			if !errors.Is(err, ErrChargeConflict) {
				return nil, &chargeLogError{err}
			}
		case stored.State.Final(), stored.State == ChargeHeld:
			d := replayDecision(stored)
			return &d, nil
		case stored.State == ChargeVoid:
			// Nothing was charged: charge it now, under the next attempt's keys.
			stored.State, stored.Via, stored.Metric, stored.Units, stored.UpdatedAt = ChargeClaimed, via, metric, cfg.units, now
			err := g.charges.PutCharge(ctx, &stored)
			if err == nil {
				rec.c, rec.claimed = stored, true
				return nil, nil
			}
			if !errors.Is(err, ErrChargeConflict) {
				return nil, &chargeLogError{err}
			}
		case stored.Via == viaLease:
			// Another gate is letting it through on a lease. Past the wait it
			// is taken as let through: its gate counted it, or died or failed
			// between its claim and its count (a take never answered): the one
			// window where an action may be free (Hooks.LetThrough).
			if time.Now().After(waitUntil) {
				stored.State = ChargeLeased
				g.log.WarnContext(ctx, "autobuy: an event claimed for a lease was never marked; answered as let through",
					"customer_id", customerID, "event_id", cfg.eventID)
				if g.hooks.LetThrough != nil {
					g.hooks.LetThrough(ctx, CustomerRef{Given: quotastack.CustomerID(customerID), ID: customerID}, stored.Metric,
						stored.Units, cfg.eventID)
				}
				d := replayDecision(stored)
				return &d, nil
			}
			if err := retry.Sleep(ctx, 10*time.Millisecond); err != nil {
				return nil, err
			}
			continue
		case stored.State == ChargeClaimed:
			// Claimed by a gate that sent nothing for it (it died, or is still
			// checking): decided afresh. If both go on, the first to mark its
			// request pending sends it, the other the same key (markSending).
			stored.Metric, stored.Units = metric, cfg.units
			rec.c, rec.claimed = stored, true
			return nil, nil
		default:
			// Pending on a usage record or a hold: this gate sends it again
			// under the same keys, which the server deduplicates.
			rec.c, rec.claimed, rec.resend = stored, true, true
			return nil, nil
		}
		if tries >= 8 {
			return nil, &chargeLogError{errors.New("the record of event " + cfg.eventID + " keeps changing")}
		}
	}
}

// replayDecision is the decision a charged (or held) event is answered with.
func replayDecision(c Charge) Decision {
	d := Decision{Allowed: true, Reason: c.Reason, CustomerID: c.CustomerID, EventID: c.EventID, Replayed: true,
		Leased: c.Via == viaLease}
	if d.Reason == "" {
		d.Reason = ReasonEntitled
	}
	if c.State == ChargeHeld {
		d.Hold = &quotastack.Reservation{ID: c.Ref, Status: "active", CustomerID: c.CustomerID,
			BillableMetricKey: c.Metric, EstimatedUnits: c.Units}
	}
	return d
}

// resendPending sends a pending event's usage record (or hold) again under
// its key, before any check: if its earlier request executed, the server's
// stored answer says so, and no check that counts its own charge against it
// may buy a plan, serve it from a lease or deny it. A usage record is resent
// before the check only to a server seen to debit synchronously (a 402 when
// the credits are short); elsewhere the check goes first (a record that never
// executed then executes after it) and a refusal resends it (resendRefused).
// done is true when it decided (allowed, or an error); a 402 leaves the gate
// to decide anew, under the next key.
func (g *Gatekeeper) resendPending(ctx context.Context, rec *eventRecord, d *Decision, customerID, metric string, cfg gateConfig, key *usageKey) (done bool, err error) {
	if !rec.resend || (!cfg.reserve && !g.recordFirst.synchronous()) {
		return false, nil
	}
	return g.resend(ctx, rec, d, customerID, metric, cfg, key)
}

// resendRefused resends a pending event's usage record whose check refused
// it: the check may have counted the event's own charge (its earlier record
// executed, the answer lost), and a refusal must not serve it from a lease,
// buy a plan for it or deny it (a denied event is voided and charged again
// under the next key). A replayed answer means it was charged: allowed. A
// first execution is what the server says now: a 402, nothing charged (the
// gate goes on under the next key); a 200/201, charged; a 202, accepted and
// allowed on it, as record-first does (a server that rejects it later made
// it free, never charged twice).
func (g *Gatekeeper) resendRefused(ctx context.Context, rec *eventRecord, d *Decision, metric string, cfg gateConfig, key *usageKey) (done bool, err error) {
	if !rec.resend {
		return false, nil
	}
	return g.resend(ctx, rec, d, d.CustomerID, metric, cfg, key)
}

func (g *Gatekeeper) resend(ctx context.Context, rec *eventRecord, d *Decision, customerID, metric string, cfg gateConfig, key *usageKey) (done bool, err error) {
	rec.resend = false
	d.CustomerID, key.customerID = customerID, customerID
	ok, err := g.consume(ctx, d, customerOf(customerID), metric, cfg, key)
	if err != nil || ok {
		d.Reason = ReasonEntitled
		return true, err
	}
	return false, nil
}

// markSending moves the event's record to pending under the attempt of key
// before a request that may charge it is sent (a usage record, a hold's
// reserve): a later gate of the event then resends that key, and a gate
// that finds it claimed knows nothing was sent. A record another gate moved
// meanwhile is read again: pending or claimed, this gate sends under the
// same attempt's key; charged, held or leased, the event was decided by
// that gate (a decidedElsewhere error, answered from the record).
func (g *Gatekeeper) markSending(ctx context.Context, key *usageKey) error {
	rec := key.rec
	if rec == nil || !rec.claimed || key.event == "" {
		return nil
	}
	via := viaUsage
	if key.hold {
		via = viaHold
	}
	attempt := max(key.n, 1)
	for range 8 {
		if rec.c.State == ChargePending && rec.c.Attempt == attempt && rec.c.Via == via {
			return nil // marked already, by this gate or the one whose claim it took over
		}
		c := rec.c
		c.State, c.Via, c.Attempt, c.UpdatedAt = ChargePending, via, attempt, g.now()
		if via == viaUsage {
			c.Ref = ""
		}
		err := g.charges.PutCharge(context.WithoutCancel(ctx), &c)
		if err == nil {
			rec.c = c
			return nil
		}
		if !errors.Is(err, ErrChargeConflict) {
			return &chargeLogError{err}
		}
		probe := Charge{CustomerID: c.CustomerID, EventID: c.EventID}
		stored, _, err := g.charges.Claim(ctx, &probe)
		if err != nil {
			return &chargeLogError{err}
		}
		switch {
		case stored.State.Final() || stored.State == ChargeHeld:
			return &decidedElsewhere{stored}
		case stored.State == ChargePending && stored.Attempt > attempt:
			key.n = stored.Attempt // a concurrent gate walked on: its key
			attempt = stored.Attempt
		}
		rec.c = stored
	}
	return &chargeLogError{errors.New("the record of event " + key.event + " keeps changing")}
}

// decidedElsewhere: a concurrent gate of the same event charged it first;
// the gate answers its decision from the record.
type decidedElsewhere struct{ c Charge }

func (e *decidedElsewhere) Error() string {
	return "autobuy: event " + e.c.EventID + " was decided by a concurrent gate"
}

// switchVia moves a claimed event to another way of charging: to the
// per-action path when no lease could be had, to a lease before a take from
// one on the purchase path.
func (g *Gatekeeper) switchVia(ctx context.Context, rec *eventRecord, via string) error {
	if !rec.claimed || rec.c.Via == via {
		return nil
	}
	c := rec.c
	c.Via, c.UpdatedAt = via, g.now()
	if err := g.charges.PutCharge(ctx, &c); err != nil {
		return &chargeLogError{err}
	}
	rec.c = c
	return nil
}

// finishEvent writes what the gate did with the event before it answers:
// charged, held or leased when allowed, void when denied (nothing charged; a
// later gate charges it under the next key). An error leaves the record as
// it is: pending when a request was sent (its outcome may be unknown, and the
// next gate of the event resends it under the same key), claimed when none was.
func (g *Gatekeeper) finishEvent(ctx context.Context, rec *eventRecord, d Decision, err error, key *usageKey) {
	if !rec.claimed || err != nil || d.Fallback || d.Replayed {
		return
	}
	if d.Allowed && d.Hold != nil && rec.c.Via == viaHold && rec.c.State == ChargePending && rec.c.Ref == d.Hold.ID {
		return // the hold's commit is under way (its answer lost): the record stays committing
	}
	c := rec.c
	c.UpdatedAt = g.now()
	c.Attempt = max(key.n, 1)
	switch {
	case d.Allowed && d.Leased:
		c.State, c.Via, c.Ref = ChargeLeased, viaLease, d.leaseID
	case d.Allowed && d.Hold != nil:
		c.State, c.Via, c.Ref = ChargeHeld, viaHold, d.Hold.ID
	case d.Allowed:
		c.State, c.Via, c.Ref = ChargeCharged, viaUsage, key.current()
	default:
		c.State, c.Ref = ChargeVoid, ""
	}
	if d.Allowed {
		c.Reason = d.Reason
		if d.Purchase != nil {
			c.OrderID = d.Purchase.OrderID
		}
	}
	g.putCharge(ctx, c)
}

// putCharge writes c, retrying once over a concurrent writer that took the
// claim over (it charged under the same keys).
func (g *Gatekeeper) putCharge(ctx context.Context, c Charge) {
	ctx = context.WithoutCancel(ctx)
	for range 2 {
		err := g.charges.PutCharge(ctx, &c)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrChargeConflict) {
			g.log.ErrorContext(ctx, "autobuy: writing the record of a charged event failed", "customer_id", c.CustomerID,
				"event_id", c.EventID, "state", string(c.State), "error", err)
			return
		}
		probe := Charge{CustomerID: c.CustomerID, EventID: c.EventID}
		stored, _, err := g.charges.Claim(ctx, &probe)
		if err != nil || stored.State.Final() {
			return
		}
		c.Rev = stored.Rev
	}
}

// Settle ends the hold of an allowed decision made WithReservation: commit
// true debits units (0 means the units held), false releases it. It is
// idempotent (keyed by the reservation) and goes through the event's record
// (WithEventID): the record is moved to "committing" before the commit is
// sent, so a retry of the event that held anew meanwhile is charged instead
// and this hold is released; a commit that finds the hold expired charges the
// units with a usage record keyed by the hold: work done is never free while
// the credits cover it. Safe for concurrent use.
func (g *Gatekeeper) Settle(ctx context.Context, d Decision, commit bool, units int64) error {
	if d.Hold == nil {
		return fmt.Errorf("%w: autobuy: the decision holds nothing", quotastack.ErrInvalidInput)
	}
	h := d.Hold
	if units <= 0 {
		units = h.EstimatedUnits
	}
	// Settling an allowed action: ahead of new gates in the rate budget.
	ctx = quotastack.BeginOperation(ctx, quotastack.OperationStarted())
	rec, owned := g.holdRecord(ctx, d, h)
	if !commit {
		if owned && rec.State == ChargePending {
			return nil // a retry of the event is committing this very hold
		}
		if owned {
			next := rec
			next.State, next.Ref, next.Attempt, next.UpdatedAt = ChargeVoid, "", rec.Attempt+1, g.now()
			if err := g.charges.PutCharge(context.WithoutCancel(ctx), &next); err != nil && !errors.Is(err, ErrChargeConflict) {
				return &chargeLogError{err}
			}
		}
		_, err := g.client.Release(ctx, h.ID, quotastack.WithIdempotencyKey(idem.Join("release", h.ID)))
		if isNotActive(err) {
			err = nil // expired: the server returned the credits
		}
		return err
	}
	if d.EventID != "" && !owned {
		// A retry of the event holds anew and is charged for it: this hold's
		// work goes uncharged, never twice.
		_, err := g.client.Release(ctx, h.ID, quotastack.WithIdempotencyKey(idem.Join("release", h.ID)))
		if isNotActive(err) {
			err = nil
		}
		return err
	}
	if owned && rec.State == ChargeHeld {
		committing := rec
		committing.State, committing.UpdatedAt = ChargePending, g.now()
		if err := g.charges.PutCharge(context.WithoutCancel(ctx), &committing); err != nil {
			if errors.Is(err, ErrChargeConflict) {
				return g.Settle(ctx, d, commit, units) // it moved: look again
			}
			return &chargeLogError{err}
		}
		rec = committing
	}
	_, err := g.client.Commit(ctx, h.ID, units, quotastack.WithIdempotencyKey(idem.Join("commit", h.ID)))
	if isNotActive(err) {
		// Expired (or released) before this commit: the action was done, so
		// charge its units with a usage record keyed by the hold.
		_, err = g.client.Record(ctx, quotastack.UsageParams{Customer: customerOf(h.CustomerID),
			MetricKey: h.BillableMetricKey, Units: units, Metadata: eventMeta(nil, d.EventID)},
			quotastack.WithIdempotencyKey(idem.Join("hold-settle", h.ID)))
		if err != nil && !quotastack.IsOutage(ctx, err) {
			g.log.ErrorContext(ctx, "autobuy: work done on an expired hold could not be charged",
				"customer_id", h.CustomerID, "event_id", d.EventID, "reservation", h.ID, "error", err)
		}
	}
	if err != nil || !owned {
		return err // unknown: the record stays committing; a retry resends this commit under its key
	}
	rec.State, rec.UpdatedAt = ChargeCharged, g.now()
	g.putCharge(ctx, rec)
	return nil
}

// holdRecord reads the record of the held event of d: owned is true when it
// is still this hold's (held, or being committed, with this reservation).
func (g *Gatekeeper) holdRecord(ctx context.Context, d Decision, h *quotastack.Reservation) (Charge, bool) {
	if d.EventID == "" || d.CustomerID == "" {
		return Charge{}, false
	}
	probe := Charge{CustomerID: d.CustomerID, EventID: d.EventID}
	c, _, err := g.charges.Claim(context.WithoutCancel(ctx), &probe)
	if err != nil {
		return Charge{}, false
	}
	return c, c.Via == viaHold && c.Ref == h.ID && (c.State == ChargeHeld || c.State == ChargePending)
}

// isNotActive reports the server's "reservation not active" answer (409),
// not an idempotency-key conflict.
func isNotActive(err error) bool {
	var apiErr *quotastack.APIError
	return errors.As(err, &apiErr) && apiErr.StatusCode == 409 && !errors.Is(err, quotastack.ErrIdempotencyConflict)
}

// eventMeta returns the usage metadata of an event: the caller's, plus
// event_id so the ledger names the business event.
func eventMeta(m map[string]string, eventID string) map[string]string {
	if eventID == "" {
		return m
	}
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	out["event_id"] = eventID
	return out
}
