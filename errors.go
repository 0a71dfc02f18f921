package quotastack

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ProblemTypeBase is the prefix of every problem type URI QuotaStack returns.
const ProblemTypeBase = "https://quotastack.io/errors/"

// Sentinel errors for errors.Is. An *APIError matches the sentinel of its
// problem type (or, for unknown types, of its status).
var (
	// ErrInsufficientCredits: the eligible blocks can't cover a debit or hold (402).
	ErrInsufficientCredits = errors.New("quotastack: insufficient credits")
	// ErrNotFound: the customer, metric, reservation or path doesn't exist (404).
	ErrNotFound = errors.New("quotastack: not found")
	// ErrUnauthorized: the API key is missing or unknown (401).
	ErrUnauthorized = errors.New("quotastack: unauthorized")
	// ErrRateLimited: the tenant's rate limit was hit (429); see APIError.RetryAfter.
	ErrRateLimited = errors.New("quotastack: rate limited")
	// ErrIdempotencyConflict: the key was used before with a different request.
	ErrIdempotencyConflict = errors.New("quotastack: idempotency key reused with a different request")
	// ErrValidation: the server rejected the request body or query (400).
	ErrValidation = errors.New("quotastack: validation error")
	// ErrConflict: a state conflict other than idempotency, e.g. customer exists
	// or reservation not active (409).
	ErrConflict = errors.New("quotastack: conflict")
	// ErrNoActiveRule: the metric has no active metering rule (422).
	ErrNoActiveRule = errors.New("quotastack: metric has no active metering rule")
	// ErrServer: the server failed (5xx) and retries, if any, ran out.
	ErrServer = errors.New("quotastack: server error")
	// ErrUnexpectedResponse: the response could not be understood (non-JSON,
	// truncated, too large, wrong types, redirect). A 4xx this package doesn't
	// list (403, 405, 410, 413, ...) matches it too, and is still a definite
	// answer: see IsOutage.
	ErrUnexpectedResponse = errors.New("quotastack: unexpected response")
	// ErrInvalidInput: the call was refused before any request was sent.
	ErrInvalidInput = errors.New("quotastack: invalid input")
)

// FieldError is one entry of a validation problem's "errors" member.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// APIError is a non-2xx answer from QuotaStack (an RFC 7807 problem), or a
// response the client could not decode. Compare it with the sentinels through
// errors.Is; reach the fields through errors.As.
type APIError struct {
	StatusCode int          // HTTP status
	Type       string       // problem type URI; switch on it or on the sentinels
	Title      string       // short summary from the server
	Detail     string       // human-readable explanation from the server
	Instance   string       // problem instance URI, when given
	Errors     []FieldError // validation details, when given
	// Required and Available are the 402 extension members, in millicredits.
	Required, Available int64
	RequestID           string        // X-Request-Id of the last response
	IdempotencyKey      string        // the key the request carried, if it was a POST
	Method, Path        string        // the request line (no host, no query secrets)
	Attempts            int           // attempts made; more than 1 means it was retried
	Replayed            bool          // the server replayed the answer stored under the key (X-Idempotent-Replayed); Error() says "(replayed)"
	RetryAfter          time.Duration // the server's Retry-After on 429/503, uncapped
	Body                string        // the start of the raw body (at most 512 bytes), when it wasn't a problem document
	cause               error         // decode failure, for Unwrap
	rawBody             []byte        // the whole body read (key redacted), for RawBody
}

// RawBody returns the response body as read (at most the client's
// WithMaxBodyBytes), with the API key redacted but control characters and
// formatting kept, for code that wants the server's own text. Error() and
// the log lines never carry it raw. Nil when there was no body.
func (e *APIError) RawBody() []byte { return e.rawBody }

// Retried reports whether the request was attempted more than once.
func (e *APIError) Retried() bool { return e.Attempts > 1 }

