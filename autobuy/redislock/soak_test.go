package redislock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/redislock"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// soakPlan buys 5 actions for 20 credits: many purchases per customer.
var soakPlan = plan.Plan{Type: "1hr", PriceMC: 20_000, CreditsMC: 5_000, Duration: time.Hour}

func envRedisAddr() string { return os.Getenv("QUOTASTACK_TEST_REDIS_ADDR") }

// errCrashed is what a crashed replica's transport answers: the process is gone.
var errCrashed = errors.New("soak: replica crashed")

// crashTransport lets a chosen plan debit or grant execute on the server,
// then "kills the process": it answers that request and every later one with
// errCrashed, so the purchase stops right after a step whose answer is lost.
type crashTransport struct {
	rt    http.RoundTripper
	crash func(step string) bool // called for each plan step; true crashes after it
	dead  atomic.Bool
}

func (c *crashTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.dead.Load() {
		return nil, errCrashed
	}
	step := ""
	if r.Method == http.MethodPost && r.Body != nil {
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			return nil, err
		}
		r = r.Clone(r.Context())
		r.Body = io.NopCloser(bytes.NewReader(body))
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/topup/grant") && bytes.Contains(body, []byte(`"plan_grant"`)):
			step = "grant"
		case strings.HasPrefix(r.URL.Path, "/v1/usage") && bytes.Contains(body, []byte(`"`+soakPlan.Metric()+`"`)):
			step = "debit"
		}
	}
	resp, err := c.rt.RoundTrip(r)
	if step != "" && c.crash(step) {
		if resp != nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		c.dead.Store(true)
		return nil, errCrashed
	}
	return resp, err
}

// soakReplica is one process: its own client and gate over the shared journal and locker.
type soakReplica struct {
	gate *autobuy.Gatekeeper
	tr   *crashTransport
}

// fleet holds the replicas; a crashed one is replaced by a new process (new
// client and Gatekeeper) on the same journal and locker.
type fleet struct {
	mu       sync.Mutex
	reps     []*soakReplica
	mk       func(slot int) *soakReplica
	restarts int
}

func (f *fleet) get(slot int) *soakReplica {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reps[slot]
}

func (f *fleet) restartIfDead(slot int, r *soakReplica) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reps[slot] == r && r.tr.dead.Load() {
		f.reps[slot] = f.mk(slot)
		f.restarts++
	}
}

// soakRedis returns the real redis-server when QUOTASTACK_TEST_REDIS_ADDR is
// set, else a miniredis, with a key prefix of the test's own.
func soakRedis(t *testing.T) (redis.UniversalClient, string, string) {
	t.Helper()
	if addr := envRedisAddr(); addr != "" {
		rdb, prefix := realRedis(t)
		return rdb, prefix, "redis-server " + addr
	}
	_, rdb := miniClient(t)
	return rdb, "soak:", "miniredis"
}

