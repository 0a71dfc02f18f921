// Package retry holds the retry policy of the QuotaStack client: which
// responses are retried, how long to wait, and how Retry-After is read.
package retry

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ParseRetryAfter reads a Retry-After header value given in whole seconds or
// as an HTTP date (RFC 1123, RFC 850 or ANSI C). A date in the past gives 0.
// ok is false when the value is missing or malformed.
func ParseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		// Cap before multiplying so a huge value can't overflow into a negative duration.
		const maxSecs = int64(1<<63-1) / int64(time.Second)
		if secs > maxSecs {
			secs = maxSecs
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	if d := t.Sub(now); d > 0 {
		return d, true
	}
	return 0, true
}

// HonoursRetryAfter reports whether a response status carries a meaningful
// Retry-After for retrying (429 and 503).
func HonoursRetryAfter(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable
}

// RetryAfter returns the Retry-After wait of a 429 or 503 response.
func RetryAfter(resp *http.Response, now time.Time) (time.Duration, bool) {
	if resp == nil || !HonoursRetryAfter(resp.StatusCode) {
		return 0, false
	}
	return ParseRetryAfter(resp.Header.Get("Retry-After"), now)
}

// RetryableStatus reports whether a status is worth another attempt:
// 429 and every 5xx except 501 Not Implemented.
func RetryableStatus(status int) bool {
	return status == http.StatusTooManyRequests ||
		(status >= 500 && status != http.StatusNotImplemented)
}

// Backoff returns the wait before retry number attempt (0-based). With a
// Retry-After it is the server's wait but at least min (a "0" or a past date
// must not make retries immediate), plus a jitter of up to min so clients
// told the same moment don't come back together, capped at max. Without one
// it is exponential backoff from min with full jitter, capped at max.
func Backoff(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
	if d, ok := RetryAfter(resp, time.Now()); ok {
		return retryAfterWait(d, minWait, maxWait)
	}
	ceiling := minWait
	for i := 0; i < attempt && ceiling < maxWait; i++ {
		if ceiling > maxWait/2 {
			ceiling = maxWait // doubling would pass the cap (or overflow)
			break
		}
		ceiling *= 2
	}
	ceiling = min(ceiling, maxWait)
	if ceiling <= minWait {
		return minWait
	}
	// Full jitter between min and the exponential ceiling spreads replicas apart.
	return minWait + rand.N(ceiling-minWait+1)
}

// retryAfterWait is max(d, min) plus a jitter in [0, min], capped at max.
func retryAfterWait(d, minWait, maxWait time.Duration) time.Duration {
	base := max(d, minWait)
	if base >= maxWait {
		return maxWait
	}
	if minWait <= 0 {
		return base
	}
	j := rand.N(minWait + 1)
	if j > maxWait-base {
		return maxWait
	}
	return base + j
}

// Sleep waits d, or until ctx ends (its error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
