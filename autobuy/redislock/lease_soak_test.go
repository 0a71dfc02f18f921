package redislock_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/chargelogtest"
	"github.com/quotastack/quotastack-go/autobuy/redislock"
)

// TestLeaseSoak: chargelogtest.LeaseSoak on the Redis journal, locker and
// ChargeLog, each replica through a proxy, one of which loses a reply every
// 20 ms after Redis ran its command (go-redis sends it again). It found
// go-redis's resend of a claim answered as another claimer's: the gate
// waited for its own claim, then let its action through uncounted.
func TestLeaseSoak(t *testing.T) {
	t.Parallel()
	target := os.Getenv("QUOTASTACK_TEST_REDIS_ADDR")
	store := "redis-server " + target
	if target == "" {
		target, store = miniredis.RunT(t).Addr(), "miniredis"
	}
	prefix := fmt.Sprintf("leasesoak:%d:", time.Now().UnixNano())
	var proxies []*proxy
	var dropped atomic.Int64
	figs := chargelogtest.LeaseSoak(t, chargelogtest.LeaseSoakConfig{
		Replica: func(t *testing.T, _ int) []autobuy.Option {
			p := startProxy(t, target)
			proxies = append(proxies, p)
			rdb := redis.NewClient(&redis.Options{Addr: p.Addr()})
			t.Cleanup(func() { _ = rdb.Close() })
			j, err := redislock.NewJournal(rdb, redislock.WithJournalPrefix(prefix))
			require.NoError(t, err)
			charges, err := redislock.NewChargeLog(rdb, redislock.WithChargeLogPrefix(prefix))
			require.NoError(t, err)
			return []autobuy.Option{autobuy.WithJournal(j), autobuy.WithChargeLog(charges),
				autobuy.WithLocker(redislock.New(rdb, redislock.WithPrefix(prefix), redislock.WithRetryInterval(5*time.Millisecond)))}
		},
		Faults: func(stop <-chan struct{}) {
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
					proxies[rng.IntN(len(proxies))].DropNextReply()
					dropped.Add(1)
				}
			}
		},
	})
	t.Logf("lease soak (%s): %+v; %d Redis replies lost", store, figs, dropped.Load())
}
