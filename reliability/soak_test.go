package reliability_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
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

// Environment variables of the soak.
const (
	envSoak       = "QUOTASTACK_SOAK"        // a Go duration; default 20s, 3s with -short
	envSoakSeed   = "QUOTASTACK_SOAK_SEED"   // the fault and workload seed
	envSoakReport = "QUOTASTACK_SOAK_REPORT" // a file to write the figures to
	envSoakDebug  = "QUOTASTACK_SOAK_DEBUG"  // set: log the ledger around a plan bought too early
)

const (
	soakCustomers = 40
	soakReplicas  = 4
	soakWorkers   = 32
	chatMetric    = "chat_message"
	chatCostMC    = 1_000
	// maxGateCalls bounds the repeats of one action, so a gate that never
	// decides fails the test instead of hanging it.
	maxGateCalls = 500
)

// soakPlan is the recipe's plan: 100 credits from the wallet buy 50 credits
// of chat (50 actions) for an hour.
var soakPlan = plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}

type soakCustomer struct {
	id       string
	walletMC int64 // wallet credits at the start
	planMC   int64 // plan credits at the start
}

// soakCustomerList gives most customers a wallet for one to four plans (and
// change) per 10 s of soak, every eighth one a wallet too small for any plan
// (the paywall from the first action), and every fifth one some plan credits
// to start with, ending on 500 mc that pay for no action. The ids need path
// escaping.
func soakCustomerList(dur time.Duration) []soakCustomer {
	scale := max(1, int64(dur/(10*time.Second)))
	out := make([]soakCustomer, soakCustomers)
	for i := range out {
		c := soakCustomer{id: fmt.Sprintf("soak/user %02d:companion", i)}
		if i%8 == 0 {
			c.walletMC = 60_000
		} else {
			c.walletMC = int64(1+i%4)*scale*soakPlan.PriceMC + int64(i%3)*7_000
		}
		if i%5 == 1 {
			c.planMC = 20_500
		}
		out[i] = c
	}
	return out
}

// replica is one process of the service under test: its own client (with
// counted attempts and calls), its own clock (skewed from the others' by up
// to a minute) and two Gatekeepers, as an application with two gated
// handlers has; with modes, three (the per-action gate, record-first and
// lease mode) and a two-phase HTTP endpoint over the first. Replicas share
// the server and one purchase journal, locker and record of charged events
// (in-process stand-ins for the Redis ones, which the nested module's soak
// uses). A replica may crash in the middle of a purchase or a commit; the
// worker that sees it replaces it with a new process, and the dead one is
// dropped without Close: what it wrote to the shared stores (its leases
// included) stays there for the others.
type replica struct {
	client    *quotastack.Client
	gates     []*autobuy.Gatekeeper
	modes     []gateMode   // modes[i] is the mode of gates[i]
	twoPhase  http.Handler // the two-phase endpoint over gates[0]; nil without modes
	transport *countingTransport
	crash     *crashingTransport
	calls     *callCounter
	takes     *takeFaults
}

// soakSkews are the replicas' clock offsets, by slot: up to a minute either way.
var soakSkews = []time.Duration{-time.Minute, 40 * time.Second, -15 * time.Second, time.Minute}

// newReplica starts a process on srv. log is the shared record of charged
// events (nil: the process-wide default); with modes the replica gates in
// every gateMode.
func newReplica(srv *quotastacktest.Server, waitMax, skew time.Duration, pCrash float64, log autobuy.ChargeLog, modes bool,
	shared ...autobuy.Option,
) (*replica, error) {
	r := &replica{transport: newCountingTransport(), calls: &callCounter{}, takes: &takeFaults{}}
	r.crash = &crashingTransport{next: r.transport.base, p: pCrash}
	r.transport.next = r.crash
	var err error
	r.client, err = quotastack.NewClient(srv.APIKey, quotastack.WithBaseURL(srv.URL),
		quotastack.WithTransport(r.transport), quotastack.WithRetry(6, time.Millisecond, waitMax),
		quotastack.WithAttemptTimeout(5*time.Second), quotastack.WithLogger(slog.New(r.calls)))
	if err != nil {
		return nil, err
	}
	clock := func() time.Time { return time.Now().Add(skew) }
	base := append([]autobuy.Option{autobuy.WithPlan(soakPlan), autobuy.WithClock(clock)}, shared...)
	if log != nil {
		base = append(base, autobuy.WithChargeLog(crashLog{ChargeLog: log, dead: &r.crash.dead, takes: r.takes}))
	}
	r.modes = []gateMode{modeGate, modeGate}
	if modes {
		r.modes = []gateMode{modeGate, modeRecordFirst, modeLease}
	}
	for _, m := range r.modes {
		opts := slices.Clone(base)
		switch m {
		case modeRecordFirst:
			opts = append(opts, autobuy.WithRecordFirst())
		case modeLease:
			opts = append(opts, autobuy.WithLease(soakLease))
		}
		g, err := autobuy.New(r.client, opts...)
		if err != nil {
			return nil, err
		}
		r.gates = append(r.gates, g)
	}
	if modes {
		r.twoPhase = newTwoPhase(r.gates[0])
	}
	return r, nil
}

