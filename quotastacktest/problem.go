package quotastacktest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// errorTypeBase prefixes every problem type URI (contract §6).
const errorTypeBase = "https://quotastack.io/errors/"

// Error type slugs of the contract's §6 table.
const (
	slugValidation        = "validation-error"
	slugIdemRequired      = "idempotency-key-required"
	slugUnauthorized      = "unauthorized"
	slugInsufficient      = "insufficient-credits"
	slugCustomerNotFound  = "customer-not-found"
	slugMetricNotFound    = "metric-not-found"
	slugReservationNF     = "reservation-not-found"
	slugNotFound          = "not-found"
	slugIdemConflict      = "idempotency-key-conflict"
	slugCustomerExists    = "customer-exists"
	slugMetricExists      = "metric-exists"
	slugReservationActive = "reservation-not-active"
	slugNoActiveRule      = "no-active-rule"
	slugRateLimited       = "rate-limited"
	slugInternal          = "internal-error"
	slugUnavailable       = "unavailable"
)

var titles = map[string]string{
	slugValidation:        "Validation failed",
	slugIdemRequired:      "Idempotency-Key header required",
	slugUnauthorized:      "Unauthorized",
	slugInsufficient:      "Insufficient credits",
	slugCustomerNotFound:  "Customer not found",
	slugMetricNotFound:    "Billable metric not found",
	slugReservationNF:     "Reservation not found",
	slugNotFound:          "Not found",
	slugIdemConflict:      "Idempotency key conflict",
	slugCustomerExists:    "Customer already exists",
	slugMetricExists:      "Billable metric already exists",
	slugReservationActive: "Reservation not active",
	slugNoActiveRule:      "No active metering rule",
	slugRateLimited:       "Rate limited",
	slugInternal:          "Internal server error",
	slugUnavailable:       "Service unavailable",
}

// fieldError is one member of a validation problem's `errors` extension.
type fieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// problem is an RFC 7807 body, which handlers return instead of a result.
type problem struct {
	Type      string       `json:"type"`
	Title     string       `json:"title"`
	Status    int          `json:"status"`
	Detail    string       `json:"detail"`
	Instance  string       `json:"instance,omitempty"`
	Errors    []fieldError `json:"errors,omitempty"`
	Required  *int64       `json:"required,omitempty"`
	Available *int64       `json:"available,omitempty"`
}

func newProblem(status int, slug, detail string) *problem {
	return &problem{Type: errorTypeBase + slug, Title: titles[slug], Status: status, Detail: detail}
}

func problemf(status int, slug, format string, args ...any) *problem {
	return newProblem(status, slug, fmt.Sprintf(format, args...))
}

func validation(errs ...fieldError) *problem {
	p := newProblem(400, slugValidation, "the request is invalid")
	if len(errs) == 1 {
		p.Detail = errs[0].Field + ": " + errs[0].Message
	}
	p.Errors = errs
	return p
}

func invalid(field, message string) *problem {
	return validation(fieldError{Field: field, Message: message})
}

func insufficient(required, available int64) *problem {
	p := problemf(402, slugInsufficient, "this needs %d mc; the eligible credit blocks hold %d mc", required, available)
	p.Required, p.Available = &required, &available
	return p
}

// response is a fully rendered HTTP answer, which is what the idempotency store keeps.
type response struct {
	status      int
	contentType string
	body        []byte
	retryAfter  string
}

func jsonResponse(status int, v any) response {
	b, err := json.Marshal(v)
	if err != nil { // only our own types are marshalled; this cannot happen
		panic(err)
	}
	return response{status: status, contentType: "application/json", body: b}
}

func problemResponse(p *problem, instance string) response {
	p.Instance = instance
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	return response{status: p.Status, contentType: "application/problem+json", body: b}
}

// decodeBody decodes a JSON object into v, refusing unknown fields and trailing data.
func decodeBody(body []byte, v any) *problem {
	if len(bytes.TrimSpace(body)) == 0 {
		return invalid("body", "a JSON object is required")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeProblem(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("body", "unexpected data after the JSON object")
	}
	return nil
}

func decodeProblem(err error) *problem {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			field = "body"
		}
		return invalid(field, "must be a JSON "+jsonKind(typeErr.Type.Kind().String()))
	case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("body", "malformed JSON: "+err.Error())
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return invalid(field, "unknown field")
	default:
		return invalid("body", err.Error())
	}
}

func jsonKind(goKind string) string {
	switch {
	case strings.HasPrefix(goKind, "int"), strings.HasPrefix(goKind, "uint"):
		return "integer"
	case goKind == "map", goKind == "struct":
		return "object"
	case goKind == "slice":
		return "array"
	case goKind == "ptr":
		return "value of the right type"
	}
	return goKind
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}

func newID(prefix string) string { return prefix + randomHex(12) }

// newUUIDv7 returns a UUIDv7 string whose timestamp is t.
func newUUIDv7(t time.Time) string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	ms := uint64(t.UnixMilli())
	for i := 0; i < 6; i++ {
		u[i] = byte(ms >> (40 - 8*i)) //nolint:gosec // taking bytes of the 48-bit timestamp is the point
	}
	u[6] = u[6]&0x0f | 0x70
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
