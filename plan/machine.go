package plan

import (
	"context"
	"errors"
	"time"

	"github.com/quotastack/quotastack-go"
)

// State is the step an order has reached in the purchase machine.
type State string

// The states of an order. pending → debited → done is the way of a
// purchase; failed and review end it otherwise.
const (
	// StatePending: recorded before the debit is first sent; whether the
	// debit landed is not known yet.
	StatePending State = "pending"
	// StateDebited: the debit is confirmed; the grant (with ExpiresAt) is owed.
	StateDebited State = "debited"
	// StateDone: the plan was granted.
	StateDone State = "done"
	// StateFailed: nothing was debited (a short wallet, a refused request).
	StateFailed State = "failed"
	// StateReview: the machine can't finish the order safely (a debit whose
	// outcome is unknowable past the server's 24 h key window, a grant the
	// server refused for good): a person decides from the ledger.
	StateReview State = "review"
)

// KeyWindow is how long after an order was recorded its idempotency keys
// are trusted to still be on the server: the docs' 24 h less an hour for
// clocks.
const KeyWindow = 23 * time.Hour

// Record is what the purchase machine keeps of one order between its steps.
// A caller that stores every version of it (Machine.Save) can finish the
// order from the last one after a crash, with the same keys.
type Record struct {
	Order Order
	State State
	// Wallet is the wallet read before the first debit: a debit answered 202
	// is confirmed against its blocks.
	Wallet         WalletSnapshot
	CreatedAt      time.Time // before the first debit: the key window starts no earlier
	DebitCreatedAt time.Time // the debit's created_at, when the server sent one
	ExpiresAt      time.Time // the plan's expiry, fixed once the debit is confirmed
	GrantSentAt    time.Time // set before the grant is first sent
	BlockID        string    // the granted block, once done
	Note           string    // what went wrong, for failed and review
}

// Machine runs the purchase state machine of one order, the same for Buy
// and for the autobuy gate:
//
//	pending → (debit, confirmed) → debited → (grant) → done
//	pending → (debit refused: wallet short, bad request) → failed
//	pending → (older than KeyWindow: outcome unknowable) → review
//	debited → (grant refused for good under its key) → review
//
// Every transition is saved (Save) before the next request.
type Machine struct {
	Client *quotastack.Client
	Now    func() time.Time
	// Save stores r after each transition, before the next request; an
	// error stops the machine (the order is resumed from the last saved
	// record). nil saves nothing (Buy).
	Save func(ctx context.Context, r *Record) error
	// SharedOrderID says the order id may have been sent by another process
	// before this Run (an id derived from the exhaustion, by replicas that
	// share no journal). A 202 debit whose first attempt is a replay was
	// then sent before Record.Wallet was read, which can't confirm it: the
	// server's acceptance is taken as the confirmation, since a debit must
	// never go without its plan (if the server later rejects that debit, the
	// plan was free).
	SharedOrderID bool
}

// Result is the outcome of one Run.
type Result struct {
	// Purchase is set when the order is done.
	Purchase *Purchase
	// Failed is the refusal of an order that failed for good (nothing debited).
	Failed error
	// Review says why the order was parked for a person (StateReview).
	Review string
	// Regranted: the plan was granted again past the key window (the first
	// grant's answer was lost and its block is not listed): the ledger may
	// show two grants of the order.
	Regranted bool
}

// ErrSave wraps an error of Machine.Save.
var ErrSave = errors.New("plan: saving the order's record")

type saveError struct{ err error }

func (e *saveError) Error() string   { return ErrSave.Error() + ": " + e.err.Error() }
func (e *saveError) Unwrap() []error { return []error{ErrSave, e.err} }

func (m Machine) save(ctx context.Context, r *Record) error {
	if m.Save == nil {
		return nil
	}
	if err := m.Save(ctx, r); err != nil {
		return &saveError{err}
	}
	return nil
}