// close stops the replica's Gatekeepers (lease mode's committer), committing
// what its leases counted; a dead replica's fail on the log and are ignored.
func (r *replica) close(ctx context.Context) error {
	var errs []error
	for _, g := range r.gates {
		if err := g.Close(ctx); err != nil && !r.crash.dead.Load() {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// crashingTransport kills its process on a plan purchase request or a
// reservation commit (a lease's or a two-phase hold's) with probability p:
// the request executes or not (even odds), the answer never comes, and every
// later request of this process fails. quiet turns the crashes off.
type crashingTransport struct {
	next  http.RoundTripper
	p     float64
	quiet atomic.Bool
	dead  atomic.Bool
}

var errProcessDied = errors.New("soak: the process died")

func (c *crashingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.dead.Load() {
		return nil, errProcessDied
	}
	purchase := r.Method == http.MethodPost && (r.URL.Path == "/v1/topup/grant" ||
		strings.HasPrefix(r.Header.Get("Idempotency-Key"), "plan-debit:"))
	p := c.p
	if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/commit") {
		purchase, p = true, c.p/4 // commits are many more than purchases
	}
	if purchase && p > 0 && !c.quiet.Load() && rand.Float64() < p && c.dead.CompareAndSwap(false, true) {
		if rand.IntN(2) == 0 {
			if resp, err := c.next.RoundTrip(r); err == nil {
				_ = resp.Body.Close()
			}
		}
		return nil, errProcessDied
	}
	return c.next.RoundTrip(r)
}

// fleet is the soak's set of replicas; a crashed one is replaced in its slot.
type fleet struct {
	modes   bool // replicas gate in every mode
	mu      sync.Mutex
	slots   []*replica
	all     []*replica // every process that ever ran, for the figures
	crashes int
	make    func(slot int) (*replica, error)
}

func (f *fleet) pick(rng *rand.Rand) (int, *replica) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := rng.IntN(len(f.slots))
	return i, f.slots[i]
}

// replace swaps a crashed replica for a new process on the same journal and locker.
func (f *fleet) replace(i int, dead *replica) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.slots[i] != dead {
		return nil // another worker replaced it already
	}
	r, err := f.make(i)
	if err != nil {
		return err
	}
	dead.client.CloseIdleConnections()
	f.slots[i] = r
	f.all = append(f.all, r)
	f.crashes++
	return nil
}

// action is one gated business event and the decision it finally got.
type action struct {
	event, customer string
	decision        autobuy.Decision
	decided         bool
	mode            gateMode // the mode of the gate that decided it
	calls           int      // Gate calls it took: 1 + the repeats after errors
	replayAsked     bool     // the soak sent the allowed event again on purpose
}

// workerStats is what one worker saw, merged after the run.
type workerStats struct {
	actions  []action
	errKinds map[string]int
	problems []string
	// two-phase: handler failures (hold released, event retried) and settle errors
	handlerFailures, settleErrors int
	notes                         []string      // logged, not failures
	replays                       [numModes]int // answers with Decision.Replayed, by the mode that gave them
}

func soakDuration(t *testing.T) time.Duration {
	t.Helper()
	if v := os.Getenv(envSoak); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, envSoak)
		require.Positive(t, d, envSoak)
		return d
	}
	if testing.Short() {
		return 3 * time.Second
	}
	return 20 * time.Second
}

func soakSeed(t *testing.T) int64 {
	t.Helper()
	if v := os.Getenv(envSoakSeed); v != "" {
		s, err := strconv.ParseInt(v, 10, 64)
		require.NoError(t, err, envSoakSeed)
		return s
	}
	return 20261125
}

// TestSoak runs concurrent gated actions through four replicas (clocks up to
// a minute apart, two Gatekeepers each) sharing one purchase journal and
// locker against a fake with random faults (500s,
// 503s, 429s with Retry-After 0 or 1, connections dropped after the server
// executed the request, requests executed and then answered 500, latency),
// its rate limit on, and replicas that die in the middle of purchases and
// commits; then it proves from the server's ledger that nothing was lost or
// charged twice. A gate that returns an error leaves its action unknown; the
// worker repeats the same gate with the same event id until it decides, as a
// real caller would.
//
// Each replica gates in every mode on one ChargeLog shared by all: the
// per-action gate, record-first and lease mode (a message retried by any of
// them), and a two-phase middleware endpoint whose handler fails now and then
// (the hold is released, the client retries the same message there). Some
// allowed messages are sent again on purpose, with either id form: the
// answer must be the original, from the record. Every allowed action is
// noted with the fake (NoteAllowed), whose CheckInvariants then finds an
// action charged twice or allowed and never charged, lease-served ones
// included. A crashed replica is dropped without Close: its leases stay in
// the shared log for the others to settle.
func TestSoak(t *testing.T) {
	t.Parallel() // after the serial goroutine-leak tests of this package
	runSoak(t, soakConfig{name: "replicas", replicas: soakReplicas, pCrash: 0.1, rateLimit: true, modes: true})
}

// TestSoakOneProcess is the same soak in one process, its clock a minute
// off, with its Gatekeepers (every mode) on the process-wide default journal,
// locker and ChargeLog (no crashes: the memory stores die with the process).
func TestSoakOneProcess(t *testing.T) {
	t.Parallel()
	runSoak(t, soakConfig{name: "one process", replicas: 1, oneProcess: true, modes: true})
}

// TestSoakReplicasOwnStores is the replicas' soak without a shared store:
// each process on its own journal and locker (its two Gatekeepers share
// them), as replicas left on the defaults are, with clocks up to a minute
// apart. Their protection is the derived order id and the re-check of plan
// credits a stale check didn't count: still one plan per exhaustion. No
// crashes: a replica that dies after its debit leaves that purchase in its
// lost memory, and another replica finishes it only if the wallet can still
// pay a plan (the wallet guard sends no debit otherwise).
func TestSoakReplicasOwnStores(t *testing.T) {
	t.Parallel()
	runSoak(t, soakConfig{name: "replicas, own stores", replicas: 3, ownStores: true})
}

type soakConfig struct {
	ownStores  bool // each process its own journal and locker
	name       string
	replicas   int
	pCrash     float64
	rateLimit  bool
	oneProcess bool // the process-wide default journal and locker
	// modes gates in every gateMode (per action, record-first, lease,
	// two-phase middleware) on one record of charged events: the replicas'
	// shared ChargeLog, or the process-wide default in one process.
	modes bool
}

