package autobuy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quotastack/quotastack-go"
)

// LeaseConfig configures lease mode (WithLease).
type LeaseConfig struct {
	// Actions is how many actions one lease holds the credits of (default 50).
	Actions int64
	// TTL is the reservation's lifetime (default 5 min, at most 1 h): what a
	// crash can leave uncommitted, and when the server returns it.
	TTL time.Duration
	// Linger commits a lease idle this long (default 10 s).
	Linger time.Duration
	// Events, when set, remembers the event ids let through on leases for
	// TTL, so a repeat of an event is let through once across the leases of
	// every replica sharing it (redislock.NewEventStore); without it an event
	// id is counted once per lease.
	Events EventStore
}

// EventStore remembers the events let through on leases, shared by the
// replicas that use one. Implementations must be safe for concurrent use.
type EventStore interface {
	// FirstUse reports whether key is seen for the first time, and remembers
	// it for ttl either way; an error refuses the lease path (the gate then
	// checks and records the action one by one).
	FirstUse(ctx context.Context, key string, ttl time.Duration) (bool, error)
}

// WithLease serves hot customers from leases: one reservation (POST
// /v1/reserve) holds the credits of cfg.Actions actions of a metric; actions
// are let through locally against it, and the units used are committed when
// it runs out (then the next lease is reserved), when it has been idle for
// cfg.Linger, and on Flush or Close. The server holds the credits, so
// nothing is overspent. When no lease can be had (the credits can't cover
// one), the gate falls back to the per-action path with auto-buy. An event
// id is let through once per lease (a repeat within the lease is not counted
// again). A crash loses the uncommitted units of its leases: the server
// returns their credits when the reservation's TTL passes, so those actions
// were free (the tenant's loss, never the customer's). Call Close on
// shutdown. Not with WithReservation gates, which hold per action.
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
		g.leases = &leases{cfg: cfg, by: map[string]*lease{}}
	}
}

type leases struct {
	cfg  LeaseConfig
	mu   sync.Mutex
	by   map[string]*lease
	stop chan struct{}
	done chan struct{}
}

// lease is the credits of one reservation for one customer and metric.
type lease struct {
	mu       sync.Mutex
	res      *quotastack.Reservation // nil when none is held
	left     int64                   // units still held
	used     int64                   // units let through, to commit
	events   map[string]bool         // event ids let through on this lease
	lastUsed time.Time               // wall clock, for the linger
	noLease  time.Time               // wall clock: no lease to be had before then
	dropped  bool                    // pruned from the map: not to be used
}

// leased serves the action from the customer's lease when lease mode is on.
// ok false means no lease could be had: the caller goes the per-action way.
func (g *Gatekeeper) leased(ctx context.Context, customer quotastack.Customer, metric string, cfg gateConfig) (Decision, bool, error) {
	ls := g.leases
	if ls == nil || cfg.reserve {
		return Decision{}, false, nil
	}
	ls.startLinger(g)
	key := customer.String() + "\x00" + metric
	var l *lease
	for {
		ls.mu.Lock()
		l = ls.by[key]
		if l == nil {
			l = &lease{}
			ls.by[key] = l
		}
		ls.mu.Unlock()
		l.mu.Lock()
		if !l.dropped {
			break
		}
		l.mu.Unlock() // pruned meanwhile: take the map's current one
	}
	defer l.mu.Unlock()
	if l.res != nil && cfg.eventID != "" && l.events[cfg.eventID] {
		return g.leaseDecision(l), true, nil // this event already went through on this lease
	}

	if l.res != nil && (l.left < cfg.units || g.now().After(l.res.ExpiresAt.Add(-ls.cfg.TTL/10))) {
		if err := g.commitLease(ctx, l); err != nil {
			return Decision{}, false, err
		}
	}
	if l.res == nil {
		if time.Now().Before(l.noLease) {
			return Decision{}, false, nil
		}
		res, err := g.client.Reserve(ctx, quotastack.ReserveParams{Customer: customer, MetricKey: metric,
			EstimatedUnits: ls.cfg.Actions * cfg.units, TTL: ls.cfg.TTL})
		if errors.Is(err, quotastack.ErrInsufficientCredits) {
			// No lease: the per-action path (and its auto-buy) until a linger
			// has passed, so an exhausted customer doesn't pay a reserve per action.
			l.noLease = time.Now().Add(ls.cfg.Linger)
			return Decision{}, false, nil
		}
		if err != nil {
			return Decision{}, false, err
		}
		l.res, l.left, l.used, l.events = res, res.EstimatedUnits, 0, map[string]bool{}
	}
	if ls.cfg.Events != nil && cfg.eventID != "" {
		first, err := ls.cfg.Events.FirstUse(ctx, quotastack.DeriveKey("lease-event", key, cfg.eventID), ls.cfg.TTL)
		if err != nil {
			return Decision{}, false, nil // the per-action path, whose usage keys dedupe
		}
		if !first {
			return g.leaseDecision(l), true, nil // it went through on a lease already (maybe another replica's)
		}
	}
	l.left -= cfg.units
	l.used += cfg.units
	l.lastUsed = time.Now()
	if cfg.eventID != "" {
		l.events[cfg.eventID] = true
	}
	return g.leaseDecision(l), true, nil
}