// TestReplicaSoak: several replicas (separate clients and Gatekeepers)
// sharing the Redis journal and locker gate many concurrent actions of ten
// customers (each under both id forms) against a fake with the rate limit on
// (the docs' 100 requests per window, the window scaled down), random
// execute-then-500s, 503s and dropped connections, and crashes right after
// chosen plan debits and grants (the crashed replica is replaced by a new
// process). After a Resume, the ledger must show no double charge, no debit
// without its grant, and one AutoBought hook per plan. QUOTASTACK_SOAK_MODE
// names a quotastacktest mode to add (usage202, sparse, execute-then-5xx).
func TestReplicaSoak(t *testing.T) {
	t.Parallel()
	rdb, prefix, store := soakRedis(t)
	const replicas, customers, workers = 4, 10, 12
	actions, window, maxCrashes := 320, 2*time.Second, 10
	if testing.Short() {
		actions, window, maxCrashes = 60, 500*time.Millisecond, 3
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)

	mode := quotastacktest.Mode{Name: "kind"}
	if name := os.Getenv("QUOTASTACK_SOAK_MODE"); name != "" {
		var ok bool
		mode, ok = quotastacktest.ModeNamed(name)
		require.True(t, ok, "QUOTASTACK_SOAK_MODE %q: not a quotastacktest mode", name)
	}
	srv := quotastacktest.Start(t, append(mode.Options, quotastacktest.WithRateLimit(quotastacktest.DocumentedRateLimit, window))...)
	require.NoError(t, srv.SeedRecipe())
	ids := make([]string, customers)
	uuids := make([]string, customers)
	for i := range ids {
		ids[i] = fmt.Sprintf("soak:user %02d", i)
		// Wallets for a half to twice the customer's actions (some run dry),
		// and one customer whose wallet never covers a plan.
		wallet := int64(1+i%4) * int64(max(1, actions/customers/10)) * soakPlan.PriceMC
		if i == 0 {
			wallet = soakPlan.PriceMC / 2
		}
		_, err := srv.Grant(ids[i], quotastacktest.BlockSpec{Credits: wallet + int64(i)*1_000})
		require.NoError(t, err)
		acct, ok := srv.Account(ids[i])
		require.True(t, ok)
		uuids[i] = acct.CustomerID
	}
	srv.SetRandomFaults(&quotastacktest.RandomFaults{Seed: seed, PExecute500: 0.03, P503: 0.02, PDrop: 0.01, RetryAfter: "0",
		MaxLatency: 2 * time.Millisecond})

	var crashMu sync.Mutex
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	crashes := map[string]int{}
	crash := func(step string) bool {
		crashMu.Lock()
		defer crashMu.Unlock()
		if crashes["debit"]+crashes["grant"] >= maxCrashes || rng.Float64() >= 0.2 {
			return false
		}
		crashes[step]++
		return true
	}
	var hooks, reviews atomic.Int64
	shared := make([][]autobuy.Option, replicas)
	for i := range shared {
		j, err := redislock.NewJournal(rdb, redislock.WithJournalPrefix(prefix))
		require.NoError(t, err)
		shared[i] = []autobuy.Option{autobuy.WithPlan(soakPlan), autobuy.WithJournal(j),
			autobuy.WithLocker(redislock.New(rdb, redislock.WithPrefix(prefix), redislock.WithRetryInterval(5*time.Millisecond))),
			autobuy.WithHooks(autobuy.Hooks{
				AutoBought:          func(context.Context, autobuy.CustomerRef, *plan.Purchase) { hooks.Add(1) },
				PurchaseNeedsReview: func(context.Context, autobuy.Intent, string) { reviews.Add(1) },
			})}
	}
	f := &fleet{reps: make([]*soakReplica, replicas)}
	f.mk = func(slot int) *soakReplica {
		tr := &crashTransport{rt: http.DefaultTransport, crash: crash}
		c, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL), quotastack.WithTransport(tr),
			quotastack.WithRetry(8, 2*time.Millisecond, window+time.Second), quotastack.WithAttemptTimeout(5*time.Second))
		if err != nil {
			panic(err) // the options are constant
		}
		g, err := autobuy.New(c, shared[slot]...)
		if err != nil {
			panic(err)
		}
		return &soakReplica{gate: g, tr: tr}
	}
	for i := range f.reps {
		f.reps[i] = f.mk(i)
	}

	// The workers gate actions until each is decided; an error (a crash, a
	// fault past the retries) repeats the same event on the slot's current
	// replica, as a caller would.
	type outcome struct {
		customer int
		d        autobuy.Decision
		calls    int
		decided  bool
	}
	results := make([]outcome, actions)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				a := int(next.Add(1)) - 1
				if a >= actions {
					return
				}
				ci := (a*7 + w) % customers
				cust := quotastack.ExternalID(ids[ci])
				if a%3 == 0 {
					cust = quotastack.CustomerID(uuids[ci]) // the same customer by its other id form
				}
				slot := a % replicas
				res := outcome{customer: ci}
				for res.calls < 60 && !res.decided {
					r := f.get(slot)
					res.calls++
					d, err := r.gate.Gate(context.Background(), cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("a%d", a)))
					if err == nil {
						res.d, res.decided = d, true
						break
					}
					f.restartIfDead(slot, r)
					time.Sleep(20 * time.Millisecond)
				}
				results[a] = res
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	// The system goes quiet: faults off, a fresh process resumes every open purchase.
	srv.ClearFaults()
	resumer := f.mk(0)
	resumer.tr.crash = func(string) bool { return false }
	var resumed int
	var err error
	for range 5 {
		var n int
		n, err = resumer.gate.Resume(context.Background(), 0)
		resumed += n
		if err == nil {
			break
		}
	}
	require.NoError(t, err, "Resume")
	require.NoError(t, srv.CheckInvariants(), "the ledger, quiet")

	allowed, undecided, bought := 0, 0, 0
	reasons := map[autobuy.Reason]int{}
	allowedBy := make([]int, customers)
	for _, r := range results {
		if !r.decided {
			undecided++
			continue
		}
		reasons[r.d.Reason]++
		if r.d.Allowed {
			allowed++
			allowedBy[r.customer]++
		}
		if r.d.Purchase != nil {
			bought++
		}
	}
	var purchases, doubleCharges, debitNoGrant, doubleGrants, blockedPayers, freeActions int
	for i, id := range ids {
		blocked := false
		for _, o := range srv.PlanOrders(id) {
			switch {
			case len(o.Debits) > 1:
				doubleCharges++
			case len(o.Debits) == 1 && len(o.GrantBlockIDs) == 0:
				debitNoGrant++
				blocked = true
			}
			if len(o.GrantBlockIDs) > 1 {
				doubleGrants++
			}
			if len(o.Debits) > 0 && len(o.GrantBlockIDs) > 0 {
				purchases++
			}
		}
		if blocked {
			blockedPayers++
		}
		chats := 0
		for _, u := range srv.UsageEvents(id) {
			if u.MetricKey == "chat_message" {
				chats++
			}
		}
		if mode.Name == "usage202" {
			// A usage record answered 202 may be rejected later (the plan
			// credits went to a concurrent action): an allowed action the
			// tenant isn't paid for. Never the other way round.
			assert.LessOrEqual(t, chats, allowedBy[i], "customer %s: a usage record for each allowed action at most", id)
			freeActions += allowedBy[i] - chats
			continue
		}
		assert.Equal(t, allowedBy[i], chats, "customer %s: one usage record per allowed action", id)
	}
	fc := srv.FaultCounts()
	t.Logf("replica soak (%s, mode %s + rate limit): replicas %d (%d restarts after %d crashes: %d after a debit, %d after a grant), customers %d, "+
		"actions %d, allowed %d, undecided %d, reasons %v, purchases %d (hooks %d, resumed at the end %d, reviews %d), "+
		"%d double charges, %d debits without a grant, %d blocked payers, %d double grants, %d allowed actions not charged; "+
		"server requests %d, 429s %d, execute-then-500 %d, drops %d; %s",
		store, mode.Name, replicas, f.restarts, crashes["debit"]+crashes["grant"], crashes["debit"], crashes["grant"], customers,
		actions, allowed, undecided, reasons, purchases, hooks.Load(), resumed, reviews.Load(),
		doubleCharges, debitNoGrant, blockedPayers, doubleGrants, freeActions,
		len(srv.Requests()), countStatus(srv, 429), fc.ExecuteThen, fc.Drops, elapsed.Round(time.Millisecond))

	assert.Zero(t, doubleCharges, "double charges")
	assert.Zero(t, debitNoGrant, "debits without a grant")
	assert.Zero(t, blockedPayers, "blocked payers")
	assert.Zero(t, doubleGrants, "double grants")
	assert.Zero(t, reviews.Load(), "no purchase needs a person in 30 s")
	assert.Equal(t, int64(purchases), hooks.Load(), "one AutoBought hook per plan, whatever crashed")
	assert.Zero(t, undecided, "every action was decided")
	assert.Positive(t, purchases)
	assert.Positive(t, allowed)
	assert.LessOrEqual(t, bought, purchases)
}