func runSoak(t *testing.T, cfg soakConfig) {
	dur, seed := soakDuration(t), soakSeed(t)
	if cfg.oneProcess || cfg.ownStores {
		dur = max(dur/3, time.Second)
	}
	customers := soakCustomerList(dur)

	srv := quotastacktest.Start(t)
	seedRecipe(t, srv, soakPlan)
	for _, c := range customers {
		seedCustomer(t, srv, soakPlan, c)
	}
	if cfg.rateLimit {
		// The documented 100 requests a minute, scaled so it bites at the
		// soak's pace: a 429 with a truthful Retry-After now and then.
		srv.SetRateLimit(250, time.Second)
	}

	// Half the replicas wait at most 20 ms between attempts, so a
	// Retry-After of 1 s ends their call with an error (and the caller
	// repeats the gate); the other half honour it.
	var shared []autobuy.Option
	var log autobuy.ChargeLog
	lt := &letThrough{}
	if !cfg.oneProcess {
		shared = []autobuy.Option{autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker())}
		if cfg.modes {
			log = autobuy.NewMemoryChargeLog(0)
		}
	}
	fl := &fleet{modes: cfg.modes, make: func(i int) (*replica, error) {
		waitMax := 20 * time.Millisecond
		if i%2 == 1 {
			waitMax = 1500 * time.Millisecond
		}
		opts := shared
		if cfg.ownStores {
			opts = []autobuy.Option{autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker())}
		}
		opts = append(slices.Clone(opts), autobuy.WithHooks(autobuy.Hooks{LetThrough: lt.hook}))
		return newReplica(srv, waitMax, soakSkews[i%len(soakSkews)], cfg.pCrash, log, cfg.modes, opts...)
	}}
	for i := range cfg.replicas {
		r, err := fl.make(i)
		require.NoError(t, err)
		t.Cleanup(func() { r.client.CloseIdleConnections() })
		fl.slots, fl.all = append(fl.slots, r), append(fl.all, r)
	}

	stopFaults := startFaults(srv, seed)
	start := time.Now()
	deadline := start.Add(dur)
	stats := make([]workerStats, soakWorkers)
	var wg sync.WaitGroup
	for w := range soakWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stats[w] = runWorker(w, seed, deadline, srv, customers, fl)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopFaults()
	srv.SetRateLimit(0, 0)

	// The replicas still running stop (Close commits what their leases
	// counted); the dead ones were dropped without Close (their leases were
	// left in the shared log, for the others to settle) and are only stopped
	// here. A process that died mid-purchase left an intent open; any
	// replica finishes it on the customer's next purchase, or here.
	fl.mu.Lock()
	for _, r := range fl.all {
		r.crash.quiet.Store(true)
	}
	for _, r := range fl.all {
		assert.NoError(t, r.close(context.Background()), "closing a replica")
		r.client.CloseIdleConnections()
	}
	finisher, err := fl.make(0)
	fl.mu.Unlock()
	require.NoError(t, err)
	finisher.crash.quiet.Store(true)
	resumed := 0
	if !cfg.oneProcess {
		resumed, err = finisher.gates[0].Resume(context.Background(), 0)
		require.NoError(t, err)
	}
	assert.NoError(t, finisher.close(context.Background()), "closing the finisher")

	figs := soakFigures{Name: cfg.name, Modes: cfg.modes, Duration: dur, Elapsed: elapsed, Seed: seed, Race: raceEnabled,
		Customers: len(customers), Replicas: cfg.replicas, Workers: soakWorkers, Crashes: fl.crashes, Resumed: resumed,
		Denied: map[autobuy.Reason]int{}, ErrKinds: map[string]int{}, Faults: srv.FaultCounts(),
		ServerRequests: len(srv.Requests())}
	for _, r := range append(slices.Clone(fl.all), finisher) {
		figs.TakeAnswersLost += r.takes.lost.Load()
	}
	for _, r := range srv.Requests() {
		if r.Status == http.StatusTooManyRequests && r.Fault == "ratelimit" {
			figs.Limited++
		}
	}
	var actions []action
	for _, s := range stats {
		actions = append(actions, s.actions...)
		for k, n := range s.errKinds {
			figs.ErrKinds[k] += n
		}
		for _, p := range s.problems {
			t.Error(p)
		}
		for _, n := range s.notes {
			t.Log(n)
		}
		figs.ByMode[modeTwoPhase].HandlerFailures += s.handlerFailures
		figs.ByMode[modeTwoPhase].SettleErrors += s.settleErrors
		for m, n := range s.replays {
			figs.ByMode[m].Replays += n
		}
	}
	// Every attempt the transport saw is a call's first try or a retry. A
	// call still finishing (a dead replica's, abandoned by its caller) has
	// its attempt counted before its log line: wait for the counts to settle.
	for settle := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		figs.Attempts, figs.Calls, figs.Retries = 0, 0, 0
		for _, r := range fl.all {
			figs.Attempts += r.transport.attempts.Load()
			figs.Calls += r.calls.calls.Load()
			figs.Retries += r.calls.retries.Load()
		}
		if figs.Attempts == figs.Calls+figs.Retries || time.Now().After(settle) {
			break
		}
	}
	// A retry is logged as it starts, before the client's rate gate: one
	// refused there (a 429's pause beyond its deadline) or whose context
	// ended while it waited never reaches the transport. So every attempt is
	// logged (never more attempts than calls and retries), and the reverse
	// gap, rare, is reported.
	assert.LessOrEqual(t, figs.Attempts, figs.Calls+figs.Retries, "HTTP attempts = logical calls + retries")
	for i, r := range fl.all {
		if a, c, rt := r.transport.attempts.Load(), r.calls.calls.Load(), r.calls.retries.Load(); a != c+rt {
			t.Logf("process %d (died: %v): %d attempts, %d calls, %d retries (a retry logged, then refused or cancelled before it was sent)",
				i, r.crash.dead.Load(), a, c, rt)
		}
	}

	allowances := checkSoakLedger(t, srv, finisher.client, customers, actions, lt, &figs)
	countMoney(srv, customers, actions, &figs)
	assert.Zero(t, figs.DoubleCharges, "double charges")
	assert.Zero(t, figs.DebitsWithoutGrant, "debits without a grant")
	assert.Zero(t, figs.BlockedPayers, "customers who paid and got no plan")
	for m, mf := range figs.ByMode {
		assert.Zero(t, mf.DoubleCharges, "%s: actions charged twice", gateMode(m))
		assert.Zero(t, mf.NeverCharged, "%s: allowed actions never charged", gateMode(m))
	}
	assert.Zero(t, figs.LeaseDouble, "lease units charged twice")
	assert.Zero(t, figs.LeaseNeverCharged, "lease-served actions never charged")
	// Every allowed action was noted (NoteAllowed): the fake's own count of
	// allowed units against what it executed, whatever the path.
	assert.NoError(t, srv.CheckInvariants(allowances...))

	report := figs.String()
	t.Log("\n" + report)
	if path := os.Getenv(envSoakReport); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if assert.NoError(t, err) {
			_, err = f.WriteString(report + "\n")
			assert.NoError(t, err)
			assert.NoError(t, f.Close())
		}
	}
}

