package plan

import (
	"errors"
	"fmt"

	"github.com/quotastack/quotastack-go"
)

// Stage names the step of a purchase an error happened in.
type Stage string

// The steps of a purchase.
const (
	StageDebit Stage = "debit"
	StageGrant Stage = "grant"
)

// Outcome is what a failed purchase step leaves behind.
type Outcome int

const (
	// OutcomeUnknown: the debit may have landed. Retry with the same order
	// id (it never debits twice within the server's 24 h key window); never
	// start a new order for the same purchase.
	OutcomeUnknown Outcome = iota
	// OutcomeFailed: the order failed for good and nothing was debited; a
	// new order id is safe.
	OutcomeFailed
)

// String returns "unknown" or "failed".
func (o Outcome) String() string {
	if o == OutcomeFailed {
		return "failed"
	}
	return "unknown"
}

var (
	// ErrNotBought: the purchase failed for good and nothing was debited; a
	// new order id is safe. ErrWalletShort and input errors also match it.
	ErrNotBought = errors.New("plan: not bought, nothing debited")
	// ErrUnknownOutcome: the debit may have landed (a lost answer, a timeout,
	// a cancelled context after the debit was sent, a 5xx, an unconfirmed
	// 202) or did land and the grant didn't (ErrHalfDone). Retry with the
	// same order id, never a new one.
	ErrUnknownOutcome = errors.New("plan: purchase outcome unknown; retry with the same order id")
	// ErrWalletShort: the wallet can't cover the plan's price; nothing was
	// debited or granted. Such errors also match ErrNotBought and
	// quotastack.ErrInsufficientCredits.
	ErrWalletShort = errors.New("plan: wallet can't cover the plan price")
	// ErrHalfDone: the wallet was debited but the plan was not granted yet.
	// Call Buy again with the same order id to finish it; it won't debit
	// again. Such errors also match ErrUnknownOutcome.
	ErrHalfDone = errors.New("plan: purchase half done (debited, not granted)")
	// ErrUnconfirmed: the server accepted the debit (202) but the wallet
	// didn't show it within the call; nothing was granted. Such errors also
	// match ErrUnknownOutcome.
	ErrUnconfirmed = errors.New("plan: debit accepted but not confirmed")
	// ErrGrantRefused: the wallet was debited and the server refused the
	// grant for good under its key (a stored 4xx, or a key holding another
	// request while the order's block is not listed). Retrying can't grant
	// it: a person grants the plan by hand or refunds the debit. Such errors
	// also match ErrHalfDone and ErrUnknownOutcome.
	ErrGrantRefused = errors.New("plan: grant refused under its key")
)

// Error is a purchase that did not complete. OrderID is what a later Buy
// needs to finish it; Stage says where it stopped and Outcome whether the
// debit may have landed (errors.Is with ErrUnknownOutcome or ErrNotBought).
type Error struct {
	OrderID  string
	PlanType string
	Customer quotastack.Customer
	Stage    Stage
	Outcome  Outcome
	// Debit is the recorded debit when Stage is StageGrant.
	Debit *quotastack.UsageEvent
	Err   error
}

func (e *Error) Error() string {
	switch {
	case e.Stage == StageGrant:
		return fmt.Sprintf("plan %s order %s: wallet debited but plan not granted; call Buy again with order id %q to finish (it will not debit again): %v",
			e.PlanType, e.OrderID, e.OrderID, e.Err)
	case e.Outcome == OutcomeFailed:
		return fmt.Sprintf("plan %s order %s: not bought, nothing debited (a new order id is safe): %v", e.PlanType, e.OrderID, e.Err)
	}
	return fmt.Sprintf("plan %s order %s: debit outcome unknown; retry with the same order id %q, never a new one (safe for 24 h): %v",
		e.PlanType, e.OrderID, e.OrderID, e.Err)
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Is matches ErrHalfDone (stopped after a landed debit), ErrUnknownOutcome
// and ErrNotBought by the error's Stage and Outcome.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrHalfDone:
		return e.Stage == StageGrant
	case ErrUnknownOutcome:
		return e.Outcome == OutcomeUnknown
	case ErrNotBought:
		return e.Outcome == OutcomeFailed
	}
	return false
}
