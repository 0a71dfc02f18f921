package autobuy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/internal/idem"
	"github.com/quotastack/quotastack-go/internal/retry"
)

// LeaseConfig configures lease mode (WithLease).
type LeaseConfig struct {
	// Actions is the most actions one lease holds the credits of (default
	// 50). A lease holds fewer when the customer can't afford that many, and
	// the next one fewer when a customer used little of the last.
	Actions int64
	// TTL is the reservation's lifetime (default 5 min, at most 1 h). A lease
	// is committed once half of it has passed, well before the server returns
	// its credits; keep it above twice the clock skew between replicas.
	TTL time.Duration
	// Linger commits a lease idle this long (default 10 s).
	Linger time.Duration
}

// WithLease serves hot customers from leases: one reservation (POST
// /v1/reserve) holds the credits of several actions of a metric, and actions
// are let through against it with no request, each counted in the ChargeLog
// (WithChargeLog) before it goes through. The units counted are committed
// when the lease is full, half its TTL old, idle for Linger, and on Flush or
// Close. With a shared ChargeLog the replicas share one lease per customer
// and metric, and a restarted process commits what a dead one counted. A
// full lease is renewed (commit, then reserve) once per process, on a
// context of its own within the purchase timeout (WithPurchaseTimeout): the
// gates waiting for it are counted on the new lease; one whose deadline ends
// first has sent nothing of its own, is counted on nothing, and returns an
// error matching its context's (the fallback policy decides).
//
// Guarantees, in the words of the general promise: an event (WithEventID) is
// charged once whatever mode, replica or id form gates it again; credits held
// by a lease are never the reason a plan is bought (the lease is used, or
// settled and the customer checked again); a commit whose answer is lost is
// resent with the same units, and a lease found expired is charged with a
// usage record instead. What a lease can't promise: with the in-process
// ChargeLog, a crash loses the units its leases counted (the reservation
// expires and returns them: those actions were free, the tenant's loss,
// never the customer's). Not with WithReservation gates, which hold per action.
func WithLease(cfg LeaseConfig) Option {
	return func(g *Gatekeeper) {
		if cfg.Actions <= 0 {
			cfg.Actions = 50
		}
		if cfg.TTL <= 0 {
			cfg.TTL = 5 * time.Minute
		}
		if cfg.Linger <= 0 {
			cfg.Linger = 10 * time.Second
		}
		g.leases = &leases{cfg: cfg, noLease: map[[2]string]time.Time{}, size: map[[2]string]int64{},
			renewing: map[[2]string]*renewal{}}
	}
}

// leases is lease mode's process-local state: hints only (money is in the
// ChargeLog) and the background committer.
type leases struct {
	cfg     LeaseConfig
	mu      sync.Mutex
	noLease map[[2]string]time.Time // customer and metric: no lease to be had before then
	size    map[[2]string]int64     // customer and metric: the next lease's actions
	// renewing holds the renewals running in this process, by customer and metric.
	renewing map[[2]string]*renewal
	stop     chan struct{}
	done     chan struct{}
}

// leaseHintsMax bounds the hint maps; past it they are cleared (a cleared
// hint costs one refused reserve or one larger lease, never money).
const leaseHintsMax = 100_000

func (ls *leases) blocked(k [2]string) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return time.Now().Before(ls.noLease[k])
}

func (ls *leases) block(k [2]string) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if len(ls.noLease) >= leaseHintsMax {
		clear(ls.noLease)
	}
	ls.noLease[k] = time.Now().Add(ls.cfg.Linger)
}

