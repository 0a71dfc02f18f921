// Package autobuy gates paid actions: it checks the customer's entitlement
// and, when plan credits have run out but the wallet can pay, buys the next
// plan from the wallet and lets the action through; otherwise it answers with
// a paywall or plan-picker decision. Every purchase is an intent recorded in
// a Journal before its first request and finished from that record, under the
// customer's Locker: at most one plan per exhaustion, never a debit without
// its grant, in one process (the defaults) and across replicas (a shared
// Journal and Locker, e.g. autobuy/redislock).
package autobuy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// Gate decides whether customer may do one action on metric, auto-buying a
// plan from the wallet when plan credits have run out, and records the usage
// of an allowed action. Denials are Decisions (see Reason). The error is
// non-nil for invalid input, for a definite error answer from QuotaStack
// (401/403: the key; 404 metric, 422 rule, 409 event reuse: configuration),
// and when QuotaStack could not answer and the fallback policy is
// ReturnError. Round trips: 2 when entitled (1 with WithRecordFirst), 2 for
// a paywall, 6 for an auto-buy (the recipe's check, wallet, debit, grant,
// re-check, record; 5 with WithRecordFirst, whose record's 402 stands for
// the check and whose record after the grant for the re-check) (7 on a
// server that debits asynchronously: a wallet read confirms the debit). A replay of a charged event (WithEventID) sends
// nothing.
func (g *Gatekeeper) Gate(ctx context.Context, customer quotastack.Customer, metric string, opts ...GateOption) (Decision, error) {
	ctx = quotastack.BeginOperation(ctx) // one deadline, one place in the rate budget for all its calls
	cfg := gateConfig{units: 1}
	for _, o := range opts {
		o(&cfg)
	}
	var d Decision
	var err error
	if customer.IsZero() || metric == "" || cfg.units <= 0 {
		err = fmt.Errorf("%w: autobuy: need a customer, a metric and units > 0", quotastack.ErrInvalidInput)
	} else {
		d, err = g.gate(ctx, customer, metric, cfg)
		if err != nil && quotastack.IsOutage(ctx, err) {
			d, err = g.fallbackDecision(ctx, customer, metric, d, err)
		}
	}
	d.Customer = customer // whichever path decided (lease, fallback, check)
	if g.hooks.Decided != nil {
		g.hooks.Decided(ctx, d.Ref(), metric, d, err)
	}
	return d, err
}

func (g *Gatekeeper) gate(ctx context.Context, customer quotastack.Customer, metric string, cfg gateConfig) (Decision, error) {
	rec := &eventRecord{}
	key := usageKey{event: cfg.eventID, n: 1, hold: cfg.reserve, rec: rec}
	d, err := g.decide(ctx, customer, metric, cfg, rec, &key)
	var elsewhere *decidedElsewhere
	if errors.As(err, &elsewhere) {
		d, err = replayDecision(elsewhere.c), nil
	}
	d.EventID = cfg.eventID
	g.finishEvent(ctx, rec, d, err, &key)
	return d, err
}

