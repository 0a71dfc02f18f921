package quotastack_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

// scriptedTransport answers each request with the next scripted status (200
// when the script runs out) and records when each request arrived.
type scriptedTransport struct {
	mu         sync.Mutex
	script     []int
	retryAfter string
	arrivals   []time.Time
}

func (s *scriptedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	s.mu.Lock()
	s.arrivals = append(s.arrivals, time.Now())
	status := http.StatusOK
	if len(s.script) > 0 {
		status, s.script = s.script[0], s.script[1:]
	}
	s.mu.Unlock()
	h := http.Header{"Content-Type": {"application/json"}}
	body := `{"allowed":true}`
	if status == http.StatusTooManyRequests {
		h.Set("Content-Type", "application/problem+json")
		h.Set("Retry-After", s.retryAfter)
		body = `{"type":"https://quotastack.io/errors/rate-limited","title":"Rate limited","status":429}`
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body)), Request: req}, nil
}

func (s *scriptedTransport) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.arrivals)
}

func (s *scriptedTransport) times() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.arrivals...)
}

func pacedClient(t *testing.T, base string, tr http.RoundTripper, opts ...quotastack.Option) *quotastack.Client {
	t.Helper()
	c, err := quotastack.NewClient(testKey, append([]quotastack.Option{quotastack.WithBaseURL(base),
		quotastack.WithTransport(tr), quotastack.WithRetry(4, time.Millisecond, 5*time.Second)}, opts...)...)
	require.NoError(t, err)
	return c
}

func checkCall(ctx context.Context, c *quotastack.Client) error {
	_, err := c.Check(ctx, quotastack.ExternalID("u1"), "chat_message", 1)
	return err
}

// A 429 pauses every caller of the client, not only the one that got it: no
// request reaches the server before the Retry-After has passed.
func TestRateLimit429PausesEveryCaller(t *testing.T) {
	t.Parallel()
	tr := &scriptedTransport{script: []int{429}, retryAfter: "1"}
	c := pacedClient(t, baseURL, tr)
	require.NoError(t, checkCall(context.Background(), c)) // 429, then a retry after the pause

	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { errs[i] = checkCall(context.Background(), c) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	times := tr.times()
	require.Len(t, times, 10)
	for i, at := range times[1:] {
		assert.GreaterOrEqual(t, at.Sub(times[0]), time.Second, "request %d came inside the pause", i+1)
	}
}

// A call whose deadline ends before the pause does fails at once with
// ErrRateLimited carrying the wait, and sends nothing.
func TestRateLimitPauseLongerThanTheDeadlineFailsAtOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, retryAfter string
		wantMin, wantMax time.Duration
	}{
		{"seconds", "30", 29 * time.Second, 30 * time.Second},
		{"hostile value capped", "999999999", 59 * time.Second, quotastack.MaxRatePause},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := &scriptedTransport{script: []int{429}, retryAfter: tc.retryAfter}
			c := pacedClient(t, baseURL, tr)
			err := checkCall(context.Background(), c)
			var apiErr *quotastack.APIError
			require.ErrorAs(t, err, &apiErr, "a Retry-After above the retry cap is not waited for")
			assert.Equal(t, 1, apiErr.Attempts)

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err = checkCall(ctx, c)
			require.ErrorIs(t, err, quotastack.ErrRateLimited)
			var rl *quotastack.RateLimitError
			require.ErrorAs(t, err, &rl)
			assert.Equal(t, "paused", rl.Reason)
			assert.GreaterOrEqual(t, rl.Wait, tc.wantMin)
			assert.LessOrEqual(t, rl.Wait, tc.wantMax)
			assert.NoError(t, ctx.Err(), "failed at once, not at the deadline")
			assert.Equal(t, 1, tr.count(), "nothing sent during the pause")
			assert.NotContains(t, err.Error(), testKey)
		})
	}
}

