package quotastack_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

var sentinels = []error{
	quotastack.ErrInsufficientCredits, quotastack.ErrNotFound, quotastack.ErrUnauthorized,
	quotastack.ErrRateLimited, quotastack.ErrIdempotencyConflict, quotastack.ErrValidation,
	quotastack.ErrConflict, quotastack.ErrNoActiveRule, quotastack.ErrServer,
	quotastack.ErrUnexpectedResponse, quotastack.ErrInvalidInput,
}

func problem(status int, slug, detail string, extra string) string {
	return fmt.Sprintf(`{"type":"%s%s","title":"%s","status":%d,"detail":"%s","instance":"/v1/x/req_1"%s}`,
		quotastack.ProblemTypeBase, slug, slug, status, detail, extra)
}

// TestErrorStatuses maps every row of the contract's error table (§6), and
// the plausible alternatives, to its sentinel and to no other.
func TestErrorStatuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		slug   string
		want   []error // every sentinel the error must match; it must match no other
	}{
		{400, "validation-error", []error{quotastack.ErrValidation}},
		{400, "idempotency-key-required", []error{quotastack.ErrValidation}},
		{401, "unauthorized", []error{quotastack.ErrUnauthorized}},
		{402, "insufficient-credits", []error{quotastack.ErrInsufficientCredits}},
		{404, "customer-not-found", []error{quotastack.ErrNotFound}},
		{404, "metric-not-found", []error{quotastack.ErrNotFound}},
		{404, "reservation-not-found", []error{quotastack.ErrNotFound}},
		{404, "not-found", []error{quotastack.ErrNotFound}},
		{409, "idempotency-key-conflict", []error{quotastack.ErrIdempotencyConflict}},
		{422, "idempotency-key-conflict", []error{quotastack.ErrIdempotencyConflict}}, // a real server may use 422
		{409, "customer-exists", []error{quotastack.ErrConflict}},
		{409, "reservation-not-active", []error{quotastack.ErrConflict}},
		{422, "no-active-rule", []error{quotastack.ErrNoActiveRule}},
		{429, "rate-limited", []error{quotastack.ErrRateLimited}},
		{500, "internal-error", []error{quotastack.ErrServer}},
		{503, "unavailable", []error{quotastack.ErrServer}},
		// Unknown types fall back on the status.
		{400, "something-new", []error{quotastack.ErrValidation}},
		{401, "something-new", []error{quotastack.ErrUnauthorized}},
		{402, "something-new", []error{quotastack.ErrInsufficientCredits}},
		{404, "something-new", []error{quotastack.ErrNotFound}},
		{409, "something-new", []error{quotastack.ErrConflict}},
		{422, "something-new", []error{quotastack.ErrValidation}},
		{429, "something-new", []error{quotastack.ErrRateLimited}},
		{502, "something-new", []error{quotastack.ErrServer}},
		{501, "not-implemented", []error{quotastack.ErrServer}},
		{418, "teapot", []error{quotastack.ErrUnexpectedResponse}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %s", tt.status, tt.slug), func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t, quotastack.WithRetry(1, time.Millisecond, time.Millisecond))
			rec := &recorder{}
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage",
				rec.wrap(problemResponder(tt.status, problem(tt.status, tt.slug, "it failed", ""), "X-Request-Id", "req_42")))

			_, err := c.Record(context.Background(), quotastack.UsageParams{
				Customer: quotastack.ExternalID("u"), MetricKey: "look", Units: 1,
			}, quotastack.WithIdempotencyKey("usage:1"))
			require.Error(t, err)
			for _, s := range sentinels {
				want := false
				for _, w := range tt.want {
					want = want || w == s
				}
				assert.Equal(t, want, errors.Is(err, s), "errors.Is(err, %v)", s)
			}
			var apiErr *quotastack.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, tt.status, apiErr.StatusCode)
			assert.Equal(t, quotastack.ProblemTypeBase+tt.slug, apiErr.Type)
			assert.Equal(t, tt.slug, apiErr.Title)
			assert.Equal(t, "it failed", apiErr.Detail)
			assert.Equal(t, "/v1/x/req_1", apiErr.Instance)
			assert.Equal(t, "req_42", apiErr.RequestID)
			assert.Equal(t, "usage:1", apiErr.IdempotencyKey)
			assert.Equal(t, http.MethodPost, apiErr.Method)
			assert.Equal(t, "/v1/usage", apiErr.Path)
			assert.Equal(t, 1, apiErr.Attempts)
			assert.False(t, apiErr.Retried())
			assert.Empty(t, apiErr.Body, "a problem document is parsed, not dumped")
			assert.Len(t, rec.all(), 1)
			assert.Contains(t, err.Error(), fmt.Sprintf("POST /v1/usage: %d %s: it failed", tt.status, tt.slug))
			assert.Contains(t, err.Error(), "[request req_42]")
		})
	}
}

