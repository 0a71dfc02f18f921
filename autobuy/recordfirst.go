package autobuy

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/quotastack/quotastack-go"
)

// WithRecordFirst makes the gate record an entitled action's usage without
// checking first: 1 request per entitled action instead of 2. A 402 means
// "not entitled" and the gate goes on as after a refused check (check, then
// auto-buy). Only a server that debits synchronously can answer a record
// with 402: the first 202 Accepted switches record-first off for this
// Gatekeeper (RecordFirst reports it) and the gate checks as usual, so an
// action is never let through on an unconfirmed debit. Reservations
// (WithReservation) always check first.
func WithRecordFirst() Option { return func(g *Gatekeeper) { g.recordFirst.on.Store(true) } }

// RecordFirst reports whether record-first is on: set by WithRecordFirst and
// not switched off by a 202 answer.
func (g *Gatekeeper) RecordFirst() bool { return g.recordFirst.on.Load() && !g.recordFirst.off.Load() }

// recordFirst holds the mode's state: whether it is on, whether a 202 turned
// it off, and the QuotaStack ids of external customers seen (usage keys are
// scoped by that id, which a record without a check doesn't return first).
type recordFirst struct {
	on, off atomic.Bool
	ids     idCache
}

// idCache maps external ids to QuotaStack ids, bounded: past max entries a
// random half is dropped (a dropped customer costs one check again).
type idCache struct {
	mu sync.Mutex
	m  map[string]string
}

const idCacheMax = 100_000

func (c *idCache) get(external string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id, ok := c.m[external]
	return id, ok
}

func (c *idCache) put(external, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]string{}
	}
	if len(c.m) >= idCacheMax {
		for k := range c.m {
			if rand.IntN(2) == 0 {
				delete(c.m, k)
			}
		}
	}
	c.m[external] = id
}

// tryRecordFirst records the action before any check, when the mode is on
// and the customer's QuotaStack id is known. done is true when it decided
// (allowed, or an error); false means go on with a check (refused with 402,
// or the id unknown), with key moved past a refused attempt.
func (g *Gatekeeper) tryRecordFirst(ctx context.Context, customer quotastack.Customer, metric string, cfg gateConfig, d *Decision, key *usageKey) (done bool, err error) {
	if !g.RecordFirst() || cfg.reserve {
		return false, nil
	}
	id := customer.ID()
	if customer.IsExternal() {
		var ok bool
		if id, ok = g.recordFirst.ids.get(customer.ID()); !ok {
			return false, nil // learnt from this gate's check
		}
	}
	d.CustomerID, key.customerID = id, id
	ok, err := g.consume(ctx, d, customerOf(id), metric, cfg, key)
	if err != nil {
		if errors.Is(err, quotastack.ErrNotFound) {
			return false, nil // a stale id or an unknown customer: the check tells
		}
		return true, err
	}
	if !ok {
		return false, nil
	}
	if d.Usage != nil && d.Usage.Accepted {
		// A server that debits asynchronously: a record can't say "not
		// entitled" there, so the mode is off for good from now on. This
		// one action stands on its accepted record (recording it again under
		// another key could charge it twice; denying it could block a payer):
		// if the server later rejects it, it was free.
		g.recordFirst.off.Store(true)
		g.log.WarnContext(ctx, "autobuy: the server answered usage with 202 Accepted; record-first is off for this Gatekeeper")
	}
	d.Reason = ReasonEntitled
	return true, nil
}

// learnID remembers an external customer's QuotaStack id for record-first.
func (g *Gatekeeper) learnID(customer quotastack.Customer, id string) {
	if g.RecordFirst() && customer.IsExternal() && id != "" {
		g.recordFirst.ids.put(customer.ID(), id)
	}
}
