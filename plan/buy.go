package plan

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/internal/idem"
)

// Trigger says why a plan was bought; it is sent as "trigger" metadata.
type Trigger string

// The triggers of a purchase.
const (
	TriggerManual  Trigger = "manual"
	TriggerAutoBuy Trigger = "auto_buy"
)

// Activation says when the new plan's credits start to count down.
type Activation int

const (
	// Immediate: the plan expires Duration after the debit.
	Immediate Activation = iota
	// Queued: the plan expires Duration after the latest active block of the
	// same plan (or after the debit, if there is none), so plans stack end to end.
	Queued
)

// Purchase is a completed plan purchase.
type Purchase struct {
	OrderID string
	Plan    Plan
	// Customer is the QuotaStack id (quotastack.CustomerID) the order was
	// sent for, whichever form the caller passed; ExternalCustomerID is the
	// customer's external id when known ("" otherwise).
	Customer           quotastack.Customer
	ExternalCustomerID string
	Trigger            Trigger
	Debit              *quotastack.UsageEvent
	Block              quotastack.Block // the granted plan credit block
	ExpiresAt          time.Time        // when the plan credits expire
	DebitKey           string           // Idempotency-Key of the debit
	GrantKey           string           // Idempotency-Key of the grant
	// DebitReplayed and GrantReplayed are true when that step had already
	// executed (an earlier attempt of the same order) and was not repeated.
	DebitReplayed, GrantReplayed bool
}

// Option configures Buy.
type Option func(*buyConfig)

type buyConfig struct {
	trigger    Trigger
	activation Activation
	metadata   map[string]string
	now        func() time.Time
	wallet     *WalletSnapshot
}

// WithClock sets the clock Buy compares the server's debit time with
// (default time.Now); tests on a fake server with a manual clock pass its Now.
func WithClock(now func() time.Time) Option { return func(c *buyConfig) { c.now = now } }

// WithTrigger sets the trigger metadata (default TriggerManual).
func WithTrigger(t Trigger) Option { return func(c *buyConfig) { c.trigger = t } }

// WithActivation sets when the plan starts (default Immediate).
func WithActivation(a Activation) Option { return func(c *buyConfig) { c.activation = a } }

// WithMetadata adds metadata to both steps (the purchase's own keys win).
func WithMetadata(m map[string]string) Option { return func(c *buyConfig) { c.metadata = m } }

// WithWalletBefore gives Buy the wallet as read before this order's first
// debit (SnapshotWallet), for a retry of the order: a debit the server
// answered 202 Accepted is confirmed against it. Without it Buy reads the
// wallet itself before the debit.
func WithWalletBefore(s WalletSnapshot) Option { return func(c *buyConfig) { c.wallet = &s } }