func TestInsufficientCreditsCarriesAmounts(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage",
		problemResponder(402, problem(402, "insufficient-credits", "plan credits exhausted", `,"required":1000,"available":0`)))

	_, err := c.Record(context.Background(), quotastack.UsageParams{Customer: quotastack.ExternalID("u"), MetricKey: "chat_message", Units: 1})
	require.ErrorIs(t, err, quotastack.ErrInsufficientCredits)
	var apiErr *quotastack.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, int64(1000), apiErr.Required)
	assert.Equal(t, int64(0), apiErr.Available)
	assert.Equal(t, 1, apiErr.Attempts, "a 402 is not retried")
}

func TestValidationErrorCarriesFieldErrors(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodGet, baseURL+"/v1/customer-by-external-id/u/entitlements/look",
		problemResponder(400, problem(400, "validation-error", "bad query", `,"errors":[{"field":"units","message":"must be > 0"}]`)))

	_, err := c.Check(context.Background(), quotastack.ExternalID("u"), "look", 1)
	require.ErrorIs(t, err, quotastack.ErrValidation)
	var apiErr *quotastack.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, []quotastack.FieldError{{Field: "units", Message: "must be > 0"}}, apiErr.Errors)
}

// TestUndecodableResponses: whatever a proxy or a broken server sends, the
// caller gets a typed error, never a panic or a zero result.
func TestUndecodableResponses(t *testing.T) {
	t.Parallel()
	html := `<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>`
	tests := []struct {
		name        string
		status      int
		contentType string
		body        string
		want        []error
		wantBody    string // start of APIError.Body
	}{
		{"html 502 from a proxy", 502, "text/html", html, []error{quotastack.ErrServer}, "<html>"},
		{"html 200 from a captive portal", 200, "text/html", html, []error{quotastack.ErrUnexpectedResponse}, "<html>"},
		{"truncated JSON", 200, "application/json", `{"allowed":true,"balance":15`, []error{quotastack.ErrUnexpectedResponse}, `{"allowed"`},
		{"wrong JSON types", 200, "application/json", `{"allowed":"yes","balance":"lots"}`, []error{quotastack.ErrUnexpectedResponse}, `{"allowed"`},
		{"JSON array", 200, "application/json", `[1,2,3]`, []error{quotastack.ErrUnexpectedResponse}, `[1,2,3]`},
		{"empty 200 body", 200, "application/json", ``, []error{quotastack.ErrUnexpectedResponse}, ""},
		{"whitespace 200 body", 200, "application/json", " \n", []error{quotastack.ErrUnexpectedResponse}, ""},
		{"404 without a problem", 404, "text/plain", "no such route", []error{quotastack.ErrNotFound}, "no such route"},
		{"400 with an empty problem", 400, "application/problem+json", `{}`, []error{quotastack.ErrValidation}, "{}"},
		{"invalid UTF-8 body", 200, "application/json", "\xff\xfe{", []error{quotastack.ErrUnexpectedResponse}, "?{"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t, quotastack.WithRetry(1, time.Millisecond, time.Millisecond))
			mt.RegisterResponder(http.MethodGet, baseURL+"/v1/customer-by-external-id/u/entitlements/look",
				responder(tt.status, tt.contentType, tt.body))

			got, err := c.Check(context.Background(), quotastack.ExternalID("u"), "look", 1)
			require.Error(t, err)
			assert.Nil(t, got)
			for _, w := range tt.want {
				assert.ErrorIs(t, err, w)
			}
			var apiErr *quotastack.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, tt.status, apiErr.StatusCode)
			assert.True(t, strings.HasPrefix(apiErr.Body, tt.wantBody), "body %q", apiErr.Body)
			assert.LessOrEqual(t, len(apiErr.Body), 512)
		})
	}
}

func TestErrorBodySnippetIsCapped(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodGet, baseURL+"/v1/customer-by-external-id/u/credits",
		responder(200, "text/plain", strings.Repeat("x", 5000)))

	_, err := c.Balance(context.Background(), quotastack.ExternalID("u"))
	require.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
	var apiErr *quotastack.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Len(t, apiErr.Body, 512)
	assert.Less(t, len(err.Error()), 1000)
}

