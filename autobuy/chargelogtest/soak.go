package chargelogtest

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// LeaseSoakConfig configures LeaseSoak.
type LeaseSoakConfig struct {
	// Replica returns the autobuy options of replica i (0 to 2): its Journal,
	// Locker and ChargeLog on the store under test, on connections of its
	// own. Required.
	Replica func(t *testing.T, i int) []autobuy.Option
	// Faults, if set, runs while the replicas gate and returns when stop is
	// closed: a killer of the store's connections, a proxy losing replies.
	Faults func(stop <-chan struct{})
}

// LeaseSoakFigures are what a LeaseSoak saw.
type LeaseSoakFigures struct {
	Actions, Allowed, Leased int
	// LetThroughUnits are the units the gates let through without knowing
	// whether they were counted (Hooks.LetThrough), of LetThroughEvents
	// events and of activations of unknown outcome: free at worst.
	LetThroughUnits  int64
	LetThroughEvents int
}

// soakPlan buys 5 actions for 20 credits: many purchases per customer.
var soakPlan = plan.Plan{Type: "1hr", PriceMC: 20_000, CreditsMC: 5_000, Duration: time.Hour}

// LeaseSoak runs three replicas in lease mode on the store (cfg.Replica)
// against the in-memory QuotaStack with its rate limit and random
// execute-then-500s, 503s and drops, while cfg.Faults runs: 12 workers gate
// 300 actions (120 with -short) of 8 customers, each event retried on the
// next replica until it is decided. It then closes the replicas (every lease
// committed) and checks that every action allowed was charged exactly once
// (the fake's CheckInvariants over NoteAllowed), except the units reported
// let through without knowing whether they were counted; that every action
// was decided; and that leases served some.
func LeaseSoak(t *testing.T, cfg LeaseSoakConfig) LeaseSoakFigures {
	t.Helper()
	const replicas, customers, workers = 3, 8, 12
	actions, window := 300, 2*time.Second
	if testing.Short() {
		actions, window = 120, 500*time.Millisecond
	}
	seed := time.Now().UnixNano()
	t.Logf("lease soak seed %d", seed)
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
	for i := range gates {
		c, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL), quotastack.WithTransport(http.DefaultTransport),
			quotastack.WithRetry(8, 2*time.Millisecond, window+time.Second), quotastack.WithAttemptTimeout(5*time.Second))
		require.NoError(t, err)
		opts := append([]autobuy.Option{autobuy.WithPlan(soakPlan),
			autobuy.WithLease(autobuy.LeaseConfig{Actions: 5, Linger: 300 * time.Millisecond})}, cfg.Replica(t, i)...)
		gates[i], err = autobuy.New(c, append(opts, autobuy.WithHooks(autobuy.Hooks{LetThrough: lt.hook}))...)
		require.NoError(t, err)
	}

	stop, faulted := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(faulted)
		if cfg.Faults != nil {
			cfg.Faults(stop)
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
	<-faulted

	srv.ClearFaults()
	srv.SetRateLimit(0, 0)
	for _, g := range gates {
		require.NoError(t, g.Close(context.Background()), "every lease committed")
	}
	figs := LeaseSoakFigures{Actions: actions, Allowed: int(allowed.Load()), Leased: int(leased.Load())}
	var allowances []quotastacktest.CheckOption
	for id, ext := range external {
		if n, e := lt.total(id); n > 0 {
			figs.LetThroughUnits, figs.LetThroughEvents = figs.LetThroughUnits+n, figs.LetThroughEvents+e
			allowances = append(allowances, quotastacktest.AllowUncharged(ext, "chat_message", n))
		}
	}
	assert.NoError(t, srv.CheckInvariants(allowances...), "every allowed action charged once")
	assert.Zero(t, undecided.Load(), "every action was decided")
	assert.Positive(t, figs.Leased, "actions were served on leases")
	return figs
}

// letThroughs adds up, by QuotaStack customer id, the units the gates let
// through without knowing whether they were counted (Hooks.LetThrough).
type letThroughs struct {
	mu     sync.Mutex
	units  map[string]int64            // activations' units
	events map[string]map[string]int64 // events' units, by event (an event is reported per answer)
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
