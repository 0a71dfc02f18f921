package autobuy

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// runResult is what advancing one intent achieved.
type runResult struct {
	intent   Intent
	purchase *plan.Purchase // set when the intent is done
	// completed: this call moved the intent to done (it alone fires the hooks).
	completed   bool
	walletShort bool  // failed: the wallet couldn't pay
	failed      error // failed for good (nothing debited)
	review      bool  // parked for a person (Hooks.PurchaseNeedsReview)
}

// start records a new intent (pending) for the gate's customer under its
// lock, before any request, then runs it. bal is the wallet read under the
// lock. The purchase runs to its end even if the gate's caller gives up
// (bounded by the purchase timeout).
//
// The order id derives from the customer and its lifetime_earned (which
// only a grant raises), so replicas that don't share a journal, buying for
// one exhaustion, send the same order: the server's idempotency keys then
// make it one debit and one grant, and a replica finishes a purchase another
// left half done. When that order already failed for good (its refusal is
// replayed, or the journal holds it), nothing was debited under it and a
// fresh order id is used.
func (g *Gatekeeper) start(ctx context.Context, d Decision, metric string, p plan.Plan, bal *quotastack.Credits) (runResult, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.purchaseTimeout)
	defer cancel()
	orderID := plan.NewOrderID()
	derived := bal.LifetimeEarned > 0
	if derived {
		orderID = plan.DeriveOrderID("autobuy", d.CustomerID, p.Type, strconv.FormatInt(bal.LifetimeEarned, 10))
	}
	for {
		r, err := g.startOrder(ctx, d, metric, p, bal, orderID, derived)
		if !derived {
			return r, err
		}
		var apiErr *quotastack.APIError
		switch {
		case errors.Is(err, errOrderExists),
			err == nil && r.failed != nil && errors.As(r.failed, &apiErr) && apiErr.Replayed:
			derived, orderID = false, plan.NewOrderID()
			continue
		}
		return r, err
	}
}

// errOrderExists: the journal holds a closed intent of the derived order id.
var errOrderExists = errors.New("autobuy: the order exists")

func (g *Gatekeeper) startOrder(ctx context.Context, d Decision, metric string, p plan.Plan, bal *quotastack.Credits, orderID string, derived bool) (runResult, error) {
	o := plan.NewOrder(orderID, p, customerOf(d.CustomerID),
		append([]plan.Option{plan.WithTrigger(plan.TriggerAutoBuy)}, g.planOpts...)...)
	snap := plan.SnapshotWallet(bal)
	now := g.now()
	in := Intent{OrderID: o.ID, CustomerID: d.CustomerID, ExternalCustomerID: d.Ref().ExternalID(), Metric: metric, Plan: o.Plan,
		Activation: o.Activation, Trigger: o.Trigger, Metadata: o.Metadata, State: IntentPending,
		WalletBeforeMC: snap.RemainingMC, WalletBlockIDs: snap.BlockIDs, CreatedAt: now, UpdatedAt: now}
	if err := g.journal.Put(ctx, &in); err != nil {
		if errors.Is(err, ErrJournalConflict) {
			// A closed intent of this order id (an earlier purchase of the same
			// lifetime that failed), or an open intent of the customer.
			if open, oerr := g.journal.Open(ctx, d.CustomerID); oerr == nil && len(open) == 0 {
				return runResult{}, errOrderExists
			}
		}
		return runResult{}, &journalError{err}
	}
	return g.runWith(ctx, &in, derived)
}

// finishOpen finishes the customer's open intents, oldest first, under its
// lock. An error means one stays open (its outcome unknown, or in review): the
// gate must not start another purchase for this customer yet.
func (g *Gatekeeper) finishOpen(ctx context.Context, customerID string) ([]runResult, error) {
	open, err := g.journal.Open(ctx, customerID)
	if err != nil {
		return nil, &journalError{err}
	}
	if len(open) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.purchaseTimeout)
	defer cancel()
	var out []runResult
	var review *Intent
	for i := range open {
		if open[i].State == IntentReview {
			review = &open[i]
			continue
		}
		r, err := g.run(ctx, &open[i])
		if err != nil {
			return out, err
		}
		out = append(out, r)
		if r.review {
			review = &r.intent
		}
	}
	if review != nil {
		return out, &reviewError{orderID: review.OrderID, note: review.Note}
	}
	return out, nil
}

// ResolveReview closes an intent in review once a person has settled it
// from the ledger: granted true if the customer now has the plan (found, or
// granted by hand), false if nothing was debited (or it was refunded). Auto-buy
// for the customer resumes. customerID is the QuotaStack id.
func (g *Gatekeeper) ResolveReview(ctx context.Context, customerID, orderID string, granted bool) error {
	unlock, err := g.lock(ctx, customerID)
	if err != nil {
		return err
	}
	defer unlock()
	open, err := g.journal.Open(ctx, customerID)
	if err != nil {
		return &journalError{err}
	}
	for i := range open {
		in := &open[i]
		if in.OrderID != orderID || in.State != IntentReview {
			continue
		}
		in.State, in.Note = IntentFailed, in.Note+"; resolved by hand: not granted"
		if granted {
			in.State, in.Note = IntentDone, in.Note[:len(in.Note)-len("not granted")]+"granted"
		}
		return g.put(ctx, in)
	}
	return fmt.Errorf("autobuy: no intent %s in review for customer %s", orderID, customerID)
}

