package quotastack

import (
	"context"
	"net/http"
	"time"

	"github.com/quotastack/quotastack-go/internal/idem"
)

// CreditGrantParams is a grant of promotional credits.
type CreditGrantParams struct {
	Credits   int64      // millicredits, > 0
	Source    string     // e.g. "promotional"; "" lets the server choose
	Reason    string     // free text for the ledger
	Priority  int        // 0 = wallet-like
	ExpiresAt *time.Time // nil = never
	Metadata  map[string]string
}

// GrantCredits grants promotional credits to customer as a new block. Use a
// deterministic key (SignupGrantKey, ActionGrantKey) so a bonus is given once.
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
