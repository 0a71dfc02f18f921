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

// Stage names the step of a purchase an error happened in.
type Stage string

// The steps of a purchase.
const (
	StageDebit Stage = "debit"
	StageGrant Stage = "grant"
)

var (
	// ErrWalletShort: the wallet can't cover the plan's price; nothing was
	// debited or granted. Such errors also match quotastack.ErrInsufficientCredits.
	ErrWalletShort = errors.New("plan: wallet can't cover the plan price")
	// ErrHalfDone: the wallet was debited but the plan was not granted yet.
	// Call Buy again with the same order id to finish it; it won't debit again.
	ErrHalfDone = errors.New("plan: purchase half done (debited, not granted)")
)

// Error is a purchase that did not complete. OrderID is what a later Buy
// needs to finish it; Stage says where it stopped.
type Error struct {
	OrderID  string
	PlanType string
	Customer quotastack.Customer
	Stage    Stage
	// Debit is the recorded debit when Stage is StageGrant.
	Debit *quotastack.UsageEvent
	Err   error
}

func (e *Error) Error() string {
	if e.Stage == StageGrant {
		return fmt.Sprintf("plan %s order %s: wallet debited but plan not granted; call Buy again with order id %q to finish (it will not debit again): %v",
			e.PlanType, e.OrderID, e.OrderID, e.Err)
	}
	return fmt.Sprintf("plan %s order %s: debit failed (it may or may not have executed; Buy with order id %q again is safe for 24 h): %v",
		e.PlanType, e.OrderID, e.OrderID, e.Err)
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrHalfDone) true for a purchase stopped after its debit.
func (e *Error) Is(target error) bool { return target == ErrHalfDone && e.Stage == StageGrant }