// decide is the gate's path: the record of the event first (a replay is
// answered from it), then the lease, record-first, or the check; the
// purchase when the customer is out of credits.
func (g *Gatekeeper) decide(ctx context.Context, customer quotastack.Customer, metric string, cfg gateConfig, rec *eventRecord, key *usageKey) (Decision, error) {
	d := Decision{Customer: customer}
	id, known := g.canonicalID(customer)
	if !known && g.leases != nil && !cfg.reserve {
		// Leases and records are found by the QuotaStack id: one GET, once
		// per customer and process, shared by the gates that need it at once.
		id, known = g.ids.lookup(ctx, customer.ID(), func() (string, error) {
			c, err := g.client.GetCustomer(quotastack.BeginOperation(context.Background()), customer)
			if err != nil {
				return "", err
			}
			return c.CustomerID, nil
		})
	}
	if known && cfg.eventID != "" {
		via := viaUsage
		switch {
		case cfg.reserve:
			via = viaHold
		case g.leases != nil:
			via = viaLease
		}
		if replay, err := g.claimEvent(ctx, rec, id, metric, cfg, via); replay != nil || err != nil {
			if replay != nil {
				return *replay, nil
			}
			return d, err
		}
		key.n = rec.c.Attempt
		if done, err := g.resendPending(ctx, rec, &d, id, metric, cfg, key); done || err != nil {
			return d, err
		}
	}
	// The journal's revision before anything that stands for the check: under
	// the lock it tells whether a purchase landed since (no clocks compared).
	seen := g.revBeforeCheck(ctx, id, known)
	var refused *quotastack.Entitlement // a refusal read from a 402: no check needed
	if known && g.leases != nil && !cfg.reserve && (!rec.claimed || rec.c.Via == viaLease) {
		ld, ok, r, err := g.leased(ctx, id, metric, cfg)
		var unknown *takeUnknown
		if errors.As(err, &unknown) {
			// A take of it may have been counted: it stays claimed for a lease
			// (a retry answers it as let through, never charges it again).
			return ld, err
		}
		if err != nil {
			// Nothing was counted on a lease for it: the event's retry must
			// charge it, not take it as let through on one.
			if serr := g.switchVia(context.WithoutCancel(ctx), rec, viaUsage); serr != nil {
				g.log.WarnContext(ctx, "autobuy: un-marking an event's lease claim failed", "event_id", cfg.eventID, "error", serr)
			}
			return ld, err
		}
		if ok {
			return ld, nil
		}
		refused = r
		if err := g.switchVia(ctx, rec, viaUsage); err != nil {
			return d, err
		}
	}
	if refused == nil {
		var done bool
		var err error
		if done, refused, err = g.tryRecordFirst(ctx, customer, metric, cfg, &d, key); done || err != nil {
			return d, err
		}
	}
	ent := refused
	if ent == nil {
		var err error
		ent, err = g.client.Check(ctx, customer, metric, cfg.units)
		if isCustomerNotFound(err) {
			return g.deny(ctx, customer, d, ReasonNoAccount), nil
		}
		if err != nil {
			return d, err
		}
		if d.CustomerID, err = g.resolve(ctx, customer, ent); err != nil {
			return d, err
		}
	} else {
		d.CustomerID = id
	}
	d.Entitlement = ent
	g.learnID(customer, d.CustomerID)
	if cfg.eventID != "" && !rec.claimed {
		via := viaUsage
		if cfg.reserve {
			via = viaHold
		}
		replay, err := g.claimEvent(ctx, rec, d.CustomerID, metric, cfg, via)
		if replay != nil || err != nil {
			if replay != nil {
				return *replay, nil
			}
			return d, err
		}
		key.n = rec.c.Attempt
		if done, err := g.resendPending(ctx, rec, &d, d.CustomerID, metric, cfg, key); done || err != nil {
			return d, err
		}
	}
	canon := customerOf(d.CustomerID)
	key.customerID = d.CustomerID
	if ent.Allowed {
		ok, err := g.consume(ctx, &d, canon, metric, cfg, key)
		if err != nil || ok {
			d.Reason = ReasonEntitled
			return d, err
		}
		// 402: spent by a concurrent action since the check; go on as not entitled.
		rec.resend = false // its key was answered: nothing charged under it
	}
	if done, err := g.resendRefused(ctx, rec, &d, metric, cfg, key); done || err != nil {
		return d, err
	}
	var served bool
	var err error
	if d, served, err = g.leaseBeforeBuying(ctx, d, metric, cfg, key); served || err != nil {
		return d, err
	}
	ent = d.Entitlement

	enabled := true
	if cfg.autoBuy != nil {
		enabled = *cfg.autoBuy
	} else if g.preference != nil {
		if enabled, err = g.preference(ctx, d.Ref()); err != nil {
			d.Err = fmt.Errorf("autobuy: reading the auto-buy preference: %w", err)
			return g.deny(ctx, customer, d, ReasonPurchaseUnavailable), nil
		}
	}
	if !enabled {
		return g.deny(ctx, customer, d, ReasonPlanExpired), nil
	}
	p, ok := g.choose(ctx, d.Ref(), metric, ent)
	if !ok {
		return g.deny(ctx, customer, d, ReasonPlanExpired), nil
	}
	if err := p.Validate(); err != nil {
		return d, fmt.Errorf("%w: autobuy: the chosen plan: %w", quotastack.ErrInvalidInput, err)
	}
	if tooLarge(ent, p) {
		// Decided before buying: one plan can't let this action through.
		return g.deny(ctx, customer, d, ReasonActionTooLarge), nil
	}
	d, err = g.purchaseAndConsume(ctx, customer, metric, cfg, p, seen, d, key)
	if d.Purchase != nil {
		g.leases.allowAgain(d.CustomerID, metric)
	}
	return d, err
}

