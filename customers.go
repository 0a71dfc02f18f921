package quotastack

import (
	"context"
	"net/http"
	"time"
)

// CustomerRecord is a QuotaStack customer.
type CustomerRecord struct {
	CustomerID         string    `json:"customer_id"`
	ExternalCustomerID string    `json:"external_customer_id"`
	DisplayName        string    `json:"display_name"`
	CreatedAt          time.Time `json:"created_at"`

	Meta ResponseMeta `json:"-"`
}

// Ref returns the Customer reference of r (by its QuotaStack id).
func (r *CustomerRecord) Ref() Customer { return CustomerID(r.CustomerID) }

// CreateCustomer creates a customer with the tenant's own externalID. An
// existing externalID gives ErrConflict. Retries are safe: the key defaults to
// "customer:{externalID}".
func (c *Client) CreateCustomer(ctx context.Context, externalID, displayName string, opts ...CallOption) (*CustomerRecord, error) {
	if err := ExternalID(externalID).validate(); err != nil {
		return nil, err
	}
	body := struct {
		ExternalID  string `json:"external_id"`
		DisplayName string `json:"display_name,omitempty"`
	}{externalID, displayName}
	opts = append([]CallOption{WithIdempotencyKey(DeriveKey("customer", externalID))}, opts...)
	var out CustomerRecord
	meta, err := c.do(ctx, http.MethodPost, "/v1/customers", "", body, &out, opts)
	if err != nil {
		return nil, err
	}
	out.Meta = *meta
	return &out, nil
}

// GetCustomer returns the customer by either id.
func (c *Client) GetCustomer(ctx context.Context, customer Customer, opts ...CallOption) (*CustomerRecord, error) {
	if err := customer.validate(); err != nil {
		return nil, err
	}
	var out CustomerRecord
	meta, err := c.do(ctx, http.MethodGet, customer.path(), "", nil, &out, opts)
	if err != nil {
		return nil, err
	}
	out.Meta = *meta
	return &out, nil
}