// allowAgain lifts the no-lease hint after a purchase: the customer can
// afford a lease again.
func (ls *leases) allowAgain(customerID, metric string) {
	if ls == nil {
		return
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	delete(ls.noLease, [2]string{customerID, metric})
}

// nextSize is the actions the next lease of the customer holds.
func (ls *leases) nextSize(k [2]string) int64 {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if n, ok := ls.size[k]; ok {
		return n
	}
	return ls.cfg.Actions
}

// sized remembers how much of a settled lease was used: a lease committed
// idle and mostly unused makes the next one smaller (twice what was used),
// a full one restores the maximum.
func (ls *leases) sized(l Lease) {
	per := max(l.UnitsPerEvent, 1)
	used := l.Used / per
	k := [2]string{l.CustomerID, l.Metric}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if len(ls.size) >= leaseHintsMax {
		clear(ls.size)
	}
	if next := min(max(2*used, 1), ls.cfg.Actions); l.Used < l.Held/2 {
		ls.size[k] = next
	} else {
		delete(ls.size, k)
	}
}

// leased serves the action from the customer's lease. ok false means no
// lease could be had: the caller goes the per-action way, with refused set
// when the reserve's 402 already says the customer is out of credits.
func (g *Gatekeeper) leased(ctx context.Context, customerID, metric string, cfg gateConfig) (d Decision, ok bool, refused *quotastack.Entitlement, err error) {
	ls := g.leases
	ls.startLinger(g)
	k := [2]string{customerID, metric}
	for range 3 {
		l, took, err := g.take(ctx, customerID, metric, cfg.units)
		if err != nil {
			return Decision{}, false, nil, err
		}
		if took {
			if !l.Committing && g.leaseDue(l) {
				// Half its TTL has passed: commit it now, ahead of its expiry,
				// on its own (this action was served).
				ls.renew(g, customerID, metric, cfg.units, nil)
			}
			return Decision{Allowed: true, Reason: ReasonEntitled, CustomerID: customerID, Leased: true,
				leaseID: l.ReservationID}, true, nil, nil
		}
		if ls.blocked(k) {
			return Decision{}, false, nil, nil
		}
		// No lease, a full one, or one being committed: the renewal settles
		// it and reserves anew, and counts this action on the new lease.
		nl, served, err := g.awaitRenewal(ctx, customerID, metric, cfg.units)
		if err == nil && served {
			return Decision{Allowed: true, Reason: ReasonEntitled, CustomerID: customerID, Leased: true,
				leaseID: nl.ReservationID}, true, nil, nil
		}
		var ref *leaseRefusal
		if errors.As(err, &ref) {
			return Decision{}, false, ref.ent, nil
		}
		if err != nil {
			return Decision{}, false, nil, err
		}
	}
	return Decision{}, false, nil, nil // lost every race for the lease: per action
}

// takeTries bounds the sends of one take whose answers were lost.
const takeTries = 4

// takeUnknown is a take from a lease whose answer never came: it may have
// been counted. The gate that sent it must not charge the action another
// way (that would charge it twice): it fails, and the event stays claimed
// for a lease.
type takeUnknown struct{ err error }

func (e *takeUnknown) Error() string {
	return "autobuy: charge log: a take from a lease went unanswered: " + e.err.Error()
}
func (e *takeUnknown) Unwrap() error { return e.err }

// take counts units on the customer's lease on metric under an id of its
// own. A take the store didn't answer (an error: it may have been counted)
// is sent again under the same id, which the store counts once, until it is
// answered; past takeTries sends, or the gate's deadline, it is takeUnknown.
// A gate whose context ended before the first send gets that error: nothing
// was sent.
func (g *Gatekeeper) take(ctx context.Context, customerID, metric string, units int64) (Lease, bool, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, false, err
	}
	id := idem.Join("take", strconv.FormatUint(rand.Uint64(), 36), strconv.FormatUint(rand.Uint64(), 36))
	wait := 20 * time.Millisecond
	for try := 1; ; try++ {
		l, ok, err := g.charges.TakeLease(ctx, customerID, metric, units, g.now(), id)
		if err == nil {
			return l, ok, nil
		}
		g.log.WarnContext(ctx, "autobuy: a take from a lease went unanswered; sent again under its id",
			"customer_id", customerID, "metric", metric, "try", try, "error", err)
		if try == takeTries {
			return Lease{}, false, &takeUnknown{err}
		}
		if serr := retry.Sleep(ctx, wait); serr != nil {
			return Lease{}, false, &takeUnknown{err}
		}
		wait *= 2
	}
}