// tooLarge reports whether the action would still be refused with one more
// plan's credits. balance_after is the eligible effective balance minus the
// action's cost; a server that doesn't send it is judged on the cost alone.
func tooLarge(ent *quotastack.Entitlement, p plan.Plan) bool {
	if ent.EstimatedCost <= 0 {
		return false
	}
	if ent.BalanceAfter < 0 {
		return ent.BalanceAfter+p.CreditsMC < 0
	}
	return ent.EstimatedCost > p.CreditsMC
}

// seenRev is the customer's journal revision read before the gate's check;
// known is false when the gate didn't know the customer's QuotaStack id then.
type seenRev struct {
	id    string // the QuotaStack id the revision was read for
	rev   int64
	known bool
}

// revBeforeCheck reads the customer's journal revision before the check,
// when its QuotaStack id is known (a UUID caller, or an external id resolved
// earlier in this process). A journal error leaves it unknown.
func (g *Gatekeeper) revBeforeCheck(ctx context.Context, id string, known bool) seenRev {
	if !known {
		return seenRev{}
	}
	rev, err := g.journal.Rev(ctx, id)
	if err != nil {
		return seenRev{}
	}
	return seenRev{id: id, rev: rev, known: true}
}

// purchaseAndConsume is the not-entitled path, under the customer's lock:
// finish the customer's open intents; if anything was bought or finished
// since this gate's check (the journal's revision moved), check again
// instead of buying; otherwise check the limits and the wallet, buy, check
// again and record the action.
func (g *Gatekeeper) purchaseAndConsume(ctx context.Context, customer quotastack.Customer, metric string, cfg gateConfig,
	p plan.Plan, seen seenRev, d Decision, key *usageKey) (Decision, error) {
	unlock, err := g.lock(ctx, d.CustomerID)
	if err != nil {
		d.Err = err
		return g.deny(ctx, customer, d, ReasonPurchaseUnavailable), nil
	}
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()

	finished, err := g.finishOpen(ctx, d.CustomerID)
	if err != nil {
		// An earlier purchase of this customer is unfinished: buying now could
		// buy twice for one exhaustion. Its next attempt resumes it.
		return g.purchaseError(ctx, customer, d, err)
	}
	rechecked := false
	if g.boughtSince(ctx, d.CustomerID, seen, finished) {
		// The exhaustion this gate saw may be over: check again, under the
		// lock, so the answer includes every purchase made for this customer.
		if dd, done, err := g.recheck(ctx, customer, metric, cfg, p, &d, key, unlock, &locked); done || err != nil {
			return dd, err
		}
		rechecked = true
	}

	_, leased, err := g.charges.Lease(ctx, d.CustomerID, metric)
	if err != nil {
		d.Err = &chargeLogError{err}
		return g.deny(ctx, customer, d, ReasonPurchaseUnavailable), nil
	}
	held := d.Entitlement != nil && d.Entitlement.ReservedBalance > 0
	if leased || (held && !rechecked) {
		// Credits held by one of our leases are never the reason to buy: a
		// lease is settled and the customer checked again, under the lock
		// (no lease is reserved or settled in between). A check that saw
		// held credits may have seen a lease settled since: checked again too.
		if err := g.settleLeasesLocked(ctx, d.CustomerID, metric); err != nil {
			return d, err
		}
		if dd, done, err := g.recheck(ctx, customer, metric, cfg, p, &d, key, unlock, &locked); done || err != nil {
			return dd, err
		}
		rechecked = true
	}

	if s, ok, err := g.journal.Suspension(ctx, d.CustomerID, metric); err != nil {
		d.Err = &journalError{err}
		return g.deny(ctx, customer, d, ReasonPurchaseUnavailable), nil
	} else if ok && s.Active(g.now()) {
		d.Limit = &Limit{Kind: "suspended", ResetsAt: s.Until}
		return g.deny(ctx, customer, d, ReasonAutoBuySuspended), nil
	}

	if lim, err := g.limitReached(ctx, d.CustomerID); err != nil {
		d.Err = err
		return g.deny(ctx, customer, d, ReasonPurchaseUnavailable), nil
	} else if lim != nil {
		d.Limit = lim
		return g.deny(ctx, customer, d, ReasonPurchaseLimit), nil
	}

	// The recipe's wallet guard: no POST when the wallet can't cover the price.
	bal, err := g.client.BalanceWithBlocks(ctx, canonOf(d))
	if err != nil {
		return d, err
	}
	d.WalletMC = bal.WalletMC()
	if !rechecked && livePlanCovers(bal, d.Entitlement) {
		// Plan credits the check didn't count: a plan bought since the check by
		// a gate this one doesn't share a journal with (another replica on its
		// own store), or a first gate that couldn't read the journal's
		// revision before its check. Check again before buying another.
		if dd, done, err := g.recheck(ctx, customer, metric, cfg, p, &d, key, unlock, &locked); done || err != nil {
			return dd, err
		}
	}
	if d.WalletMC < p.PriceMC {
		return g.deny(ctx, customer, d, ReasonEmptyWallet), nil
	}

	r, err := g.start(ctx, d, metric, p, bal)
	switch {
	case err != nil:
		return g.purchaseError(ctx, customer, d, err)
	case r.walletShort:
		return g.deny(ctx, customer, d, ReasonEmptyWallet), nil
	case r.failed != nil:
		return d, r.failed // refused for good: a configuration error (metric, rule, key)
	case r.review:
		d.Err = &reviewError{orderID: r.intent.OrderID, note: r.intent.Note}
		return g.deny(ctx, customer, d, ReasonPurchaseInReview), nil
	case r.purchase == nil:
		d.Err = errors.New("autobuy: purchase " + r.intent.OrderID + " is " + string(r.intent.State))
		return g.deny(ctx, customer, d, ReasonPurchaseUnavailable), nil
	}
	d.Purchase = r.purchase
	return g.consumeAfterPurchase(ctx, customer, metric, cfg, d, key, bal.ReservedBalance)
}