// run advances in with the purchase machine of package plan (the one Buy
// runs), writing every transition to the journal before the next request:
//
//	pending  → (debit, confirmed) → debited → (grant) → done
//	pending  → (debit refused: wallet short, bad request) → failed
//	pending  → (older than the key window: outcome unknowable) → review
//	debited  → (grant refused for good under its key) → review
//
// An error leaves the intent where it was (the outcome of its last request is
// unknown) and a later gate resumes it with the same keys.
func (g *Gatekeeper) run(ctx context.Context, in *Intent) (runResult, error) {
	return g.runWith(ctx, in, false)
}

// runWith is run; sharedID: the intent is new, with an order id derived from
// the exhaustion, which another replica may have sent first.
func (g *Gatekeeper) runWith(ctx context.Context, in *Intent, sharedID bool) (runResult, error) {
	rec := in.record()
	var doneErr error // the done write's error: the plan is granted either way
	save := func(ctx context.Context, r *plan.Record) error {
		before := *in
		in.apply(r)
		err := g.put(ctx, in)
		if r.State == plan.StateDone && err != nil {
			if !errors.Is(err, ErrJournalConflict) {
				// The write may have landed with its reply lost: the journal says.
				err = g.landed(ctx, &before, in, err)
			}
			doneErr = err
		}
		return err
	}
	res, err := plan.Machine{Client: g.client, Now: g.now, Save: save, SharedOrderID: sharedID}.Run(ctx, &rec)
	switch {
	case res.Purchase != nil:
		return g.completed(ctx, in, res, doneErr)
	case errors.Is(err, plan.ErrSave):
		return runResult{}, err
	case err != nil:
		return runResult{}, g.purchaseFailed(ctx, in, err)
	case res.Failed != nil:
		return runResult{intent: *in, failed: res.Failed, walletShort: errors.Is(res.Failed, plan.ErrWalletShort)}, nil
	case res.Review != "":
		g.notifyReview(ctx, in, res.Review)
		return runResult{intent: *in, review: true}, nil
	}
	return runResult{intent: *in}, nil
}

// completed answers an intent the machine closed as done. Only the gate
// whose done write landed fires the AutoBought hook, however many replicas
// raced to finish it; a write whose outcome the journal can't tell leaves
// the intent for the next gate (the grant replays) and the action goes on.
func (g *Gatekeeper) completed(ctx context.Context, in *Intent, res plan.Result, doneErr error) (runResult, error) {
	pur := res.Purchase
	pur.ExternalCustomerID = in.ExternalCustomerID
	switch {
	case errors.Is(doneErr, ErrJournalConflict):
		return runResult{intent: *in, purchase: pur}, nil // another gate closed it first
	case doneErr != nil:
		g.log.ErrorContext(ctx, "autobuy: plan granted, its intent not closed", "customer_id", in.CustomerID,
			"order_id", in.OrderID, "error", doneErr)
		return runResult{intent: *in, purchase: pur}, nil
	}
	g.log.InfoContext(ctx, "autobuy: plan bought", "customer_id", in.CustomerID, "plan", in.Plan.Type,
		"order_id", in.OrderID, "debit_replayed", pur.DebitReplayed, "grant_replayed", pur.GrantReplayed)
	if g.hooks.AutoBought != nil {
		g.hooks.AutoBought(ctx, in.ref(), pur)
	}
	if res.Regranted {
		g.notifyReview(ctx, in, "order "+in.OrderID+" was granted again more than 23 h after its first grant was sent, "+
			"whose answer was lost and whose block is not listed: if the ledger shows two plan_grant blocks of this order, "+
			"the customer got one plan free")
	}
	return runResult{intent: *in, purchase: pur, completed: true}, nil
}

func (g *Gatekeeper) notifyReview(ctx context.Context, in *Intent, why string) {
	g.log.ErrorContext(ctx, "autobuy: purchase needs review", "customer_id", in.CustomerID, "order_id", in.OrderID, "why", why)
	if g.hooks.PurchaseNeedsReview != nil {
		g.hooks.PurchaseNeedsReview(ctx, *in, why)
	}
}

// purchaseFailed reports a step whose outcome is unknown; the intent stays
// open and is resumed with the same keys.
func (g *Gatekeeper) purchaseFailed(ctx context.Context, in *Intent, err error) error {
	g.log.ErrorContext(ctx, "autobuy: purchase unfinished", "customer_id", in.CustomerID, "plan", in.Plan.Type,
		"order_id", in.OrderID, "state", string(in.State), "error", err)
	if g.hooks.PurchaseFailed != nil {
		g.hooks.PurchaseFailed(ctx, in.ref(), err)
	}
	return &unfinishedError{orderID: in.OrderID, err: err}
}

