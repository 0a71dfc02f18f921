package redislock_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/redislock"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

var _ autobuy.Locker = (*redislock.Locker)(nil)

func miniClient(t *testing.T) (*miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return mr, rdb
}

// realRedis returns a client of the redis-server .ci/run starts
// (QUOTASTACK_TEST_REDIS_ADDR), with a key prefix of its own.
func realRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	addr := os.Getenv("QUOTASTACK_TEST_REDIS_ADDR")
	if addr == "" {
		t.Skip("QUOTASTACK_TEST_REDIS_ADDR not set (.ci/run starts a redis-server and sets it)")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rdb.Close() })
	require.NoError(t, rdb.Ping(context.Background()).Err(), "redis at %s", addr)
	return rdb, fmt.Sprintf("test:%s:%d:", t.Name(), time.Now().UnixNano())
}

func TestLockExcludesAndReleases(t *testing.T) {
	t.Parallel()
	_, rdb := miniClient(t)
	l := redislock.New(rdb, redislock.WithRetryInterval(time.Millisecond))
	ctx := context.Background()

	unlock, err := l.Lock(ctx, "k")
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	_, err = l.Lock(short, "k")
	assert.Error(t, err, "held by the first")
	require.NoError(t, unlock(ctx))
	unlock2, err := l.Lock(ctx, "k")
	require.NoError(t, err, "free again")
	require.NoError(t, unlock2(ctx))
	assert.NoError(t, unlock(ctx), "unlock is idempotent")
}

func TestExpiredLockReportsLost(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	l := redislock.New(rdb, redislock.WithTTL(time.Second), redislock.WithoutRefresh())
	unlock, err := l.Lock(context.Background(), "k")
	require.NoError(t, err)
	mr.FastForward(2 * time.Second)
	assert.ErrorIs(t, unlock(context.Background()), redislock.ErrLockLost)
}

func TestWatchdogKeepsTheLease(t *testing.T) {
	t.Parallel()
	rdb, prefix := realRedis(t)
	l := redislock.New(rdb, redislock.WithTTL(300*time.Millisecond), redislock.WithPrefix(prefix), redislock.WithRetryInterval(5*time.Millisecond))
	unlock, err := l.Lock(context.Background(), "k")
	require.NoError(t, err)
	time.Sleep(time.Second) // over three TTLs
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = l.Lock(short, "k")
	assert.Error(t, err, "still held thanks to the refresh")
	assert.NoError(t, unlock(context.Background()))
}

type world struct {
	srv  *quotastacktest.Server
	cust quotastack.Customer
}

var hourPlan = plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}

func setup(t *testing.T) *world {
	t.Helper()
	srv := quotastacktest.Start(t)
	require.NoError(t, srv.SeedRecipe())
	_, err := srv.Grant("user42:companion7", quotastacktest.BlockSpec{Credits: 250_000})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, srv.CheckInvariants()) })
	return &world{srv: srv, cust: quotastack.ExternalID("user42:companion7")}
}

func (w *world) replica(t *testing.T, l autobuy.Locker, opts ...autobuy.Option) *autobuy.Gatekeeper {
	t.Helper()
	return w.replicaWith(t, l, nil, opts...)
}

func (w *world) replicaWith(t *testing.T, l autobuy.Locker, copts []quotastack.Option, opts ...autobuy.Option) *autobuy.Gatekeeper {
	t.Helper()
	c, err := quotastack.NewClient(w.srv.APIKey, append([]quotastack.Option{quotastack.WithBaseURL(w.srv.URL),
		quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond)}, copts...)...)
	require.NoError(t, err)
	g, err := autobuy.New(c, append([]autobuy.Option{autobuy.WithPlan(hourPlan), autobuy.WithLocker(l)}, opts...)...)
	require.NoError(t, err)
	return g
}

func (w *world) planPurchases() (debits, grants int) {
	for _, e := range w.srv.Ledger("user42:companion7") {
		switch {
		case e.Kind == "debit" && e.MetricKey == "plan_purchase_1hr":
			debits++
		case e.Kind == "grant" && e.Metadata["source"] == "plan_grant":
			grants++
		}
	}
	return debits, grants
}

func gateAll(t *testing.T, w *world, gates []*autobuy.Gatekeeper, n int) int {
	t.Helper()
	var wg sync.WaitGroup
	var allowed atomic.Int32
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := gates[i%len(gates)].Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("m%d", i)))
			if err != nil {
				errs <- err
				return
			}
			if d.Allowed {
				allowed.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	return int(allowed.Load())
}

