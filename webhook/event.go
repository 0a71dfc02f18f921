package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Event types QuotaStack is known to send. Other types may arrive; compare Event.Type
// against these and ignore what you don't handle.
const (
	EventSubscriptionRenewalDue = "subscription.renewal_due"
	EventSubscriptionRenewed    = "subscription.renewed"
)

// Event is a verified delivery's envelope; Data holds the type-specific payload, undecoded.
type Event struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	CreatedAt time.Time       `json:"created_at"`
	Data      json.RawMessage `json:"data"`

	// WebhookID is the delivery's webhook-id header. Standard Webhooks keeps it the same on
	// every retry, and deliveries are at least once: use it to drop duplicates.
	WebhookID string `json:"-"`
}

// Parse verifies the delivery like [Verifier.Verify], then decodes its envelope. A body
// that verifies but is not an envelope with an id and a type gives [ErrInvalidPayload].
func (v *Verifier) Parse(headers http.Header, body []byte) (*Event, error) {
	if err := v.Verify(headers, body); err != nil {
		return nil, err
	}
	var ev Event
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPayload, err)
	}
	if ev.ID == "" || ev.Type == "" {
		return nil, fmt.Errorf("%w: missing id or type", ErrInvalidPayload)
	}
	ev.WebhookID = headerValue(headers, HeaderID)
	return &ev, nil
}

// ParseRequest reads r's body up to the verifier's size cap ([ErrBodyTooLarge] beyond it),
// then parses it like [Verifier.Parse]. It does not check the method; use it from your own
// handler when [Verifier.Handler] does not fit.
func (v *Verifier) ParseRequest(r *http.Request) (*Event, error) {
	body, err := v.readBody(r.ContentLength, r.Body)
	if err != nil {
		return nil, err
	}
	return v.Parse(r.Header, body)
}

// readBody reads at most maxBodyBytes from body without decoding anything.
func (v *Verifier) readBody(contentLength int64, body io.Reader) ([]byte, error) {
	if contentLength > v.maxBodyBytes {
		return nil, ErrBodyTooLarge
	}
	if body == nil {
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(body, v.maxBodyBytes+1))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, ErrBodyTooLarge
	case err != nil:
		return nil, fmt.Errorf("webhook: reading body: %w", err)
	case int64(len(b)) > v.maxBodyBytes:
		return nil, ErrBodyTooLarge
	}
	return b, nil
}
