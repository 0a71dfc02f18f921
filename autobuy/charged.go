package autobuy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/internal/idem"
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
	claimed bool // this gate holds the claim (created it, took over a pending one, or reclaimed a void one)
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
			Attempt: 1, State: ChargePending, CreatedAt: now, UpdatedAt: now}
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
		case stored.State.Final(), stored.State == ChargeHeld:
			d := replayDecision(stored)
			return &d, nil
		case stored.State == ChargeVoid:
			// Nothing was charged: charge it now, under the next attempt's keys.
			stored.State, stored.Via, stored.Metric, stored.Units, stored.UpdatedAt = ChargePending, via, metric, cfg.units, now
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
			// is taken as let through: its gate counted it (or died between
			// the count and the record, the one window where an action may be free).
			if time.Now().After(waitUntil) {
				stored.State = ChargeLeased
				g.log.WarnContext(ctx, "autobuy: an event claimed for a lease was never marked; answered as let through",
					"customer_id", customerID, "event_id", cfg.eventID)
				d := replayDecision(stored)
				return &d, nil
			}
			if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
				return nil, err
			}
			continue
		default:
			// Pending on a usage record or a hold: this gate sends it again
			// under the same keys, which the server deduplicates.
			rec.c, rec.claimed = stored, true
			return nil, nil
		}
		if tries >= 8 {
			return nil, &chargeLogError{errors.New("the record of event " + cfg.eventID + " keeps changing")}
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
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

// switchVia moves a claimed event to another way of charging (a lease that
// could not be had: the per-action path).
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
// later gate charges it under the next key). An error leaves the claim
// pending: the outcome of its last request may be unknown, and the next gate
// of the event resends it under the same keys.
func (g *Gatekeeper) finishEvent(ctx context.Context, rec *eventRecord, d Decision, err error, key *usageKey) {
	if !rec.claimed || err != nil || d.Fallback || d.Replayed {
		return
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
// idempotent (keyed by the reservation), records the event as charged (or
// frees it for a later attempt under new keys), and a commit that finds the
// hold expired charges the units with a usage record instead: work done is
// never free. Safe for concurrent use.
func (g *Gatekeeper) Settle(ctx context.Context, d Decision, commit bool, units int64) error {
	if d.Hold == nil {
		return fmt.Errorf("%w: autobuy: the decision holds nothing", quotastack.ErrInvalidInput)
	}
	h := d.Hold
	if units <= 0 {
		units = h.EstimatedUnits
	}
	var err error
	if commit {
		_, err = g.client.Commit(ctx, h.ID, units, quotastack.WithIdempotencyKey(idem.Join("commit", h.ID)))
		if isNotActive(err) {
			// Expired (or released) before this commit: the action was done, so
			// charge its units with a usage record keyed by the hold.
			_, err = g.client.Record(ctx, quotastack.UsageParams{Customer: customerOf(h.CustomerID),
				MetricKey: h.BillableMetricKey, Units: units, Metadata: eventMeta(nil, d.EventID)},
				quotastack.WithIdempotencyKey(idem.Join("hold-settle", h.ID)))
		}
	} else {
		_, err = g.client.Release(ctx, h.ID, quotastack.WithIdempotencyKey(idem.Join("release", h.ID)))
		if isNotActive(err) {
			err = nil // expired: released by the server
		}
	}
	if err != nil || d.EventID == "" || d.CustomerID == "" {
		return err
	}
	probe := Charge{CustomerID: d.CustomerID, EventID: d.EventID}
	c, _, cerr := g.charges.Claim(context.WithoutCancel(ctx), &probe)
	if cerr != nil || c.State != ChargeHeld || c.Ref != h.ID {
		return nil
	}
	c.UpdatedAt = g.now()
	if commit {
		c.State = ChargeCharged
	} else {
		c.State, c.Ref, c.Attempt = ChargeVoid, "", c.Attempt+1 // the next attempt holds under a new key
	}
	g.putCharge(ctx, c)
	return nil
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
