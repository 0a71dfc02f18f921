package quotastack

import (
	"context"
	"net/http"
	"time"
)

// UsageParams is one usage event: units of a billable metric used by a customer.
type UsageParams struct {
	Customer  Customer
	MetricKey string
	Units     int64 // > 0
	Metadata  map[string]string
}

func (p UsageParams) validate() error {
	if err := p.Customer.validate(); err != nil {
		return err
	}
	if err := validateMetric(p.MetricKey); err != nil {
		return err
	}
	if p.Units <= 0 {
		return inputErr("units", "must be > 0")
	}
	return nil
}

type usageBody struct {
	customerFields
	BillableMetricKey string            `json:"billable_metric_key"`
	Units             int64             `json:"units"`
	Metadata          map[string]string `json:"metadata,omitempty"`
}

func (p UsageParams) body() usageBody {
	return usageBody{customerFields: p.Customer.fields(), BillableMetricKey: p.MetricKey, Units: p.Units, Metadata: p.Metadata}
}

// UsageEvent is a recorded usage event. Cost and BalanceAfter are in
// millicredits. A server that debits asynchronously answers 202 Accepted,
// possibly with no body: the event is then Accepted, its fields may be zero,
// and the debit is not confirmed yet.
type UsageEvent struct {
	ID                 string    `json:"id"`
	CustomerID         string    `json:"customer_id"`
	ExternalCustomerID string    `json:"external_customer_id"`
	BillableMetricKey  string    `json:"billable_metric_key"`
	Units              int64     `json:"units"`
	Cost               int64     `json:"cost"`
	BalanceAfter       int64     `json:"balance_after"`
	CreatedAt          time.Time `json:"created_at"`
	// Accepted is true when the server answered 202 Accepted: it took the
	// event and will debit it later, so Cost and BalanceAfter are not final.
	Accepted bool `json:"-"`

	Meta ResponseMeta `json:"-"`
}

// Confirmed reports whether the answer proves the debit happened: a 200 or
// 201 naming the recorded event. A 202 (or an answer without an event id)
// only says the server took the event.
func (e *UsageEvent) Confirmed() bool { return !e.Accepted && e.ID != "" }

// emptyAccepter is an answer type that a body-less 2xx may leave empty.
type emptyAccepter interface{ acceptsEmpty(status int) bool }

// acceptsEmpty: a 202 may come without a body (an asynchronous debit).
func (e *UsageEvent) acceptsEmpty(status int) bool { return status == http.StatusAccepted }

// Record records a usage event, which the server prices and debits. Pass
// WithIdempotencyKey("usage:"+yourEventID) so a retry never charges twice;
// otherwise one random key is used for all retries of this call. When the
// eligible credits can't cover it the error matches ErrInsufficientCredits
// and nothing was recorded.
func (c *Client) Record(ctx context.Context, p UsageParams, opts ...CallOption) (*UsageEvent, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	var out UsageEvent
	meta, err := c.do(ctx, http.MethodPost, "/v1/usage", "", p.body(), &out, opts)
	if err != nil {
		return nil, err
	}
	out.Meta = *meta
	out.Accepted = meta.StatusCode == http.StatusAccepted
	return &out, nil
}

// MaxBatchEvents is the largest batch RecordBatch sends.
const MaxBatchEvents = 100

// BatchResult is the outcome of one event of a batch.
type BatchResult struct {
	Index  int         `json:"index"`
	Status int         `json:"status"`
	Event  *UsageEvent `json:"event,omitempty"`
	// Problem is why the event was rejected; nil when it was recorded.
	Problem *BatchProblem `json:"error,omitempty"`
}

// BatchProblem is the problem document of one rejected event of a batch (the
// "error" member of its result). It is data, not an error value; the
// Recorder reports it as an *APIError, which matches the sentinels.
type BatchProblem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Detail    string `json:"detail"`
	Required  int64  `json:"required"`
	Available int64  `json:"available"`
}

// UsageBatch is the answer to RecordBatch, one result per event, in order.
// A server that debits asynchronously answers 202 Accepted, possibly with no
// body: then Accepted is true, Results may be empty, and every event of the
// batch was taken (see Accepted on each event).
type UsageBatch struct {
	Results []BatchResult `json:"results"`

	// Accepted is true when the server answered 202 Accepted.
	Accepted bool         `json:"-"`
	Meta     ResponseMeta `json:"-"`
}

// acceptsEmpty: a 202 batch may come without a body (an asynchronous debit).
func (b *UsageBatch) acceptsEmpty(status int) bool { return status == http.StatusAccepted }

// RecordBatch records up to 100 usage events in one request under one
// idempotency key (the whole batch is the unit of replay). Per-event
// failures are in the results, not in the error.
func (c *Client) RecordBatch(ctx context.Context, events []UsageParams, opts ...CallOption) (*UsageBatch, error) {
	if len(events) == 0 || len(events) > MaxBatchEvents {
		return nil, inputErr("events", "a batch holds 1 to 100 events")
	}
	body := struct {
		Events []usageBody `json:"events"`
	}{Events: make([]usageBody, len(events))}
	for i, e := range events {
		if err := e.validate(); err != nil {
			return nil, err
		}
		body.Events[i] = e.body()
	}
	var out UsageBatch
	meta, err := c.do(ctx, http.MethodPost, "/v1/usage/batch", "", body, &out, opts)
	if err != nil {
		return nil, err
	}
	out.Meta = *meta
	out.Accepted = meta.StatusCode == http.StatusAccepted
	return &out, nil
}
