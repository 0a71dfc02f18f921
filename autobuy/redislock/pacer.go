package redislock

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotastack/quotastack-go"
)

// gcra reserves one slot of a budget shared through one Redis key: the
// generic cell rate algorithm, whose state is the theoretical arrival time
// (TAT, µs on the Redis clock) of the next slot. A slot that would come
// later than the caller can wait is not taken.
//
// KEYS[1] the budget; ARGV interval µs, burst, most the caller waits in µs (-1: no limit).
// Returns {1, wait µs} when a slot was taken, {0, wait µs} when refused.
var gcra = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local maxwait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local newtat = tat + interval
local wait = newtat - burst * interval - now
if wait < 0 then wait = 0 end
if maxwait >= 0 and wait > maxwait then return {0, wait} end
redis.call('SET', KEYS[1], newtat, 'PX', math.floor((newtat - now) / 1000) + 1000)
return {1, wait}
`)

// Pacer is a quotastack.Pacer whose budget is shared by every replica using
// the same Redis key: at most n requests per period for the tenant, shaped
// like quotastack.BudgetShape (a burst of n/20, then 90% of n per period),
// on the Redis server's clock. Slots go first come, first served (the
// in-process quotastack.LocalPacer also orders waiters by deadline). A call
// whose slot would come after the first half of the time it has left is
// refused with a *quotastack.RateLimitError, like the local pacer. If Redis
// can't be reached, stalls or lies the attempt is not sent (the error says
// why). Each Redis call is bounded by the call's deadline and the pacer's
// timeout (WithPacerTimeout), whatever go-redis does with contexts. Safe for
// concurrent use.
type Pacer struct {
	rdb      redis.Scripter
	key      string
	interval time.Duration
	burst    int
	timeout  time.Duration
}

// PacerOption configures a Pacer.
type PacerOption func(*Pacer)

// WithPacerTimeout bounds each Redis call of the pacer (default 2 s); a
// call's earlier deadline bounds it further.
func WithPacerTimeout(d time.Duration) PacerOption { return func(p *Pacer) { p.timeout = d } }

// NewPacer returns a pacer of n requests per period shared through key on rdb;
// give it to quotastack.WithPacer on every replica.
func NewPacer(rdb redis.Scripter, key string, n int, per time.Duration, opts ...PacerOption) (*Pacer, error) {
	if n <= 0 || per <= 0 || per/time.Duration(n) < 2*time.Microsecond {
		return nil, fmt.Errorf("redislock: pacer needs n > 0 and per/n of at least 1µs")
	}
	interval, burst := quotastack.BudgetShape(n, per)
	p := &Pacer{rdb: rdb, key: key, interval: interval, burst: burst, timeout: DefaultCallTimeout}
	for _, o := range opts {
		o(p)
	}
	if p.timeout <= 0 {
		return nil, fmt.Errorf("redislock: the pacer timeout must be positive")
	}
	Protect(rdb)
	return p, nil
}

// Wait implements quotastack.Pacer.
func (p *Pacer) Wait(ctx context.Context, deadline time.Time) error {
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	maxWait := int64(-1)
	if !deadline.IsZero() {
		maxWait = max(time.Until(deadline)/2, 0).Microseconds()
	}
	bound := p.timeout
	if !deadline.IsZero() {
		bound = min(bound, time.Until(deadline))
	}
	var res []int64
	err := bounded(ctx, bound, func(ctx context.Context) error {
		var err error
		res, err = gcra.Run(ctx, p.rdb, []string{p.key}, p.interval.Microseconds(), p.burst, maxWait).Int64Slice()
		return err
	}, nil)
	if err != nil {
		return fmt.Errorf("redislock: pacer: %w", err)
	}
	if len(res) != 2 {
		return fmt.Errorf("redislock: pacer: unexpected reply %v", res)
	}
	wait := time.Duration(res[1]) * time.Microsecond
	if res[0] == 0 {
		return &quotastack.RateLimitError{Wait: wait, Reason: "budget"}
	}
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
