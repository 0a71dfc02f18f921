package otelquotastack

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
)

// Attribute keys of gate spans and counters.
const (
	AttrMetric         = attribute.Key("quotastack.metric")
	AttrAllowed        = attribute.Key("quotastack.gate.allowed")
	AttrReason         = attribute.Key("quotastack.gate.reason")
	AttrFallback       = attribute.Key("quotastack.gate.fallback")
	AttrAttempts       = attribute.Key("quotastack.gate.attempts")
	AttrReplayed       = attribute.Key("quotastack.gate.replayed")
	AttrErrorClass     = attribute.Key("quotastack.error.class")
	AttrOrderID        = attribute.Key("quotastack.purchase.order_id")
	AttrPlanType       = attribute.Key("quotastack.purchase.plan_type")
	AttrPurchaseReplay = attribute.Key("quotastack.purchase.replayed")
	AttrExternalID     = attribute.Key("quotastack.customer.external_id")
	AttrCustomerID     = attribute.Key("quotastack.customer.id")
)

// GateTracer gates through an autobuy.Gatekeeper and records one span per
// call. It is safe for concurrent use. Use its Gate method where you would
// call the Gatekeeper's, and with autobuy.GateWith in the middleware.
type GateTracer struct {
	g      *autobuy.Gatekeeper
	tracer trace.Tracer
	ids    bool
}

// NewGateTracer returns a tracer of g's decisions.
func NewGateTracer(g *autobuy.Gatekeeper, opts ...Option) *GateTracer {
	cfg := newConfig(opts)
	return &GateTracer{g: g, tracer: cfg.tp.Tracer(ScopeName), ids: cfg.customerIDs}
}

// Gatekeeper returns the wrapped gate (for autobuy.Middleware, with
// autobuy.GateWith(t.Gate)).
func (t *GateTracer) Gatekeeper() *autobuy.Gatekeeper { return t.g }

// Gate calls the Gatekeeper's Gate inside a span "quotastack.gate <metric>"
// (the HTTP spans of the call are its children) and returns its answer
// unchanged. The span's attributes: metric, allowed, reason, fallback, the
// HTTP attempts of the calls behind the decision, whether the usage record
// was a replay, and the purchase's order id, plan type and replay flag; an
// error is recorded by class. Customer ids only with WithCustomerIDs.
func (t *GateTracer) Gate(ctx context.Context, customer quotastack.Customer, metric string, opts ...autobuy.GateOption) (autobuy.Decision, error) {
	ctx, span := t.tracer.Start(ctx, "quotastack.gate "+metric, trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(AttrMetric.String(metric)))
	defer span.End()
	d, err := t.g.Gate(ctx, customer, metric, opts...)
	span.SetAttributes(decisionAttrs(d, err)...)
	if t.ids {
		if customer.IsExternal() {
			span.SetAttributes(AttrExternalID.String(customer.ID()))
		}
		if d.CustomerID != "" {
			span.SetAttributes(AttrCustomerID.String(d.CustomerID))
		}
	}
	if d.Purchase != nil {
		span.SetAttributes(AttrOrderID.String(d.Purchase.OrderID), AttrPlanType.String(d.Purchase.Plan.Type),
			AttrPurchaseReplay.Bool(d.Purchase.DebitReplayed || d.Purchase.GrantReplayed))
	}
	switch {
	case err != nil:
		// The class, not the text: an error's text may hold a customer's id.
		span.SetStatus(codes.Error, ErrorClass(err))
	case d.Fallback:
		span.SetStatus(codes.Error, "fallback: "+ErrorClass(d.Err))
	}
	return d, err
}

// decisionAttrs are the attributes shared by spans and counters.
func decisionAttrs(d autobuy.Decision, err error) []attribute.KeyValue {
	attrs := []attribute.KeyValue{AttrAttempts.Int(Attempts(d, err))}
	if err != nil {
		return append(attrs, AttrErrorClass.String(ErrorClass(err)))
	}
	attrs = append(attrs, AttrAllowed.Bool(d.Allowed), AttrReason.String(string(d.Reason)), AttrFallback.Bool(d.Fallback),
		AttrReplayed.Bool(replayed(d)))
	if d.Err != nil {
		attrs = append(attrs, AttrErrorClass.String(ErrorClass(d.Err)))
	}
	return attrs
}

