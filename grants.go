package quotastack

import (
	"context"
	"net/http"
	"time"

	"github.com/quotastack/quotastack-go/internal/idem"
)

// CreditGrantParams is a grant of promotional credits.
type CreditGrantParams struct {
	Credits  int64  // millicredits, > 0
	Source   string // e.g. "promotional"; "" lets the server choose
	Reason   string // free text for the ledger
	Priority int    // 0 = wallet-like
	// ExpiresAt is when the block expires; nil = never. It is part of the body
	// the Idempotency-Key is checked against: compute it from a time you store
	// (a signup time, an order's time), not time.Now(), or a retry of the
	// whole operation sends another body and gets ErrIdempotencyConflict.
	ExpiresAt *time.Time
	Metadata  map[string]string
}

// GrantCredits grants promotional credits to customer as a new block. Use a
// deterministic key (SignupGrantKey, ActionGrantKey) so a bonus is given once
// per key. The server keeps the key's first answer for 24 hours, failures
// included: a grant to a customer that doesn't exist yet answers 404, and a
// retry with the same key replays that 404 even after the customer is
// created. Create the customer first (EnsureCustomer), or use
// GrantSignupBonus.
func (c *Client) GrantCredits(ctx context.Context, customer Customer, p CreditGrantParams, opts ...CallOption) (*Grant, error) {
	if err := customer.validate(); err != nil {
		return nil, err
	}
	if p.Credits <= 0 {
		return nil, inputErr("credits", "must be > 0")
	}
	if p.Priority < 0 {
		return nil, inputErr("priority", "must be >= 0")
	}
	body := struct {
		Credits   int64             `json:"credits"`
		Source    string            `json:"source,omitempty"`
		Reason    string            `json:"reason,omitempty"`
		Priority  int               `json:"priority"`
		ExpiresAt *time.Time        `json:"expires_at,omitempty"`
		Metadata  map[string]string `json:"metadata,omitempty"`
	}{p.Credits, p.Source, p.Reason, p.Priority, nil, p.Metadata}
	if p.ExpiresAt != nil {
		t := p.ExpiresAt.UTC()
		body.ExpiresAt = &t
	}
	var out Grant
	meta, err := c.do(ctx, http.MethodPost, customer.path()+"/credits/grant", "", body, &out, opts)
	if err != nil {
		return nil, err
	}
	out.Meta = *meta
	return &out, nil
}

// SignupBonus is the one-time bonus GrantSignupBonus grants.
type SignupBonus struct {
	Credits int64 // millicredits, > 0
	// ValidFor, when > 0, makes the bonus expire ValidFor after the customer
	// was created in QuotaStack (a time the server stores, so every retry
	// sends the same body, unlike time.Now()). 0 = never expires.
	ValidFor    time.Duration
	DisplayName string // for the customer, if GrantSignupBonus creates it
	Source      string // "" = "promotional"
	Reason      string // free text for the ledger
	Metadata    map[string]string
}

// GrantSignupBonus gives the user with externalID their signup bonus: it
// makes sure the customer exists (EnsureCustomer), then grants under the key
// SignupGrantKey(customer's QuotaStack id), so repeats and retries within the
// key's 24 hours replay the first grant instead of granting again. After 24
// hours the key is forgotten: record that the bonus was given (or check the
// customer's blocks) before calling it again for an old user; and an old
// customer's bonus with a ValidFor is born expired (it counts from the
// customer's creation). opts apply to the grant only.
func (c *Client) GrantSignupBonus(ctx context.Context, externalID string, b SignupBonus, opts ...CallOption) (*Grant, error) {
	if err := ExternalID(externalID).validate(); err != nil {
		return nil, err
	}
	if b.Credits <= 0 {
		return nil, inputErr("credits", "must be > 0")
	}
	if b.ValidFor < 0 {
		return nil, inputErr("valid for", "must be >= 0")
	}
	rec, err := c.EnsureCustomer(ctx, externalID, b.DisplayName)
	if err != nil {
		return nil, err
	}
	p := CreditGrantParams{Credits: b.Credits, Source: b.Source, Reason: b.Reason, Metadata: b.Metadata}
	if p.Source == "" {
		p.Source = "promotional"
	}
	if b.ValidFor > 0 {
		exp := rec.CreatedAt.Add(b.ValidFor).UTC()
		p.ExpiresAt = &exp
	}
	opts = append([]CallOption{WithIdempotencyKey(SignupGrantKey(rec.CustomerID))}, opts...)
	return c.GrantCredits(ctx, CustomerID(rec.CustomerID), p, opts...)
}

// SignupGrantKey is the idempotency key of a user's one signup bonus:
// "signup-grant:{user}".
func SignupGrantKey(userID string) string { return DeriveKey("signup-grant", userID) }

// ActionGrantKey is the idempotency key of a bonus for one action of a user:
// "action-grant:{user}:{action}".
func ActionGrantKey(userID, actionID string) string {
	return DeriveKey("action-grant", userID, actionID)
}

// DeriveKey builds a deterministic idempotency key "prefix:id1:id2..." from
// business ids. It is injective: ids are escaped ('%' → "%25", ':' → "%3A",
// and bytes outside printable ASCII as "%XX"), so two different id lists never
// share a key; a key that would pass 255 bytes becomes "prefix:%h" + a SHA-256
// of the ids.
func DeriveKey(prefix string, ids ...string) string { return idem.Join(prefix, ids...) }