// countMoney counts, from the server's plan orders, what must be zero: orders
// debited more than once, debits without a grant, and customers left debited
// without their plan (by mode too: the mode of the decision that names the
// order, if one does).
func countMoney(srv *quotastacktest.Server, customers []soakCustomer, actions []action, figs *soakFigures) {
	orderMode := map[string]gateMode{}
	for _, a := range actions {
		if a.decided && a.decision.Purchase != nil {
			orderMode[a.decision.Purchase.OrderID] = a.mode
		}
	}
	for _, c := range customers {
		blocked, blockedBy := false, map[gateMode]bool{}
		for _, o := range srv.PlanOrders(c.id) {
			if len(o.Debits) > 1 || len(o.GrantBlockIDs) > 1 {
				figs.DoubleCharges++
			}
			if len(o.Debits) > 0 && len(o.GrantBlockIDs) == 0 {
				figs.DebitsWithoutGrant++
				blocked = true
				if m, ok := orderMode[o.OrderID]; ok {
					blockedBy[m] = true
				}
			}
		}
		if blocked {
			figs.BlockedPayers++
		}
		for m := range blockedBy {
			figs.ByMode[m].BlockedPayers++
		}
	}
}

// startFaults turns random faults on, switching every 400 ms between a
// Retry-After of "0" and of "1" (and a new seed); the returned func turns
// them off.
func startFaults(srv *quotastacktest.Server, seed int64) (stop func()) {
	set := func(phase int) {
		ra := "0"
		if phase%2 == 1 {
			ra = "1"
		}
		srv.SetRandomFaults(&quotastacktest.RandomFaults{Seed: seed + int64(phase),
			P500: 0.01, P503: 0.03, P429: 0.03, PDrop: 0.04, PExecute500: 0.01, RetryAfter: ra, MaxLatency: 3 * time.Millisecond})
	}
	set(0)
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		tick := time.NewTicker(400 * time.Millisecond)
		defer tick.Stop()
		for phase := 1; ; phase++ {
			select {
			case <-done:
				return
			case <-tick.C:
				set(phase)
			}
		}
	}()
	return func() {
		close(done)
		<-exited
		srv.SetRandomFaults(nil)
	}
}

// pReplay is the chance that an allowed event is sent again on purpose, as a
// client that lost the answer does: on any replica and mode, with either id
// form, its answer must be the original one, from the record.
const pReplay = 0.08

// runWorker gates actions of random customers through random replicas (and,
// with modes, random gate modes) until the deadline, each with a unique
// event id, repeating a gate that errs, and notes every allowed action with
// the fake (NoteAllowed).
func runWorker(w int, seed int64, deadline time.Time, srv *quotastacktest.Server, customers []soakCustomer, fl *fleet) workerStats {
	s := workerStats{errKinds: map[string]int{}}
	rng := rand.New(rand.NewPCG(uint64(seed), uint64(w)))
	uuids := map[string]string{}
	for _, c := range customers {
		if acct, ok := srv.Account(c.id); ok {
			uuids[c.id] = acct.CustomerID
		}
	}
	for seq := 0; time.Now().Before(deadline); seq++ {
		c := customers[rng.IntN(len(customers))]
		a := action{event: fmt.Sprintf("w%02d-%06d", w, seq), customer: c.id}
		// A message sent to the two-phase endpoint is retried there; one sent
		// to a gated handler may be retried by any of them.
		twoPhase := fl.modes && rng.IntN(int(numModes)) == int(modeTwoPhase)
		for !a.decided && a.calls < maxGateCalls {
			a.calls++
			a.decision, a.mode, a.decided = s.gateOnce(rng, fl, c, uuids[c.id], a.event, twoPhase)
		}
		if !a.decided {
			s.problems = append(s.problems, fmt.Sprintf("action %s: no decision after %d gate calls", a.event, a.calls))
		}
		if a.decided && a.decision.Allowed && !a.decision.Fallback {
			srv.NoteAllowed(c.id, chatMetric, a.event, 1)
		}
		if a.decided && a.decision.Allowed && rng.Float64() < pReplay {
			a.replayAsked = true
			s.replay(rng, fl, c, uuids[c.id], a, twoPhase)
		}
		s.actions = append(s.actions, a)
	}
	return s
}

// replay sends the allowed action a again until it is answered: it must be
// allowed again, from the record (Replayed), with nothing charged.
func (s *workerStats) replay(rng *rand.Rand, fl *fleet, c soakCustomer, uuid string, a action, twoPhase bool) {
	for calls := 0; calls < maxGateCalls; calls++ {
		d, mode, decided := s.gateOnce(rng, fl, c, uuid, a.event, twoPhase)
		if !decided {
			continue
		}
		if !d.Allowed || !d.Replayed || d.Purchase != nil || d.Usage != nil {
			s.problems = append(s.problems, fmt.Sprintf("action %s (allowed, %s, by %s): its replay through %s was answered allowed=%v reason=%q replayed=%v purchase=%v usage=%v",
				a.event, a.decision.Reason, a.mode, mode, d.Allowed, d.Reason, d.Replayed, d.Purchase != nil, d.Usage != nil))
		}
		return
	}
	s.problems = append(s.problems, fmt.Sprintf("action %s: its replay got no decision after %d gate calls", a.event, maxGateCalls))
}