// Buy buys plan p for customer from its wallet: it debits p.PriceMC with key
// "plan-debit:{type}:{order}", then grants p.CreditsMC with key
// "plan-grant:{type}:{order}". Calling it again with the same orderID (within
// the server's 24 h idempotency window) finishes a half-done purchase without
// debiting again, and returns the same Purchase for a finished one.
//
// A failed Buy says one of two things (besides success): ErrNotBought, the
// order failed for good and nothing was debited (a new order id is safe;
// ErrWalletShort is one such case); or ErrUnknownOutcome, the debit may have
// landed: retry with the same order id, never a new one (ErrHalfDone is the
// case where the debit is known to have landed). A plan is granted only after
// a confirmed debit: a debit answered 200/201 names its event; one answered
// 202 Accepted is confirmed when the wallet blocks read before the debit
// (see WithWalletBefore) hold at least the price less (a topup's new block
// doesn't count). The order is sent for the customer's QuotaStack id, so
// retrying with the other id form finishes it.
//
// Every attempt of one order must use the same plan, trigger and metadata
// (they are part of the debit's body).
func Buy(ctx context.Context, c *quotastack.Client, customer quotastack.Customer, p Plan, orderID string, opts ...Option) (*Purchase, error) {
	cfg := buyConfig{trigger: TriggerManual, now: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	if c == nil {
		return nil, fmt.Errorf("%w: %w: plan: nil client", ErrNotBought, quotastack.ErrInvalidInput)
	}
	o := Order{ID: orderID, Plan: p, Customer: customer, Trigger: cfg.trigger, Activation: cfg.activation, Metadata: cfg.metadata}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	// The read before the debit names the customer's QuotaStack id: the
	// order is sent for it, so a retry with the other id form sends the same
	// bodies under the same keys.
	bal, err := c.BalanceWithBlocks(ctx, customer)
	if err != nil {
		return nil, o.fail(StageDebit, OutcomeFailed, nil, fmt.Errorf("reading the wallet before the debit: %w", err))
	}
	ext := bal.ExternalCustomerID
	if customer.IsExternal() {
		ext = customer.ID()
	}
	switch {
	case bal.CustomerID != "":
		o.Customer = quotastack.CustomerID(bal.CustomerID)
	case customer.IsExternal():
		rec, err := c.GetCustomer(ctx, customer)
		if err != nil {
			return nil, o.fail(StageDebit, OutcomeFailed, nil, fmt.Errorf("resolving the customer id: %w", err))
		}
		if rec.CustomerID == "" {
			return nil, o.fail(StageDebit, OutcomeFailed, nil, fmt.Errorf("%w: the server named no customer_id for %s", quotastack.ErrUnexpectedResponse, customer))
		}
		o.Customer = quotastack.CustomerID(rec.CustomerID)
	}
	if cfg.wallet == nil {
		w := SnapshotWallet(bal)
		cfg.wallet = &w
	}
	// The same machine as the autobuy gate's, with nothing stored between
	// calls: a retry with the same order id resumes it from the server's
	// idempotency keys.
	r := Record{Order: o, State: StatePending, Wallet: *cfg.wallet, CreatedAt: cfg.now()}
	res, err := Machine{Client: c, Now: cfg.now}.Run(ctx, &r)
	switch {
	case err != nil:
		return nil, err
	case res.Failed != nil:
		return nil, res.Failed
	case res.Review != "":
		return nil, o.fail(StageGrant, OutcomeUnknown, nil, fmt.Errorf("%w: %s", ErrGrantRefused, res.Review))
	}
	res.Purchase.ExternalCustomerID = ext
	return res.Purchase, nil
}

// Order is one purchase of one plan for one customer: everything its two
// requests send. Buy runs it in one call; a caller that records each step
// before the next (the autobuy purchase journal does) runs it with a Machine
// whose Save stores the Record.
type Order struct {
	ID         string
	Plan       Plan
	Customer   quotastack.Customer
	Trigger    Trigger
	Activation Activation
	Metadata   map[string]string // extra metadata on both steps; the order's own keys win
}

// Validate reports why o can't be sent, before any request; such errors
// match ErrNotBought and quotastack.ErrInvalidInput.
func (o Order) Validate() error {
	if err := o.Plan.Validate(); err != nil {
		return fmt.Errorf("%w: %w: %w", ErrNotBought, quotastack.ErrInvalidInput, err)
	}
	if o.Customer.IsZero() {
		return fmt.Errorf("%w: %w: plan: empty customer", ErrNotBought, quotastack.ErrInvalidInput)
	}
	if o.ID == "" || idem.Check(o.ID) != nil || idem.Check(GrantKey(o.Plan, o.ID)) != nil {
		return fmt.Errorf("%w: %w: plan: order id must be non-empty printable ASCII without spaces (at most ~200 bytes)", ErrNotBought, quotastack.ErrInvalidInput)
	}
	return nil
}

// DebitKey and GrantKey return the idempotency keys of an order's two steps:
// "plan-debit:{type}:{order}" and "plan-grant:{type}:{order}", with the type
// and id escaped so that two different orders never share a key.
func DebitKey(p Plan, orderID string) string { return idem.Join("plan-debit", p.Type, orderID) }

// GrantKey returns the idempotency key of an order's grant step.
func GrantKey(p Plan, orderID string) string { return idem.Join("plan-grant", p.Type, orderID) }

func (o Order) purchase() *Purchase {
	return &Purchase{OrderID: o.ID, Plan: o.Plan, Customer: o.Customer, Trigger: o.Trigger,
		DebitKey: DebitKey(o.Plan, o.ID), GrantKey: GrantKey(o.Plan, o.ID)}
}

func (o Order) meta(extra ...string) map[string]string {
	m := o.Plan.metadata(o.Metadata)
	m["plan_type"], m["order_id"], m["trigger"] = o.Plan.Type, o.ID, string(o.Trigger)
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return m
}

// debit sends the order's wallet debit (idempotent under DebitKey). The
// answer may be unconfirmed (202 Accepted): check UsageEvent.Confirmed and
// call confirm before granting. Errors are *Error values matching
// ErrNotBought (nothing was debited: a wallet short of the price, or a
// request the server refused) or ErrUnknownOutcome (retry the same order).
func (o Order) debit(ctx context.Context, c *quotastack.Client) (*quotastack.UsageEvent, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	debit, err := c.Record(ctx, quotastack.UsageParams{
		Customer: o.Customer, MetricKey: o.Plan.Metric(), Units: o.Plan.PriceMC, Metadata: o.meta(),
	}, quotastack.WithIdempotencyKey(DebitKey(o.Plan, o.ID)))
	switch {
	case err == nil:
		return debit, nil
	case errors.Is(err, quotastack.ErrInsufficientCredits):
		// Also a replayed 402: this order failed for good; use a new order id.
		return nil, o.fail(StageDebit, OutcomeFailed, nil, fmt.Errorf("%w: %w", ErrWalletShort, err))
	case errors.Is(err, quotastack.ErrIdempotencyConflict):
		return nil, o.fail(StageDebit, OutcomeUnknown, nil, fmt.Errorf("order %s was used before with another plan, trigger or metadata (its debit may have landed: finish it with the same ones): %w", o.ID, err))
	}
	return nil, o.fail(StageDebit, debitOutcome(err), nil, err)
}

// debitOutcome tells whether a failed debit request may have executed.
func debitOutcome(err error) Outcome {
	var apiErr *quotastack.APIError
	if errors.Is(err, quotastack.ErrInvalidInput) {
		return OutcomeFailed // refused before sending
	}
	if !errors.As(err, &apiErr) || apiErr.StatusCode < 400 || apiErr.StatusCode >= 500 || errors.Is(err, quotastack.ErrUnexpectedResponse) {
		return OutcomeUnknown // no answer, a 5xx, or an answer we couldn't read
	}
	switch apiErr.StatusCode {
	case 401, 403, 429:
		// Answered before the idempotency store is consulted: an earlier
		// attempt of this order (this call's, or an earlier call's that lost
		// its answer) may have executed.
		return OutcomeUnknown
	}
	// Any other 4xx is what the server stored under the key: nothing executed.
	return OutcomeFailed
}

// WalletSnapshot is the customer's wallet as read before an order's first
// debit: the ids of its blocks and what they held, in millicredits. A debit
// answered 202 is confirmed against these blocks only, so a topup in the
// meantime (a new block) can't hide the debit.
type WalletSnapshot struct {
	BlockIDs    []string
	RemainingMC int64
}

// SnapshotWallet returns the wallet part of bal (read with BalanceWithBlocks).
func SnapshotWallet(bal *quotastack.Credits) WalletSnapshot {
	var s WalletSnapshot
	for _, b := range bal.WalletBlocks() {
		s.BlockIDs = append(s.BlockIDs, b.ID)
		s.RemainingMC += b.RemainingAmount
	}
	return s
}

// heldBy returns what the snapshot's blocks hold in bal (a spent block is not
// listed: it holds 0). ok is false when the snapshot names no blocks or a
// block without an id: then the whole wallet is compared.
func (s WalletSnapshot) heldBy(bal *quotastack.Credits) (mc int64, ok bool) {
	if len(s.BlockIDs) == 0 {
		return bal.WalletMC(), false
	}
	ids := make(map[string]bool, len(s.BlockIDs))
	for _, id := range s.BlockIDs {
		if id == "" {
			return bal.WalletMC(), false
		}
		ids[id] = true
	}
	for _, b := range bal.WalletBlocks() {
		if ids[b.ID] {
			mc += b.RemainingAmount
		}
	}
	return mc, true
}

// confirm confirms a debit the server only accepted (202): it reads the
// wallet until the blocks of before (the wallet read before the debit was
// first sent) hold at least the price less than they did, a few times within
// ctx. Blocks created since (a topup) don't count. An unconfirmed debit is an
// *Error matching ErrUnknownOutcome: nothing is granted on it.
func (o Order) confirm(ctx context.Context, c *quotastack.Client, before WalletSnapshot) error {
	var last int64
	for i, wait := range []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond, time.Second, 2 * time.Second} {
		if i > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return o.fail(StageDebit, OutcomeUnknown, nil, fmt.Errorf("%w: %w", ErrUnconfirmed, ctx.Err()))
			case <-t.C:
			}
		}
		bal, err := c.BalanceWithBlocks(ctx, o.Customer)
		if err != nil {
			return o.fail(StageDebit, OutcomeUnknown, nil, fmt.Errorf("%w: %w", ErrUnconfirmed, err))
		}
		if last, _ = before.heldBy(bal); last <= before.RemainingMC-o.Plan.PriceMC {
			return nil
		}
	}
	return o.fail(StageDebit, OutcomeUnknown, nil, fmt.Errorf("%w: the wallet blocks read before the debit hold %d mc, held %d mc before a %d mc debit",
		ErrUnconfirmed, last, before.RemainingMC, o.Plan.PriceMC))
}

