package autobuy

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestDenialStatusForEveryReason covers the reasons the gate may not produce
// in a given scenario too (limits, suspensions, purchase failures).
func TestDenialStatusForEveryReason(t *testing.T) {
	t.Parallel()
	tests := []struct {
		reason     Reason
		status     int
		show       string
		retryAfter time.Duration
	}{
		{ReasonEmptyWallet, http.StatusPaymentRequired, "paywall", 0},
		{ReasonPurchaseLimit, http.StatusPaymentRequired, "paywall", 0},
		{ReasonNoAccount, http.StatusPaymentRequired, "paywall", 0},
		{ReasonPlanExpired, http.StatusPaymentRequired, "plan_picker", 0},
		{ReasonAutoBuySuspended, http.StatusPaymentRequired, "plan_picker", 0},
		{ReasonActionTooLarge, http.StatusPaymentRequired, "plan_picker", 0},
		{ReasonInsufficientCredits, http.StatusTooManyRequests, "retry", time.Second},
		{ReasonPurchaseUnavailable, http.StatusTooManyRequests, "retry", time.Second},
		{ReasonUnavailable, http.StatusServiceUnavailable, "retry", 0},
		{ReasonEntitlementFailedAfterPurchase, http.StatusInternalServerError, "error", 0},
		{ReasonPurchaseInReview, http.StatusConflict, "purchase_review", 0},
		{Reason("some_final_reason_of_the_future"), http.StatusPaymentRequired, "paywall", 0},
	}
	for _, tt := range tests {
		ref := denialRefusal(Decision{Reason: tt.reason})
		assert.Equal(t, tt.status, ref.Status, tt.reason)
		assert.Equal(t, tt.show, ref.Body.Show, tt.reason)
		assert.Equal(t, tt.reason, ref.Body.Reason)
		assert.Equal(t, tt.retryAfter, ref.RetryAfter, tt.reason)
		assert.False(t, ref.Body.Allowed)
	}
}
