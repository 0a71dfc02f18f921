package redislock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotastack/quotastack-go/webhook"
)

// WebhookStore is a webhook.ReplayStore on Redis, shared by every replica
// that receives QuotaStack webhooks: a claim is SET NX with the claim's TTL,
// a handled id is SET to "done" with the retention. Each call is bounded by
// the store's timeout (default 2 s), whatever the context. Safe for
// concurrent use.
type WebhookStore struct {
	store
	prefix string
}

var _ webhook.ReplayStore = (*WebhookStore)(nil)

// StoreOption configures a WebhookStore.
type StoreOption func(*WebhookStore)

// WithStorePrefix prefixes every Redis key of the store (default "quotastack:webhook:").
func WithStorePrefix(p string) StoreOption { return func(s *WebhookStore) { s.prefix = p } }

// WithStoreTimeout bounds each Redis call of the store (default 2 s).
func WithStoreTimeout(d time.Duration) StoreOption { return func(s *WebhookStore) { s.timeout = d } }

// NewWebhookStore returns a WebhookStore on rdb. Pass it to
// webhook.NewVerifier with webhook.WithReplayStore.
func NewWebhookStore(rdb redis.UniversalClient, opts ...StoreOption) *WebhookStore {
	s := &WebhookStore{store: newStore(rdb, DefaultCallTimeout), prefix: "quotastack:webhook:"}
	for _, o := range opts {
		o(s)
	}
	return s
}

const (
	claimedValue = "claimed"
	doneValue    = "done"
)

// abandonScript deletes the key only while it is a claim, never a done mark.
var abandonScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`)

// Claim implements webhook.ReplayStore.
func (s *WebhookStore) Claim(ctx context.Context, id string, ttl time.Duration) (webhook.ClaimResult, error) {
	var res webhook.ClaimResult
	err := s.call(ctx, func(ctx context.Context) error {
		ok, err := s.rdb.SetNX(ctx, s.prefix+id, claimedValue, ttl).Result()
		if err != nil {
			return err
		}
		if ok {
			res = webhook.ClaimNew
			return nil
		}
		v, err := s.rdb.Get(ctx, s.prefix+id).Result()
		switch {
		case errors.Is(err, redis.Nil):
			res = webhook.ClaimInFlight // lapsed just now: the sender's next try claims it
		case err != nil:
			return err
		case v == doneValue:
			res = webhook.ClaimDone
		default:
			res = webhook.ClaimInFlight
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("redislock: webhook store: claim: %w", err)
	}
	return res, nil
}

// Complete implements webhook.ReplayStore.
func (s *WebhookStore) Complete(ctx context.Context, id string, retention time.Duration) error {
	err := s.call(ctx, func(ctx context.Context) error {
		return s.rdb.Set(ctx, s.prefix+id, doneValue, retention).Err()
	})
	if err != nil {
		return fmt.Errorf("redislock: webhook store: complete: %w", err)
	}
	return nil
}

// Abandon implements webhook.ReplayStore.
func (s *WebhookStore) Abandon(ctx context.Context, id string) error {
	err := s.call(ctx, func(ctx context.Context) error {
		return abandonScript.Run(ctx, s.rdb, []string{s.prefix + id}, claimedValue).Err()
	})
	if err != nil {
		return fmt.Errorf("redislock: webhook store: abandon: %w", err)
	}
	return nil
}