// gateOnce gates the event once, on a random replica, through its two-phase
// endpoint or a random one of its Gatekeepers, with the customer's external
// id or (one call in four) its QuotaStack id. decided is false when the
// caller must repeat it: an error, a crash of the replica, or a two-phase
// handler that failed (its hold released).
func (s *workerStats) gateOnce(rng *rand.Rand, fl *fleet, c soakCustomer, uuid, event string, twoPhase bool) (autobuy.Decision, gateMode, bool) {
	slot, r := fl.pick(rng) // a repeat may land on another replica
	customer := quotastack.ExternalID(c.id)
	if uuid != "" && rng.IntN(4) == 0 {
		customer = quotastack.CustomerID(uuid)
	}
	var d autobuy.Decision
	var err error
	var mode gateMode
	var call *mwCall
	if twoPhase {
		mode = modeTwoPhase
		call = &mwCall{customer: customer, event: event, fail: rng.Float64() < pHandlerFails}
		call.serve(r.twoPhase)
		switch {
		case call.refusal != nil && call.refusal.Err != nil:
			err = call.refusal.Err
		case call.refusal != nil:
			d = call.refusal.Decision
		case call.ran:
			d = call.d
		default:
			err = errors.New("the middleware neither ran the handler nor refused")
		}
	} else {
		i := rng.IntN(len(r.gates))
		mode = r.modes[i]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		d, err = r.gates[i].Gate(ctx, customer, chatMetric, autobuy.WithEventID(event))
		cancel()
	}
	if r.crash.dead.Load() {
		// The process died during this gate: whatever it answered is
		// lost with it. A new process takes its place; the caller repeats.
		if rerr := fl.replace(slot, r); rerr != nil {
			s.problems = append(s.problems, "replacing a crashed replica: "+rerr.Error())
		}
		s.errKinds["process died"]++
		return d, mode, false
	}
	if err != nil {
		kind := gateErrorKind(err)
		s.errKinds[kind]++
		if strings.HasPrefix(kind, "unexpected") {
			s.problems = append(s.problems, fmt.Sprintf("action %s (%s): %s: %v", event, mode, kind, err))
		}
		return d, mode, false
	}
	if d.Replayed {
		s.replays[mode]++
	}
	if call != nil && call.ran {
		if call.settled && call.settleErr != nil {
			s.settleErrors++
			s.notes = append(s.notes, fmt.Sprintf("action %s: settling its hold (commit %v) failed: %v", event, call.committed, call.settleErr))
		}
		if call.fail {
			// The work failed: the hold was released, nothing charged. The
			// client retries the same event.
			s.handlerFailures++
			s.errKinds["two-phase handler failed"]++
			return d, mode, false
		}
	}
	return d, mode, true
}

// gateErrorKind names the error of a gate that could not decide; the
// expected kinds are the faults themselves, typed.
func gateErrorKind(err error) string {
	var apiErr *quotastack.APIError
	var reqErr *quotastack.RequestError
	switch {
	case errors.Is(err, plan.ErrHalfDone):
		return "half-done purchase"
	case errors.As(err, &apiErr) && errors.Is(err, quotastack.ErrRateLimited):
		return "rate limited"
	case errors.As(err, &apiErr) && errors.Is(err, quotastack.ErrServer):
		return "server error"
	case errors.As(err, &apiErr):
		return fmt.Sprintf("unexpected API error %d", apiErr.StatusCode)
	case errors.As(err, &reqErr):
		return "transport"
	}
	return "unexpected untyped error"
}

// violations collects the failures of the ledger checks, reporting the
// first few in full and the rest as a count.
type violations struct {
	t      *testing.T
	n      int
	second int // chat usage events charged under usage:{event}:2
}

func (v *violations) add(format string, args ...any) {
	v.t.Helper()
	v.n++
	if v.n <= 25 {
		v.t.Errorf(format, args...)
	}
}

func (v *violations) done() {
	if v.n > 25 {
		v.t.Errorf("... and %d more ledger violations", v.n-25)
	}
}

