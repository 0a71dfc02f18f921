package quotastacktest

import (
	"sync"
	"time"
)

// The public docs' rate limit: 100 requests per 60 s per tenant, one bucket for all endpoints.
const (
	DocumentedRateLimit  = 100
	DocumentedRateWindow = 60 * time.Second
)

// WithDocumentedRateLimit turns on the docs' rate limit: at most 100 requests in any 60 s
// window, all endpoints together, 429 rate-limited with a truthful Retry-After in seconds
// (see WithRateLimit). With the wall clock a test that goes over it really waits; use a
// ManualClock to step past the window.
func WithDocumentedRateLimit() Option {
	return WithRateLimit(DocumentedRateLimit, DocumentedRateWindow)
}

// rateLimiter is a sliding-window log for the one API key the server accepts, on the server
// clock: it admits a request when fewer than n were admitted in the last per. It is the
// strictest reading of "n requests per period": a token bucket or fixed windows admit
// bursts of up to 2n within one period, this never does.
type rateLimiter struct {
	mu    sync.Mutex
	n     int
	per   time.Duration
	times []time.Time // admission times, oldest first; times[head:] are within the window
	head  int
}

func (l *rateLimiter) set(n int, per time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if per <= 0 || n <= 0 {
		n = 0
	}
	l.n, l.per, l.times, l.head = n, per, nil, 0
}

// take admits a request at now, or returns the whole seconds (at least 1) until the oldest
// admitted request leaves the window and a slot frees up.
func (l *rateLimiter) take(now time.Time) (retryAfterSec int64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n <= 0 {
		return 0, true
	}
	for l.head < len(l.times) && !l.times[l.head].Add(l.per).After(now) {
		l.head++
	}
	if l.head > 64 && l.head > len(l.times)/2 { // forget what left the window, amortized O(1)
		l.times = append(l.times[:0], l.times[l.head:]...)
		l.head = 0
	}
	if len(l.times)-l.head < l.n {
		l.times = append(l.times, now)
		return 0, true
	}
	wait := l.times[l.head].Add(l.per).Sub(now)
	secs := int64((wait + time.Second - 1) / time.Second)
	return max(secs, 1), false
}
