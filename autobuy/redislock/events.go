package redislock

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// EventStore is an autobuy.EventStore on Redis (SET NX with a TTL): replicas
// that share it let an event through once across all their leases. Every
// call is bounded by the store's timeout. Safe for concurrent use.
type EventStore struct {
	rdb     redis.UniversalClient
	prefix  string
	timeout time.Duration
}

// NewEventStore returns an EventStore on rdb; keys are prefix+"qs:event:"+key
// (the key is already injective: the gate derives it).
func NewEventStore(rdb redis.UniversalClient, prefix string) *EventStore {
	return &EventStore{rdb: rdb, prefix: prefix, timeout: 2 * time.Second}
}

// FirstUse implements autobuy.EventStore.
func (s *EventStore) FirstUse(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.rdb.SetNX(ctx, s.prefix+"qs:event:"+key, "1", ttl).Result()
}
