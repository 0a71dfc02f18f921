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
// handlers has. Replicas share the server and one purchase journal and
// locker (in-process stand-ins for the Redis ones, which the nested module's
// soak uses). A replica may crash in the middle of a purchase; the worker
// that sees it replaces it with a new process.
type replica struct {
	client    *quotastack.Client
	gates     [2]*autobuy.Gatekeeper
	transport *countingTransport
	crash     *crashingTransport
	calls     *callCounter
}

// soakSkews are the replicas' clock offsets, by slot: up to a minute either way.
var soakSkews = []time.Duration{-time.Minute, 40 * time.Second, -15 * time.Second, time.Minute}

func newReplica(srv *quotastacktest.Server, waitMax, skew time.Duration, pCrash float64, shared ...autobuy.Option) (*replica, error) {
	r := &replica{transport: newCountingTransport(), calls: &callCounter{}}
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
	for i := range r.gates {
		r.gates[i], err = autobuy.New(r.client, append([]autobuy.Option{autobuy.WithPlan(soakPlan), autobuy.WithClock(clock)}, shared...)...)
		if err != nil {
			return nil, err
		}
	}
	return r, nil
}

// crashingTransport kills its process on a plan purchase request with
// probability p: the request executes or not (even odds), the answer never
// comes, and every later request of this process fails.
type crashingTransport struct {
	next http.RoundTripper
	p    float64
	dead atomic.Bool
}

var errProcessDied = errors.New("soak: the process died")

