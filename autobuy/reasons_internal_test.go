package autobuy

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Every reason follows the table's rule: the Paywall hook fires exactly for
// the 402 denials (the ones the customer lifts by paying or choosing a plan),
// those and the 409/500 ones are final, the 429/503 ones are not; the
// middleware's refusal is the table's row.
func TestOneTableOfReasons(t *testing.T) {
	t.Parallel()
	allowed := map[Reason]bool{ReasonEntitled: true, ReasonAutoBought: true}
	for r, row := range reasonTable {
		t.Run(string(r), func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, row.final, r.Final())
			assert.Equal(t, row.show, r.Show())
			assert.Equal(t, row.status, r.HTTPStatus())
			if allowed[r] {
				assert.Zero(t, row.status)
				assert.False(t, row.paywall)
				return
			}
			assert.Equal(t, row.status == http.StatusPaymentRequired, row.paywall, "Paywall fires iff the answer is 402")
			switch row.status {
			case http.StatusTooManyRequests, http.StatusServiceUnavailable:
				assert.False(t, row.final)
				assert.Equal(t, "retry", row.show)
			case http.StatusPaymentRequired:
				assert.True(t, row.final)
				assert.Contains(t, []string{"paywall", "plan_picker"}, row.show)
			default:
				assert.True(t, row.final)
			}
			ref := denialRefusal(Decision{Reason: r})
			assert.Equal(t, row.status, ref.Status)
			assert.Equal(t, row.show, ref.Body.Show)
			assert.Equal(t, row.retryAfter, ref.RetryAfter)
		})
	}
	unknown := Reason("banned_by_wrapper")
	assert.True(t, unknown.Final())
	assert.Equal(t, http.StatusPaymentRequired, denialRefusal(Decision{Reason: unknown}).Status)
}

// Every Reason constant has a row (a new reason must be classified).
func TestEveryReasonHasARow(t *testing.T) {
	t.Parallel()
	for _, r := range []Reason{
		ReasonEntitled, ReasonAutoBought, ReasonPlanExpired, ReasonEmptyWallet,
		ReasonEntitlementFailedAfterPurchase, ReasonInsufficientCredits, ReasonActionTooLarge,
		ReasonNoAccount, ReasonPurchaseLimit, ReasonAutoBuySuspended, ReasonPurchaseUnavailable,
		ReasonPurchaseInReview, ReasonUnavailable,
	} {
		_, ok := reasonTable[r]
		assert.True(t, ok, r)
	}
	assert.Len(t, reasonTable, 13)
}