// A renewal is the renewal of one customer's lease on one metric in this
// process (settle it, reserve the next), shared by the gates that need it
// meanwhile. It runs on a context of its own, within the purchase timeout:
// a gate that stops waiting (its deadline) neither cuts it between its
// requests nor is counted on the lease it reserves. The gates still waiting
// when the new lease is activated are counted on it in the same write.
type renewal struct {
	units int64         // an action's units: sizes the lease
	done  chan struct{} // closed when it has ended; lease and err are final then
	lease Lease         // the lease it activated, if any
	err   error

	mu      sync.Mutex
	waiters []*leaseWaiter
}

// leaseWaiter is a gate waiting for a renewal.
type leaseWaiter struct {
	units int64
	state waiterState
}

type waiterState int

const (
	waiting  waiterState = iota
	gone                 // stopped waiting: never counted
	counting             // being counted in the activating write: its outcome decides
	served               // counted on the renewal's lease
)

// renew joins the customer's running renewal on metric, or starts one; w
// (nil for none) waits for it.
func (ls *leases) renew(g *Gatekeeper, customerID, metric string, units int64, w *leaseWaiter) *renewal {
	k := [2]string{customerID, metric}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	r, running := ls.renewing[k]
	if !running {
		r = &renewal{units: units, done: make(chan struct{})}
		ls.renewing[k] = r
	}
	if w != nil {
		// Before the renewal starts: one that found nobody waiting would
		// reserve nothing and leave its gate to start another.
		r.mu.Lock()
		r.waiters = append(r.waiters, w)
		r.mu.Unlock()
	}
	if !running {
		go func() {
			lease, err := g.runRenewal(customerID, metric, r)
			ls.mu.Lock()
			delete(ls.renewing, k)
			ls.mu.Unlock()
			r.lease, r.err = lease, err
			close(r.done)
		}()
	}
	return r
}

// awaitRenewal waits for the customer's lease renewal on metric. served is
// true when the gate's units were counted on the new lease l. A gate whose
// ctx ends first stops waiting, counted on nothing, unless it is being
// counted at that moment: then the write decides, and a counted gate is served.
func (g *Gatekeeper) awaitRenewal(ctx context.Context, customerID, metric string, units int64) (l Lease, served bool, err error) {
	w := &leaseWaiter{units: units}
	r := g.leases.renew(g, customerID, metric, units, w)
	select {
	case <-r.done:
	case <-ctx.Done():
		if r.leave(w) {
			return Lease{}, false, fmt.Errorf("autobuy: waiting for the lease of customer %s: %w", customerID, context.Cause(ctx))
		}
		<-r.done
	}
	if r.served(w) {
		return r.lease, true, nil
	}
	return Lease{}, false, r.err
}

// leave takes w out of the renewal unless it is being counted or was.
func (r *renewal) leave(w *leaseWaiter) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w.state == waiting {
		w.state = gone
		return true
	}
	return false
}

func (r *renewal) served(w *leaseWaiter) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return w.state == served
}

// wanted reports whether a gate still waits for the lease.
func (r *renewal) wanted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.waiters {
		if w.state == waiting {
			return true
		}
	}
	return false
}

// count marks the waiting gates that fit in room units, in the order they
// came, as being counted, and returns their units.
func (r *renewal) count(room int64) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, w := range r.waiters {
		if w.state == waiting && w.units <= room-n {
			w.state = counting
			n += w.units
		}
	}
	return n
}

// counted ends the counting: written, the gates counted are served;
// otherwise they wait on (and are told nothing was counted when it ends).
func (r *renewal) counted(written bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.waiters {
		if w.state == counting {
			w.state = waiting
			if written {
				w.state = served
			}
		}
	}
}

// runRenewal is a renewal's own work, on a context of its own bounded by
// the purchase timeout. Its requests go ahead of new gates' in the rate
// budget: they settle actions already let through and serve gates waiting.
func (g *Gatekeeper) runRenewal(customerID, metric string, r *renewal) (Lease, error) {
	ctx, cancel := context.WithTimeout(context.Background(), g.purchaseTimeout)
	defer cancel()
	ctx = quotastack.BeginOperation(ctx, quotastack.OperationStarted())
	l, err := g.renewLease(ctx, customerID, metric, r)
	var ref *leaseRefusal
	if err != nil && !errors.As(err, &ref) {
		g.log.WarnContext(ctx, "autobuy: renewing a lease failed; retried by the next gate or the linger",
			"customer_id", customerID, "metric", metric, "error", err)
	}
	return l, err
}