// recheck checks the entitlement again under the lock. done is true when it
// decided: allowed (the lock is released and the action recorded), or too
// large for one more plan; otherwise the gate goes on to buy.
func (g *Gatekeeper) recheck(ctx context.Context, customer quotastack.Customer, metric string, cfg gateConfig, p plan.Plan,
	d *Decision, key *usageKey, unlock func(), locked *bool) (Decision, bool, error) {
	ent, err := g.client.Check(ctx, canonOf(*d), metric, cfg.units)
	if err != nil {
		return *d, true, err
	}
	d.Entitlement = ent
	if ent.Allowed {
		unlock()
		*locked = false
		ok, err := g.consume(ctx, d, canonOf(*d), metric, cfg, key)
		if err != nil || ok {
			d.Reason = ReasonEntitled
			return *d, true, err
		}
		// Spent by concurrent actions in between: the user's retry decides.
		return g.deny(ctx, customer, *d, ReasonInsufficientCredits), true, nil
	}
	// Still refused with every earlier purchase counted: a new exhaustion.
	if tooLarge(ent, p) {
		return g.deny(ctx, customer, *d, ReasonActionTooLarge), true, nil
	}
	return *d, false, nil
}

// livePlanCovers reports whether bal lists a plan block (a positive priority
// and an expiry) that alone holds what the refused action costs.
func livePlanCovers(bal *quotastack.Credits, ent *quotastack.Entitlement) bool {
	need := int64(1)
	if ent != nil {
		need = max(ent.EstimatedCost, 1)
	}
	for _, b := range bal.PlanBlocks() {
		if b.RemainingAmount >= need {
			return true
		}
	}
	return false
}

