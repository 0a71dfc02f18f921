package redislock_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy/redislock"
	"github.com/quotastack/quotastack-go/webhook"
)

// storeBackends returns the Redis servers to run a store test against:
// miniredis always, and the real redis-server when QUOTASTACK_TEST_REDIS_ADDR
// is set. fastForward moves the backend's clock (a sleep on the real one).
type storeBackend struct {
	name        string
	rdb         *redis.Client
	prefix      string
	fastForward func(time.Duration)
}

func storeBackends(t *testing.T) []storeBackend {
	t.Helper()
	mr, mrdb := miniClient(t)
	out := []storeBackend{{name: "miniredis", rdb: mrdb, prefix: "wh:", fastForward: mr.FastForward}}
	if os.Getenv("QUOTASTACK_TEST_REDIS_ADDR") != "" {
		rdb, prefix := realRedis(t)
		out = append(out, storeBackend{name: "redis-server", rdb: rdb, prefix: prefix,
			fastForward: func(d time.Duration) { time.Sleep(d) }})
	}
	return out
}

func TestWebhookStoreClaims(t *testing.T) {
	t.Parallel()
	for _, b := range storeBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			s := redislock.NewWebhookStore(b.rdb, redislock.WithStorePrefix(b.prefix))
			claim := func(id string) webhook.ClaimResult {
				t.Helper()
				res, err := s.Claim(ctx, id, 200*time.Millisecond)
				require.NoError(t, err)
				return res
			}
			assert.Equal(t, webhook.ClaimNew, claim("msg_1"))
			assert.Equal(t, webhook.ClaimInFlight, claim("msg_1"))
			require.NoError(t, s.Complete(ctx, "msg_1", time.Hour))
			assert.Equal(t, webhook.ClaimDone, claim("msg_1"))
			require.NoError(t, s.Abandon(ctx, "msg_1"), "abandon never forgets a handled id")
			assert.Equal(t, webhook.ClaimDone, claim("msg_1"))

			assert.Equal(t, webhook.ClaimNew, claim("msg_2"))
			require.NoError(t, s.Abandon(ctx, "msg_2"))
			assert.Equal(t, webhook.ClaimNew, claim("msg_2"), "an abandoned claim is free again")

			assert.Equal(t, webhook.ClaimNew, claim("msg_3"))
			b.fastForward(300 * time.Millisecond)
			assert.Equal(t, webhook.ClaimNew, claim("msg_3"), "a lapsed claim is free again")

			ttl, err := b.rdb.PTTL(ctx, b.prefix+"msg_1").Result()
			require.NoError(t, err)
			assert.Greater(t, ttl, 50*time.Minute, "a handled id is kept for the retention")
		})
	}
}

const storeSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// TestWebhookStoreSharedByReplicas: two replicas with their own verifiers
// and one Redis store handle a delivery once, whichever replica gets it.
func TestWebhookStoreSharedByReplicas(t *testing.T) {
	t.Parallel()
	for _, b := range storeBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			store := redislock.NewWebhookStore(b.rdb, redislock.WithStorePrefix(b.prefix+"shared:"))
			var calls atomic.Int32
			var replicas []http.Handler
			for range 2 {
				v, err := webhook.NewVerifier(storeSecret, webhook.WithReplayStore(store))
				require.NoError(t, err)
				replicas = append(replicas, v.Handler(func(context.Context, *webhook.Event) error {
					calls.Add(1)
					return nil
				}))
			}
			body := `{"id":"evt_1","type":"subscription.renewed","created_at":"2026-12-02T12:00:00Z","data":{}}`
			for _, h := range append(replicas, replicas...) {
				r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
				hdr, err := webhook.SignedHeaders(storeSecret, "msg_shared", time.Now(), []byte(body))
				require.NoError(t, err)
				for k, vs := range hdr {
					r.Header[k] = vs
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, r)
				assert.Equal(t, http.StatusNoContent, rec.Code)
			}
			assert.Equal(t, int32(1), calls.Load(), "one delivery handled once across replicas")
		})
	}
}

func TestWebhookStoreBoundedWhenRedisIsPartitioned(t *testing.T) {
	t.Parallel()
	rdb, p := partitionable(t)
	s := redislock.NewWebhookStore(rdb, redislock.WithStoreTimeout(300*time.Millisecond), redislock.WithStorePrefix(uniqueKey(t)))
	p.Pause()
	start := time.Now()
	_, err := s.Claim(context.WithoutCancel(context.Background()), "msg_1", time.Minute)
	assert.Less(t, time.Since(start), hangLimit)
	assert.ErrorIs(t, err, redislock.ErrTimeout)
}
