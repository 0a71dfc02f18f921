package autobuy

import (
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// Reason says why a gate allowed or denied an action. Final, Show and
// HTTPStatus say whether it is worth retrying, what to show and how the
// middleware answers it (one table, reasons.go, also in the README).
type Reason string

// The reasons of a Decision.
const (
	// ReasonEntitled: allowed on the credits the customer already had (or on a
	// plan another gate bought for the same exhaustion).
	ReasonEntitled Reason = "entitled"
	// ReasonAutoBought: allowed after this gate bought (or finished) a plan
	// from the wallet for it.
	ReasonAutoBought Reason = "auto_bought"
	// ReasonPlanExpired: denied; the plan credits ran out and the customer
	// turned auto-buy off (or no plan applies). Show the plan picker.
	ReasonPlanExpired Reason = "plan_expired"
	// ReasonEmptyWallet: denied; the wallet can't cover the plan. Show the paywall.
	ReasonEmptyWallet Reason = "empty_wallet"
	// ReasonEntitlementFailedAfterPurchase: denied; a plan was bought and its
	// credits are there, but the check still fails (a misconfigured plan or
	// rule). Auto-buy is suspended for this customer and metric.
	ReasonEntitlementFailedAfterPurchase Reason = "entitlement_failed_after_purchase"
	// ReasonInsufficientCredits: denied; the plan bought for the exhaustion
	// this gate saw went to concurrent actions first. The user's retry (a new
	// gate) meets a new exhaustion and may buy again.
	ReasonInsufficientCredits Reason = "insufficient_credits"
	// ReasonActionTooLarge: denied before buying; one plan can't cover this
	// action (its units cost more than the plan grants plus what is left).
	ReasonActionTooLarge Reason = "action_too_large"
	// ReasonNoAccount: denied; QuotaStack doesn't know the customer (404
	// customer-not-found). Create the account (a grant or topup does) first.
	ReasonNoAccount Reason = "no_account"
	// ReasonPurchaseLimit: denied; the customer reached the gate's auto-buy
	// limit for the period (Decision.Limit says which and when it resets).
	// Show the paywall.
	ReasonPurchaseLimit Reason = "purchase_limit"
	// ReasonAutoBuySuspended: denied; auto-buy is suspended for this customer
	// and metric after an entitlement_failed_after_purchase (Decision.Limit
	// says until when). Show the plan picker; fix the plan or rule.
	ReasonAutoBuySuspended Reason = "auto_buy_suspended"
	// ReasonPurchaseUnavailable: denied; a purchase was needed but could not be
	// attempted safely (the Locker, the Journal or the preference callback
	// failed, or an earlier purchase of this customer awaits confirmation).
	// Nothing was debited by this gate; worth retrying (Decision.Err says why).
	ReasonPurchaseUnavailable Reason = "purchase_unavailable"
	// ReasonPurchaseInReview: denied; an earlier purchase of this customer
	// can't be finished safely and waits for a person (Hooks.PurchaseNeedsReview,
	// Gatekeeper.ResolveReview). No auto-buy runs until then: it could charge
	// twice for one plan. Show a "we're checking your last purchase" message.
	ReasonPurchaseInReview Reason = "purchase_in_review"
	// ReasonUnavailable: QuotaStack could not answer (transport error,
	// timeout, 5xx, 429 after retries) and the gate's fallback policy decided
	// (see Decision.Fallback and Decision.Err).
	ReasonUnavailable Reason = "unavailable"
)

// Limit describes the limit behind a purchase_limit or auto_buy_suspended denial.
type Limit struct {
	Kind     string // "purchases_per_period" or "suspended"
	Max      int    // the limit's count (purchases per period), 0 for a suspension
	Period   time.Duration
	ResetsAt time.Time // when auto-buy is possible again (zero: until lifted)
}

// CustomerRef names a customer in both id forms.
type CustomerRef struct {
	// Given is the customer as the caller passed it to Gate (an external id
	// or the QuotaStack id); for a purchase finished outside a Gate call
	// (Resume) it is the external id the intent recorded, or the QuotaStack id.
	Given quotastack.Customer
	// ID is the QuotaStack id (UUID); "" when the check didn't answer.
	ID string
}

// ExternalID returns the customer's external id, or "" when the caller used
// the QuotaStack id.
func (c CustomerRef) ExternalID() string {
	if c.Given.IsExternal() {
		return c.Given.ID()
	}
	return ""
}

// Decision is the answer of a gate: allowed or not, and why. Denials are
// decisions, not errors.
type Decision struct {
	Allowed bool
	Reason  Reason
	// EventID is the event id the action was gated with (WithEventID), "" for none.
	EventID string
	// CustomerID is the QuotaStack id of the customer the gate resolved
	// (whichever id form the caller used); "" when the check didn't answer.
	// Customer is the customer as the caller passed it.
	CustomerID string
	Customer   quotastack.Customer
	// Purchase is the plan bought (or finished) while gating, if any.
	Purchase *plan.Purchase
	// Entitlement is the last entitlement check seen.
	Entitlement *quotastack.Entitlement
	// Usage is the usage event recorded for an allowed action; nil when denied,
	// when the fallback decided, when Replayed, or with reservations (see Hold).
	Usage *quotastack.UsageEvent
	// Hold is the reservation of an allowed action gated WithReservation; commit
	// or release it when the action ends.
	Hold *quotastack.Reservation
	// Leased is true when the action was let through on a lease (WithLease):
	// its units are committed with the lease's, not recorded one by one.
	Leased bool
	// Replayed is true when the event (WithEventID) was already charged and
	// this decision is the original one, answered from the ChargeLog with no
	// check, purchase or charge.
	Replayed bool
	// WalletMC is the wallet balance seen when a purchase was considered, in millicredits.
	WalletMC int64
	// Limit is set on purchase_limit and auto_buy_suspended denials.
	Limit *Limit
	// Fallback is true when the decision came from the gate's outage policy;
	// Err is then the error that made QuotaStack unreachable. Err is also set
	// on purchase_unavailable denials.
	Fallback bool
	Err      error

	leaseID string // the lease reservation a leased action was counted on
}

// Ref returns the decision's customer in both id forms.
func (d Decision) Ref() CustomerRef { return CustomerRef{Given: d.Customer, ID: d.CustomerID} }
