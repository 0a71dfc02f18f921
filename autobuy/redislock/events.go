package redislock

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// EventStore is an autobuy.EventStore on Redis (SET NX with a TTL): replicas
// that share it let an event through once across all their leases. Every
// call is bounded by the store's timeout (WithEventStoreTimeout, default
// 2 s), whatever the context. Safe for
// concurrent use.
type EventStore struct {
	store
	prefix string
}

// NewEventStore returns an EventStore on rdb; keys are prefix+"qs:event:"+key
// (the key is already injective: the gate derives it).
func NewEventStore(rdb redis.UniversalClient, prefix string, opts ...EventStoreOption) *EventStore {
	s := &EventStore{store: newStore(rdb, DefaultCallTimeout), prefix: prefix}
	for _, o := range opts {
		o(s)
	}
	if s.timeout <= 0 {
		s.timeout = DefaultCallTimeout
	}
	return s
}

// EventStoreOption configures an EventStore.
type EventStoreOption func(*EventStore)

// WithEventStoreTimeout bounds each Redis call of the store (default 2 s;
// not positive: the default).
func WithEventStoreTimeout(d time.Duration) EventStoreOption {
	return func(s *EventStore) { s.timeout = d }
}

// FirstUse implements autobuy.EventStore.
func (s *EventStore) FirstUse(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	var first bool
	err := s.call(ctx, func(ctx context.Context) error {
		var err error
		first, err = s.rdb.SetNX(ctx, s.prefix+"qs:event:"+key, "1", ttl).Result()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("redislock: event store: %w", err)
	}
	return first, nil
}