func (e *APIError) Error() string {
	var b strings.Builder
	// Every field that came from the server is sanitized (control characters,
	// bidi overrides and line separators escaped): no log forging through Error().
	fmt.Fprintf(&b, "quotastack: %s %s: %d", e.Method, sanitize(e.Path), e.StatusCode)
	if e.Type != "" {
		fmt.Fprintf(&b, " %s", trim(sanitize(strings.TrimPrefix(e.Type, ProblemTypeBase))))
	}
	switch {
	case e.Detail != "":
		fmt.Fprintf(&b, ": %s", trim(sanitize(e.Detail)))
	case e.Title != "":
		fmt.Fprintf(&b, ": %s", trim(sanitize(e.Title)))
	}
	if e.cause != nil {
		fmt.Fprintf(&b, ": %s", trim(sanitize(e.cause.Error())))
	}
	if e.Body != "" && e.Type == "" {
		fmt.Fprintf(&b, ": body %q", e.Body)
	}
	if e.Replayed {
		// The server answered from its store: this key's first request failed
		// so, and every retry with the key gets the same answer for 24 h.
		b.WriteString(" (replayed)")
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " (after %d attempts)", e.Attempts)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, " [request %s]", trim(sanitize(e.RequestID)))
	}
	return b.String()
}

// Unwrap returns the decoding failure behind an unexpected response, if any.
func (e *APIError) Unwrap() error { return e.cause }

// Is matches the sentinel of the problem type, falling back to the status.
func (e *APIError) Is(target error) bool {
	return e.sentinel() == target ||
		(target == ErrUnexpectedResponse && e.cause != nil) ||
		(target == ErrServer && e.StatusCode >= 500)
}

func (e *APIError) sentinel() error {
	switch strings.TrimPrefix(e.Type, ProblemTypeBase) {
	case "insufficient-credits":
		return ErrInsufficientCredits
	case "customer-not-found", "metric-not-found", "reservation-not-found", "not-found":
		return ErrNotFound
	case "unauthorized":
		return ErrUnauthorized
	case "rate-limited":
		return ErrRateLimited
	case "idempotency-key-conflict":
		return ErrIdempotencyConflict // 409 here, 422 on a server that chose so
	case "validation-error", "idempotency-key-required":
		return ErrValidation
	case "customer-exists", "reservation-not-active":
		return ErrConflict
	case "no-active-rule":
		return ErrNoActiveRule
	}
	switch {
	case e.StatusCode == 400:
		return ErrValidation
	case e.StatusCode == 401:
		return ErrUnauthorized
	case e.StatusCode == 402:
		return ErrInsufficientCredits
	case e.StatusCode == 404:
		return ErrNotFound
	case e.StatusCode == 409:
		return ErrConflict
	case e.StatusCode == 422:
		return ErrValidation
	case e.StatusCode == 429:
		return ErrRateLimited
	case e.StatusCode >= 500:
		return ErrServer
	}
	return ErrUnexpectedResponse
}

// IsOutage reports whether err means QuotaStack could not answer, the only
// case in which a fallback (fail open or closed) may apply. By status class
// first: any 4xx but 429 is a definite answer (an *APIError, never an
// outage), 403, 405, 410, 413 and statuses this package doesn't list
// included; a 5xx, a 429 after retries, an answer that could not be read (1xx,
// 3xx, a 2xx that didn't decode), no answer at all (*RequestError, a timeout)
// are outages. ctx is the caller's context of the call: a cancellation it
// caused is not an outage (nil: any cancellation is the caller's). An
// ErrInvalidInput error and nil are not outages.
func IsOutage(ctx context.Context, err error) bool {
	if err == nil || errors.Is(err, ErrInvalidInput) {
		return false
	}
	if errors.Is(err, context.Canceled) && (ctx == nil || ctx.Err() != nil) {
		return false
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		s := apiErr.StatusCode
		return s == 429 || s < 400 || s >= 500
	}
	var reqErr *RequestError
	return errors.As(err, &reqErr) || errors.Is(err, ErrServer) || errors.Is(err, ErrRateLimited) ||
		errors.Is(err, ErrUnexpectedResponse) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// InputError is a mistake in the arguments of a call, found before any
// request was sent. It matches ErrInvalidInput.
type InputError struct {
	Field  string // the argument at fault, e.g. "units"
	Reason string
}

func (e *InputError) Error() string {
	return fmt.Sprintf("quotastack: invalid %s: %s", e.Field, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidInput) true.
func (e *InputError) Is(target error) bool { return target == ErrInvalidInput }

func inputErr(field, reason string) error { return &InputError{Field: field, Reason: reason} }

// trim caps server-provided text in error strings.
func trim(s string) string {
	if len(s) <= maxErrText {
		return s
	}
	return strings.ToValidUTF8(s[:maxErrText], "") + "..."
}

// maxErrText caps each piece of server-provided text in an error string.
const maxErrText = 512
