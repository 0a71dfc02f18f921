package autobuy

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/quotastack/quotastack-go"
)

// FallbackPolicy decides the answer of a gate when QuotaStack could not
// answer (a transport error, a timeout, a 5xx, a 429 after retries). A
// definite answer (401, 403, 404, 409, 422) is never an outage: it is an error
// or its own decision whatever the policy.
type FallbackPolicy int

const (
	// ReturnError returns the error and a zero Decision (the default).
	ReturnError FallbackPolicy = iota
	// FailClosed denies the action (Reason ReasonUnavailable, Fallback true).
	FailClosed
	// FailOpen allows the action without recording usage (Reason
	// ReasonUnavailable, Fallback true): the action is free.
	FailOpen
)

// String returns the policy's name ("return_error", "fail_closed", "fail_open").
func (p FallbackPolicy) String() string {
	switch p {
	case ReturnError:
		return "return_error"
	case FailClosed:
		return "fail_closed"
	case FailOpen:
		return "fail_open"
	}
	return "FallbackPolicy(" + strconv.Itoa(int(p)) + ")"
}

// isOutage reports whether err means QuotaStack could not answer: no
// response, a timeout, a 5xx, a 429 after retries, or an answer that could
// not be read. A cancelled caller is not an outage.
func isOutage(ctx context.Context, err error) bool {
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return false
	}
	var apiErr *quotastack.APIError
	if errors.As(err, &apiErr) {
		return apiErr.StatusCode >= 500 || apiErr.StatusCode == 429 || errors.Is(err, quotastack.ErrUnexpectedResponse)
	}
	var reqErr *quotastack.RequestError
	return errors.As(err, &reqErr)
}

func (g *Gatekeeper) fallbackDecision(ctx context.Context, customer quotastack.Customer, metric string, d Decision, err error) (Decision, error) {
	g.log.WarnContext(ctx, "autobuy: QuotaStack could not answer", "customer", customer.String(), "metric", metric,
		"policy", g.fallback.String(), "error", err)
	switch g.fallback {
	case FailClosed:
		return Decision{Allowed: false, Reason: ReasonUnavailable, Fallback: true, Err: err, CustomerID: d.CustomerID, Entitlement: d.Entitlement, Purchase: d.Purchase}, nil
	case FailOpen:
		return Decision{Allowed: true, Reason: ReasonUnavailable, Fallback: true, Err: err, CustomerID: d.CustomerID, Entitlement: d.Entitlement, Purchase: d.Purchase}, nil
	}
	return d, err
}

// isCustomerNotFound reports a definite "no such customer" answer.
func isCustomerNotFound(err error) bool {
	var apiErr *quotastack.APIError
	return errors.As(err, &apiErr) && apiErr.StatusCode == 404 && strings.HasSuffix(apiErr.Type, "/customer-not-found")
}
