package quotastack

import (
	"context"
	"errors"
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

// CreateCustomer creates a customer with the tenant's own externalID, under
// the Idempotency-Key "customer:{externalID}" (unless opts give another).
// The server keeps that key's first answer for 24 hours, so a repeat within
// 24 h replays it: the same displayName gets the customer again
// (Meta.Replayed), another displayName gets ErrIdempotencyConflict, and a
// stored failure comes back as it was. Later, an existing externalID gives
// ErrConflict. To get the customer whether or not it exists, use
// EnsureCustomer.
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

// EnsureCustomer returns the customer with externalID, creating it (with
// displayName) if QuotaStack doesn't know it. It is safe to repeat and to run
// concurrently: a customer that exists already, or that another call created
// meanwhile, is returned as it is (its display name unchanged), whatever
// CreateCustomer's key replays. Costs one GET, plus a create when it is new.
func (c *Client) EnsureCustomer(ctx context.Context, externalID, displayName string, opts ...CallOption) (*CustomerRecord, error) {
	if err := ExternalID(externalID).validate(); err != nil {
		return nil, err
	}
	rec, err := c.GetCustomer(ctx, ExternalID(externalID), opts...)
	if !errors.Is(err, ErrNotFound) {
		return rec, err
	}
	rec, err = c.CreateCustomer(ctx, externalID, displayName, opts...)
	if errors.Is(err, ErrConflict) || errors.Is(err, ErrIdempotencyConflict) {
		// Created meanwhile, or the key holds an earlier create with another
		// name: either way the customer exists now.
		return c.GetCustomer(ctx, ExternalID(externalID), opts...)
	}
	return rec, err
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