func (c *crashingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.dead.Load() {
		return nil, errProcessDied
	}
	purchase := r.Method == http.MethodPost && (r.URL.Path == "/v1/topup/grant" ||
		strings.HasPrefix(r.Header.Get("Idempotency-Key"), "plan-debit:"))
	if purchase && c.p > 0 && rand.Float64() < c.p && c.dead.CompareAndSwap(false, true) {
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
	calls           int // Gate calls it took: 1 + the repeats after errors
}

// workerStats is what one worker saw, merged after the run.
type workerStats struct {
	actions  []action
	errKinds map[string]int
	problems []string
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
// its rate limit on, and replicas that die in the middle of purchases; then
// it proves from the server's ledger that nothing was lost or charged twice.
// A gate that returns an error leaves its action unknown; the worker repeats
// the same gate with the same event id until it decides, as a real caller
// would.
func TestSoak(t *testing.T) {
	t.Parallel() // after the serial goroutine-leak tests of this package
	runSoak(t, soakConfig{name: "replicas", replicas: soakReplicas, pCrash: 0.1, rateLimit: true})
}

// TestSoakOneProcess is the same soak in one process, its clock a minute
// off, with two Gatekeepers on the process-wide default journal and locker
// (no crashes: the memory journal dies with the process).
func TestSoakOneProcess(t *testing.T) {
	t.Parallel()
	runSoak(t, soakConfig{name: "one process", replicas: 1, oneProcess: true})
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
	if !cfg.oneProcess {
		shared = []autobuy.Option{autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker())}
	}
	fl := &fleet{make: func(i int) (*replica, error) {
		waitMax := 20 * time.Millisecond
		if i%2 == 1 {
			waitMax = 1500 * time.Millisecond
		}
		opts := shared
		if cfg.ownStores {
			opts = []autobuy.Option{autobuy.WithJournal(autobuy.NewMemoryJournal(0)), autobuy.WithLocker(autobuy.NewLocalLocker())}
		}
		return newReplica(srv, waitMax, soakSkews[i%len(soakSkews)], cfg.pCrash, opts...)
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
			stats[w] = runWorker(w, seed, deadline, customers, fl)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopFaults()
	srv.SetRateLimit(0, 0)

	// A process that died mid-purchase left an intent open; any replica
	// finishes it on the customer's next purchase, or here.
	fl.mu.Lock()
	for _, r := range fl.all {
		r.client.CloseIdleConnections()
	}
	finisher, err := fl.make(0)
	fl.mu.Unlock()
	require.NoError(t, err)
	finisher.crash.p = 0
	resumed := 0
	if !cfg.oneProcess {
		resumed, err = finisher.gates[0].Resume(context.Background(), 0)
		require.NoError(t, err)
	}

	figs := soakFigures{Name: cfg.name, Duration: dur, Elapsed: elapsed, Seed: seed, Race: raceEnabled,
		Customers: len(customers), Replicas: cfg.replicas, Workers: soakWorkers, Crashes: fl.crashes, Resumed: resumed,
		Denied: map[autobuy.Reason]int{}, ErrKinds: map[string]int{}, Faults: srv.FaultCounts(),
		ServerRequests: len(srv.Requests())}
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
	}
	for _, r := range fl.all {
		figs.Attempts += r.transport.attempts.Load()
		figs.Calls += r.calls.calls.Load()
		figs.Retries += r.calls.retries.Load()
	}
	// Every attempt the transport saw is a call's first try or a retry.
	assert.Equal(t, figs.Attempts, figs.Calls+figs.Retries, "HTTP attempts = logical calls + retries")

	checkSoakLedger(t, srv, finisher.client, customers, actions, &figs)
	countMoney(srv, customers, &figs)
	assert.Zero(t, figs.DoubleCharges, "double charges")
	assert.Zero(t, figs.DebitsWithoutGrant, "debits without a grant")
	assert.Zero(t, figs.BlockedPayers, "customers who paid and got no plan")
	assert.NoError(t, srv.CheckInvariants())

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
// without their plan.
func countMoney(srv *quotastacktest.Server, customers []soakCustomer, figs *soakFigures) {
	for _, c := range customers {
		blocked := false
		for _, o := range srv.PlanOrders(c.id) {
			if len(o.Debits) > 1 || len(o.GrantBlockIDs) > 1 {
				figs.DoubleCharges++
			}
			if len(o.Debits) > 0 && len(o.GrantBlockIDs) == 0 {
				figs.DebitsWithoutGrant++
				blocked = true
			}
		}
		if blocked {
			figs.BlockedPayers++
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

// runWorker gates actions of random customers through random replicas until
// the deadline, each with a unique event id, repeating a gate that errs.
func runWorker(w int, seed int64, deadline time.Time, customers []soakCustomer, fl *fleet) workerStats {
	s := workerStats{errKinds: map[string]int{}}
	rng := rand.New(rand.NewPCG(uint64(seed), uint64(w)))
	for seq := 0; time.Now().Before(deadline); seq++ {
		c := customers[rng.IntN(len(customers))]
		a := action{event: fmt.Sprintf("w%02d-%06d", w, seq), customer: c.id}
		for !a.decided && a.calls < maxGateCalls {
			slot, r := fl.pick(rng) // a repeat may land on another replica
			a.calls++
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			d, err := r.gates[rng.IntN(len(r.gates))].Gate(ctx, quotastack.ExternalID(c.id), chatMetric, autobuy.WithEventID(a.event))
			cancel()
			if r.crash.dead.Load() {
				// The process died during this gate: whatever it answered is
				// lost with it. A new process takes its place; the caller repeats.
				if rerr := fl.replace(slot, r); rerr != nil {
					s.problems = append(s.problems, "replacing a crashed replica: "+rerr.Error())
				}
				s.errKinds["process died"]++
				continue
			}
			if err != nil {
				kind := gateErrorKind(err)
				s.errKinds[kind]++
				if strings.HasPrefix(kind, "unexpected") {
					s.problems = append(s.problems, fmt.Sprintf("action %s: %s: %v", a.event, kind, err))
				}
				continue
			}
			a.decision, a.decided = d, true
		}
		if !a.decided {
			s.problems = append(s.problems, fmt.Sprintf("action %s: no decision after %d gate calls", a.event, a.calls))
		}
		s.actions = append(s.actions, a)
	}
	return s
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
	customers []soakCustomer, actions []action, figs *soakFigures,
) {
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
		d := a.decision
		switch {
		case d.Allowed && (d.Reason == autobuy.ReasonEntitled || d.Reason == autobuy.ReasonAutoBought):
			figs.Allowed++
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
		chatEvents := checkUsage(v, srv, c, byCustomer[c.id])

		acct, ok := srv.Account(c.id)
		if !assert.True(t, ok, c.id) {
			continue
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
}

// checkPurchases replays the customer's ledger in order, tracking the plan
// credits, and returns the plans bought and the plan credits left.
//
// "At most one plan per exhaustion" is checked as two rules that a second
// plan for one exhaustion must break: (1) a plan debit is legitimate only if
// the live plan credits, at that point of the ledger, can't pay one action
// (< 1,000 mc): a plan bought while the previous one still covered an action
// fails here; (2) purchases don't overlap: each plan debit is followed by
// its own grant before any other plan debit, and none is left without a
// grant (two purchases racing for the same exhaustion would both debit
// before either granted, so both see exhausted credits and pass rule 1).
func checkPurchases(v *violations, srv *quotastacktest.Server, c soakCustomer) (purchases int, planMC int64) {
	v.t.Helper()
	planBlock := map[string]bool{}
	debits, grants := map[string]int{}, map[string]int{}
	pending := ""
	for _, e := range srv.Ledger(c.id) {
		isPlanGrant := e.Kind == "grant" && e.Metadata["source"] == "plan_grant"
		if isPlanGrant {
			planBlock[e.BlockID] = true
		}
		switch order := e.Metadata["order_id"]; {
		case e.Kind == "debit" && e.MetricKey == soakPlan.Metric():
			debits[order]++
			if planMC >= chatCostMC {
				v.add("%s: plan %s debited (ledger #%d) while %d mc of plan credits were left", c.id, order, e.Seq, planMC)
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

// checkUsage matches the customer's chat usage events with its actions and
// returns how many there are.
func checkUsage(v *violations, srv *quotastacktest.Server, c soakCustomer, actions []action) int {
	v.t.Helper()
	byEvent := map[string][]quotastacktest.UsageRecord{}
	var chat, chatCost int64
	for _, u := range srv.UsageEvents(c.id) {
		if u.MetricKey != chatMetric {
			continue
		}
		chat++
		chatCost += u.Cost
		// "usage:{customer_id}:{event}" or "usage:{customer_id}:{event}:{n}"
		// (the soak's event ids hold no ':').
		parts := strings.Split(u.IdempotencyKey, ":")
		if len(parts) < 3 || len(parts) > 4 || parts[0] != "usage" || parts[1] != u.CustomerID {
			v.add("%s: chat usage %s has key %q", c.id, u.EventID, u.IdempotencyKey)
			continue
		}
		evt := parts[2]
		if len(parts) == 4 {
			v.second++
		}
		byEvent[evt] = append(byEvent[evt], u)
	}
	for _, a := range actions {
		got := byEvent[a.event]
		delete(byEvent, a.event)
		switch {
		case !a.decided:
		case a.decision.Allowed && len(got) != 1:
			v.add("%s: action %s allowed (%s) with %d usage events %v", c.id, a.event, a.decision.Reason, len(got), keys(got))
		case a.decision.Allowed && !a.decision.Replayed && (a.decision.Usage == nil || a.decision.Usage.ID != got[0].EventID):
			// (A replayed decision comes from the record of charged events and names no usage event.)
			v.add("%s: action %s allowed, but its decision names another usage event than %s", c.id, a.event, got[0].EventID)
		case !a.decision.Allowed && len(got) != 0:
			v.add("%s: action %s denied (%s) but charged: usage events %v", c.id, a.event, a.decision.Reason, keys(got))
		}
	}
	for evt, us := range byEvent {
		v.add("%s: usage events %v of event %s belong to no action", c.id, keys(us), evt)
	}
	if chatCost != chat*chatCostMC {
		v.add("%s: %d chat events cost %d mc", c.id, chat, chatCost)
	}
	return int(chat)
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
	fmt.Fprintf(&b, "  money: %d double charges, %d debits without a grant, %d blocked payers; %d processes died mid-purchase, %d intents finished by Resume at the end\n",
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