// purchaseError answers a purchase left unfinished (its intent stays open
// and is resumed with the same keys): when QuotaStack could not answer it is
// an outage like any other (the fallback policy decides; the error matches
// plan.ErrUnknownOutcome or plan.ErrHalfDone), otherwise (the Journal failed,
// a debit awaits confirmation) a purchase_unavailable denial.
func (g *Gatekeeper) purchaseError(ctx context.Context, customer quotastack.Customer, d Decision, err error) (Decision, error) {
	var rerr *reviewError
	if errors.As(err, &rerr) {
		d.Err = err
		return g.deny(ctx, customer, d, ReasonPurchaseInReview), nil
	}
	if quotastack.IsOutage(ctx, err) {
		return d, err
	}
	d.Err = err
	return g.deny(ctx, customer, d, ReasonPurchaseUnavailable), nil
}

// boughtSince reports whether a plan of the customer may have been bought or
// finished after this gate's check: an intent just finished here, or the
// journal's revision moved since the one read before the check (or wasn't
// read, and the customer has a history). Ordered by the journal, never by
// the clocks of two replicas.
func (g *Gatekeeper) boughtSince(ctx context.Context, customerID string, seen seenRev, finished []runResult) bool {
	for _, r := range finished {
		if r.purchase != nil {
			return true
		}
	}
	rev, err := g.journal.Rev(ctx, customerID)
	if err != nil {
		return true // unknown: one more check can't charge twice
	}
	if seen.known && seen.id == customerID { // a cached id the check contradicts is no id
		return rev != seen.rev
	}
	return rev > 0
}

// limitReached counts the customer's auto-buys (intents that were not
// refused) created in the last limit period. It reads the journal's window
// only (Since from the window's start), whatever the customer's history.
func (g *Gatekeeper) limitReached(ctx context.Context, customerID string) (*Limit, error) {
	if g.limitMax == 0 && g.limitPeriod == 0 {
		return nil, nil
	}
	from := g.now().Add(-g.limitPeriod)
	ins, err := g.journal.Since(ctx, customerID, from)
	if err != nil {
		return nil, &journalError{err}
	}
	var counted []time.Time
	for _, in := range ins {
		if in.State != IntentFailed && in.CreatedAt.After(from) {
			counted = append(counted, in.CreatedAt)
		}
	}
	if len(counted) < g.limitMax {
		return nil, nil
	}
	lim := &Limit{Kind: "purchases_per_period", Max: g.limitMax, Period: g.limitPeriod}
	if g.limitMax > 0 {
		// The window frees a purchase when the oldest counted one leaves it.
		lim.ResetsAt = counted[len(counted)-g.limitMax].Add(g.limitPeriod)
	}
	// A limit of 0 allows no auto-buy at all: it never resets (ResetsAt zero).
	return lim, nil
}