func replayed(d autobuy.Decision) bool {
	return d.Replayed || (d.Usage != nil && d.Usage.Meta.Replayed) || (d.Hold != nil && d.Hold.Meta.Replayed)
}

// Attempts is the number of HTTP attempts of the calls a decision reports
// (its entitlement check, usage record or hold, and the purchase's debit),
// or of the failed call behind err. Calls whose results the decision does
// not carry (a balance read, a grant) are not included.
func Attempts(d autobuy.Decision, err error) int {
	n := 0
	if d.Entitlement != nil {
		n += d.Entitlement.Meta.Attempts
	}
	if d.Usage != nil {
		n += d.Usage.Meta.Attempts
	}
	if d.Hold != nil {
		n += d.Hold.Meta.Attempts
	}
	if d.Purchase != nil && d.Purchase.Debit != nil {
		n += d.Purchase.Debit.Meta.Attempts
	}
	for _, e := range []error{err, d.Err} {
		var apiErr *quotastack.APIError
		var reqErr *quotastack.RequestError
		switch {
		case errors.As(e, &apiErr):
			n += apiErr.Attempts
		case errors.As(e, &reqErr):
			n += reqErr.Attempts
		}
	}
	return n
}

// Retries is the number of retries among Attempts: the attempts beyond the
// first of each call.
func Retries(d autobuy.Decision, err error) int {
	n := 0
	add := func(attempts int) {
		if attempts > 1 {
			n += attempts - 1
		}
	}
	if d.Entitlement != nil {
		add(d.Entitlement.Meta.Attempts)
	}
	if d.Usage != nil {
		add(d.Usage.Meta.Attempts)
	}
	if d.Hold != nil {
		add(d.Hold.Meta.Attempts)
	}
	if d.Purchase != nil && d.Purchase.Debit != nil {
		add(d.Purchase.Debit.Meta.Attempts)
	}
	for _, e := range []error{err, d.Err} {
		var apiErr *quotastack.APIError
		var reqErr *quotastack.RequestError
		switch {
		case errors.As(e, &apiErr):
			add(apiErr.Attempts)
		case errors.As(e, &reqErr):
			add(reqErr.Attempts)
		}
	}
	return n
}

// ErrorClass names the class of a quotastack error, for attributes and span
// statuses: "invalid_input", "insufficient_credits", "not_found",
// "unauthorized", "rate_limited", "idempotency_conflict", "validation",
// "conflict", "no_active_rule", "server_error", "refused" (another 4xx, such
// as 403: a definite answer, never an outage), "unexpected_response",
// "canceled", "deadline_exceeded", "request_error", "other"; "" for nil.
func ErrorClass(err error) string {
	var reqErr *quotastack.RequestError
	var apiErr *quotastack.APIError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, quotastack.ErrInvalidInput):
		return "invalid_input"
	case errors.Is(err, quotastack.ErrInsufficientCredits):
		return "insufficient_credits"
	case errors.Is(err, quotastack.ErrNotFound):
		return "not_found"
	case errors.Is(err, quotastack.ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, quotastack.ErrRateLimited):
		return "rate_limited"
	case errors.Is(err, quotastack.ErrIdempotencyConflict):
		return "idempotency_conflict"
	case errors.Is(err, quotastack.ErrValidation):
		return "validation"
	case errors.Is(err, quotastack.ErrNoActiveRule):
		return "no_active_rule"
	case errors.Is(err, quotastack.ErrConflict):
		return "conflict"
	case errors.Is(err, quotastack.ErrServer):
		return "server_error"
	case errors.As(err, &apiErr) && apiErr.StatusCode >= 400 && apiErr.StatusCode < 500:
		return "refused"
	case errors.Is(err, quotastack.ErrUnexpectedResponse):
		return "unexpected_response"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	case errors.As(err, &reqErr):
		return "request_error"
	}
	return "other"
}
