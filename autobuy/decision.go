package autobuy

import (
	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// Reason says why a gate allowed or denied an action.
type Reason string

// The reasons of a Decision.
const (
	// ReasonEntitled: allowed on the credits the customer already had.
	ReasonEntitled Reason = "entitled"
	// ReasonAutoBought: allowed after a plan was bought from the wallet for it
	// (by this gate, or by a concurrent gate it waited for).
	ReasonAutoBought Reason = "auto_bought"
	// ReasonPlanExpired: denied; the customer turned auto-buy off. Show the plan picker.
	ReasonPlanExpired Reason = "plan_expired"
	// ReasonEmptyWallet: denied; the wallet can't cover the plan. Show the paywall.
	ReasonEmptyWallet Reason = "empty_wallet"
	// ReasonEntitlementFailedAfterPurchase: denied; a plan was bought but the
	// check still fails (a misconfigured plan or rule). Never retried in a loop.
	ReasonEntitlementFailedAfterPurchase Reason = "entitlement_failed_after_purchase"
	// ReasonInsufficientCredits: denied; the plan bought for the exhaustion this
	// gate saw went to concurrent actions before this one. A new gate (the
	// user's retry) meets a new exhaustion and may buy again.
	ReasonInsufficientCredits Reason = "insufficient_credits"
	// ReasonUnavailable: QuotaStack could not be asked and the gate's fallback
	// policy decided (see Decision.Fallback and Decision.Err).
	ReasonUnavailable Reason = "unavailable"
)

// Decision is the answer of a gate: allowed or not, and why. Denials are
// decisions, not errors.
type Decision struct {
	Allowed bool
	Reason  Reason
	// Purchase is the plan bought (or finished) while gating, if any; it is
	// shared by all gates that waited for the same purchase.
	Purchase *plan.Purchase
	// Entitlement is the last entitlement check seen.
	Entitlement *quotastack.Entitlement
	// Usage is the usage event recorded for an allowed action; nil when denied,
	// when the fallback decided, or with reservations (see Hold).
	Usage *quotastack.UsageEvent
	// Hold is the reservation of an allowed action gated WithReservation; commit
	// or release it when the action ends.
	Hold *quotastack.Reservation
	// WalletMC is the wallet balance seen when a purchase was considered, in millicredits.
	WalletMC int64
	// Fallback is true when the decision came from the gate's outage policy;
	// Err is then the error that made QuotaStack unreachable.
	Fallback bool
	Err      error
}