// leaseRefusal: the customer's credits can't cover one action on a lease.
type leaseRefusal struct{ ent *quotastack.Entitlement }

func (e *leaseRefusal) Error() string { return "autobuy: no lease: the credits can't cover an action" }

// leaseDue reports whether a lease must be committed before it serves more:
// half its TTL has passed (by this replica's clock against the server's
// expiry). A Gatekeeper without lease mode meeting another's lease (a shared
// ChargeLog) takes half the lease's own lifetime as stored.
func (g *Gatekeeper) leaseDue(l Lease) bool {
	half := l.ExpiresAt.Sub(l.CreatedAt) / 2
	if g.leases != nil {
		half = g.leases.cfg.TTL / 2
	}
	return !g.now().Before(l.ExpiresAt.Add(-half))
}

// renewLease, under the customer's lock, settles the customer's lease
// if it is full, due or being committed, and, when a gate still waits for
// r, reserves a new one sized to what the customer acts and can afford,
// counting the waiting gates on it as it is activated.
func (g *Gatekeeper) renewLease(ctx context.Context, customerID, metric string, r *renewal) (Lease, error) {
	// The customer's purchase lock: a lease is never reserved or settled
	// while a purchase for the customer is being decided, and the reverse.
	unlock, err := g.lock(ctx, customerID)
	if err != nil {
		return Lease{}, err
	}
	defer unlock()
	l, found, err := g.charges.Lease(ctx, customerID, metric)
	if err != nil {
		return Lease{}, &chargeLogError{err}
	}
	if found && strings.HasPrefix(l.ReservationID, reservingPrefix) {
		// A reserve whose answer never came (or whose gate died): resend it
		// under its key; the server replays it, and the lease serves.
		res, err := g.sendReserve(ctx, l)
		if err == nil {
			// Another renewal's reserve (its lock may have been lost, and it may
			// still activate it): counted on by its creator only, so that an
			// activation read back is never taken for another's. The gates
			// waiting here take from it.
			return g.activateLease(ctx, l, res, nil)
		}
		if quotastack.IsOutage(ctx, err) {
			return Lease{}, err
		}
		if derr := g.charges.DeleteLease(ctx, l); derr != nil && !errors.Is(derr, ErrChargeConflict) {
			return Lease{}, &chargeLogError{derr}
		}
		found = false // nothing was reserved under it: reserve anew
	}
	if found {
		full := l.Used+r.units > l.Held
		if !full && !l.Committing && !g.leaseDue(l) {
			return Lease{}, nil // another gate renewed it meanwhile: take from it
		}
		if err := g.settleLease(ctx, l); err != nil {
			return Lease{}, err
		}
	}
	if !r.wanted() {
		return Lease{}, nil // nobody waits for a new lease: the next gate reserves it
	}
	return g.reserveLease(ctx, customerID, metric, r)
}

// reservingPrefix marks a lease whose reserve is in flight: its
// ReservationID is the prefix and the reserve's idempotency key, Held the
// units asked for, and it is Committing (it serves nothing). Written before
// the reserve is sent, so a reserve whose answer was lost, or whose gate
// died, is found and resolved with the same key: its credits are never held
// by a reservation nobody knows about.
const reservingPrefix = "reserving:"

