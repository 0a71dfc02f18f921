package pgstore_test

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

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/pgstore"
	"github.com/quotastack/quotastack-go/plan"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// soakPlan buys 5 actions for 20 credits: many purchases per customer.
var soakPlan = plan.Plan{Type: "1hr", PriceMC: 20_000, CreditsMC: 5_000, Duration: time.Hour}

var errCrashed = errors.New("soak: replica crashed")

// crashTransport lets a chosen plan debit or grant execute on the server,
// then "kills the process": it answers that request and every later one with
// errCrashed.
type crashTransport struct {
	rt    http.RoundTripper
	crash func(step string) bool
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

type soakReplica struct {
	gate *autobuy.Gatekeeper
	tr   *crashTransport
}

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

// killer terminates the soak's database connections while it runs: at each
// tick, the connection holding a customer lock, or any of the soak's
// connections (mid-statement or idle), at random.
type killer struct {
	locks, others atomic.Int64
}

func (k *killer) run(ctx context.Context, t *testing.T, admin *pgxpool.Pool, app string, seed int64, every time.Duration) {
	rng := rand.New(rand.NewPCG(uint64(seed), 11))
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		holders := rng.IntN(2) == 0
		q := `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()
			ORDER BY random() LIMIT 1`
		if holders {
			q = `SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
				WHERE a.application_name = $1 AND l.locktype = 'advisory' AND l.granted ORDER BY random() LIMIT 1`
		}
		var ok bool
		err := admin.QueryRow(ctx, q, app).Scan(&ok)
		switch {
		case err == nil && ok && holders:
			k.locks.Add(1)
		case err == nil && ok:
			k.others.Add(1)
		case err != nil && ctx.Err() == nil && !strings.Contains(err.Error(), "no rows"):
			t.Logf("killer: %v", err)
		}
	}
}

