package plan_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// usageRewriter sits between the client and the fake: after the fake has
// executed a POST /v1/usage, it can cancel the caller's context (the answer
// is lost) or turn the answer into what an asynchronous server sends (202
// with no body).
type usageRewriter struct {
	base     http.RoundTripper
	cancel   atomic.Pointer[context.CancelFunc]
	as202    atomic.Bool // every usage answer becomes 202 with no body (a 402 too: async servers reject later)
	debitsOK atomic.Int32
}

func (u *usageRewriter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := u.base.RoundTrip(r)
	if err != nil || r.URL.Path != "/v1/usage" {
		return resp, err
	}
	if c := u.cancel.Load(); c != nil {
		_ = resp.Body.Close()
		(*c)()
		return nil, context.Canceled
	}
	if u.as202.Load() {
		if resp.StatusCode < 300 {
			u.debitsOK.Add(1)
		}
		_ = resp.Body.Close()
		return &http.Response{StatusCode: http.StatusAccepted, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(nil)), Request: r}, nil
	}
	return resp, nil
}

func rewritingClient(t *testing.T, w *world) (*quotastack.Client, *usageRewriter) {
	t.Helper()
	rw := &usageRewriter{base: http.DefaultTransport}
	c, err := quotastack.NewClient(w.srv.APIKey, quotastack.WithBaseURL(w.srv.URL),
		quotastack.WithRetry(1, time.Millisecond, time.Millisecond), quotastack.WithTransport(rw))
	require.NoError(t, err)
	return c, rw
}

// Scenario 9 of the purchase-journal issue: the context is cancelled right
// after the debit executed. The error must say "unknown: retry with the same
// order id", never "failed" (a caller that then used a new order id would pay
// twice).
func TestCancelAfterDebitIsAnUnknownOutcome(t *testing.T) {
	t.Parallel()
	w := setup(t, 250_000)
	c, rw := rewritingClient(t, w)
	ctx, cancel := context.WithCancel(context.Background())
	rw.cancel.Store(&cancel)

	_, err := plan.Buy(ctx, c, w.cust, hourPlan, "ord_cancel")
	require.Error(t, err)
	assert.ErrorIs(t, err, plan.ErrUnknownOutcome)
	assert.NotErrorIs(t, err, plan.ErrNotBought, "a new order id would charge twice")
	assert.Equal(t, 1, w.entries("debit", "plan-debit:1hr:ord_cancel"), "the debit landed")

	rw.cancel.Store(nil)
	p, err := plan.Buy(context.Background(), c, w.cust, hourPlan, "ord_cancel")
	require.NoError(t, err)
	assert.True(t, p.DebitReplayed)
	assert.Equal(t, 1, w.entries("debit", ""), "one debit in all")
	assert.Len(t, w.planBlocks(), 1)
	assert.Equal(t, int64(150_000), w.wallet())
}

func TestOutcomeOfEachFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		status      int
		body        string
		retries     int
		wantUnknown bool
	}{
		{"402 stored: failed for good", 402, `{"type":"https://quotastack.io/errors/insufficient-credits","status":402}`, 1, false},
		{"404 metric: failed for good", 404, `{"type":"https://quotastack.io/errors/metric-not-found","status":404}`, 1, false},
		{"422 no rule: failed for good", 422, `{"type":"https://quotastack.io/errors/no-active-rule","status":422}`, 1, false},
		{"400 validation: failed for good", 400, `{"type":"https://quotastack.io/errors/validation-error","status":400}`, 1, false},
		{"409 conflict: an earlier debit may exist", 409, `{"type":"https://quotastack.io/errors/idempotency-key-conflict","status":409}`, 1, true},
		{"500: may have executed", 500, `{"type":"https://quotastack.io/errors/internal-error","status":500}`, 1, true},
		{"429 on the first attempt: an earlier call of the order may have executed", 429, `{"type":"https://quotastack.io/errors/rate-limited","status":429}`, 1, true},
		{"401: answered before the key is looked up", 401, `{"type":"https://quotastack.io/errors/unauthorized","status":401}`, 1, true},
		{"429 after a retry: an earlier attempt may have executed", 429, `{"type":"https://quotastack.io/errors/rate-limited","status":429}`, 2, true},
		{"garbage 200: unknown", 200, `{"id":`, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					rw.Header().Set("Content-Type", "application/json")
					_, _ = io.WriteString(rw, `{"customer_id":"c","balance":500000,"blocks":[{"id":"b","original_amount":500000,"remaining_amount":500000,"priority":0,"expires_at":null}]}`)
					return
				}
				if tt.status == 429 {
					rw.Header().Set("Retry-After", "0")
				}
				rw.Header().Set("Content-Type", "application/problem+json")
				rw.WriteHeader(tt.status)
				_, _ = io.WriteString(rw, tt.body)
			})
			c := loopbackClient(t, h, tt.retries)
			_, err := plan.Buy(context.Background(), c, quotastack.ExternalID("u"), hourPlan, "ord_x")
			require.Error(t, err)
			var perr *plan.Error
			require.True(t, errors.As(err, &perr), "%v", err)
			assert.Equal(t, tt.wantUnknown, errors.Is(err, plan.ErrUnknownOutcome), "%v", err)
			assert.Equal(t, !tt.wantUnknown, errors.Is(err, plan.ErrNotBought), "%v", err)
			assert.NotErrorIs(t, err, plan.ErrHalfDone)
			if tt.wantUnknown {
				assert.Contains(t, err.Error(), "same order id")
			}
		})
	}
}

// A server that debits asynchronously (202 Accepted, no body): the plan is
// granted only once the wallet shows the debit; a debit the server accepted
// and then could not execute grants nothing.
func TestAcceptedDebitIsConfirmedBeforeGranting(t *testing.T) {
	t.Parallel()
	t.Run("confirmed by the wallet", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 250_000)
		c, rw := rewritingClient(t, w)
		rw.as202.Store(true)
		p, err := plan.Buy(context.Background(), c, w.cust, hourPlan, "ord_async")
		require.NoError(t, err)
		assert.True(t, p.Debit.Accepted)
		assert.Len(t, w.planBlocks(), 1)
		assert.Equal(t, int64(150_000), w.wallet())
	})
	t.Run("accepted but never executed: no grant", func(t *testing.T) {
		t.Parallel()
		w := setup(t, 50_000) // the async debit fails later
		c, rw := rewritingClient(t, w)
		rw.as202.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := plan.Buy(ctx, c, w.cust, hourPlan, "ord_async_short")
		require.Error(t, err)
		assert.ErrorIs(t, err, plan.ErrUnconfirmed)
		assert.ErrorIs(t, err, plan.ErrUnknownOutcome)
		assert.Empty(t, w.planBlocks(), "never grant a plan whose debit isn't confirmed")
		for _, r := range w.srv.Requests() {
			assert.NotEqual(t, "/v1/topup/grant", r.Path)
		}
	})
}

func loopbackClient(t *testing.T, h http.Handler, attempts int) *quotastack.Client {
	t.Helper()
	srv := newLoopback(t, h)
	c, err := quotastack.NewClient("qs_test_k", quotastack.WithBaseURL(srv),
		quotastack.WithRetry(attempts, time.Millisecond, 2*time.Millisecond))
	require.NoError(t, err)
	return c
}

func newLoopback(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