// reserveLease reserves a new lease and counts the waiting gates on it as it
// is activated; a 402 resizes it to what the customer can afford, from the
// 402's figures, or refuses it (leaseRefusal).
func (g *Gatekeeper) reserveLease(ctx context.Context, customerID, metric string, r *renewal) (Lease, error) {
	units := r.units
	ls := g.leases
	k := [2]string{customerID, metric}
	actions := ls.nextSize(k)
	nonce := strconv.FormatInt(time.Now().UnixMilli(), 36) + "_" + strconv.FormatUint(rand.Uint64(), 36)
	now := g.now()
	l := Lease{CustomerID: customerID, Metric: metric, UnitsPerEvent: units, Committing: true,
		ExpiresAt: now.Add(ls.cfg.TTL), CreatedAt: now, LastUsed: now}
	for try := 0; ; try++ {
		l.ReservationID = reservingPrefix + idem.Join("lease", customerID, metric, nonce, strconv.Itoa(try))
		l.Held = actions * units
		err := g.charges.PutLease(ctx, &l) // this attempt's key, before it is sent
		if errors.Is(err, ErrChargeConflict) {
			return Lease{}, nil // another gate's lease got there first: take from it
		}
		if err != nil {
			return Lease{}, &chargeLogError{err}
		}
		res, err := g.sendReserve(ctx, l)
		if errors.Is(err, quotastack.ErrInsufficientCredits) {
			var apiErr *quotastack.APIError
			fit := int64(0)
			if errors.As(err, &apiErr) && apiErr.Required > 0 && apiErr.Available > 0 {
				fit = actions * apiErr.Available / apiErr.Required
			}
			if fit >= 1 && fit < actions && try == 0 {
				actions = fit // a partly used plan: a lease of what is left
				continue
			}
			if derr := g.charges.DeleteLease(ctx, l); derr != nil && !errors.Is(derr, ErrChargeConflict) {
				return Lease{}, &chargeLogError{derr}
			}
			ls.block(k)
			ent, _ := refusalFrom(err, customerID, metric, units)
			if ent != nil && actions > 1 {
				// The 402 priced the whole lease: restate it for one action.
				ent.EstimatedCost = apiErr.Required / actions
				ent.BalanceAfter = apiErr.Available - ent.EstimatedCost
				if ent.BalanceAfter >= 0 {
					ent = nil // one action may fit after all: let the check decide
				}
			}
			return Lease{}, &leaseRefusal{ent: ent}
		}
		if err != nil {
			return Lease{}, err // the record stays: the next gate or the linger resolves it with the same key
		}
		return g.activateLease(ctx, l, res, r)
	}
}

// sendReserve sends the reserve of a reserving lease, under its key and
// with the body every resend of it carries.
func (g *Gatekeeper) sendReserve(ctx context.Context, l Lease) (*quotastack.Reservation, error) {
	key := strings.TrimPrefix(l.ReservationID, reservingPrefix)
	return g.client.Reserve(ctx, quotastack.ReserveParams{Customer: customerOf(l.CustomerID), MetricKey: l.Metric,
		EstimatedUnits: l.Held, TTL: l.ExpiresAt.Sub(l.CreatedAt), Metadata: map[string]string{"quotastack_lease": key}},
		quotastack.WithIdempotencyKey(key))
}

// activateLease turns a reserving lease into the reservation res: it serves
// from now on, and the gates waiting for r (nil: none; only the renewal that
// sent the reserve counts gates in its activation) that fit are counted on
// it in the same write.
func (g *Gatekeeper) activateLease(ctx context.Context, l Lease, res *quotastack.Reservation, r *renewal) (Lease, error) {
	reserving := l.ReservationID
	l.ReservationID, l.Committing = res.ID, false
	if res.EstimatedUnits > 0 {
		l.Held = res.EstimatedUnits
	}
	if !res.ExpiresAt.IsZero() {
		l.ExpiresAt = res.ExpiresAt // the server's; without it, our clock and our TTL
	}
	var counted int64 // the units of the gates counted in this write
	if r != nil {
		if counted = r.count(l.Held - l.Used); counted > 0 {
			l.Used += counted
			l.LastUsed = g.now()
		}
	}
	err := g.charges.PutLease(ctx, &l)
	if err != nil && !errors.Is(err, ErrChargeConflict) && counted > 0 {
		// The write may have landed with its answer lost (a conflict never
		// did: a store answers its own client's resend of a write that landed
		// as done). The gates counted in it must be served if it landed, and
		// counted again never.
		switch g.activationLanded(ctx, l, reserving) {
		case activationLanded:
			l.Rev++
			err = nil
		case activationUnknown:
			// At worst free, never charged twice (the next gate resolves the lease).
			g.log.WarnContext(ctx, "autobuy: a lease activation's outcome is unknown; its gates are let through",
				"customer_id", l.CustomerID, "metric", l.Metric, "reservation", l.ReservationID, "units", counted, "error", err)
			if g.hooks.LetThrough != nil {
				g.hooks.LetThrough(ctx, CustomerRef{Given: customerOf(l.CustomerID), ID: l.CustomerID}, l.Metric, counted, "")
			}
			r.counted(true)
			return l, nil
		}
	}
	if r != nil {
		r.counted(err == nil)
	}
	if err != nil {
		if errors.Is(err, ErrChargeConflict) {
			return Lease{}, nil // moved meanwhile (another gate resolved it): the gates look again
		}
		return Lease{}, &chargeLogError{err}
	}
	return l, nil
}