// TestReplicaSoak: several replicas (each its own client, Gatekeeper and
// connection pool: separate processes) share the PostgreSQL journal and
// locker, and gate many concurrent actions of ten customers (each under both
// id forms) against a fake with the rate limit on, random execute-then-500s,
// 503s and dropped HTTP connections, crashes right after chosen plan debits
// and grants (the crashed replica is replaced by a new process), while a
// killer terminates the replicas' database connections (lock holders and
// connections mid-statement) with pg_terminate_backend. After a Resume, the
// ledger must show no double charge, no debit without its grant, no blocked
// payer, one usage record per allowed action and one AutoBought hook per
// plan. QUOTASTACK_SOAK_MODE names a quotastacktest mode to add.
func TestReplicaSoak(t *testing.T) {
	t.Parallel()
	admin := testPool(t, 2)
	schema := freshSchema(t, admin)
	app := schema + "_soak"
	const replicas, customers, workers = 4, 10, 12
	actions, window, maxCrashes, killEvery := 240, 2*time.Second, 10, 40*time.Millisecond
	if testing.Short() {
		actions, window, maxCrashes = 80, 500*time.Millisecond, 3
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
	var hooks, reviews, lostLocks atomic.Int64
	// A process: its own pool (named for the killer) and Store on the shared
	// schema, migrated before the killer starts.
	pcfg, err := pgxpool.ParseConfig(postgresURL(t))
	require.NoError(t, err)
	pcfg.MaxConns = 4
	pcfg.ConnConfig.RuntimeParams["application_name"] = app
	var poolsMu sync.Mutex
	var pools []*pgxpool.Pool
	t.Cleanup(func() {
		poolsMu.Lock()
		defer poolsMu.Unlock()
		for _, p := range pools {
			p.Close()
		}
	})
	newProcess := func() (autobuy.Journal, autobuy.Locker) {
		pool, err := pgxpool.NewWithConfig(ctx, pcfg.Copy()) // connects lazily
		if err == nil {
			var s *pgstore.Store
			if s, err = pgstore.New(pool, pgstore.WithSchema(schema)); err == nil {
				poolsMu.Lock()
				pools = append(pools, pool)
				poolsMu.Unlock()
				return s.Journal(), s.Locker()
			}
		}
		panic(err) // the configuration is constant
	}
	migrated, err := pgstore.New(admin, pgstore.WithSchema(schema))
	require.NoError(t, err)
	require.NoError(t, migrated.Migrate(ctx))
	f := &fleet{reps: make([]*soakReplica, replicas)}
	f.mk = func(int) *soakReplica {
		j, l := newProcess()
		tr := &crashTransport{rt: http.DefaultTransport, crash: crash}
		c, err := quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL), quotastack.WithTransport(tr),
			quotastack.WithRetry(8, 2*time.Millisecond, window+time.Second), quotastack.WithAttemptTimeout(5*time.Second))
		if err != nil {
			panic(err) // the options are constant
		}
		g, err := autobuy.New(c, autobuy.WithPlan(soakPlan), autobuy.WithJournal(j), autobuy.WithLocker(l),
			autobuy.WithHooks(autobuy.Hooks{
				AutoBought:          func(context.Context, autobuy.CustomerRef, *plan.Purchase) { hooks.Add(1) },
				PurchaseNeedsReview: func(context.Context, autobuy.Intent, string) { reviews.Add(1) },
			}))
		if err != nil {
			panic(err)
		}
		return &soakReplica{gate: g, tr: tr}
	}
	for i := range f.reps {
		f.reps[i] = f.mk(i)
	}

	kctx, stopKiller := context.WithCancel(ctx)
	k := &killer{}
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		k.run(kctx, t, admin, app, seed, killEvery)
	}()

	type outcome struct {
		customer int
		d        autobuy.Decision
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
					cust = quotastack.CustomerID(uuids[ci])
				}
				slot := a % replicas
				res := outcome{customer: ci}
				for calls := 0; calls < 60 && !res.decided; calls++ {
					r := f.get(slot)
					d, err := r.gate.Gate(context.Background(), cust, "chat_message", autobuy.WithEventID(fmt.Sprintf("a%d", a)))
					if err == nil && d.Reason != autobuy.ReasonPurchaseUnavailable {
						res.d, res.decided = d, true
						break
					}
					// An error, or the journal unavailable (its connection was
					// killed): the caller tries the same event again.
					if errors.Is(d.Err, pgstore.ErrLockLost) {
						lostLocks.Add(1)
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
	stopKiller()
	<-killed

	srv.ClearFaults()
	resumer := f.mk(0)
	resumer.tr.crash = func(string) bool { return false }
	var resumed int
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
			assert.LessOrEqual(t, chats, allowedBy[i], "customer %s: a usage record for each allowed action at most", id)
			freeActions += allowedBy[i] - chats
			continue
		}
		assert.Equal(t, allowedBy[i], chats, "customer %s: one usage record per allowed action", id)
	}
	fc := srv.FaultCounts()
	t.Logf("replica soak (PostgreSQL, mode %s + rate limit): replicas %d (%d restarts after %d crashes: %d after a debit, %d after a grant), "+
		"customers %d, actions %d, allowed %d, undecided %d, reasons %v, purchases %d (hooks %d, resumed at the end %d, reviews %d), "+
		"connections killed %d (%d holding a lock; %d gates saw their lock lost), "+
		"%d double charges, %d debits without a grant, %d blocked payers, %d double grants, %d allowed actions not charged; "+
		"server requests %d, execute-then-500 %d, drops %d; %s",
		mode.Name, replicas, f.restarts, crashes["debit"]+crashes["grant"], crashes["debit"], crashes["grant"],
		customers, actions, allowed, undecided, reasons, purchases, hooks.Load(), resumed, reviews.Load(),
		k.locks.Load()+k.others.Load(), k.locks.Load(), lostLocks.Load(),
		doubleCharges, debitNoGrant, blockedPayers, doubleGrants, freeActions,
		len(srv.Requests()), fc.ExecuteThen, fc.Drops, elapsed.Round(time.Millisecond))
	if path := os.Getenv("QUOTASTACK_SOAK_REPORT"); path != "" {
		if fh, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			_, _ = fmt.Fprintf(fh, "pgstore soak: %d actions, %d purchases, %d connections killed (%d lock holders), %d double charges, "+
				"%d debits without a grant, %d blocked payers, %d uncharged allowed actions, %s\n", actions, purchases,
				k.locks.Load()+k.others.Load(), k.locks.Load(), doubleCharges, debitNoGrant, blockedPayers, freeActions, elapsed.Round(time.Millisecond))
			_ = fh.Close()
		}
	}

	assert.Zero(t, doubleCharges, "double charges")
	assert.Zero(t, debitNoGrant, "debits without a grant")
	assert.Zero(t, blockedPayers, "blocked payers")
	assert.Zero(t, doubleGrants, "double grants")
	assert.Zero(t, reviews.Load(), "no purchase needs a person in 30 s")
	assert.Equal(t, int64(purchases), hooks.Load(), "one AutoBought hook per plan, whatever crashed")
	assert.Zero(t, undecided, "every action was decided")
	assert.Positive(t, purchases)
	assert.Positive(t, allowed)
	assert.Positive(t, k.locks.Load()+k.others.Load(), "connections were killed")
	assert.LessOrEqual(t, bought, purchases)
}
