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
}

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
	l := &Locker{client: redislock.New(rdb), ttl: 30 * time.Second, retry: 50 * time.Millisecond, refresh: true}
	for _, o := range opts {
		o(l)
	}
	return l
}

// ErrLockLost is returned by unlock when the lease had expired before release.
var ErrLockLost = errors.New("redislock: lock expired before it was released")

// Lock waits until key is held or ctx ends. The returned unlock stops the
// watchdog and releases the lock; it returns ErrLockLost if the lease had lapsed.
func (l *Locker) Lock(ctx context.Context, key string) (func(context.Context) error, error) {
	lock, err := l.client.Obtain(ctx, l.prefix+key, l.ttl, &redislock.Options{
		RetryStrategy: redislock.LinearBackoff(l.retry),
	})
	if err != nil {
		return nil, fmt.Errorf("redislock: obtaining %q: %w", key, err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if l.refresh {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.watch(lock, stop)
		}()
	}
	var once sync.Once
	var uerr error
	return func(ctx context.Context) error {
		once.Do(func() {
			close(stop)
			wg.Wait()
			if err := lock.Release(ctx); err != nil {
				if errors.Is(err, redislock.ErrLockNotHeld) {
					uerr = ErrLockLost
					return
				}
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
			ctx, cancel := context.WithTimeout(context.Background(), l.ttl/3)
			err := lock.Refresh(ctx, l.ttl, nil)
			cancel()
			if err != nil {
				return // lost; Release will report it
			}
		}
	}
}