type activationOutcome int

const (
	activationLost activationOutcome = iota
	activationLanded
	activationUnknown
)

// activationLanded reads back an activation l that counted gates and
// whose write failed. Landed: the store holds exactly l, one revision on (no
// resolver's activation matches it: those count nothing). Lost: the
// reserving record is still there as it was, or a resolver activated the
// reservation with nothing counted and nothing happened since. Anything else
// (the lease moved on, was settled, or can't be read) is unknown.
func (g *Gatekeeper) activationLanded(ctx context.Context, l Lease, reserving string) activationOutcome {
	var cur Lease
	var found bool
	var err error
	for try := range 3 {
		if cur, found, err = g.charges.Lease(ctx, l.CustomerID, l.Metric); err == nil {
			break
		}
		if try < 2 && retry.Sleep(ctx, 20*time.Millisecond) != nil {
			break
		}
	}
	switch {
	case err != nil || !found:
		return activationUnknown
	case cur.ReservationID == l.ReservationID && cur.Rev == l.Rev+1 && cur.Held == l.Held && cur.Used == l.Used && !cur.Committing:
		return activationLanded
	case cur.ReservationID == reserving && cur.Rev == l.Rev,
		cur.ReservationID == l.ReservationID && cur.Rev == l.Rev+1 && cur.Used == 0:
		return activationLost
	}
	return activationUnknown
}

// settleLease commits what l counted (or releases an unused one) and
// deletes it. The units are frozen first (Committing), so a commit resent
// after a lost answer carries the same body under the same key. A lease the
// server no longer holds (expired) is charged with a usage record keyed by
// the reservation: what was let through is charged either way.
func (g *Gatekeeper) settleLease(ctx context.Context, l Lease) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.purchaseTimeout)
	defer cancel()
	// Work already allowed: its requests go ahead of new gates in the rate
	// budget, so a commit is never starved past its reservation's TTL.
	ctx = quotastack.BeginOperation(ctx, quotastack.OperationStarted())
	if strings.HasPrefix(l.ReservationID, reservingPrefix) {
		// A reserve whose answer never came: resend it (the server replays
		// it), so its reservation is known, then settle that (nothing was
		// counted on it, so it is released).
		res, err := g.sendReserve(ctx, l)
		switch {
		case errors.Is(err, quotastack.ErrInsufficientCredits) || (err != nil && !quotastack.IsOutage(ctx, err)):
			// Nothing was reserved (or can be known under this key): drop it.
			if derr := g.charges.DeleteLease(ctx, l); derr != nil && !errors.Is(derr, ErrChargeConflict) {
				return &chargeLogError{derr}
			}
			return nil
		case err != nil:
			return fmt.Errorf("autobuy: resolving a lease reserve: %w", err)
		}
		l.ReservationID = res.ID // Used is 0: released below
	}
	if !l.Committing {
		l.Committing = true
		if err := g.charges.PutLease(ctx, &l); err != nil {
			if errors.Is(err, ErrChargeConflict) {
				return nil // it moved (a take, or another settler): the caller looks again
			}
			return &chargeLogError{err}
		}
	}
	var err error
	if l.Used > 0 {
		_, err = g.client.Commit(ctx, l.ReservationID, l.Used, quotastack.WithIdempotencyKey(idem.Join("lease-commit", l.ReservationID)))
		if isNotActive(err) {
			_, err = g.client.Record(ctx, quotastack.UsageParams{Customer: customerOf(l.CustomerID), MetricKey: l.Metric,
				Units: l.Used, Metadata: map[string]string{"lease_reservation": l.ReservationID}},
				quotastack.WithIdempotencyKey(idem.Join("lease-settle", l.ReservationID)))
			if errors.Is(err, quotastack.ErrInsufficientCredits) {
				g.log.ErrorContext(ctx, "autobuy: a lease expired before its commit and its units could not be charged",
					"customer_id", l.CustomerID, "reservation", l.ReservationID, "units", l.Used)
				err = nil
			}
		}
	} else {
		_, err = g.client.Release(ctx, l.ReservationID, quotastack.WithIdempotencyKey(idem.Join("lease-release", l.ReservationID)))
		if isNotActive(err) {
			err = nil
		}
	}
	if err != nil && !quotastack.IsOutage(ctx, err) {
		// A definite refusal (the reservation unknown to this key, say): it
		// can never be settled, and keeping it would block the customer.
		g.log.ErrorContext(ctx, "autobuy: a lease could not be settled and is dropped; its units were not charged",
			"customer_id", l.CustomerID, "reservation", l.ReservationID, "units", l.Used, "error", err)
		err = nil
	}
	if err != nil {
		return fmt.Errorf("autobuy: settling lease %s (%d units): %w", l.ReservationID, l.Used, err)
	}
	if g.leases != nil {
		g.leases.sized(l)
	}
	if err := g.charges.DeleteLease(ctx, l); err != nil && !errors.Is(err, ErrChargeConflict) {
		return &chargeLogError{err}
	}
	return nil
}