// A 429 whose Retry-After the call's deadline can't cover is not retried.
func TestRateLimit429NotRetriedPastTheDeadline(t *testing.T) {
	t.Parallel()
	tr := &scriptedTransport{script: []int{429}, retryAfter: "3"}
	c := pacedClient(t, baseURL, tr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := checkCall(ctx, c)
	var apiErr *quotastack.APIError
	require.ErrorAs(t, err, &apiErr)
	require.ErrorIs(t, err, quotastack.ErrRateLimited)
	assert.Equal(t, 3*time.Second, apiErr.RetryAfter)
	assert.Equal(t, 1, apiErr.Attempts)
	assert.NoError(t, ctx.Err())
}

// The budget lets n/20 through at once, then paces; a call whose slot
// comes too late for its deadline fails at once and takes no slot.
func TestRateBudget(t *testing.T) {
	t.Parallel()
	tr := &scriptedTransport{}
	c := pacedClient(t, baseURL, tr, quotastack.WithRateBudget(10, time.Hour))
	require.NoError(t, checkCall(context.Background(), c)) // the burst: max(10/20, 1)
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := checkCall(ctx, c)
		cancel()
		var rl *quotastack.RateLimitError
		require.ErrorAs(t, err, &rl)
		require.ErrorIs(t, err, quotastack.ErrRateLimited)
		assert.Equal(t, "budget", rl.Reason)
		// One slot per hour/9 (400 s); refused callers take none, so the wait doesn't grow.
		assert.InDelta(t, float64(400*time.Second), float64(rl.Wait), float64(time.Second))
		var reqErr *quotastack.RequestError
		require.ErrorAs(t, err, &reqErr, "no answer from QuotaStack: a fallback may apply")
	}
	assert.Equal(t, 1, tr.count())
}

// Paced calls are spaced by period/n once the burst is spent.
func TestRateBudgetPaces(t *testing.T) {
	t.Parallel()
	tr := &scriptedTransport{}
	c := pacedClient(t, baseURL, tr, quotastack.WithRateBudget(20, time.Second)) // burst 1, then every 1 s/18
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { errs[i] = checkCall(context.Background(), c) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	times := tr.times()
	require.Len(t, times, 8)
	// 8 requests with a burst of 1 take at least 7 intervals of 55 ms.
	assert.GreaterOrEqual(t, times[7].Sub(times[0]), 7*55*time.Millisecond-5*time.Millisecond)
}

// The documented budget applies to the documented host only, unless set.
func TestRateBudgetDefaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, base string
		opts       []quotastack.Option
		paced      bool
	}{
		{"api.quotastack.io", quotastack.DefaultBaseURL, nil, true},
		{"other quotastack.io host", "https://eu.api.quotastack.io", nil, true},
		{"turned off", quotastack.DefaultBaseURL, []quotastack.Option{quotastack.WithRateBudget(0, 0)}, false},
		{"another host", baseURL, nil, false},
		{"set for another host", baseURL, []quotastack.Option{quotastack.WithRateBudget(100, time.Minute)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := &scriptedTransport{}
			c := pacedClient(t, tc.base, tr, tc.opts...)
			var limited int
			for range 120 {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond) // < one slot (600 ms)
				err := checkCall(ctx, c)
				cancel()
				if errors.Is(err, quotastack.ErrRateLimited) {
					limited++
				} else {
					require.NoError(t, err)
				}
			}
			if tc.paced {
				// A burst of 5, then a slot per 667 ms, too late for these calls (a slow machine may earn one or two).
				assert.GreaterOrEqual(t, tr.count(), 5)
				assert.LessOrEqual(t, tr.count(), 8)
				assert.Equal(t, 120-tr.count(), limited)
			} else {
				assert.Equal(t, 120, tr.count())
				assert.Zero(t, limited)
			}
		})
	}
}

// pacerFunc adapts a function to quotastack.Pacer.
type pacerFunc func(ctx context.Context, deadline time.Time) error

func (f pacerFunc) Wait(ctx context.Context, deadline time.Time) error { return f(ctx, deadline) }

func TestPacerErrorSendsNothing(t *testing.T) {
	t.Parallel()
	tr := &scriptedTransport{}
	boom := errors.New("pacer store down")
	c := pacedClient(t, baseURL, tr, quotastack.WithPacer(pacerFunc(func(context.Context, time.Time) error { return boom })))
	err := checkCall(context.Background(), c)
	require.ErrorIs(t, err, boom)
	var reqErr *quotastack.RequestError
	require.ErrorAs(t, err, &reqErr)
	assert.Zero(t, tr.count())
}