// landed learns whether a write of in whose call failed (err) landed: the
// journal then holds in at its new revision, and nil is returned (in.Rev
// set). It returns ErrJournalConflict if another write moved the intent, and
// err if the journal can't tell.
func (g *Gatekeeper) landed(ctx context.Context, before, in *Intent, err error) error {
	for attempt := 0; attempt < 3; attempt++ {
		stored, found, rerr := g.stored(ctx, before)
		switch {
		case rerr != nil:
			continue
		case !found || stored.Rev == before.Rev:
			// Not landed: write again at the revision read.
			in.Rev = before.Rev
			if perr := g.put(ctx, in); perr == nil || errors.Is(perr, ErrJournalConflict) {
				return perr
			}
			continue
		case stored.Rev == before.Rev+1 && stored.State == in.State && stored.UpdatedAt.Equal(in.UpdatedAt):
			in.Rev = stored.Rev
			return nil
		}
		return ErrJournalConflict
	}
	return err
}

// stored reads the journal's copy of in.
func (g *Gatekeeper) stored(ctx context.Context, in *Intent) (Intent, bool, error) {
	ins, err := g.journal.Since(ctx, in.CustomerID, in.CreatedAt)
	if err != nil {
		return Intent{}, false, err
	}
	for _, s := range ins {
		if s.OrderID == in.OrderID {
			return s, true, nil
		}
	}
	return Intent{}, false, nil
}

func (g *Gatekeeper) put(ctx context.Context, in *Intent) error {
	in.UpdatedAt = g.now()
	if err := g.journal.Put(ctx, in); err != nil {
		return &journalError{err}
	}
	return nil
}

// Resume finishes every open purchase intent in the journal (at most limit;
// intents in review are left to ResolveReview;
// 0 means 1,000), each under its customer's lock, and reports how many it
// completed. Run it at start-up or periodically, so a customer who paid gets
// the plan even if they don't come back; gates also finish a customer's
// intents before buying for them. In lease mode it also commits the leases
// of the ChargeLog that are idle, due or being committed (a dead process's,
// with a shared store).
func (g *Gatekeeper) Resume(ctx context.Context, limit int) (completed int, err error) {
	if limit <= 0 {
		limit = 1000
	}
	open, err := g.journal.Pending(ctx, limit)
	if err != nil {
		return 0, &journalError{err}
	}
	seen := map[string]bool{}
	var errs []error
	for _, in := range open {
		if seen[in.CustomerID] {
			continue
		}
		seen[in.CustomerID] = true
		n, err := g.resumeCustomer(ctx, in.CustomerID)
		completed += n
		var rerr *reviewError
		if err != nil && !errors.As(err, &rerr) { // review: the hook already told a person
			errs = append(errs, err)
		}
	}
	if g.leases != nil {
		// Leases a dead process counted in a shared ChargeLog: settle the idle ones.
		if err := g.flushLeases(ctx, false); err != nil {
			errs = append(errs, err)
		}
	}
	return completed, errors.Join(errs...)
}

func (g *Gatekeeper) resumeCustomer(ctx context.Context, customerID string) (int, error) {
	unlock, err := g.lock(ctx, customerID)
	if err != nil {
		return 0, err
	}
	defer unlock()
	rs, err := g.finishOpen(ctx, customerID)
	n := 0
	for _, r := range rs {
		if r.completed {
			n++
		}
	}
	return n, err
}

// journalError is a failure of the Journal itself: the purchase is refused.
type journalError struct{ err error }

func (e *journalError) Error() string { return "autobuy: purchase journal: " + e.err.Error() }
func (e *journalError) Unwrap() error { return e.err }

// reviewError: an intent of the customer waits for a person.
type reviewError struct{ orderID, note string }

func (e *reviewError) Error() string {
	return "autobuy: purchase " + e.orderID + " of this customer awaits review: " + e.note
}

// unfinishedError is a purchase step whose outcome is unknown.
type unfinishedError struct {
	orderID string
	err     error
}

func (e *unfinishedError) Error() string {
	return fmt.Sprintf("autobuy: purchase %s unfinished (resumed by the next gate with the same keys): %v", e.orderID, e.err)
}
func (e *unfinishedError) Unwrap() error { return e.err }

func customerOf(id string) quotastack.Customer { return quotastack.CustomerID(id) }

// ref names the intent's customer in both forms.
func (in *Intent) ref() CustomerRef {
	if in.ExternalCustomerID != "" {
		return CustomerRef{Given: quotastack.ExternalID(in.ExternalCustomerID), ID: in.CustomerID}
	}
	return CustomerRef{Given: customerOf(in.CustomerID), ID: in.CustomerID}
}