// checkSoakLedger checks, customer by customer, from the server's ledger and
// usage log:
//   - every action reported allowed has exactly one chat usage event (key
//     usage:{event} or usage:{event}:2, not both), the one its decision
//     names; no action reported denied has one; no chat usage event belongs
//     to no action;
//   - every wallet debit for a plan has exactly one plan grant and vice
//     versa, and no purchase is left half done;
//   - at most one plan per exhaustion (see checkPurchases);
//   - balances equal the sum of the blocks (server and SDK view), the wallet
//     lost exactly the price of the plans bought, the plan credits paid
//     exactly the chat events, and a paywall was shown only to a wallet
//     that could not pay.
func checkSoakLedger(t *testing.T, srv *quotastacktest.Server, client *quotastack.Client,
	customers []soakCustomer, actions []action, lt *letThrough, figs *soakFigures,
) (allowances []quotastacktest.CheckOption) {
	t.Helper()
	v := &violations{t: t}
	defer v.done()
	byCustomer := map[string][]action{}
	for _, a := range actions {
		byCustomer[a.customer] = append(byCustomer[a.customer], a)
		figs.Actions++
		figs.GateCalls += a.calls
		figs.Unknown += a.calls - 1
		if !a.decided {
			continue
		}
		mf := &figs.ByMode[a.mode]
		mf.Actions++
		if a.replayAsked {
			mf.ReplaysAsked++
		}
		d := a.decision
		switch {
		case d.Allowed && (d.Reason == autobuy.ReasonEntitled || d.Reason == autobuy.ReasonAutoBought):
			figs.Allowed++
			mf.Allowed++
			if d.Leased {
				mf.Leased++
			}
			if d.Reason == autobuy.ReasonAutoBought {
				figs.AutoBought++
			}
		case !d.Allowed && slices.Contains([]autobuy.Reason{autobuy.ReasonEmptyWallet, autobuy.ReasonInsufficientCredits,
			autobuy.ReasonEntitlementFailedAfterPurchase}, d.Reason):
			figs.Denied[d.Reason]++
		default:
			v.add("action %s: unexpected decision allowed=%v reason=%q fallback=%v", a.event, d.Allowed, d.Reason, d.Fallback)
		}
	}

	for _, c := range customers {
		purchases, planMC := checkPurchases(v, srv, c)
		figs.Purchases += purchases
		acct, ok := srv.Account(c.id)
		if !assert.True(t, ok, c.id) {
			continue
		}
		figs.LetThrough += lt.count(acct.CustomerID)
		chatEvents, free := checkUsage(v, srv, c, byCustomer[c.id], lt.count(acct.CustomerID), figs)
		if free > 0 {
			allowances = append(allowances, quotastacktest.AllowUncharged(c.id, chatMetric, int64(free)))
		}

		var blocks, wallet, planBlocks int64
		for _, b := range srv.Blocks(c.id) {
			blocks += b.RemainingAmount
			if b.Priority == quotastack.WalletPriority && b.ExpiresAt == nil {
				wallet += b.RemainingAmount
			} else if b.Metadata["source"] == "plan_grant" {
				planBlocks += b.RemainingAmount
			}
		}
		if acct.Balance != blocks {
			v.add("%s: balance %d, blocks sum to %d", c.id, acct.Balance, blocks)
		}
		bal, err := client.BalanceWithBlocks(context.Background(), quotastack.ExternalID(c.id))
		if assert.NoError(t, err) && (bal.Balance != acct.Balance || quotastack.SumRemaining(bal.Blocks) != bal.Balance) {
			v.add("%s: the SDK sees balance %d with blocks summing to %d; the server %d", c.id, bal.Balance,
				quotastack.SumRemaining(bal.Blocks), acct.Balance)
		}
		if want := c.walletMC - int64(purchases)*soakPlan.PriceMC; wallet != want {
			v.add("%s: wallet %d after %d plans, want %d", c.id, wallet, purchases, want)
		}
		if planBlocks != planMC {
			v.add("%s: plan blocks hold %d, the ledger says %d", c.id, planBlocks, planMC)
		}
		if affordable := c.walletMC / soakPlan.PriceMC; int64(purchases) > affordable {
			v.add("%s: %d plans bought from a wallet that pays for %d", c.id, purchases, affordable)
		}
		paywalled := slices.ContainsFunc(byCustomer[c.id], func(a action) bool {
			return a.decided && a.decision.Reason == autobuy.ReasonEmptyWallet
		})
		if paywalled {
			figs.Paywalled++
			if wallet >= soakPlan.PriceMC {
				v.add("%s: paywall shown, but the wallet holds %d", c.id, wallet)
			}
		}
		figs.ChatEvents += chatEvents
	}
	figs.SecondKey = v.second
	return allowances
}

// checkPurchases replays the customer's ledger in order, tracking the plan
// credits, and returns the plans bought and the plan credits left.
//
// "At most one plan per exhaustion" is checked as two rules that a second
// plan for one exhaustion must break: (1) a plan debit is legitimate only if
// the live plan credits, at that point of the ledger, can't pay one action
// (< 1,000 mc): a plan bought while the previous one still covered an action
// fails here (credits held by a two-phase request in flight count as spent,
// those held by a lease as free: a lease is never a reason to buy); (2) purchases don't overlap: each plan debit is followed by
// its own grant before any other plan debit, and none is left without a
// grant (two purchases racing for the same exhaustion would both debit
// before either granted, so both see exhausted credits and pass rule 1).
func checkPurchases(v *violations, srv *quotastacktest.Server, c soakCustomer) (purchases int, planMC int64) {
	v.t.Helper()
	planBlock := map[string]bool{}
	debits, grants := map[string]int{}, map[string]int{}
	pending := ""
	holds := map[string]int64{} // two-phase holds in flight: reservation, mc held
	var held int64
	for _, e := range srv.Ledger(c.id) {
		switch {
		case e.Kind == "reserve" && strings.HasPrefix(e.IdempotencyKey, "hold:"):
			holds[e.ReservationID] = e.Held
			held += e.Held
		case e.Kind == "commit" || e.Kind == "release" || e.Kind == "expire":
			held -= holds[e.ReservationID]
			delete(holds, e.ReservationID)
		}
		isPlanGrant := e.Kind == "grant" && e.Metadata["source"] == "plan_grant"
		if isPlanGrant {
			planBlock[e.BlockID] = true
		}
		switch order := e.Metadata["order_id"]; {
		case e.Kind == "debit" && e.MetricKey == soakPlan.Metric():
			debits[order]++
			if planMC-held >= chatCostMC && os.Getenv(envSoakDebug) != "" {
				for _, x := range srv.Ledger(c.id) {
					if x.Seq <= e.Seq+3 && x.Seq >= e.Seq-40 {
						v.t.Logf("DEBUG %s #%d %s amt=%d held=%d rsv=%s metric=%s key=%s meta=%v t=%s", c.id, x.Seq, x.Kind, x.Amount, x.Held, x.ReservationID, x.MetricKey, x.IdempotencyKey, x.Metadata, x.Time.Format("15:04:05.000"))
					}
				}
			}
			if planMC-held >= chatCostMC {
				v.add("%s: plan %s debited (ledger #%d) while %d mc of plan credits were left (%d held by two-phase requests)", c.id, order, e.Seq, planMC, held)
			}
			if pending != "" {
				v.add("%s: plan %s debited (ledger #%d) while plan %s was not granted yet", c.id, order, e.Seq, pending)
			}
			pending = order
		case isPlanGrant && order != "":
			grants[order]++
			if pending != order {
				v.add("%s: plan %s granted (ledger #%d) but the purchase in progress was %q", c.id, order, e.Seq, pending)
			}
			pending = ""
		}
		for _, p := range e.Parts {
			if planBlock[p.BlockID] {
				planMC += p.Amount
			}
		}
	}
	if pending != "" {
		v.add("%s: purchase %s left half done (debited, never granted)", c.id, pending)
	}
	for order, n := range debits {
		if n != 1 || grants[order] != 1 {
			v.add("%s: order %s has %d debits and %d grants", c.id, order, n, grants[order])
		}
	}
	for order, n := range grants {
		if debits[order] == 0 {
			v.add("%s: order %s granted %d times without a debit", c.id, order, n)
		}
	}
	return len(grants), planMC
}

