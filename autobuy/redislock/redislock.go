// Package redislock is an autobuy.Locker (bsm/redislock: SET NX PX with a
// random token) and an autobuy.Journal on Redis, for running the autobuy gate
// on several replicas that share both. It lives in its own module so the core
// SDK never pulls in Redis.
//
// A lock is a lease: a watchdog refreshes it at a third of its TTL while
// held. If the lease is lost anyway (a long pause, a Redis failover) after a
// purchase's intent is in the journal, the next replica finishes that intent
// with its keys; a lease lost before the intent is written can let two
// replicas buy for one exhaustion, so keep the TTL far above a purchase.
//
// Every constructor protects the Redis client it is given (see Protect):
// replies over MaxReplyBytes or MaxReplyElements are refused before go-redis
// allocates for them, and go-redis panics become errors. Every call of every
// store runs under a bound of its own, whatever go-redis does with contexts,
// in a goroutine from which no panic escapes; a Redis that is down, stalls or
// lies gives the caller an error within the bound, and the caller's policy
// applies: the gate answers purchase_unavailable when its Locker or Journal
// fails, a gate whose ChargeLog fails answers from the per-action path or errs, a
// Pacer that can't reach Redis fails the attempt (an outage for
// quotastack.IsOutage, so the gate's FallbackPolicy decides), and a webhook
// whose ReplayStore fails is answered 5xx (the sender delivers it again).
//
// Every lock call is bounded (WithLockTimeout, default 2 s), also when the
// caller's context has no deadline (the gate releases under
// context.WithoutCancel): a partitioned Redis can't hold a gate past the
// bound. go-redis ignores context deadlines on sockets unless the client has
// ContextTimeoutEnabled, so a call that overruns is abandoned to its own
// goroutine, which ends at go-redis's ReadTimeout; set ContextTimeoutEnabled
// to have the socket itself give up at the deadline.
package redislock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"
)

// Locker implements autobuy.Locker on Redis. Safe for concurrent use.
type Locker struct {
	client  *redislock.Client
	ttl     time.Duration
	retry   time.Duration
	refresh bool
	prefix  string
	timeout time.Duration // bound of one release or refresh
}

// DefaultCallTimeout bounds each release and refresh, and a Lock whose
// context has no deadline waits at most the TTL.
const DefaultCallTimeout = 2 * time.Second

// WithLockTimeout bounds each Redis call of a release or a refresh (default
// 2 s), whatever the context. Lock is bounded by its context, or by the TTL
// when the context has no deadline.
func WithLockTimeout(d time.Duration) Option { return func(l *Locker) { l.timeout = d } }

// Option configures a Locker.
type Option func(*Locker)

// WithTTL sets the lease of a lock (default 30 s).
func WithTTL(d time.Duration) Option { return func(l *Locker) { l.ttl = d } }

// WithRetryInterval sets how often a waiting Lock retries (default 50 ms).
func WithRetryInterval(d time.Duration) Option { return func(l *Locker) { l.retry = d } }

// WithoutRefresh turns off the watchdog, so a lock lapses after its TTL even
// while held (for tests that show what a lost lock does).
func WithoutRefresh() Option { return func(l *Locker) { l.refresh = false } }

// WithPrefix prefixes every Redis key (default "").
func WithPrefix(p string) Option { return func(l *Locker) { l.prefix = p } }

// New returns a Locker on rdb (a *redis.Client, *redis.ClusterClient, ...).
func New(rdb redis.UniversalClient, opts ...Option) *Locker {
	Protect(rdb)
	l := &Locker{client: redislock.New(rdb), ttl: 30 * time.Second, retry: 50 * time.Millisecond, refresh: true, timeout: DefaultCallTimeout}
	for _, o := range opts {
		o(l)
	}
	return l
}

// ErrLockLost is returned by unlock when the lease had expired before release.
var ErrLockLost = errors.New("redislock: lock expired before it was released")

// ErrTimeout is a Redis call that did not answer within its bound.
var ErrTimeout = errors.New("redislock: redis did not answer in time")

// Lock waits until key is held or ctx ends (at most the TTL if ctx has no
// deadline). The returned unlock stops the watchdog and releases the lock
// within the call timeout, whatever its context; it returns ErrLockLost if
// the lease had lapsed, and an error matching ErrTimeout if Redis did not
// answer (the lock then lapses after its TTL).
func (l *Locker) Lock(ctx context.Context, key string) (func(context.Context) error, error) {
	wait := l.ttl
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	var lock *redislock.Lock
	err := bounded(ctx, wait, func(ctx context.Context) error {
		var err error
		lock, err = l.client.Obtain(ctx, l.prefix+key, l.ttl, &redislock.Options{
			RetryStrategy: redislock.LinearBackoff(l.retry),
		})
		return err
	}, func() {
		// Obtained after Lock gave up: nobody will release it, so do it now.
		if lock != nil {
			ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
			_ = lock.Release(ctx)
			cancel()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("redislock: obtaining %q: %w", key, err)
	}
	stop := make(chan struct{})
	if l.refresh {
		go l.watch(lock, stop) //nolint:gosec // the watchdog outlives Lock's ctx: it runs until unlock
	}
	var once sync.Once
	var uerr error
	return func(ctx context.Context) error {
		once.Do(func() {
			// The watchdog is not waited for: a refresh racing the release
			// can't revive the key (it only extends a key holding our token).
			close(stop)
			err := bounded(ctx, l.timeout, func(ctx context.Context) error { return lock.Release(ctx) }, nil)
			switch {
			case errors.Is(err, redislock.ErrLockNotHeld):
				uerr = ErrLockLost
			case err != nil:
				uerr = fmt.Errorf("redislock: releasing %q: %w", key, err)
			}
		})
		return uerr
	}, nil
}

func (l *Locker) watch(lock *redislock.Lock, stop <-chan struct{}) {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			err := bounded(context.Background(), min(l.ttl/3, l.timeout), func(ctx context.Context) error {
				return lock.Refresh(ctx, l.ttl, nil)
			}, nil)
			if err != nil {
				return // lost, or Redis is unreachable: Release will report it
			}
		}
	}
}

// safely runs fn, turning a panic into an error: no panic escapes a
// goroutine this package starts.
func safely(ctx context.Context, fn func(context.Context) error) (err error) {
	defer recoverInto(&err)
	return fn(ctx)
}

// bounded runs fn with a context that ends after d (or with ctx) and returns
// by then, whether or not fn has: a client that ignores context deadlines on
// its sockets can't hold the caller. late, if not nil, runs after an
// abandoned fn returns.
func bounded(ctx context.Context, d time.Duration, fn func(context.Context) error, late func()) error {
	if d <= 0 {
		return fmt.Errorf("%w (no time left)", ErrTimeout)
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	done := make(chan error, 1)
	var abandoned sync.Mutex // held by the caller until it has decided
	abandoned.Lock()
	gaveUp := false
	go func() {
		defer cancel()
		err := safely(ctx, fn)
		done <- err
		abandoned.Lock()
		defer abandoned.Unlock()
		if gaveUp && late != nil {
			_ = safely(ctx, func(context.Context) error { late(); return nil })
		}
	}()
	select {
	case err := <-done:
		abandoned.Unlock()
		return err
	case <-ctx.Done():
		select {
		case err := <-done: // finished at the same moment
			abandoned.Unlock()
			return err
		default:
		}
		gaveUp = true
		abandoned.Unlock()
		return fmt.Errorf("%w within %s: %w", ErrTimeout, d, ctx.Err())
	}
}