func TestReplicasSharingRedisBuyOnePlan(t *testing.T) {
	t.Parallel()
	rdb, prefix := realRedis(t)
	w := setup(t)
	w.srv.SetLatency(time.Millisecond)
	gates := make([]*autobuy.Gatekeeper, 4)
	for i := range gates {
		// Each replica has its own client, gate, Locker and Journal, sharing only Redis.
		gates[i] = w.replica(t, redislock.New(rdb, redislock.WithPrefix(prefix), redislock.WithRetryInterval(2*time.Millisecond)),
			autobuy.WithJournal(newJournal(t, rdb, redislock.WithJournalPrefix(prefix))))
	}
	// 40 actions fit in one plan: the plan never runs out, so a second
	// purchase could only be a double charge. (With more actions than the plan
	// covers, a replica that reaches the lock after the plan was used up meets
	// a new exhaustion and rightly buys the next plan.)
	allowed := gateAll(t, w, gates, 40)
	debits, grants := w.planPurchases()
	assert.Equal(t, 1, debits)
	assert.Equal(t, 1, grants)
	assert.Equal(t, 40, allowed)
}

// The lease lapses (miniredis's clock jumps past it) just as the first
// replica sends its grant, which is then slow and fails once: the second
// replica takes the lock, finds the open intent in the shared journal and
// finishes it with the same keys. One plan, one debit.
func TestLockLostMidPurchaseDoesNotBuyTwice(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	w := setup(t)
	w.srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Status: 503, Count: 1})
	var lost atomic.Int32
	const lease = 5 * time.Second
	mk := func() autobuy.Locker {
		return &countLost{Locker: redislock.New(rdb, redislock.WithTTL(lease), redislock.WithoutRefresh(),
			redislock.WithRetryInterval(2*time.Millisecond)), lost: &lost}
	}
	journal := func() autobuy.Option { return autobuy.WithJournal(newJournal(t, rdb)) }
	var once sync.Once
	lapse := quotastack.WithTransport(&slowPath{rt: http.DefaultTransport, path: "/v1/topup/grant", delay: 200 * time.Millisecond,
		before: func() { once.Do(func() { mr.FastForward(lease) }) }})
	gates := []*autobuy.Gatekeeper{w.replicaWith(t, mk(), []quotastack.Option{lapse}, journal()),
		w.replicaWith(t, mk(), []quotastack.Option{lapse}, journal())}
	allowed := gateAll(t, w, gates, 6)

	debits, grants := w.planPurchases()
	assert.Equal(t, 1, debits, "the second replica finished the first one's intent from the shared journal, with its keys")
	assert.Equal(t, 1, grants)
	assert.Equal(t, 6, allowed)
	assert.Positive(t, lost.Load(), "the lease really lapsed mid-purchase")
}

// When the lease lapses after a replica decided to buy but before its intent
// is in the journal (here every request is slower than the lease), a second
// replica sees no open intent and decides too; the journal refuses a second
// open intent for the customer, so one plan is bought for one exhaustion.
func TestLockLostBeforeTheIntentIsWrittenBuysOnce(t *testing.T) {
	t.Parallel()
	rdb, prefix := realRedis(t)
	w := setup(t)
	w.srv.SetLatency(60 * time.Millisecond)
	mk := func() autobuy.Locker {
		return redislock.New(rdb, redislock.WithPrefix(prefix), redislock.WithTTL(50*time.Millisecond),
			redislock.WithoutRefresh(), redislock.WithRetryInterval(2*time.Millisecond))
	}
	journal := func() autobuy.Option {
		return autobuy.WithJournal(newJournal(t, rdb, redislock.WithJournalPrefix(prefix)))
	}
	gates := []*autobuy.Gatekeeper{w.replica(t, mk(), journal()), w.replica(t, mk(), journal())}
	gateAll(t, w, gates, 6)
	debits, grants := w.planPurchases()
	assert.Equal(t, 1, debits)
	assert.Equal(t, 1, grants)
}

// slowPath delays the requests whose path starts with path, calling before
// (if set) first.
type slowPath struct {
	rt     http.RoundTripper
	path   string
	delay  time.Duration
	before func()
}

func (s *slowPath) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(r.URL.Path, s.path) {
		if s.before != nil {
			s.before()
		}
		select {
		case <-time.After(s.delay):
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return s.rt.RoundTrip(r)
}

type countLost struct {
	autobuy.Locker
	lost *atomic.Int32
}

func (c *countLost) Lock(ctx context.Context, key string) (func(context.Context) error, error) {
	unlock, err := c.Locker.Lock(ctx, key)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		err := unlock(ctx)
		if err != nil {
			c.lost.Add(1)
		}
		return err
	}, nil
}