// TestInputMistakes: bad arguments are refused before any request.
func TestInputMistakes(t *testing.T) {
	t.Parallel()
	u := quotastack.ExternalID("u")
	var nilCtx context.Context
	tooMany := make([]quotastack.UsageParams, quotastack.MaxBatchEvents+1)
	for i := range tooMany {
		tooMany[i] = quotastack.UsageParams{Customer: u, MetricKey: "look", Units: 1}
	}
	tests := []struct {
		name  string
		field string
		call  func(context.Context, *quotastack.Client) error
	}{
		{"check empty customer", "customer", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Check(ctx, quotastack.ExternalID(""), "look", 1)
			return err
		}},
		{"check zero customer", "customer", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Check(ctx, quotastack.Customer{}, "look", 1)
			return err
		}},
		{"check invalid UTF-8 customer", "customer", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Check(ctx, quotastack.ExternalID("\xff"), "look", 1)
			return err
		}},
		{"check customer too long", "customer", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Check(ctx, quotastack.ExternalID(strings.Repeat("a", 513)), "look", 1)
			return err
		}},
		{"check empty metric", "billable metric key", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Check(ctx, u, "", 1)
			return err
		}},
		{"check metric too long", "billable metric key", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Check(ctx, u, strings.Repeat("m", 256), 1)
			return err
		}},
		{"check zero units", "units", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Check(ctx, u, "look", 0)
			return err
		}},
		{"check negative units", "units", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Check(ctx, u, "look", -5)
			return err
		}},
		{"check nil context", "ctx", func(_ context.Context, c *quotastack.Client) error {
			_, err := c.Check(nilCtx, u, "look", 1)
			return err
		}},
		{"balance empty customer", "customer", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Balance(ctx, quotastack.CustomerID(""))
			return err
		}},
		{"balance with blocks empty customer", "customer", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.BalanceWithBlocks(ctx, quotastack.Customer{})
			return err
		}},
		{"record empty customer", "customer", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Record(ctx, quotastack.UsageParams{MetricKey: "look", Units: 1})
			return err
		}},
		{"record empty metric", "billable metric key", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Record(ctx, quotastack.UsageParams{Customer: u, Units: 1})
			return err
		}},
		{"record zero units", "units", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Record(ctx, quotastack.UsageParams{Customer: u, MetricKey: "look"})
			return err
		}},
		{"record negative units", "units", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Record(ctx, quotastack.UsageParams{Customer: u, MetricKey: "look", Units: -1})
			return err
		}},
		{"record idempotency key with a space", "idempotency key", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Record(ctx, quotastack.UsageParams{Customer: u, MetricKey: "look", Units: 1}, quotastack.WithIdempotencyKey("usage: 1"))
			return err
		}},
		{"record idempotency key too long", "idempotency key", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Record(ctx, quotastack.UsageParams{Customer: u, MetricKey: "look", Units: 1}, quotastack.WithIdempotencyKey(strings.Repeat("k", 256)))
			return err
		}},
		{"batch empty", "events", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.RecordBatch(ctx, nil)
			return err
		}},
		{"batch too many", "events", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.RecordBatch(ctx, tooMany)
			return err
		}},
		{"batch with one bad event", "units", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.RecordBatch(ctx, []quotastack.UsageParams{{Customer: u, MetricKey: "look", Units: 1}, {Customer: u, MetricKey: "look"}})
			return err
		}},
		{"topup empty customer", "customer", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Topup(ctx, quotastack.TopupParams{Credits: 1})
			return err
		}},
		{"topup zero credits", "credits", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Topup(ctx, quotastack.TopupParams{Customer: u})
			return err
		}},
		{"topup negative credits", "credits", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Topup(ctx, quotastack.TopupParams{Customer: u, Credits: -1000})
			return err
		}},
		{"topup negative price", "price paid", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Topup(ctx, quotastack.TopupParams{Customer: u, Credits: 1, PricePaid: -1})
			return err
		}},
		{"topup negative priority", "priority", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Topup(ctx, quotastack.TopupParams{Customer: u, Credits: 1, Priority: -1})
			return err
		}},
		{"do relative path", "path", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Do(ctx, http.MethodGet, "v1/usage", nil, nil)
			return err
		}},
		{"do unmarshallable body", "body", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Do(ctx, http.MethodPost, "/v1/usage", map[string]any{"ch": make(chan int)}, nil)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			err := tt.call(context.Background(), c)
			require.ErrorIs(t, err, quotastack.ErrInvalidInput)
			var inErr *quotastack.InputError
			require.ErrorAs(t, err, &inErr)
			assert.Equal(t, tt.field, inErr.Field)
			assert.Contains(t, err.Error(), "quotastack: invalid "+tt.field)
			assert.Zero(t, mt.GetTotalCallCount(), "no request may be sent")
			for _, s := range sentinels {
				if s != quotastack.ErrInvalidInput {
					assert.NotErrorIs(t, err, s)
				}
			}
		})
	}
}
