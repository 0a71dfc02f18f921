package quotastack

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/quotastack/quotastack-go/internal/retry"
)

// The tenant's documented rate limit: 100 requests per 60 s, one bucket for
// every endpoint. A client of the documented API host (*.quotastack.io)
// paces itself to it unless WithRateBudget says otherwise.
const (
	DefaultRateBudget = 100
	DefaultRatePeriod = 60 * time.Second
)

// MaxRatePause is the longest a 429's Retry-After pauses the client: the
// documented window is 60 s, so a longer value is a server error, and a
// hostile one must not stop the client for good.
const MaxRatePause = 60 * time.Second

// WithRateBudget paces the client to n requests per period (every HTTP
// attempt counts, retries included), shared by all its callers: a call waits
// its turn, or fails at once with ErrRateLimited when its deadline can't
// cover the wait. n/20 requests may go at once, then 90% of n per period,
// evenly spaced (BudgetShape), so no window of length period holds more than
// 95% of n. n <= 0 turns pacing off (429 answers still pause the client).
// Without this option a client of *.quotastack.io uses the documented 100
// per 60 s and a client of any other host (a fake, a proxy) is not paced.
func WithRateBudget(n int, per time.Duration) Option {
	return func(c *config) {
		c.pacer, c.paceSet = nil, true
		if n > 0 && per > 0 {
			c.pacer = NewLocalPacer(n, per)
		}
	}
}

// WithPacer paces the client's requests with p instead of a local budget,
// e.g. a budget shared by the replicas of a service through Redis
// (implement Pacer over a shared store). nil turns pacing off.
func WithPacer(p Pacer) Option { return func(c *config) { c.pacer, c.paceSet = p, true } }

// Pacer hands out request slots; Wait is called before every HTTP attempt
// by all the callers of a client, with the call's deadline (zero: none; ctx
// may also end). It returns nil when the attempt may be sent; a
// *RateLimitError when the slot would come too late for deadline (at once,
// or as soon as that is known), without sending anything; ctx's error; or
// an error of the pacer itself (the attempt is not sent).
type Pacer interface {
	Wait(ctx context.Context, deadline time.Time) error
}

// drainer is a Pacer that can forget the slots it has saved up, which the
// client does when the server answers 429: the server's bucket is empty.
type drainer interface{ drain(now time.Time) }

// RateLimitError is a call the client did not send because the tenant's rate
// limit would hold it past its deadline: the server asked for a pause (429
// with Retry-After) or the client's budget has no slot in time. It matches
// ErrRateLimited; Wait is how long the call would have had to wait.
type RateLimitError struct {
	Wait   time.Duration
	Reason string // "paused" (after a 429) or "budget"
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("quotastack: rate limited: %s wait of %s exceeds the call's deadline", e.Reason, e.Wait.Round(time.Millisecond))
}

// Is makes errors.Is(err, ErrRateLimited) true.
func (e *RateLimitError) Is(target error) bool { return target == ErrRateLimited }

// rateGate is the client-wide view of the rate limit: the pause a 429 asked
// for and the pacer's budget. Every attempt of every call goes through it.
type rateGate struct {
	until   atomic.Int64 // unix nanoseconds: no request before this
	spread  atomic.Int64 // nanoseconds: each waiter wakes at until + rand[0, spread)
	pacer   Pacer
	minWait time.Duration // pause after a 429 without a usable Retry-After
}

// pacedTransport waits at the client's rate gate before each attempt and
// learns the pause from each 429.
type pacedTransport struct {
	next http.RoundTripper
	gate *rateGate
}

func (t *pacedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	var deadline time.Time
	if st, ok := ctx.Value(callStateKey{}).(*callState); ok {
		deadline = st.deadline
	} else {
		deadline, _ = ctx.Deadline()
	}
	if err := t.gate.wait(ctx, deadline); err != nil {
		return nil, err
	}
	if op := operationOf(ctx); op != nil && !op.started.Load() {
		op.started.Store(true) // it has spent a request: its other calls finish first
	}
	resp, err := t.next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		t.gate.pause(resp)
	}
	return resp, err
}

// newRateGate builds the gate of a client: the configured pacer, else the
// documented budget for the documented host, else none.
func newRateGate(cfg *config, host string) *rateGate {
	g := &rateGate{pacer: cfg.pacer, minWait: cfg.waitMin}
	if !cfg.paceSet && isQuotaStackHost(host) {
		g.pacer = NewLocalPacer(DefaultRateBudget, DefaultRatePeriod)
	}
	return g
}

func isQuotaStackHost(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == "quotastack.io" || strings.HasSuffix(host, ".quotastack.io")
}

// pause makes every caller wait for the Retry-After of a 429 (capped at
// MaxRatePause), and empties the pacer's saved-up slots.
func (g *rateGate) pause(resp *http.Response) {
	now := time.Now()
	if dr, ok := g.pacer.(drainer); ok {
		dr.drain(now)
	}
	d, ok := retry.RetryAfter(resp, now)
	switch {
	case !ok:
		d = g.minWait
	case d <= 0:
		return // "retry now"
	}
	d = min(d, MaxRatePause)
	// Waiters spread their wake-up over a tenth of the pause (10 ms to 1 s),
	// so they don't return as one wave.
	spread := min(max(d/10, 10*time.Millisecond), time.Second)
	end := now.Add(d).UnixNano()
	for {
		cur := g.until.Load()
		if end <= cur || g.until.CompareAndSwap(cur, end) {
			break
		}
	}
	g.spread.Store(int64(spread))
}

// wait holds an attempt until the pause is over and the pacer grants a slot,
// or fails at once with a *RateLimitError when ctx's deadline comes first.
func (g *rateGate) wait(ctx context.Context, deadline time.Time) error {
	if err := g.waitPause(ctx, deadline); err != nil {
		return err
	}
	if g.pacer == nil {
		return nil
	}
	if err := g.pacer.Wait(ctx, deadline); err != nil {
		var rl *RateLimitError
		if errors.As(err, &rl) || ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("rate pacer: %w", err)
	}
	// A 429 may have paused the client meanwhile: the slot is kept, the pause honoured.
	return g.waitPause(ctx, deadline)
}

func (g *rateGate) waitPause(ctx context.Context, deadline time.Time) error {
	for {
		until := g.until.Load()
		if until == 0 {
			return nil // never paused: no clock to read
		}
		now := time.Now()
		left := time.Duration(until - now.UnixNano())
		if left <= 0 {
			return nil
		}
		if !deadline.IsZero() && deadline.Sub(now) < left {
			return &RateLimitError{Wait: left, Reason: "paused"}
		}
		if s := g.spread.Load(); s > 0 {
			left += time.Duration(rand.Int64N(s)) //nolint:gosec // jitter, not a secret
		}
		if !deadline.IsZero() {
			left = min(left, deadline.Sub(now))
		}
		if err := retry.Sleep(ctx, left); err != nil {
			return err
		}
	}
}

// fits reports whether a retry after a wait of d can still start before
// the call's deadline; a 429 that can't be waited for ends the call at once.
func (st *callState) fits(d time.Duration) bool {
	return st.deadline.IsZero() || time.Until(st.deadline) > d
}

// backoffBound is the longest wait retry.Backoff may choose before retry
// number attempt: the capped Retry-After, or the exponential ceiling.
func backoffBound(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
	if _, ok := retry.RetryAfter(resp, time.Now()); ok {
		return maxWait
	}
	ceiling := minWait
	for i := 0; i < attempt && ceiling < maxWait; i++ {
		ceiling *= 2
	}
	return min(ceiling, maxWait)
}