// Purchase is a completed plan purchase.
type Purchase struct {
	OrderID   string
	Plan      Plan
	Customer  quotastack.Customer
	Trigger   Trigger
	Debit     *quotastack.UsageEvent
	Block     quotastack.Block // the granted plan credit block
	ExpiresAt time.Time        // when the plan credits expire
	DebitKey  string           // Idempotency-Key of the debit
	GrantKey  string           // Idempotency-Key of the grant
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

// DebitKey and GrantKey return the idempotency keys of an order's two steps.
func DebitKey(p Plan, orderID string) string { return "plan-debit:" + p.Type + ":" + orderID }

// GrantKey returns the idempotency key of an order's grant step.
func GrantKey(p Plan, orderID string) string { return "plan-grant:" + p.Type + ":" + orderID }

// Buy buys plan p for customer from its wallet: it debits p.PriceMC with key
// "plan-debit:{type}:{order}", then grants p.CreditsMC with key
// "plan-grant:{type}:{order}". Calling it again with the same orderID (within
// the server's 24 h idempotency window) finishes a half-done purchase without
// debiting again, and returns the same Purchase for a finished one.
//
// Every attempt of one order must use the same plan, trigger and metadata
// (they are part of the debit's body). A wallet that can't pay gives an error
// matching ErrWalletShort, with nothing granted. Other failures are *Error
// values carrying the order id.
func Buy(ctx context.Context, c *quotastack.Client, customer quotastack.Customer, p Plan, orderID string, opts ...Option) (*Purchase, error) {
	cfg := buyConfig{trigger: TriggerManual, now: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	if c == nil {
		return nil, errors.New("plan: nil client")
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", quotastack.ErrInvalidInput, err)
	}
	if customer.IsZero() {
		return nil, fmt.Errorf("%w: plan: empty customer", quotastack.ErrInvalidInput)
	}
	pur := &Purchase{OrderID: orderID, Plan: p, Customer: customer, Trigger: cfg.trigger,
		DebitKey: DebitKey(p, orderID), GrantKey: GrantKey(p, orderID)}
	if orderID == "" || idem.Check(pur.GrantKey) != nil {
		return nil, fmt.Errorf("%w: plan: order id must be non-empty printable ASCII without spaces (at most ~200 bytes)", quotastack.ErrInvalidInput)
	}
	fail := func(stage Stage, err error) error {
		return &Error{OrderID: orderID, PlanType: p.Type, Customer: customer, Stage: stage, Debit: pur.Debit, Err: err}
	}

	meta := p.metadata(cfg.metadata)
	meta["plan_type"], meta["order_id"], meta["trigger"] = p.Type, orderID, string(cfg.trigger)
	debit, err := c.Record(ctx, quotastack.UsageParams{
		Customer: customer, MetricKey: p.Metric(), Units: p.PriceMC, Metadata: meta,
	}, quotastack.WithIdempotencyKey(pur.DebitKey))
	if errors.Is(err, quotastack.ErrInsufficientCredits) {
		// Also a replayed 402: this order failed for good; use a new order id.
		return nil, fmt.Errorf("%w (order %s): %w", ErrWalletShort, orderID, err)
	}
	if errors.Is(err, quotastack.ErrIdempotencyConflict) {
		return nil, fail(StageDebit, fmt.Errorf("order %s was used before with another plan, trigger or metadata (pass the same ones to finish it): %w", orderID, err))
	}
	if err != nil {
		return nil, fail(StageDebit, err)
	}
	pur.Debit, pur.DebitReplayed = debit, debit.Meta.Replayed

	// The grant body must be byte-identical on every attempt of this order, or
	// the server would answer an idempotency conflict. So the expiry is derived
	// from the debit's created_at, which a replayed debit returns unchanged.
	start := debit.CreatedAt.UTC().Truncate(time.Second)
	now := cfg.now().UTC().Truncate(time.Second)
	if start.IsZero() {
		// A server that doesn't return created_at (e.g. a 202): best effort.
		start = now
	}
	if pur.DebitReplayed && now.After(start.Add(p.Duration/2)) {
		// Finishing late (more than half the plan would be gone before the
		// grant): start the plan now, so the customer gets what they paid for.
		// If an earlier late attempt did grant, the server answers a conflict
		// and the block is found below.
		start = now
	}
	if cfg.activation == Queued {
		if start, err = queuedStart(ctx, c, customer, p, orderID, debit, start); err != nil {
			return nil, fail(StageGrant, err)
		}
	}
	pur.ExpiresAt = start.Add(p.Duration)

	grantMeta := p.metadata(cfg.metadata)
	grantMeta["source"], grantMeta["plan_type"], grantMeta["order_id"], grantMeta["trigger"] = "plan_grant", p.Type, orderID, string(cfg.trigger)
	grant, err := c.Topup(ctx, quotastack.TopupParams{
		Customer: customer, Credits: p.CreditsMC, PricePaid: 0, Currency: "mc",
		Priority: p.BlockPriority(), ExpiresAt: &pur.ExpiresAt, Metadata: grantMeta,
	}, quotastack.WithIdempotencyKey(pur.GrantKey))
	if errors.Is(err, quotastack.ErrIdempotencyConflict) {
		// The grant key was used before with another body (e.g. a queued start
		// that moved): that earlier grant is this order's. Find its block.
		if blk, ok := findGrantedBlock(ctx, c, customer, orderID); ok {
			pur.Block, pur.ExpiresAt, pur.GrantReplayed = blk, *blk.ExpiresAt, true
			return pur, nil
		}
	}
	if err != nil {
		return nil, fail(StageGrant, err)
	}
	pur.Block, pur.GrantReplayed = grant.Block, grant.Meta.Replayed
	return pur, nil
}

// queuedStart returns when a queued plan starts: the latest expiry among the
// live blocks of the same plan that existed before this order's debit.
// Blocks created after the debit (including this order's own grant) are
// ignored, so a retry computes the same start.
func queuedStart(ctx context.Context, c *quotastack.Client, customer quotastack.Customer, p Plan, orderID string, debit *quotastack.UsageEvent, start time.Time) (time.Time, error) {
	bal, err := c.BalanceWithBlocks(ctx, customer)
	if err != nil {
		return time.Time{}, err
	}
	for _, b := range bal.PlanBlocks() {
		if b.Priority != p.BlockPriority() || b.Metadata.Get("order_id") == orderID {
			continue
		}
		if t := b.Metadata.Get("plan_type"); t != "" && t != p.Type {
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

func findGrantedBlock(ctx context.Context, c *quotastack.Client, customer quotastack.Customer, orderID string) (quotastack.Block, bool) {
	bal, err := c.BalanceWithBlocks(ctx, customer)
	if err != nil {
		return quotastack.Block{}, false
	}
	for _, b := range bal.Blocks {
		if b.Metadata.Get("order_id") == orderID && b.Metadata.Get("source") == "plan_grant" && b.ExpiresAt != nil {
			return b, true
		}
	}
	return quotastack.Block{}, false
}