// Run advances r from the state it is in until the order is done, failed
// or in review, or a step's outcome is unknown (an *Error matching
// ErrUnknownOutcome: r stays where it was and a later Run resumes it with the
// same keys). An error of Save matches ErrSave; when the final save (done)
// fails, the Result still carries the Purchase (the plan is granted).
func (m Machine) Run(ctx context.Context, r *Record) (Result, error) {
	o := r.Order
	var debit *quotastack.UsageEvent
	if r.State == StatePending {
		if m.Now().Sub(r.CreatedAt) >= KeyWindow {
			return m.review(ctx, r, "the debit was sent (or about to be) more than 23 h ago and its outcome is unknown: "+
				"the server may have forgotten its key, so it is never sent again; check the ledger for order "+o.ID)
		}
		d, err := o.debit(ctx, m.Client)
		if errors.Is(err, ErrNotBought) {
			r.State, r.Note = StateFailed, err.Error()
			if serr := m.save(ctx, r); serr != nil {
				return Result{}, serr
			}
			return Result{Failed: err}, nil
		}
		if err != nil {
			return Result{}, err
		}
		sentBefore := m.SharedOrderID && d.Meta.Replayed && d.Meta.Attempts <= 1
		if !d.Confirmed() && !sentBefore {
			if err := o.confirm(ctx, m.Client, r.Wallet); err != nil {
				return Result{}, err
			}
		}
		start := o.start(d, m.Now())
		if o.Activation == Queued {
			if start, err = o.queuedStart(ctx, m.Client, d, start); err != nil {
				return Result{}, o.fail(StageGrant, OutcomeUnknown, d, err)
			}
		}
		r.State, r.DebitCreatedAt, r.ExpiresAt = StateDebited, d.CreatedAt, start.Add(o.Plan.Duration)
		if err := m.save(ctx, r); err != nil {
			return Result{}, err
		}
		debit = d
	}
	if r.State != StateDebited {
		return Result{}, nil
	}

	now := m.Now()
	regrant := false
	if debit == nil && (now.Sub(r.CreatedAt) >= KeyWindow || now.After(r.ExpiresAt.Add(-o.Plan.Duration/2))) {
		// Finishing a debited order late: the grant may have landed (its
		// answer lost), so look for it first. If it isn't listed, the plan
		// starts now: the customer gets what they paid for. A grant that was
		// sent past the key window may have landed and since been spent or
		// expired (not listed either): then the plan is granted twice, the
		// tenant's loss, and Result.Regranted says so.
		blk, found, err := o.FindGrant(ctx, m.Client)
		if err != nil {
			return Result{}, o.fail(StageGrant, OutcomeUnknown, nil, err)
		}
		if found {
			return m.complete(ctx, r, debit, blk, true, false)
		}
		regrant = !r.GrantSentAt.IsZero() && now.Sub(r.GrantSentAt) >= KeyWindow
		r.ExpiresAt = now.UTC().Truncate(time.Second).Add(o.Plan.Duration)
		if err := m.save(ctx, r); err != nil {
			return Result{}, err
		}
	}
	if r.GrantSentAt.IsZero() {
		r.GrantSentAt = now
		if err := m.save(ctx, r); err != nil {
			return Result{}, err
		}
	}
	blk, replayed, err := o.grant(ctx, m.Client, debit, r.ExpiresAt)
	if errors.Is(err, ErrGrantRefused) {
		// Debited, and the server refused the grant for good under its key:
		// no retry can grant it. A person grants by hand or refunds.
		return m.review(ctx, r, "the wallet was debited for order "+o.ID+" and the server refused its grant for good ("+
			err.Error()+"): grant the plan by hand (or refund the debit)")
	}
	if err != nil {
		return Result{}, err
	}
	return m.complete(ctx, r, debit, blk, replayed, regrant && !replayed)
}

func (m Machine) complete(ctx context.Context, r *Record, debit *quotastack.UsageEvent, blk quotastack.Block, replayed, regranted bool) (Result, error) {
	r.State, r.BlockID = StateDone, blk.ID
	if blk.ExpiresAt != nil {
		r.ExpiresAt = *blk.ExpiresAt
	}
	o := r.Order
	pur := o.purchase()
	pur.Debit, pur.Block, pur.ExpiresAt = debit, blk, r.ExpiresAt
	pur.DebitReplayed, pur.GrantReplayed = debit == nil || debit.Meta.Replayed, replayed
	res := Result{Purchase: pur, Regranted: regranted}
	return res, m.save(ctx, r)
}

func (m Machine) review(ctx context.Context, r *Record, why string) (Result, error) {
	r.State, r.Note = StateReview, why
	if err := m.save(ctx, r); err != nil {
		return Result{}, err
	}
	return Result{Review: why}, nil
}
