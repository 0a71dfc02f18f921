package quotastack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Reservation is a hold of credits for an action in progress, in millicredits.
type Reservation struct {
	ID                 string            `json:"id"`
	Status             string            `json:"status"` // "active", "committed", "released" or "expired"
	CustomerID         string            `json:"customer_id"`
	ExternalCustomerID string            `json:"external_customer_id"`
	BillableMetricKey  string            `json:"billable_metric_key"`
	EstimatedUnits     int64             `json:"estimated_units"`
	ReservedAmount     int64             `json:"reserved_amount"`
	ActualUnits        int64             `json:"actual_units,omitempty"`
	CommittedAmount    int64             `json:"committed_amount,omitempty"` // debited on commit, in millicredits
	EventID            string            `json:"event_id,omitempty"`         // the usage event a commit recorded
	ExpiresAt          time.Time         `json:"expires_at"`
	Metadata           map[string]string `json:"metadata,omitempty"`

	Meta ResponseMeta `json:"-"`
}

// ReserveParams describes a hold: the estimated units of a metric, held for TTL.
type ReserveParams struct {
	Customer       Customer
	MetricKey      string
	EstimatedUnits int64         // > 0
	TTL            time.Duration // 0 = server default (300 s); whole seconds, at most 1 h
	Metadata       map[string]string
}

type reserveBody struct {
	customerFields
	BillableMetricKey string            `json:"billable_metric_key"`
	EstimatedUnits    int64             `json:"estimated_units"`
	TTLSeconds        int64             `json:"ttl_seconds,omitempty"`
	Metadata          map[string]string `json:"metadata,omitempty"`
}

// Reserve holds the priced amount of EstimatedUnits: it lowers the effective
// balance and debits nothing. Insufficient eligible credits give
// ErrInsufficientCredits. Commit or Release it; unfinished, it expires after TTL.
func (c *Client) Reserve(ctx context.Context, p ReserveParams, opts ...CallOption) (*Reservation, error) {
	if err := p.Customer.validate(); err != nil {
		return nil, err
	}
	if err := validateMetric(p.MetricKey); err != nil {
		return nil, err
	}
	switch {
	case p.EstimatedUnits <= 0:
		return nil, inputErr("estimated units", "must be > 0")
	case p.TTL < 0 || p.TTL > time.Hour:
		return nil, inputErr("ttl", "must be between 0 and 1h")
	case p.TTL > 0 && p.TTL < time.Second:
		return nil, inputErr("ttl", "must be at least 1s")
	}
	body := reserveBody{customerFields: p.Customer.fields(), BillableMetricKey: p.MetricKey,
		EstimatedUnits: p.EstimatedUnits, TTLSeconds: int64(p.TTL / time.Second), Metadata: p.Metadata}
	return c.reservationCall(ctx, "/v1/reserve", body, opts)
}

// Commit debits the cost of actualUnits (>= 0) for an active reservation and
// returns the rest of the hold. A reservation that is no longer active gives ErrConflict.
func (c *Client) Commit(ctx context.Context, reservationID string, actualUnits int64, opts ...CallOption) (*Reservation, error) {
	if reservationID == "" {
		return nil, inputErr("reservation id", "empty")
	}
	if actualUnits < 0 {
		return nil, inputErr("actual units", "must be >= 0")
	}
	body := struct {
		ActualUnits int64 `json:"actual_units"`
	}{actualUnits}
	return c.reservationCall(ctx, "/v1/reserve/"+escapeSegment(reservationID)+"/commit", body, opts)
}

// Release returns all of an active reservation's hold, debiting nothing.
func (c *Client) Release(ctx context.Context, reservationID string, opts ...CallOption) (*Reservation, error) {
	if reservationID == "" {
		return nil, inputErr("reservation id", "empty")
	}
	return c.reservationCall(ctx, "/v1/reserve/"+escapeSegment(reservationID)+"/release", struct{}{}, opts)
}

func (c *Client) reservationCall(ctx context.Context, path string, body any, opts []CallOption) (*Reservation, error) {
	var out Reservation
	meta, err := c.do(ctx, http.MethodPost, path, "", body, &out, opts)
	if err != nil {
		return nil, err
	}
	out.Meta = *meta
	return &out, nil
}

// RunReserved reserves p, runs fn, and then commits the units fn reports
// when it returns nil, or releases the hold when fn fails, panics or ctx ends;
// it returns the reservation in its final state. The commit and release use
// keys derived from the reservation id, so their retries are safe. fn's error
// is returned as is; a failed release is joined to it. A failed commit is
// returned and leaves the hold to expire (or to a Release of yours).
func (c *Client) RunReserved(ctx context.Context, p ReserveParams, fn func(ctx context.Context, r *Reservation) (actualUnits int64, err error), opts ...CallOption) (res *Reservation, err error) {
	r, err := c.Reserve(ctx, p, opts...)
	if err != nil {
		return nil, err
	}
	// Settle on a context that survives the caller's cancellation: a hold
	// left behind would block credits until its TTL.
	settle := context.WithoutCancel(ctx)
	// release returns the released reservation (or r, if the release failed).
	release := func(cause error) (*Reservation, error) {
		released, rerr := c.Release(settle, r.ID, WithIdempotencyKey("release:"+r.ID), WithCallTimeout(c.cfg.timeout))
		if rerr != nil {
			return r, errors.Join(cause, fmt.Errorf("releasing reservation %s: %w", c.red.text(r.ID), rerr)) // the id came from the server
		}
		return released, cause
	}
	defer func() {
		if p := recover(); p != nil {
			_, _ = release(nil)
			panic(p)
		}
	}()
	units, ferr := fn(ctx, r)
	if ferr != nil {
		return release(ferr)
	}
	if cerr := ctx.Err(); cerr != nil {
		return release(cerr)
	}
	committed, err := c.Commit(settle, r.ID, units, WithIdempotencyKey("commit:"+r.ID), WithCallTimeout(c.cfg.timeout))
	if err != nil {
		return r, err
	}
	return committed, nil
}