// start returns when the plan starts for an immediate activation: the debit's
// created_at, which a replayed debit returns unchanged, so every attempt
// sends the same grant body. A debit without created_at, or a replayed one
// finished more than half a plan late, starts at now (the customer gets what
// they paid for; an earlier late grant is then found by FindGrant).
func (o Order) start(debit *quotastack.UsageEvent, now time.Time) time.Time {
	start := debit.CreatedAt.UTC().Truncate(time.Second)
	now = now.UTC().Truncate(time.Second)
	if start.IsZero() || debit.Meta.Replayed && now.After(start.Add(o.Plan.Duration/2)) {
		return now
	}
	return start
}

// queuedStart returns when a queued plan starts: the latest expiry among the
// live blocks of the same plan that existed before this order's debit, or
// start if none ends later. Blocks created after the debit (including this
// order's own grant) are ignored, so a retry computes the same start.
func (o Order) queuedStart(ctx context.Context, c *quotastack.Client, debit *quotastack.UsageEvent, start time.Time) (time.Time, error) {
	bal, err := c.BalanceWithBlocks(ctx, o.Customer)
	if err != nil {
		return time.Time{}, err
	}
	for _, b := range bal.PlanBlocks() {
		if b.Priority != o.Plan.BlockPriority() || b.Metadata.Get("order_id") == o.ID {
			continue
		}
		if t := b.Metadata.Get("plan_type"); t != "" && t != o.Plan.Type {
			continue
		}
		if !debit.CreatedAt.IsZero() && b.CreatedAt.After(debit.CreatedAt) {
			continue
		}
		if exp := b.ExpiresAt.UTC().Truncate(time.Second); exp.After(start) {
			start = exp
		}
	}
	return start, nil
}