// checkUsage matches the customer's chat charges with its actions and
// returns how many chat usage events there are. A charge is a usage record
// under the action's usage key (per-action gate, record-first), the commit of
// a two-phase hold reserved under the action's hold key (or the usage record
// that charges an expired hold), or a lease's commit (or the usage record
// that charges an expired lease): lease-served actions have no usage event
// of their own and are matched per customer, units counted against units
// committed. Every allowed action must be charged exactly once (the fake's
// NoteAllowed accounting checks the same from its side), and no denied one
// at all; a replayed decision names no usage event.
//
// The one exception: an event answered as let through on a lease after the
// process that claimed it died before marking it (letThrough) may have died
// before counting it too; up to that many lease-served actions of the
// customer may go uncharged. free is how many did (reported apart, never as
// charged).
func checkUsage(v *violations, srv *quotastacktest.Server, c soakCustomer, actions []action, letThrough int, figs *soakFigures) (chat, free int) {
	v.t.Helper()
	holdEvent := map[string]string{} // a two-phase hold's reservation: its event
	lease := map[string]bool{}       // a lease's reservation
	ended := map[string]bool{}       // reservations committed, released or expired
	for _, e := range srv.Ledger(c.id) {
		if e.Kind == "commit" || e.Kind == "release" || e.Kind == "expire" {
			ended[e.ReservationID] = true
		}
		if e.Kind != "reserve" || e.MetricKey != chatMetric {
			continue
		}
		// "hold:{customer_id}:{event}:{n}" (the soak's event ids hold no ':').
		if parts := strings.Split(e.IdempotencyKey, ":"); len(parts) == 4 && parts[0] == "hold" {
			holdEvent[e.ReservationID] = parts[2]
		} else if e.Metadata["quotastack_lease"] != "" {
			lease[e.ReservationID] = true
			figs.LeasesReserved++
		} else {
			v.add("%s: chat reservation %s under key %q is neither a hold nor a lease", c.id, e.ReservationID, e.IdempotencyKey)
		}
	}
	byEvent := map[string][]quotastacktest.UsageRecord{}
	var chatEvents, chatUnits, chatCost, leaseUnits int64
	for _, u := range srv.UsageEvents(c.id) {
		if u.MetricKey != chatMetric {
			continue
		}
		chatEvents++
		chatUnits += u.Units
		chatCost += u.Cost
		parts := strings.Split(u.IdempotencyKey, ":")
		switch {
		case u.ReservationID != "" && holdEvent[u.ReservationID] != "":
			byEvent[holdEvent[u.ReservationID]] = append(byEvent[holdEvent[u.ReservationID]], u)
		case u.ReservationID != "" && lease[u.ReservationID]:
			leaseUnits += u.Units
			figs.LeaseCommits++
		case len(parts) == 2 && parts[0] == "hold-settle" && holdEvent[parts[1]] != "":
			byEvent[holdEvent[parts[1]]] = append(byEvent[holdEvent[parts[1]]], u)
		case len(parts) == 2 && parts[0] == "lease-settle" && lease[parts[1]]:
			leaseUnits += u.Units
			figs.LeaseSettles++
		case len(parts) >= 3 && len(parts) <= 4 && parts[0] == "usage" && parts[1] == u.CustomerID:
			// "usage:{customer_id}:{event}" or "usage:{customer_id}:{event}:{n}"
			if len(parts) == 4 {
				v.second++
			}
			byEvent[parts[2]] = append(byEvent[parts[2]], u)
		default:
			v.add("%s: chat usage %s has key %q (reservation %q)", c.id, u.EventID, u.IdempotencyKey, u.ReservationID)
		}
	}
	for rsv := range lease {
		if !ended[rsv] {
			figs.LeaseOrphans++
		}
	}
	var leased int64
	for _, a := range actions {
		got := byEvent[a.event]
		delete(byEvent, a.event)
		mf := &figs.ByMode[a.mode]
		switch {
		case !a.decided:
		case a.decision.Allowed && a.decision.Leased:
			// Counted on a lease: charged by the lease's commit.
			leased++
			if len(got) != 0 {
				mf.DoubleCharges++
				v.add("%s: action %s served on a lease (%s) and charged on its own too: %v", c.id, a.event, a.mode, keys(got))
			}
		case a.decision.Allowed && len(got) == 0:
			mf.NeverCharged++
			v.add("%s: action %s allowed (%s, %s, replayed %v) and never charged", c.id, a.event, a.decision.Reason, a.mode, a.decision.Replayed)
		case a.decision.Allowed && len(got) > 1:
			mf.DoubleCharges++
			v.add("%s: action %s allowed (%s, %s) with %d charges %v", c.id, a.event, a.decision.Reason, a.mode, len(got), keys(got))
		case a.decision.Allowed && !a.decision.Replayed && a.decision.Hold == nil &&
			(a.decision.Usage == nil || a.decision.Usage.ID != got[0].EventID):
			// (A replayed decision comes from the record of charged events
			// and names no usage event; a two-phase one names its hold.)
			v.add("%s: action %s allowed, but its decision names another usage event than %s", c.id, a.event, got[0].EventID)
		case a.decision.Allowed && a.decision.Hold != nil && got[0].ReservationID != a.decision.Hold.ID && !strings.HasPrefix(got[0].IdempotencyKey, "hold-settle:"):
			v.add("%s: action %s allowed on hold %s, but charged by %s", c.id, a.event, a.decision.Hold.ID, got[0].IdempotencyKey)
		case !a.decision.Allowed && len(got) != 0:
			mf.DoubleCharges++
			v.add("%s: action %s denied (%s) but charged: %v", c.id, a.event, a.decision.Reason, keys(got))
		}
	}
	figs.LeaseActions += int(leased)
	figs.LeaseUnits += int(leaseUnits)
	switch {
	case leaseUnits > leased:
		figs.LeaseDouble += int(leaseUnits - leased)
		v.add("%s: %d actions served on leases, %d units committed: charged twice", c.id, leased, leaseUnits)
	case leaseUnits < leased && leased-leaseUnits <= int64(letThrough):
		free = int(leased - leaseUnits)
		figs.UnchargedAllowed += free
	case leaseUnits < leased:
		free = letThrough
		figs.UnchargedAllowed += free
		figs.LeaseNeverCharged += int(leased-leaseUnits) - free
		v.add("%s: %d actions served on leases, %d units committed (%d answered as let through after a crash): allowed, never charged",
			c.id, leased, leaseUnits, letThrough)
	}
	for evt, us := range byEvent {
		v.add("%s: usage events %v of event %s belong to no action", c.id, keys(us), evt)
	}
	if chatCost != chatUnits*chatCostMC {
		v.add("%s: %d chat units cost %d mc", c.id, chatUnits, chatCost)
	}
	return int(chatEvents), free
}

