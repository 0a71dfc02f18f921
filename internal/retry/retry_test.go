package retry_test

import (
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/quotastack/quotastack-go/internal/retry"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"seconds", "1", time.Second, true},
		{"seconds with spaces", " 120 ", 2 * time.Minute, true},
		{"zero", "0", 0, true},
		{"an hour", "3600", time.Hour, true},
		{"RFC 1123 date", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"RFC 850 date", now.Add(time.Minute).Format(time.RFC850), time.Minute, true},
		{"ANSI C date", now.Add(time.Minute).Format(time.ANSIC), time.Minute, true},
		{"date now", now.Format(http.TimeFormat), 0, true},
		{"date in the past", now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"empty", "", 0, false},
		{"blank", "   ", 0, false},
		{"negative", "-1", 0, false},
		{"fraction", "1.5", 0, false},
		{"garbage", "soon", 0, false},
		{"unit suffix", "10s", 0, false},
		{"RFC 3339 is not an HTTP date", now.Add(time.Minute).Format(time.RFC3339), 0, false},
		{"beyond int64", "99999999999999999999", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := retry.ParseRetryAfter(tt.in, now)
			assert.Equal(t, tt.wantOK, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseRetryAfterHugeDoesNotOverflow(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"9223372036854775807", "9223372037", "922337203685477580"} {
		got, ok := retry.ParseRetryAfter(in, now)
		assert.True(t, ok, in)
		assert.Greater(t, got, 290*365*24*time.Hour, "%s stays huge and positive", in)
	}
}

func TestRetryAfterOnlyFor429And503(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		want   bool
	}{{429, true}, {503, true}, {500, false}, {502, false}, {200, false}, {400, false}}
	for _, tt := range tests {
		resp := &http.Response{StatusCode: tt.status, Header: http.Header{"Retry-After": {"7"}}}
		d, ok := retry.RetryAfter(resp, now)
		assert.Equal(t, tt.want, ok, "status %d", tt.status)
		assert.Equal(t, tt.want, retry.HonoursRetryAfter(tt.status))
		if tt.want {
			assert.Equal(t, 7*time.Second, d)
		}
	}
	_, ok := retry.RetryAfter(nil, now)
	assert.False(t, ok, "a transport error has no response")
	_, ok = retry.RetryAfter(&http.Response{StatusCode: 429, Header: http.Header{}}, now)
	assert.False(t, ok, "no header")
}

func TestRetryableStatus(t *testing.T) {
	t.Parallel()
	retryable := map[int]bool{429: true, 500: true, 502: true, 503: true, 504: true, 599: true}
	for _, status := range []int{200, 201, 202, 204, 301, 302, 400, 401, 402, 403, 404, 409, 422, 429, 500, 501, 502, 503, 504, 599} {
		assert.Equal(t, retryable[status], retry.RetryableStatus(status), "status %d", status)
	}
}

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	tests := []struct{ min, max time.Duration }{
		{time.Millisecond, 20 * time.Millisecond},
		{250 * time.Millisecond, 5 * time.Second},
		{time.Second, time.Second},
		{time.Nanosecond, time.Duration(math.MaxInt64)},
	}
	for _, tt := range tests {
		for attempt := range 70 {
			for range 20 {
				d := retry.Backoff(tt.min, tt.max, attempt, nil)
				if !assert.GreaterOrEqual(t, d, tt.min) || !assert.LessOrEqual(t, d, tt.max) {
					t.Fatalf("min %s max %s attempt %d: %s", tt.min, tt.max, attempt, d)
				}
			}
		}
	}
}

func TestBackoffGrowsExponentially(t *testing.T) {
	t.Parallel()
	const minW, maxW = 10 * time.Millisecond, time.Hour
	assert.Equal(t, minW, retry.Backoff(minW, maxW, 0, nil), "the first retry waits the minimum")
	for attempt := 1; attempt < 8; attempt++ {
		ceiling := minW << attempt
		var biggest time.Duration
		for range 500 {
			d := retry.Backoff(minW, maxW, attempt, nil)
			assert.GreaterOrEqual(t, d, minW)
			assert.LessOrEqual(t, d, ceiling, "attempt %d", attempt)
			biggest = max(biggest, d)
		}
		assert.Greater(t, biggest, ceiling/2, "attempt %d reaches past half its ceiling", attempt)
	}
}

func TestBackoffHasJitter(t *testing.T) {
	t.Parallel()
	seen := map[time.Duration]bool{}
	for range 100 {
		seen[retry.Backoff(time.Millisecond, time.Second, 5, nil)] = true
	}
	assert.Greater(t, len(seen), 10, "waits are spread, not identical")
}

func TestBackoffRetryAfterZeroHasJitter(t *testing.T) {
	t.Parallel()
	resp := &http.Response{StatusCode: 429, Header: http.Header{"Retry-After": {"0"}}}
	seen := map[time.Duration]bool{}
	for range 100 {
		d := retry.Backoff(time.Millisecond, time.Second, 0, resp)
		assert.GreaterOrEqual(t, d, time.Millisecond, "never immediate")
		seen[d] = true
	}
	assert.Greater(t, len(seen), 10, "waits are spread, not identical")
}

func TestBackoffRetryAfter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		status     int
		retryAfter string
		want       func(time.Duration) bool
	}{
		{"429 within cap is taken, plus jitter up to min", 429, "2", func(d time.Duration) bool { return d >= 2*time.Second && d <= 2100*time.Millisecond }},
		{"503 within cap is taken, plus jitter up to min", 503, "1", func(d time.Duration) bool { return d >= time.Second && d <= 1100*time.Millisecond }},
		{"3600 is capped at max", 429, "3600", func(d time.Duration) bool { return d == 5*time.Second }},
		{"huge is capped at max", 429, "9223372036854775807", func(d time.Duration) bool { return d == 5*time.Second }},
		{"far date is capped at max", 429, time.Now().Add(24 * time.Hour).UTC().Format(http.TimeFormat),
			func(d time.Duration) bool { return d == 5*time.Second }},
		{"zero waits at least min", 429, "0", func(d time.Duration) bool { return d >= 100*time.Millisecond && d <= 200*time.Millisecond }},
		{"a past date waits at least min", 503, "Wed, 21 Oct 2015 07:28:00 GMT", func(d time.Duration) bool { return d >= 100*time.Millisecond && d <= 200*time.Millisecond }},
		{"garbage falls back to backoff", 429, "soon", func(d time.Duration) bool { return d >= 100*time.Millisecond && d <= 5*time.Second }},
		{"500 ignores Retry-After", 500, "2", func(d time.Duration) bool { return d != 2*time.Second && d >= 100*time.Millisecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp := &http.Response{StatusCode: tt.status, Header: http.Header{"Retry-After": {tt.retryAfter}}}
			d := retry.Backoff(100*time.Millisecond, 5*time.Second, 3, resp)
			assert.True(t, tt.want(d), "got %s", d)
		})
	}
}