// grant grants the plan's credits expiring at expiresAt (idempotent under
// GrantKey: every attempt of one order must send the same expiresAt). It
// decides from what the server stored under the key: a 201 (or its replay)
// is the grant; a stored 4xx refusal is ErrGrantRefused; a 409 (the key holds
// another body) is the grant only if the order's block is listed, and
// ErrGrantRefused otherwise (the stored answer can't be read: a person looks
// at the ledger). Other errors are *Error values matching ErrHalfDone and
// ErrUnknownOutcome.
func (o Order) grant(ctx context.Context, c *quotastack.Client, debit *quotastack.UsageEvent, expiresAt time.Time) (blk quotastack.Block, replayed bool, err error) {
	grant, err := c.Topup(ctx, quotastack.TopupParams{
		Customer: o.Customer, Credits: o.Plan.CreditsMC, PricePaid: 0, Currency: "mc",
		Priority: o.Plan.BlockPriority(), ExpiresAt: &expiresAt, Metadata: o.meta("source", "plan_grant"),
	}, quotastack.WithIdempotencyKey(GrantKey(o.Plan, o.ID)))
	if errors.Is(err, quotastack.ErrIdempotencyConflict) {
		// The key holds another request (another expiry, another id form).
		// Only a listed block proves that it was a grant: its stored answer
		// may as well be a refusal.
		b, ok, ferr := o.FindGrant(ctx, c)
		switch {
		case ferr != nil:
			return quotastack.Block{}, false, o.fail(StageGrant, OutcomeUnknown, debit, ferr)
		case ok:
			return b, true, nil
		}
		return quotastack.Block{}, false, o.fail(StageGrant, OutcomeUnknown, debit,
			fmt.Errorf("%w: the grant key holds another request and no block of order %s is listed: %w", ErrGrantRefused, o.ID, err))
	}
	if err != nil {
		if storedRefusal(err) {
			return quotastack.Block{}, false, o.fail(StageGrant, OutcomeUnknown, debit, fmt.Errorf("%w: %w", ErrGrantRefused, err))
		}
		return quotastack.Block{}, false, o.fail(StageGrant, OutcomeUnknown, debit, err)
	}
	if grant.Block.ExpiresAt == nil {
		grant.Block.ExpiresAt = &expiresAt
	}
	return grant.Block, grant.Meta.Replayed, nil
}

