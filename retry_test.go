package quotastack_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jarcoal/httpmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

const checkURL = baseURL + "/v1/customer-by-external-id/u/entitlements/look"

func check(ctx context.Context, c *quotastack.Client) (*quotastack.Entitlement, error) {
	return c.Check(ctx, quotastack.ExternalID("u"), "look", 1)
}

func record(ctx context.Context, c *quotastack.Client, opts ...quotastack.CallOption) (*quotastack.UsageEvent, error) {
	return c.Record(ctx, quotastack.UsageParams{Customer: quotastack.ExternalID("u"), MetricKey: "look", Units: 1}, opts...)
}

// numbered answers attempt n (1-based) with a problem whose detail is "attempt n".
func numbered(status int, kv ...string) httpmock.Responder {
	var n atomic.Int64
	return func(req *http.Request) (*http.Response, error) {
		i := n.Add(1)
		return problemResponder(status, problem(status, "x", fmt.Sprintf("attempt %d", i), ""), kv...)(req)
	}
}

// TestRetryPolicyByStatus: 429 and 5xx (not 501) are retried, for GETs and
// for POSTs (which always carry a key); other statuses are not. When retries
// run out, the last response's status and problem body are kept.
func TestRetryPolicyByStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status   int
		attempts int
	}{
		{400, 1}, {401, 1}, {402, 1}, {404, 1}, {409, 1}, {422, 1},
		{429, 4}, {500, 4}, {501, 1}, {502, 4}, {503, 4}, {504, 4},
	}
	for _, tt := range tests {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(fmt.Sprintf("%s %d", method, tt.status), func(t *testing.T) {
				t.Parallel()
				c, mt := setup(t)
				rec := &recorder{}
				var err error
				if method == http.MethodGet {
					mt.RegisterResponder(method, checkURL, rec.wrap(numbered(tt.status)))
					_, err = check(context.Background(), c)
				} else {
					mt.RegisterResponder(method, baseURL+"/v1/usage", rec.wrap(numbered(tt.status)))
					_, err = record(context.Background(), c)
				}
				require.Error(t, err)
				assert.Len(t, rec.all(), tt.attempts)
				var apiErr *quotastack.APIError
				require.ErrorAs(t, err, &apiErr)
				assert.Equal(t, tt.status, apiErr.StatusCode)
				assert.Equal(t, tt.attempts, apiErr.Attempts)
				assert.Equal(t, tt.attempts > 1, apiErr.Retried())
				assert.Equal(t, fmt.Sprintf("attempt %d", tt.attempts), apiErr.Detail, "the last response's problem is kept")
			})
		}
	}
}

func TestRetried503ThenSuccessKeepsKeyAndBody(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts []quotastack.CallOption
	}{
		{"generated key", nil},
		{"caller key", []quotastack.CallOption{quotastack.WithIdempotencyKey("usage:msg_1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			rec := &recorder{}
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", rec.wrap(sequence(
				problemResponder(503, problem(503, "unavailable", "", "")),
				jsonResponder(200, `{"id":"evt_1","cost":1000}`),
			)))

			got, err := record(context.Background(), c, tt.opts...)
			require.NoError(t, err)
			assert.Equal(t, "evt_1", got.ID)
			assert.Equal(t, 2, got.Meta.Attempts)
			calls := rec.all()
			require.Len(t, calls, 2)
			key := calls[0].Header.Get("Idempotency-Key")
			require.NotEmpty(t, key)
			assert.Equal(t, key, calls[1].Header.Get("Idempotency-Key"), "one key for every attempt of a call")
			assert.Equal(t, key, got.Meta.IdempotencyKey)
			if len(tt.opts) > 0 {
				assert.Equal(t, "usage:msg_1", key, "the caller's key wins")
			}
			assert.JSONEq(t, string(calls[0].Body), string(calls[1].Body), "the body is replayed")
			testJSONBody(t, calls[1], `{"external_customer_id":"u","billable_metric_key":"look","units":1}`)
		})
	}
}

