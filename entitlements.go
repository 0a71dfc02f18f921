package quotastack

import (
	"context"
	"net/http"
	"strconv"
)

// Entitlement is the answer to "may this customer do this?". Amounts are in
// millicredits. It reserves and debits nothing, so it can be stale a moment later.
type Entitlement struct {
	Allowed            bool   `json:"allowed"`
	CustomerID         string `json:"customer_id"`
	ExternalCustomerID string `json:"external_customer_id"`
	BillableMetricKey  string `json:"billable_metric_key"`
	Units              int64  `json:"units"`
	Balance            int64  `json:"balance"`
	ReservedBalance    int64  `json:"reserved_balance"`
	EffectiveBalance   int64  `json:"effective_balance"`
	EstimatedCost      int64  `json:"estimated_cost"`
	// BalanceAfter is the eligible effective balance minus the cost; negative
	// when the blocks this metric may use can't pay, even if Balance is positive.
	BalanceAfter       int64  `json:"balance_after"`
	SubscriptionStatus string `json:"subscription_status,omitempty"` // may be absent
	OveragePolicy      string `json:"overage_policy"`                // "block", "allow" or "notify"

	Meta ResponseMeta `json:"-"`
}

// Check asks whether customer may use units (> 0) of the billable metric.
// A refusal is Allowed == false, not an error; errors mean QuotaStack could not answer.
func (c *Client) Check(ctx context.Context, customer Customer, metricKey string, units int64, opts ...CallOption) (*Entitlement, error) {
	if err := customer.validate(); err != nil {
		return nil, err
	}
	if err := validateMetric(metricKey); err != nil {
		return nil, err
	}
	if units <= 0 {
		return nil, inputErr("units", "must be > 0")
	}
	var out Entitlement
	q := "units=" + strconv.FormatInt(units, 10)
	meta, err := c.do(ctx, http.MethodGet, customer.path()+"/entitlements/"+escapeSegment(metricKey), q, nil, &out, opts)
	if err != nil {
		return nil, err
	}
	out.Meta = *meta
	return &out, nil
}

func validateMetric(key string) error {
	if key == "" {
		return inputErr("billable metric key", "empty")
	}
	if len(key) > 255 {
		return inputErr("billable metric key", "longer than 255 bytes")
	}
	return nil
}