// storedRefusal reports whether err is a 4xx the server keeps under the key
// (so every retry of the same request gets it again): not 401, 403 or 429,
// answered before the idempotency store, and not an unreadable answer.
func storedRefusal(err error) bool {
	var apiErr *quotastack.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode < 400 || apiErr.StatusCode >= 500 || errors.Is(err, quotastack.ErrUnexpectedResponse) {
		return false
	}
	switch apiErr.StatusCode {
	case 401, 403, 408, 429:
		return false
	}
	return true
}

// FindGrant looks for this order's plan block among the customer's live
// blocks (metadata source=plan_grant, order_id and plan_type). Spent and
// expired blocks are not listed by the server, so not finding it doesn't
// prove it was never granted.
func (o Order) FindGrant(ctx context.Context, c *quotastack.Client) (quotastack.Block, bool, error) {
	bal, err := c.BalanceWithBlocks(ctx, o.Customer)
	if err != nil {
		return quotastack.Block{}, false, err
	}
	b, ok := o.GrantIn(bal)
	return b, ok, nil
}

// GrantIn returns this order's plan block from bal, if it is listed.
func (o Order) GrantIn(bal *quotastack.Credits) (quotastack.Block, bool) {
	for _, b := range bal.Blocks {
		if b.Metadata.Get("order_id") == o.ID && b.Metadata.Get("source") == "plan_grant" &&
			b.Metadata.Get("plan_type") == o.Plan.Type && b.ExpiresAt != nil {
			return b, true
		}
	}
	return quotastack.Block{}, false
}

func (o Order) fail(stage Stage, outcome Outcome, debit *quotastack.UsageEvent, err error) error {
	return &Error{OrderID: o.ID, PlanType: o.Plan.Type, Customer: o.Customer, Stage: stage, Outcome: outcome, Debit: debit, Err: err}
}

// NewOrder returns the Order that Buy would send for these arguments
// (trigger, activation and metadata from opts), for callers that run and
// record its steps themselves.
func NewOrder(orderID string, p Plan, customer quotastack.Customer, opts ...Option) Order {
	cfg := buyConfig{trigger: TriggerManual}
	for _, o := range opts {
		o(&cfg)
	}
	return Order{ID: orderID, Plan: p, Customer: customer, Trigger: cfg.trigger, Activation: cfg.activation, Metadata: cfg.metadata}
}