func (g *Gatekeeper) leaseDecision(l *lease) Decision {
	return Decision{Allowed: true, Reason: ReasonEntitled, CustomerID: l.res.CustomerID, Leased: true}
}

// commitLease commits the units used on l's reservation (idempotently, keyed
// by the reservation id) and forgets it. l.mu is held.
func (g *Gatekeeper) commitLease(ctx context.Context, l *lease) error {
	res := l.res
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.purchaseTimeout)
	defer cancel()
	var err error
	if l.used > 0 {
		_, err = g.client.Commit(ctx, res.ID, l.used, quotastack.WithIdempotencyKey(quotastack.DeriveKey("lease-commit", res.ID)))
	} else {
		_, err = g.client.Release(ctx, res.ID, quotastack.WithIdempotencyKey(quotastack.DeriveKey("lease-release", res.ID)))
	}
	if errors.Is(err, quotastack.ErrConflict) {
		// Not active any more: it expired before this commit, and the server
		// returned its credits. Those units were free.
		g.log.WarnContext(ctx, "autobuy: a lease expired before its commit; its units were not charged",
			"reservation", res.ID, "units", l.used)
		err = nil
	}
	if err != nil {
		return fmt.Errorf("autobuy: committing lease %s: %w", res.ID, err)
	}
	l.res, l.left, l.used, l.events = nil, 0, 0, nil
	return nil
}

// startLinger starts, once, the goroutine that commits idle leases.
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
		t := time.NewTicker(ls.cfg.Linger / 2)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = g.flushLeases(context.Background(), time.Now().Add(-ls.cfg.Linger))
			}
		}
	}()
}

// flushLeases commits every lease last used before idleSince (all of them
// for a zero time). A linger pass also forgets the idle entries, so memory
// is bounded by the customers active within the linger.
func (g *Gatekeeper) flushLeases(ctx context.Context, idleSince time.Time) error {
	ls := g.leases
	if ls == nil {
		return nil
	}
	ls.mu.Lock()
	all := make(map[string]*lease, len(ls.by))
	for k, l := range ls.by {
		all[k] = l
	}
	ls.mu.Unlock()
	var errs []error
	for k, l := range all {
		l.mu.Lock()
		idle := idleSince.IsZero() || l.lastUsed.Before(idleSince)
		if l.res != nil && idle {
			if err := g.commitLease(ctx, l); err != nil {
				errs = append(errs, err)
			}
		}
		if l.res == nil && idle && !idleSince.IsZero() {
			ls.mu.Lock()
			if ls.by[k] == l {
				delete(ls.by, k)
				l.dropped = true
			}
			ls.mu.Unlock()
		}
		l.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Flush commits the units used on every lease now (lease mode). The leases
// are reserved again on the next actions.
func (g *Gatekeeper) Flush(ctx context.Context) error { return g.flushLeases(ctx, time.Time{}) }

// Close stops lease mode's background committer and commits every lease. A
// gate used after Close starts them again. Without lease mode it does nothing.
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
	return g.Flush(ctx)
}