func TestTransportErrorsAreRetried(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset by peer")
	t.Run("then success", func(t *testing.T) {
		t.Parallel()
		c, mt := setup(t)
		rec := &recorder{}
		mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", rec.wrap(sequence(
			httpmock.NewErrorResponder(boom), httpmock.NewErrorResponder(boom), jsonResponder(200, `{"id":"evt_1"}`),
		)))
		got, err := record(context.Background(), c)
		require.NoError(t, err)
		assert.Equal(t, 3, got.Meta.Attempts)
		calls := rec.all()
		require.Len(t, calls, 3)
		assert.Equal(t, calls[0].Header.Get("Idempotency-Key"), calls[2].Header.Get("Idempotency-Key"))
	})
	t.Run("exhausted", func(t *testing.T) {
		t.Parallel()
		c, mt := setup(t)
		mt.RegisterResponder(http.MethodGet, checkURL, httpmock.NewErrorResponder(boom))
		_, err := check(context.Background(), c)
		require.ErrorIs(t, err, boom)
		var reqErr *quotastack.RequestError
		require.ErrorAs(t, err, &reqErr)
		assert.Equal(t, 4, reqErr.Attempts)
		assert.Equal(t, http.MethodGet, reqErr.Method)
		assert.Equal(t, "/v1/customer-by-external-id/u/entitlements/look", reqErr.Path)
		assert.Equal(t, 4, mt.GetTotalCallCount())
		assert.NotContains(t, err.Error(), "api.quotastack.test", "the error names the path, not the full URL")
		var apiErr *quotastack.APIError
		assert.False(t, errors.As(err, &apiErr))
	})
}

func TestRetryAfterSecondsIsHonoured(t *testing.T) {
	t.Parallel()
	c, mt := setup(t, quotastack.WithRetry(2, time.Millisecond, 2*time.Second))
	mt.RegisterResponder(http.MethodGet, checkURL, sequence(
		problemResponder(429, problem(429, "rate-limited", "slow down", ""), "Retry-After", "1"),
		jsonResponder(200, `{"allowed":true}`),
	))

	start := time.Now()
	got, err := check(context.Background(), c)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), time.Second, "waited for Retry-After")
	assert.Equal(t, 2, got.Meta.Attempts)
}

func TestRetryAfterDateIsHonoured(t *testing.T) {
	t.Parallel()
	c, mt := setup(t, quotastack.WithRetry(2, time.Millisecond, 3*time.Second))
	mt.RegisterResponder(http.MethodGet, checkURL, sequence(
		func(req *http.Request) (*http.Response, error) {
			// HTTP dates have whole seconds: now+2s is a wait in (1s, 2s].
			date := time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat)
			return problemResponder(503, problem(503, "unavailable", "", ""), "Retry-After", date)(req)
		},
		jsonResponder(200, `{"allowed":true}`),
	))

	start := time.Now()
	got, err := check(context.Background(), c)
	require.NoError(t, err)
	elapsed := time.Since(start)
	assert.Greater(t, elapsed, 900*time.Millisecond)
	assert.Less(t, elapsed, 3*time.Second)
	assert.Equal(t, 2, got.Meta.Attempts)
}

// TestRetryAfterBeyondCap: a wait longer than the max wait is not taken; the
// caller gets the error at once, carrying the wait.
func TestRetryAfterBeyondCap(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		status     int
		retryAfter func() string
		sentinel   error
		min, max   time.Duration
	}{
		{"429 seconds", 429, func() string { return "3600" }, quotastack.ErrRateLimited, time.Hour, time.Hour},
		{"429 date", 429, func() string { return time.Now().Add(time.Hour).UTC().Format(http.TimeFormat) },
			quotastack.ErrRateLimited, 59 * time.Minute, time.Hour},
		{"503 seconds", 503, func() string { return "3600" }, quotastack.ErrServer, time.Hour, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			mt.RegisterResponder(http.MethodGet, checkURL, func(req *http.Request) (*http.Response, error) {
				return problemResponder(tt.status, problem(tt.status, "rate-limited", "", ""), "Retry-After", tt.retryAfter())(req)
			})

			start := time.Now()
			_, err := check(context.Background(), c)
			assert.Less(t, time.Since(start), time.Second, "did not wait")
			require.ErrorIs(t, err, tt.sentinel)
			var apiErr *quotastack.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.GreaterOrEqual(t, apiErr.RetryAfter, tt.min)
			assert.LessOrEqual(t, apiErr.RetryAfter, tt.max)
			assert.Equal(t, 1, apiErr.Attempts)
			assert.Equal(t, 1, mt.GetTotalCallCount())
			assert.Contains(t, err.Error(), "(retry after ")
		})
	}
}

