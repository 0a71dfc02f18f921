package redislock_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
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
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// letThroughs adds up, by QuotaStack customer id, the units the SDK let
// through without knowing whether they were counted (Hooks.LetThrough).
type letThroughs struct {
	mu     sync.Mutex
	units  map[string]int64            // activations' units, by customer
	events map[string]map[string]int64 // events' units, by customer and event (an event is reported per answer)
}

func (l *letThroughs) hook(_ context.Context, c autobuy.CustomerRef, _ string, units int64, event string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if event == "" {
		l.units[c.ID] += units
		return
	}
	if l.events[c.ID] == nil {
		l.events[c.ID] = map[string]int64{}
	}
	l.events[c.ID][event] = units
}

// total returns the customer's units let through, and its events.
func (l *letThroughs) total(id string) (units int64, events int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	units = l.units[id]
	for _, u := range l.events[id] {
		units += u
	}
	return units, len(l.events[id])
}

// TestLeaseSoak: replicas in lease mode share the Redis journal, locker and
// ChargeLog (leases, takes, charged events), each through a proxy that
// loses a reply every few milliseconds after Redis ran its command (go-redis
// sends it again), while the fake answers with random execute-then-500s,
// 503s and drops. Every action the gates allowed is charged exactly once
// (the fake's CheckInvariants over NoteAllowed), except what the SDK reports
// let through without knowing whether it was counted (Hooks.LetThrough).
func TestLeaseSoak(t *testing.T) {
	t.Parallel()
	target := os.Getenv("QUOTASTACK_TEST_REDIS_ADDR")
	store := "redis-server " + target
	if target == "" {
		target, store = miniredis.RunT(t).Addr(), "miniredis"
	}
	prefix := fmt.Sprintf("leasesoak:%d:", time.Now().UnixNano())
	const replicas, customers, workers = 3, 8, 12
	actions, window := 300, 2*time.Second
	if testing.Short() {
		actions, window = 120, 500*time.Millisecond
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	srv := quotastacktest.Start(t, quotastacktest.WithRateLimit(quotastacktest.DocumentedRateLimit, window))
	require.NoError(t, srv.SeedRecipe())
	ids := make([]string, customers)
	external := map[string]string{} // QuotaStack id: external id
	for i := range ids {
		ids[i] = fmt.Sprintf("lease:user %02d", i)
		_, err := srv.Grant(ids[i], quotastacktest.BlockSpec{Credits: int64(1+i%3) * 3 * soakPlan.PriceMC})
		require.NoError(t, err)
		acct, ok := srv.Account(ids[i])
		require.True(t, ok)
		external[acct.CustomerID] = ids[i]
	}
	srv.SetRandomFaults(&quotastacktest.RandomFaults{Seed: seed, PExecute500: 0.03, P503: 0.02, PDrop: 0.01, RetryAfter: "0",
		MaxLatency: 2 * time.Millisecond})

	lt := &letThroughs{units: map[string]int64{}, events: map[string]map[string]int64{}}
	gates := make([]*autobuy.Gatekeeper, replicas)
	proxies := make([]*proxy, replicas)
	for i := range gates {
		proxies[i] = startProxy(t, target)
		rdb := redis.NewClient(&redis.Options{Addr: proxies[i].Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		j, err := redislock.NewJournal(rdb, redislock.WithJournalPrefix(prefix))
		require.NoError(t, err)
		charges, err := redislock.NewChargeLog(rdb, redislock.WithChargeLogPrefix(prefix))
		require.NoError(t, err)
		c, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL), quotastack.WithTransport(http.DefaultTransport),
			quotastack.WithRetry(8, 2*time.Millisecond, window+time.Second), quotastack.WithAttemptTimeout(5*time.Second))
		require.NoError(t, err)
		gates[i], err = autobuy.New(c, autobuy.WithPlan(soakPlan), autobuy.WithJournal(j),
			autobuy.WithLocker(redislock.New(rdb, redislock.WithPrefix(prefix), redislock.WithRetryInterval(5*time.Millisecond))),
			autobuy.WithChargeLog(charges), autobuy.WithLease(autobuy.LeaseConfig{Actions: 5, Linger: 300 * time.Millisecond}),
			autobuy.WithHooks(autobuy.Hooks{LetThrough: lt.hook}))
		require.NoError(t, err)
	}

	stop := make(chan struct{})
	var dropped atomic.Int64
	dropping := make(chan struct{})
	go func() { // a reply lost every 20 ms, on a replica's connection
		defer close(dropping)
		rng := rand.New(rand.NewPCG(uint64(seed), 11))
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				proxies[rng.IntN(replicas)].DropNextReply()
				dropped.Add(1)
			}
		}
	}()
	var next, allowed, leased, undecided atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				a := int(next.Add(1)) - 1
				if a >= actions {
					return
				}
				ci := (a*5 + w) % customers
				event := fmt.Sprintf("a%d", a)
				decided := false
				var last error
				for calls := 0; calls < 60 && !decided; calls++ {
					d, err := gates[(a+calls)%replicas].Gate(context.Background(), quotastack.ExternalID(ids[ci]), "chat_message",
						autobuy.WithEventID(event))
					if last = err; err == nil {
						last = d.Err
					}
					if err != nil || d.Reason == autobuy.ReasonPurchaseUnavailable {
						time.Sleep(20 * time.Millisecond) // the caller tries the same event again, maybe on another replica
						continue
					}
					decided = true
					if d.Allowed && !d.Fallback {
						srv.NoteAllowed(ids[ci], "chat_message", event, 1)
						allowed.Add(1)
						if d.Leased {
							leased.Add(1)
						}
					}
				}
				if !decided {
					undecided.Add(1)
					t.Logf("%s of %s undecided after 60 calls: %v", event, ids[ci], last)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-dropping

	srv.ClearFaults()
	srv.SetRateLimit(0, 0)
	for _, g := range gates {
		require.NoError(t, g.Close(context.Background()), "every lease committed")
	}
	var allowances []quotastacktest.CheckOption
	free, events := int64(0), 0
	for id, ext := range external { // QuotaStack id: external id
		if n, e := lt.total(id); n > 0 {
			free, events = free+n, events+e
			allowances = append(allowances, quotastacktest.AllowUncharged(ext, "chat_message", n))
		}
	}
	t.Logf("lease soak (%s): %d actions, %d allowed (%d on a lease), %d undecided; %d Redis replies lost; "+
		"%d events let through not known to be counted (%d units, activations included)", store, actions, allowed.Load(), leased.Load(), undecided.Load(), dropped.Load(),
		events, free)
	assert.NoError(t, srv.CheckInvariants(allowances...), "every allowed action charged once")
	assert.Zero(t, undecided.Load(), "every action was decided")
	assert.Positive(t, leased.Load(), "actions were served on leases")
}