// leaseBeforeBuying applies the lease rule on the purchase path: credits
// held by one of our leases are never the reason a plan is bought. If the
// customer has a lease on metric it serves the action (a hold, WithReservation,
// can't be served from it); a full or due one, or one a hold or a gate
// without lease mode meets, is settled and the customer checked again:
// allowed, the action is recorded (served); refused, the caller goes on to
// buy with the new check in d.
func (g *Gatekeeper) leaseBeforeBuying(ctx context.Context, d Decision, metric string, cfg gateConfig, key *usageKey) (Decision, bool, error) {
	if d.CustomerID == "" {
		return d, false, nil
	}
	l, found, err := g.charges.Lease(ctx, d.CustomerID, metric)
	if err != nil || !found {
		return d, false, nil
	}
	if !cfg.reserve && !l.Committing && !g.leaseDue(l) {
		// The event is marked for a lease before the take: a take counted and
		// never answered (or a crash after it) leaves it claimed for one, and
		// a later gate of the event never charges it again per action.
		if err := g.switchVia(ctx, key.rec, viaLease); err != nil {
			return d, false, err
		}
		got, took, err := g.take(ctx, d.CustomerID, metric, cfg.units)
		var unknown *takeUnknown
		if errors.As(err, &unknown) {
			return d, false, err // it may have been counted: the claim for a lease stays
		}
		if took {
			d.Allowed, d.Reason, d.Leased, d.leaseID = true, ReasonEntitled, true, got.ReservationID
			return d, true, nil
		}
		// Nothing was counted (refused, or never sent): un-marked, so that a
		// retry of the event charges it rather than take it as let through.
		if serr := g.switchVia(context.WithoutCancel(ctx), key.rec, viaUsage); serr != nil {
			return d, false, serr // the claim for a lease stays, and a retry waits it out
		}
		if err != nil {
			return d, false, err
		}
	}
	// Settled, and checked under the lease lock: no lease of ours takes the
	// credits back between the settle and the check.
	var ent *quotastack.Entitlement
	var ok bool
	err = g.settleForCheck(ctx, d.CustomerID, metric, func() error {
		var err error
		if ent, err = g.client.Check(ctx, customerOf(d.CustomerID), metric, cfg.units); err != nil || !ent.Allowed {
			return err
		}
		ok, err = g.consume(ctx, &d, customerOf(d.CustomerID), metric, cfg, key)
		return err
	})
	if err != nil {
		return d, false, err
	}
	d.Entitlement = ent
	if ok {
		d.Reason = ReasonEntitled
		return d, true, nil
	}
	return d, false, nil // refused, or spent by a concurrent action: a new exhaustion
}

// settleForCheck settles the customer's lease on metric and then runs check
// (the check that decides on a purchase), both under the customer's lock:
// no lease of ours holds the credits when it runs, and none is reserved
// before it ends.
func (g *Gatekeeper) settleForCheck(ctx context.Context, customerID, metric string, check func() error) error {
	unlock, err := g.lock(ctx, customerID)
	if err != nil {
		return err
	}
	defer unlock()
	if err := g.settleLeasesLocked(ctx, customerID, metric); err != nil {
		return err
	}
	return check()
}