func countStatus(srv *quotastacktest.Server, status int) int {
	n := 0
	for _, r := range srv.Requests() {
		if r.Status == status {
			n++
		}
	}
	return n
}

// A replica crashes right after its plan debit or grant executed (the answer
// is lost, the process is gone); another replica's Resume finishes the intent
// from the shared journal: one debit, one grant, one hook. In every mode of
// the fake.
func TestCrashedPurchaseResumedByAnotherReplica(t *testing.T) {
	t.Parallel()
	for _, step := range []string{"debit", "grant"} {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			quotastacktest.RunModes(t, func(t *testing.T, mode quotastacktest.Mode) {
				t.Parallel()
				_, rdb := miniClient(t)
				srv := quotastacktest.Start(t, mode.Options...)
				require.NoError(t, srv.SeedRecipe())
				_, err := srv.Grant("user42", quotastacktest.BlockSpec{Credits: 250_000})
				require.NoError(t, err)
				var hooks atomic.Int64
				mk := func(crash func(string) bool) (*autobuy.Gatekeeper, *crashTransport) {
					tr := &crashTransport{rt: http.DefaultTransport, crash: crash}
					c, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL), quotastack.WithTransport(tr),
						quotastack.WithRetry(4, time.Millisecond, 10*time.Millisecond))
					require.NoError(t, err)
					g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithJournal(newJournal(t, rdb)),
						autobuy.WithLocker(redislock.New(rdb)), autobuy.WithHooks(autobuy.Hooks{
							AutoBought: func(context.Context, autobuy.CustomerRef, *plan.Purchase) { hooks.Add(1) }}))
					require.NoError(t, err)
					return g, tr
				}
				a, atr := mk(func(s string) bool { return s == step })
				_, err = a.Gate(context.Background(), quotastack.ExternalID("user42"), "chat_message", autobuy.WithEventID("m1"))
				require.Error(t, err, "the replica crashed mid-purchase")
				require.True(t, atr.dead.Load())

				b, _ := mk(func(string) bool { return false })
				n, err := b.Resume(context.Background(), 0)
				require.NoError(t, err)
				assert.Equal(t, 1, n, "the other replica completed the crashed purchase")
				d, err := b.Gate(context.Background(), quotastack.ExternalID("user42"), "chat_message", autobuy.WithEventID("m1"))
				require.NoError(t, err)
				assert.True(t, d.Allowed, "the plan bought before the crash pays for the action: %+v", d)
				assert.Nil(t, d.Purchase, "no second purchase")
				require.NoError(t, srv.CheckInvariants())
				orders := srv.PlanOrders("user42")
				require.Len(t, orders, 1)
				assert.Len(t, orders[0].Debits, 1)
				assert.Len(t, orders[0].GrantBlockIDs, 1)
				assert.Equal(t, int64(1), hooks.Load(), "one AutoBought hook, fired by the replica that completed it")
			})
		})
	}
}
