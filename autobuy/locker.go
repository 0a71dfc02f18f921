package autobuy

import (
	"context"
	"sync"
)

// Locker serialises auto-buys of one customer. The in-process default covers
// one process; across replicas use a shared implementation (the Redis one in
// autobuy/redislock). Purchase keys derived from the ledger make replicas that
// race on one exhaustion send the same keys even without a shared lock, or
// when a lock is lost; they can't when another grant (a wallet topup) lands
// in the middle of the race, which is what the shared lock is for.
type Locker interface {
	// Lock blocks until the key is held or ctx ends, and returns the function
	// that releases it.
	Lock(ctx context.Context, key string) (unlock func(context.Context) error, err error)
}

// LocalLocker is an in-process Locker: one mutex per key, created on demand
// and freed when nobody holds or waits for it. Safe for concurrent use.
type LocalLocker struct {
	mu    sync.Mutex
	locks map[string]*localLock
}

type localLock struct {
	ch   chan struct{} // holds one token while the lock is held
	refs int
}

// NewLocalLocker returns an empty LocalLocker.
func NewLocalLocker() *LocalLocker { return &LocalLocker{locks: map[string]*localLock{}} }

// Lock implements Locker.
func (l *LocalLocker) Lock(ctx context.Context, key string) (func(context.Context) error, error) {
	l.mu.Lock()
	lk := l.locks[key]
	if lk == nil {
		lk = &localLock{ch: make(chan struct{}, 1)}
		l.locks[key] = lk
	}
	lk.refs++
	l.mu.Unlock()

	select {
	case lk.ch <- struct{}{}:
	case <-ctx.Done():
		l.drop(key, lk)
		return nil, ctx.Err()
	}
	var once sync.Once
	return func(context.Context) error {
		once.Do(func() {
			<-lk.ch
			l.drop(key, lk)
		})
		return nil
	}, nil
}

func (l *LocalLocker) drop(key string, lk *localLock) {
	l.mu.Lock()
	lk.refs--
	if lk.refs == 0 {
		delete(l.locks, key)
	}
	l.mu.Unlock()
}
