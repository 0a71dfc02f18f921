package autobuy

import (
	"net/http"
	"time"
)

// reasonRow is what a reason means to the code around the gate. This one
// table drives Reason.Final, Reason.Show, Reason.HTTPStatus, the Paywall hook
// and the middleware's refusals; the README's table of reasons is checked
// against it.
type reasonRow struct {
	final      bool          // retrying the same action soon can't change the answer
	show       string        // what a front end shows for a denial (Denial.Show)
	status     int           // the middleware's answer to a denial
	retryAfter time.Duration // the middleware's Retry-After (0: none, or the server's on 503)
	paywall    bool          // Hooks.Paywall fires: the customer can lift it by paying or choosing a plan
}

// The rule the table follows: a denial the customer can lift by paying or
// choosing a plan is final, answered 402 and fires Hooks.Paywall; a denial
// worth retrying soon is not final and answered 429 (503 when QuotaStack
// could not answer); a denial nobody but the tenant or support can lift is
// final and neither 402 nor Paywall.
var reasonTable = map[Reason]reasonRow{
	ReasonEntitled:   {final: true},
	ReasonAutoBought: {final: true},

	ReasonEmptyWallet:      {final: true, show: "paywall", status: http.StatusPaymentRequired, paywall: true},
	ReasonPurchaseLimit:    {final: true, show: "paywall", status: http.StatusPaymentRequired, paywall: true},
	ReasonNoAccount:        {final: true, show: "paywall", status: http.StatusPaymentRequired, paywall: true},
	ReasonPlanExpired:      {final: true, show: "plan_picker", status: http.StatusPaymentRequired, paywall: true},
	ReasonAutoBuySuspended: {final: true, show: "plan_picker", status: http.StatusPaymentRequired, paywall: true},
	ReasonActionTooLarge:   {final: true, show: "plan_picker", status: http.StatusPaymentRequired, paywall: true},

	ReasonInsufficientCredits: {show: "retry", status: http.StatusTooManyRequests, retryAfter: retrySoon},
	ReasonPurchaseUnavailable: {show: "retry", status: http.StatusTooManyRequests, retryAfter: retrySoon},
	ReasonUnavailable:         {show: "retry", status: http.StatusServiceUnavailable},

	ReasonEntitlementFailedAfterPurchase: {final: true, show: "error", status: http.StatusInternalServerError},
	// Not the customer's to fix, not an outage: support has the case.
	ReasonPurchaseInReview: {final: true, show: "purchase_review", status: http.StatusConflict},
}

// retrySoon is the Retry-After of denials worth retrying.
const retrySoon = time.Second

// unknownReason is the row of a reason this code doesn't know (a GateWith
// wrapper's own): a final denial the customer must act on, never one worth
// hammering. It fires no hook (the gate never denies with it).
var unknownReason = reasonRow{final: true, show: "paywall", status: http.StatusPaymentRequired}

func rowOf(r Reason) reasonRow {
	if row, ok := reasonTable[r]; ok {
		return row
	}
	return unknownReason
}

// Final reports whether retrying the same action soon can't change the answer
// without the customer or the tenant doing something (paying, opting in,
// fixing configuration). insufficient_credits, purchase_unavailable and
// unavailable are not final.
func (r Reason) Final() bool { return rowOf(r).final }

// Show is what a front end should show for a denial with this reason, as the
// middleware's Denial.Show: "paywall", "plan_picker", "retry",
// "purchase_review" or "error"; "" for the reasons of an allowed action.
func (r Reason) Show() string { return rowOf(r).show }

// HTTPStatus is the status the middleware answers a denial with this reason:
// 402 when the customer can lift it by paying or choosing a plan (these, and
// only these, fire Hooks.Paywall), 429 when it is worth retrying soon, 503
// when QuotaStack could not answer, 409 for purchase_in_review, 500 for
// entitlement_failed_after_purchase; 0 for the reasons of an allowed action.
func (r Reason) HTTPStatus() int { return rowOf(r).status }
