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
// auto-buy, whose record after the grant stands for the re-check: 5
// requests). Only a server that debits synchronously can answer a record
// with 402, so the mode arms itself only once this Gatekeeper has seen a
// usage record answered 200/201 with its event (until then gates check
// first), and any 202 Accepted switches it off for good (RecordFirst reports
// it). Reservations (WithReservation) always check first.
func WithRecordFirst() Option { return func(g *Gatekeeper) { g.recordFirst.on.Store(true) } }

// RecordFirst reports whether record-first is in force: asked for with
// WithRecordFirst, armed by a synchronous usage answer, and not switched off
// by a 202 answer.
func (g *Gatekeeper) RecordFirst() bool {
	rf := &g.recordFirst
	return rf.on.Load() && rf.armed.Load() && !rf.off.Load()
}

// recordFirst holds the mode's state: whether it was asked for, armed by a
// synchronous answer, or turned off by a 202.
type recordFirst struct {
	on, armed, off atomic.Bool
}

// observe arms or disarms the mode from a usage answer of any gate (tracked
// with the mode off too: a pending event is resent before its check only on
// a server seen to debit synchronously).
func (rf *recordFirst) observe(ev *quotastack.UsageEvent) {
	switch {
	case ev == nil:
	case ev.Accepted:
		rf.off.Store(true)
	case ev.Confirmed():
		rf.armed.Store(true)
	}
}

// synchronous reports whether the server was seen answering a usage record
// 200/201 (debited, or refused with 402, before answering) and never 202.
func (rf *recordFirst) synchronous() bool { return rf.armed.Load() && !rf.off.Load() }

// idCache maps external ids to QuotaStack ids, bounded: past max entries a
// random half is dropped (a dropped customer costs one check again).
type idCache struct {
	mu      sync.Mutex
	m       map[string]string
	lookups map[string]*idLookup // external ids being looked up
}

// idLookup is one lookup of an external id, shared by the gates that need
// it meanwhile; id and err are set before done is closed.
type idLookup struct {
	done chan struct{}
	id   string
	err  error
}

// lookup returns the QuotaStack id of external: from the cache, else from
// one fetch shared by every caller that asks meanwhile. The fetch runs on a
// context of its own (fetch sets it): a caller that stops waiting (its
// deadline) neither cancels it nor wastes its request, whose answer is
// cached for the next gate. ok is false when the id is not known in time.
func (c *idCache) lookup(ctx context.Context, external string, fetch func() (string, error)) (id string, ok bool) {
	c.mu.Lock()
	if id, ok := c.m[external]; ok {
		c.mu.Unlock()
		return id, true
	}
	l, running := c.lookups[external]
	if !running {
		l = &idLookup{done: make(chan struct{})}
		if c.lookups == nil {
			c.lookups = map[string]*idLookup{}
		}
		c.lookups[external] = l
		go func() {
			id, err := fetch()
			if err == nil && id != "" {
				c.put(external, id)
			}
			c.mu.Lock()
			delete(c.lookups, external)
			c.mu.Unlock()
			l.id, l.err = id, err
			close(l.done)
		}()
	}
	c.mu.Unlock()
	select {
	case <-l.done:
		return l.id, l.err == nil && l.id != ""
	case <-ctx.Done():
		return "", false
	}
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
// (allowed, or an error); otherwise the gate goes on, with refused set when
// the 402's figures say the customer is out (no check needed), with key
// moved past a refused attempt.
func (g *Gatekeeper) tryRecordFirst(ctx context.Context, customer quotastack.Customer, metric string, cfg gateConfig, d *Decision, key *usageKey) (done bool, refused *quotastack.Entitlement, err error) {
	if !g.RecordFirst() || cfg.reserve {
		return false, nil, nil
	}
	id, ok := g.canonicalID(customer)
	if !ok {
		return false, nil, nil // learnt from this gate's check
	}
	d.CustomerID, key.customerID = id, id
	ok, err = g.consume(ctx, d, customerOf(id), metric, cfg, key)
	if err != nil {
		if errors.Is(err, quotastack.ErrNotFound) {
			return false, nil, nil // a stale id or an unknown customer: the check tells
		}
		return true, nil, err
	}
	if !ok {
		refused, _ = refusalFrom(key.refusal, id, metric, cfg.units)
		return false, refused, nil
	}
	if d.Usage != nil && d.Usage.Accepted {
		// The server turned asynchronous after all (consume switched the mode
		// off). This one action stands on its accepted record: recording it
		// again under another key could charge it twice, and denying it could
		// block a payer; if the server later rejects it, it was free.
		g.log.WarnContext(ctx, "autobuy: the server answered usage with 202 Accepted; record-first is off for this Gatekeeper")
	}
	d.Reason = ReasonEntitled
	return true, nil, nil
}

// learnID remembers an external customer's QuotaStack id: records, leases
// and record-first find the customer by it before a check.
func (g *Gatekeeper) learnID(customer quotastack.Customer, id string) {
	if customer.IsExternal() && id != "" {
		g.ids.put(customer.ID(), id)
	}
}
