package autobuy

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/quotastack/quotastack-go"
)

// FallbackPolicy decides the answer of a gate when QuotaStack could not
// answer (quotastack.IsOutage: a transport error, a timeout, a 5xx, a 429
// after retries, an unreadable answer). A definite answer (any other 4xx:
// 401, 403, 404, 405, 409, 410, 413, 422, ...) is never an outage: it is an
// error or its own decision whatever the policy.
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
