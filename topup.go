package quotastack

import (
	"context"
	"net/http"
	"time"
)

// TopupParams is a grant of credits, e.g. after a payment or for a plan.
type TopupParams struct {
	Customer          Customer // an unknown ExternalID creates the customer
	Credits           int64    // millicredits to grant, > 0
	PricePaid         int64    // smallest currency unit, for audit only
	Currency          string   // ISO 4217, or "mc"
	PackageID         string
	ExternalPaymentID string
	Priority          int // 0 = wallet; plans use PlanPriority
	// ExpiresAt is when the block expires; nil = never. Like every body
	// field it must be the same on a retry under the same key: compute it
	// from a stored time (the payment's), not time.Now(), or the retry gets
	// ErrIdempotencyConflict.
	ExpiresAt *time.Time
	Metadata  map[string]string
}

type topupBody struct {
	customerFields
	Credits           int64             `json:"credits"`
	PricePaid         int64             `json:"price_paid"`
	Currency          string            `json:"currency,omitempty"`
	PackageID         string            `json:"package_id,omitempty"`
	ExternalPaymentID string            `json:"external_payment_id,omitempty"`
	Priority          int               `json:"priority"`
	ExpiresAt         *time.Time        `json:"expires_at,omitempty"`
	Metadata          map[string]string `json:"metadata,omitempty"`
}

// Grant is the answer to a topup or credit grant: the new block and the
// balances after it, in millicredits.
type Grant struct {
	CustomerID         string `json:"customer_id"`
	ExternalCustomerID string `json:"external_customer_id"`
	Block              Block  `json:"block"`
	Balance            int64  `json:"balance"`
	EffectiveBalance   int64  `json:"effective_balance"`

	Meta ResponseMeta `json:"-"`
}

// Topup grants credits as a new block. Pass a deterministic
// WithIdempotencyKey (e.g. "topup:"+paymentID) so a payment is credited once
// however often it is retried within the key's 24 hours (the server keeps the
// key's first answer, a failure too, for that long).
func (c *Client) Topup(ctx context.Context, p TopupParams, opts ...CallOption) (*Grant, error) {
	if err := p.Customer.validate(); err != nil {
		return nil, err
	}
	switch {
	case p.Credits <= 0:
		return nil, inputErr("credits", "must be > 0")
	case p.PricePaid < 0:
		return nil, inputErr("price paid", "must be >= 0")
	case p.Priority < 0:
		return nil, inputErr("priority", "must be >= 0")
	}
	body := topupBody{
		customerFields: p.Customer.fields(), Credits: p.Credits, PricePaid: p.PricePaid, Currency: p.Currency,
		PackageID: p.PackageID, ExternalPaymentID: p.ExternalPaymentID, Priority: p.Priority, Metadata: p.Metadata,
	}
	if p.ExpiresAt != nil {
		t := p.ExpiresAt.UTC()
		body.ExpiresAt = &t
	}
	var out Grant
	meta, err := c.do(ctx, http.MethodPost, "/v1/topup/grant", "", body, &out, opts)
	if err != nil {
		return nil, err
	}
	out.Meta = *meta
	return &out, nil
}