// settleLeasesLocked settles the customer's lease on metric; the caller
// holds the customer's lock. A lease that moved while being settled (an
// action taken from it) is read and settled again.
func (g *Gatekeeper) settleLeasesLocked(ctx context.Context, customerID, metric string) error {
	for range 5 {
		l, found, err := g.charges.Lease(ctx, customerID, metric)
		if err != nil {
			return &chargeLogError{err}
		}
		if !found {
			return nil
		}
		if err := g.settleLease(ctx, l); err != nil {
			return err
		}
	}
	return nil
}

// startLinger starts, once, the goroutine that commits idle and due leases.
func (ls *leases) startLinger(g *Gatekeeper) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.stop != nil {
		return
	}
	stop, done := make(chan struct{}), make(chan struct{})
	ls.stop, ls.done = stop, done
	go func() {
		defer close(done)
		t := time.NewTicker(max(ls.cfg.Linger/2, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = g.flushLeases(context.Background(), false)
			}
		}
	}()
}

// flushLeases settles the leases of the ChargeLog that are idle for the
// linger, due, or being committed (all for all true), least recently used first.
func (g *Gatekeeper) flushLeases(ctx context.Context, all bool) error {
	ls := g.leases
	if ls == nil {
		return nil
	}
	idle := time.Time{}
	if !all {
		idle = g.now().Add(-ls.cfg.Linger)
	}
	candidates, err := g.charges.Leases(ctx, time.Time{}, 0)
	if err != nil {
		return &chargeLogError{err}
	}
	var errs []error
	for _, l := range candidates {
		if !all && !l.Committing && !g.leaseDue(l) && !l.LastUsed.Before(idle) {
			continue
		}
		unlock, err := g.lock(ctx, l.CustomerID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cur, found, err := g.charges.Lease(ctx, l.CustomerID, l.Metric)
		if err == nil && found && cur.ReservationID == l.ReservationID {
			err = g.settleLease(ctx, cur)
			if all {
				err = g.settleAgain(ctx, cur, err)
			}
		}
		unlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// settleAgain retries a settle that QuotaStack could not answer (a rate
// limit, an outage) until it lands or the purchase timeout passes: Flush and
// Close must not leave counted units behind lightly.
func (g *Gatekeeper) settleAgain(ctx context.Context, l Lease, err error) error {
	deadline := time.Now().Add(g.purchaseTimeout)
	wait := 50 * time.Millisecond
	for err != nil && quotastack.IsOutage(ctx, err) && time.Now().Add(wait).Before(deadline) {
		if serr := retry.Sleep(ctx, wait); serr != nil {
			return err
		}
		wait = min(2*wait, time.Second)
		cur, found, lerr := g.charges.Lease(ctx, l.CustomerID, l.Metric)
		if lerr != nil || !found || cur.ReservationID != l.ReservationID {
			return nil // settled meanwhile
		}
		err = g.settleLease(ctx, cur)
	}
	return err
}

// Flush commits the units counted on every lease of the ChargeLog now
// (lease mode). The leases are reserved again on the next actions.
func (g *Gatekeeper) Flush(ctx context.Context) error { return g.flushLeases(ctx, true) }

// Close stops lease mode's background committer, waits for the lease
// renewals running, and commits every lease. A gate used after Close starts
// them again. Without lease mode it does nothing.
func (g *Gatekeeper) Close(ctx context.Context) error {
	ls := g.leases
	if ls == nil {
		return nil
	}
	ls.mu.Lock()
	stop, done := ls.stop, ls.done
	ls.stop, ls.done = nil, nil
	ls.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
	if err := ls.awaitRenewals(ctx); err != nil {
		return err
	}
	return g.Flush(ctx)
}

// awaitRenewals waits for the renewals running in this process to end.
func (ls *leases) awaitRenewals(ctx context.Context) error {
	ls.mu.Lock()
	running := make([]*renewal, 0, len(ls.renewing))
	for _, r := range ls.renewing {
		running = append(running, r)
	}
	ls.mu.Unlock()
	for _, r := range running {
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