// consumeAfterPurchase checks the entitlement again on the plan this gate
// just bought (the recipe's re-check: one request per purchase), still under
// the lock, and records the action only if it is allowed. A refusal is
// diagnosed (a misconfigured plan or rule suspends auto-buy) and never
// followed by the record. In record-first mode (a server seen to debit
// synchronously) the record is the re-check: executed, the action was
// allowed; refused, its 402 is diagnosed as a refused re-check would be.
// reservedBefore is the account's reserved balance read before the purchase.
func (g *Gatekeeper) consumeAfterPurchase(ctx context.Context, customer quotastack.Customer, metric string, cfg gateConfig, d Decision, key *usageKey, reservedBefore int64) (Decision, error) {
	canon := canonOf(d)
	if g.RecordFirst() && !cfg.reserve {
		ok, err := g.consume(ctx, &d, canon, metric, cfg, key)
		switch {
		case err != nil:
			return d, err
		case ok && (d.Usage == nil || !d.Usage.Accepted):
			d.Reason = ReasonAutoBought
			return d, nil
		case ok:
			// Answered 202 after all: the action stands on its accepted record
			// (as record-first's do), and the re-check it skipped still guards
			// against buying a plan per action on a plan that can't pay for it.
			d.Reason = ReasonAutoBought
			if ent, err := g.client.Check(ctx, canon, metric, cfg.units); err == nil && !ent.Allowed {
				if bad, err := g.misconfigured(ctx, d, ent, reservedBefore); err == nil && bad {
					_, err := g.suspendAutoBuy(ctx, d, metric)
					g.log.ErrorContext(ctx, "autobuy: the plan just bought doesn't entitle the action; auto-buy is suspended",
						"customer_id", d.CustomerID, "metric", metric, "order_id", d.Purchase.OrderID, "journal_error", err)
				}
			}
			return d, nil
		}
		if ent, ok := refusalFrom(key.refusal, d.CustomerID, metric, cfg.units); ok {
			d.Entitlement = ent
			return g.diagnose(ctx, customer, metric, d, reservedBefore)
		}
		// A 402 without its figures: the re-check tells.
	}
	ent, err := g.client.Check(ctx, canon, metric, cfg.units)
	if err != nil {
		return d, err
	}
	d.Entitlement = ent
	if !ent.Allowed {
		return g.diagnose(ctx, customer, metric, d, reservedBefore)
	}
	ok, err := g.consume(ctx, &d, canon, metric, cfg, key)
	if err != nil {
		return d, err
	}
	if ok {
		d.Reason = ReasonAutoBought
		return d, nil
	}
	// Allowed, then refused (402): concurrent actions used the plan first.
	return g.deny(ctx, customer, d, ReasonInsufficientCredits), nil
}

// diagnose tells a misconfigured plan or rule from a plan that concurrent
// actions used first, after the re-check refused the action on the plan just
// bought: the first suspends auto-buy (entitlement_failed_after_purchase).
func (g *Gatekeeper) diagnose(ctx context.Context, customer quotastack.Customer, metric string, d Decision, reservedBefore int64) (Decision, error) {
	bad, err := g.misconfigured(ctx, d, d.Entitlement, reservedBefore)
	if err != nil {
		return d, err
	}
	if !bad {
		return g.deny(ctx, customer, d, ReasonInsufficientCredits), nil
	}
	d.Limit, d.Err = g.suspendAutoBuy(ctx, d, metric)
	return g.deny(ctx, customer, d, ReasonEntitlementFailedAfterPurchase), nil
}

// misconfigured blames the configuration only when the block of the plan
// just bought is live and untouched and its credits, less the holds added
// since the purchase began (holds that existed before, on the wallet or
// elsewhere, can't be on the new block), still cover the action while ent
// (the re-check, or the record's 402) refuses it: concurrency can't produce that.
func (g *Gatekeeper) misconfigured(ctx context.Context, d Decision, ent *quotastack.Entitlement, reservedBefore int64) (bool, error) {
	bal, err := g.client.BalanceWithBlocks(ctx, canonOf(d))
	if err != nil {
		return false, err
	}
	o := plan.Order{ID: d.Purchase.OrderID, Plan: d.Purchase.Plan}
	blk, found := o.GrantIn(bal)
	need := max(ent.EstimatedCost, 1)
	newHolds := max(0, bal.ReservedBalance-reservedBefore)
	return found && blk.RemainingAmount >= blk.OriginalAmount && blk.RemainingAmount-newHolds >= need, nil
}