func keys(us []quotastacktest.UsageRecord) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.IdempotencyKey
	}
	return out
}

// soakFigures are the numbers the soak prints (and the README quotes).
type soakFigures struct {
	Name                     string
	Duration, Elapsed        time.Duration
	Seed                     int64
	Race                     bool
	Customers, Replicas      int
	Workers                  int
	Actions, GateCalls       int
	Unknown                  int // gate calls that returned an error and were repeated
	Allowed, AutoBought      int
	Denied                   map[autobuy.Reason]int
	ErrKinds                 map[string]int
	Purchases, Paywalled     int
	ChatEvents               int
	SecondKey                int // chat events recorded under usage:{event}:2 after a 402
	Calls, Attempts, Retries int64
	ServerRequests           int
	Faults                   quotastacktest.FaultCounts
	Crashes, Resumed         int
	Limited                  int // 429s of the rate limiter (not injected)
	// DoubleCharges, DebitsWithoutGrant and BlockedPayers must be zero.
	DoubleCharges, DebitsWithoutGrant, BlockedPayers int

	Modes  bool // gates in every gateMode
	ByMode [numModes]modeFigures
	// Lease-served actions, per customer: units counted against units
	// committed (LeaseDouble and LeaseNeverCharged must be zero).
	LeaseActions, LeaseUnits, LeaseDouble, LeaseNeverCharged int
	LeasesReserved, LeaseCommits, LeaseSettles               int
	LeaseOrphans                                             int // lease reservations still holding credits at the end
	// UnchargedAllowed is the allowed-but-never-charged units the soak lets
	// pass as a documented exception (AllowUncharged): none.
	UnchargedAllowed int
	LetThrough       int // events answered as let through on a lease after their claimer died
	TakeAnswersLost  int64
}

func (f soakFigures) String() string {
	var b strings.Builder
	race := "off"
	if f.Race {
		race = "on"
	}
	denied := 0
	for _, n := range f.Denied {
		denied += n
	}
	fmt.Fprintf(&b, "soak %s: %s (ran %s, race detector %s, seed %d): %d customers, %d replicas, %d goroutines\n",
		f.Name, f.Duration, f.Elapsed.Round(time.Millisecond), race, f.Seed, f.Customers, f.Replicas, f.Workers)
	fmt.Fprintf(&b, "  money: %d double charges, %d debits without a grant, %d blocked payers; %d processes died mid-purchase or mid-commit, %d intents finished by Resume at the end\n",
		f.DoubleCharges, f.DebitsWithoutGrant, f.BlockedPayers, f.Crashes, f.Resumed)
	fmt.Fprintf(&b, "  actions %d: allowed %d (after an auto-buy %d), denied %d %s; chat usage events %d (%d under usage:{id}:2)\n",
		f.Actions, f.Allowed, f.AutoBought, denied, sortedCounts(f.Denied), f.ChatEvents, f.SecondKey)
	fmt.Fprintf(&b, "  gate calls %d: %d returned an error and were repeated with the same event id %s\n",
		f.GateCalls, f.Unknown, sortedCounts(f.ErrKinds))
	fmt.Fprintf(&b, "  plans bought %d (one debit and one grant each), customers paywalled %d\n", f.Purchases, f.Paywalled)
	fmt.Fprintf(&b, "  HTTP: %d calls, %d attempts, %d retries; the server answered or dropped %d requests, its rate limit refused %d\n",
		f.Calls, f.Attempts, f.Retries, f.ServerRequests, f.Limited)
	fmt.Fprintf(&b, "  faults injected: %d (500: %d, 503: %d, 429: %d, dropped after executing: %d, executed then 500: %d), delayed requests: %d",
		f.Faults.Status500+f.Faults.Status503+f.Faults.Status429+f.Faults.Drops+f.Faults.ExecuteThen,
		f.Faults.Status500, f.Faults.Status503, f.Faults.Status429, f.Faults.Drops, f.Faults.ExecuteThen, f.Faults.Latency)
	f.modesReport(&b)
	return b.String()
}

func sortedCounts[K ~string](m map[K]int) string {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	parts := make([]string, len(ks))
	for i, k := range ks {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return "(" + strings.Join(parts, ", ") + ")"
}