// TestRetryAfterZeroOrPastWaitsTheMinimum: a zero or past Retry-After does
// not make the retry immediate: it waits at least the minimum backoff.
func TestRetryAfterZeroOrPastWaitsTheMinimum(t *testing.T) {
	t.Parallel()
	for _, ra := range []string{"0", "Mon, 02 Jan 2006 15:04:05 GMT"} {
		t.Run(ra, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t, quotastack.WithRetry(2, 200*time.Millisecond, 5*time.Second))
			mt.RegisterResponder(http.MethodGet, checkURL, sequence(
				problemResponder(429, problem(429, "rate-limited", "", ""), "Retry-After", ra),
				jsonResponder(200, `{"allowed":true}`),
			))
			start := time.Now()
			_, err := check(context.Background(), c)
			require.NoError(t, err)
			assert.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond, "waited the minimum")
			assert.Equal(t, 2, mt.GetTotalCallCount())
		})
	}
}

func TestContextCancelledBeforeTheCall(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodGet, checkURL, jsonResponder(200, `{}`))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	_, err := check(ctx, c)
	require.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, mt.GetTotalCallCount())
	var reqErr *quotastack.RequestError
	require.ErrorAs(t, err, &reqErr)
	assert.Zero(t, reqErr.Attempts)
}

func TestContextCancelledDuringBackoff(t *testing.T) {
	t.Parallel()
	c, mt := setup(t, quotastack.WithRetry(4, 10*time.Second, 10*time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", func(req *http.Request) (*http.Response, error) {
		time.AfterFunc(50*time.Millisecond, cancel) // fires while the client waits 10s
		return problemResponder(503, problem(503, "unavailable", "", ""))(req)
	})

	start := time.Now()
	_, err := record(ctx, c)
	assert.Less(t, time.Since(start), 2*time.Second, "the wait was cut short")
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 1, mt.GetTotalCallCount())
	var reqErr *quotastack.RequestError
	require.ErrorAs(t, err, &reqErr)
	assert.Equal(t, 1, reqErr.Attempts)
}

func TestContextCancelledDuringAttempt(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mt.RegisterResponder(http.MethodGet, checkURL, func(req *http.Request) (*http.Response, error) {
		time.AfterFunc(50*time.Millisecond, cancel)
		<-req.Context().Done() // a server that never answers
		return nil, req.Context().Err()
	})

	start := time.Now()
	_, err := check(ctx, c)
	assert.Less(t, time.Since(start), 2*time.Second)
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 1, mt.GetTotalCallCount(), "a cancelled call is not retried")
}

func TestDeadlineShorterThanBackoff(t *testing.T) {
	t.Parallel()
	c, mt := setup(t, quotastack.WithRetry(4, 5*time.Second, 5*time.Second))
	mt.RegisterResponder(http.MethodGet, checkURL, problemResponder(503, problem(503, "unavailable", "", "")))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()

	start := time.Now()
	_, err := check(ctx, c)
	assert.Less(t, time.Since(start), 2*time.Second, "returned at once, not after the backoff")
	// No retry starts whose backoff could pass the deadline: the call ends
	// at once with the last answer.
	require.ErrorIs(t, err, quotastack.ErrServer)
	assert.NoError(t, ctx.Err(), "before the deadline")
	assert.Equal(t, 1, mt.GetTotalCallCount())
}