// suspendAutoBuy suspends auto-buy for the customer and metric (the plan
// just bought can't pay for the action) and returns the limit it sets; the
// error is the Journal's, if it failed to record the suspension.
func (g *Gatekeeper) suspendAutoBuy(ctx context.Context, d Decision, metric string) (*Limit, error) {
	now := g.now()
	s := Suspension{CustomerID: d.CustomerID, Metric: metric, Since: now,
		Reason: "plan " + d.Purchase.Plan.Type + " (order " + d.Purchase.OrderID + ") was bought and its credits don't entitle " + metric}
	if g.suspendFor > 0 {
		s.Until = now.Add(g.suspendFor)
	}
	created, err := g.journal.Suspend(ctx, s, now)
	if err != nil {
		return &Limit{Kind: "suspended", ResetsAt: s.Until}, &journalError{err}
	}
	if created && g.hooks.Suspended != nil {
		g.hooks.Suspended(ctx, d.Ref(), s)
	}
	return &Limit{Kind: "suspended", ResetsAt: s.Until}, nil
}

// LiftSuspension lets auto-buy run again for the customer (its QuotaStack
// id, Decision.CustomerID) and metric, once the plan or rule is fixed.
func (g *Gatekeeper) LiftSuspension(ctx context.Context, customerID, metric string) error {
	if err := g.journal.Lift(ctx, customerID, metric); err != nil {
		return &journalError{err}
	}
	return nil
}

// resolve returns the customer's QuotaStack id, which keys locks, intents,
// usage records and hooks whichever id form the caller used. Every
// entitlement answer carries it; a server that leaves it out costs one more
// request.
func (g *Gatekeeper) resolve(ctx context.Context, customer quotastack.Customer, ent *quotastack.Entitlement) (string, error) {
	id := ent.CustomerID
	switch {
	case id != "":
	case !customer.IsExternal():
		return customer.ID(), nil
	default:
		rec, err := g.client.GetCustomer(ctx, customer)
		if err != nil {
			return "", err
		}
		if rec.CustomerID == "" {
			return "", fmt.Errorf("%w: autobuy: the server named no customer_id for %s", quotastack.ErrUnexpectedResponse, customer)
		}
		id = rec.CustomerID
	}
	if customer.IsExternal() {
		g.ids.put(customer.ID(), id) // the next gate reads the journal's revision before its check
	}
	return id, nil
}

// lock takes the customer's purchase lock, waiting at most the purchase
// timeout; the release is bounded too, whatever the caller's context.
func (g *Gatekeeper) lock(ctx context.Context, customerID string) (func(), error) {
	unlock, err := g.lockKey(ctx, "quotastack:autobuy:"+customerID)
	if err != nil {
		return nil, fmt.Errorf("autobuy: locking customer %s: %w", customerID, err)
	}
	return unlock, nil
}

// lockKey takes the Locker's lock on key, waiting at most the purchase
// timeout; the release is bounded too, whatever the caller's context.
func (g *Gatekeeper) lockKey(ctx context.Context, key string) (func(), error) {
	lctx, cancel := context.WithTimeout(ctx, g.purchaseTimeout)
	defer cancel()
	unlock, err := g.locker.Lock(lctx, key)
	if err != nil {
		return nil, err
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := unlock(uctx); err != nil {
			// The lock expired while held; revisions in the stores kept the work single.
			g.log.WarnContext(ctx, "autobuy: lock was lost before release", "lock", key, "error", err)
		}
	}, nil
}

func (g *Gatekeeper) deny(ctx context.Context, customer quotastack.Customer, d Decision, r Reason) Decision {
	d.Allowed, d.Reason = false, r
	g.log.InfoContext(ctx, "autobuy: denied", "customer_id", d.CustomerID, "reason", string(r))
	if g.hooks.Paywall != nil && rowOf(r).paywall {
		g.hooks.Paywall(ctx, d.Ref(), d)
	}
	return d
}

func canonOf(d Decision) quotastack.Customer { return customerOf(d.CustomerID) }
