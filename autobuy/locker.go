package autobuy

import (
	"context"
	"sync"
)

// Locker serialises the purchases of one customer. The in-process default
// covers one process; replicas share one (the Redis one in
// autobuy/redislock) together with a shared Journal. A lock that expires
// while held can't make a purchase run twice (the journal's revisions and
// the order's idempotency keys keep it single), and the journal refuses a
// second open intent for the customer; a gate deciding on a stale check
// while another's purchase starts and ends is what remains, so keep the
// lock's TTL above the purchase timeout.
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