func TestCallTimeoutShorterThanBackoff(t *testing.T) {
	t.Parallel()
	c, mt := setup(t, quotastack.WithRetry(4, 5*time.Second, 5*time.Second))
	mt.RegisterResponder(http.MethodGet, checkURL, problemResponder(500, problem(500, "internal-error", "", "")))

	start := time.Now()
	_, err := c.Check(context.Background(), quotastack.ExternalID("u"), "look", 1, quotastack.WithCallTimeout(100*time.Millisecond))
	assert.Less(t, time.Since(start), 2*time.Second)
	require.ErrorIs(t, err, quotastack.ErrServer, "the last answer, at once: the backoff can't fit")
	assert.Equal(t, 1, mt.GetTotalCallCount())
}

// A call deadline that ends during an attempt ends the call with
// context.DeadlineExceeded, not with an attempt timeout to retry.
func TestCallTimeoutDuringAnAttempt(t *testing.T) {
	t.Parallel()
	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(baseURL), quotastack.WithRetry(4, time.Millisecond, time.Millisecond),
		quotastack.WithTransport(roundTripFunc(func(req *http.Request) (*http.Response, error) {
			<-req.Context().Done()
			return nil, req.Context().Err()
		})))
	require.NoError(t, err)
	_, err = c.Check(context.Background(), quotastack.ExternalID("u"), "look", 1, quotastack.WithCallTimeout(50*time.Millisecond))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	var reqErr *quotastack.RequestError
	require.ErrorAs(t, err, &reqErr)
	assert.Equal(t, 1, reqErr.Attempts)
}

func TestIdempotencyKeys(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	rec := &recorder{}
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", rec.wrap(jsonResponder(200, `{"id":"evt"}`)))

	a, err := record(context.Background(), c)
	require.NoError(t, err)
	b, err := record(context.Background(), c)
	require.NoError(t, err)
	mine, err := record(context.Background(), c, quotastack.WithIdempotencyKey("usage:msg_123"))
	require.NoError(t, err)

	calls := rec.all()
	require.Len(t, calls, 3)
	assert.True(t, strings.HasPrefix(a.Meta.IdempotencyKey, "qsk_"), a.Meta.IdempotencyKey)
	assert.NotEqual(t, a.Meta.IdempotencyKey, b.Meta.IdempotencyKey, "one random key per logical call")
	assert.Equal(t, a.Meta.IdempotencyKey, calls[0].Header.Get("Idempotency-Key"))
	assert.Equal(t, b.Meta.IdempotencyKey, calls[1].Header.Get("Idempotency-Key"))
	assert.Equal(t, "usage:msg_123", calls[2].Header.Get("Idempotency-Key"))
	assert.Equal(t, "usage:msg_123", mine.Meta.IdempotencyKey)
	for _, r := range []*quotastack.UsageEvent{a, b, mine} {
		assert.False(t, r.Meta.Replayed)
	}
}

func TestReplayedIsSurfaced(t *testing.T) {
	t.Parallel()
	tests := []struct {
		header string
		want   bool
	}{{"true", true}, {"True", true}, {"false", false}, {"", false}}
	for _, tt := range tests {
		t.Run("header="+tt.header, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage",
				jsonResponder(200, `{"id":"evt_1"}`, "X-Idempotent-Replayed", tt.header))
			got, err := record(context.Background(), c, quotastack.WithIdempotencyKey("usage:1"))
			require.NoError(t, err)
			assert.Equal(t, tt.want, got.Meta.Replayed)
		})
	}
}

// TestRetryWaitsAreBounded: with a 20ms max wait, three retries finish fast,
// and each wait is at least the minimum.
func TestRetryWaitsAreBounded(t *testing.T) {
	t.Parallel()
	c, mt := setup(t, quotastack.WithRetry(4, 10*time.Millisecond, 20*time.Millisecond))
	mt.RegisterResponder(http.MethodGet, checkURL, problemResponder(502, problem(502, "bad-gateway", "", "")))

	start := time.Now()
	_, err := check(context.Background(), c)
	elapsed := time.Since(start)
	require.ErrorIs(t, err, quotastack.ErrServer)
	assert.Equal(t, 4, mt.GetTotalCallCount())
	assert.GreaterOrEqual(t, elapsed, 30*time.Millisecond, "3 waits of at least 10ms")
	assert.Less(t, elapsed, time.Second, "3 waits of at most 20ms")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
