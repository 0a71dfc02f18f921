package bench

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// economyFull runs the request-economy table at the scale BENCHMARKS.md
// reports (scripts/bench sets it); economyQuick runs a few rows briefly.
// Without either, TestRequestEconomy is skipped: it runs for minutes and
// belongs to scripts/bench, not to the test command.
var (
	economyFull   = flag.Bool("economy.full", false, "run the request-economy table at full length (scripts/bench)")
	economyQuick  = flag.Bool("economy.quick", false, "run a few request-economy rows briefly")
	economyLength = flag.Duration("economy.length", 8*time.Second, "how long each full request-economy row starts actions")
)

// The economy's modes: the gate as shipped, record-first, lease, the
// middleware in two-phase mode (reserve, run the handler, commit), and usage
// events through a Recorder (batch).
const (
	modeGate        = "gate"
	modeRecordFirst = "record-first"
	modeLease       = "lease"
	modeTwoPhase    = "two-phase"
	modeBatch       = "batch"
)

// economyRun is one row of the request-economy table.
type economyRun struct {
	mode       string
	ctx        string // "background": context.Background(), as users call it; "deadline": one deadline per gate
	goroutines int
	pop        string        // "hot": 20 customers with plenty of plan credits; "tail": 2,000 customers × 3 actions, plans partly used
	scale      int           // the fake's window is 60 s / scale, for 100 requests
	length     time.Duration // how long actions are started
}

const (
	hotCustomers  = 20
	tailCustomers = 2000
	tailActions   = 3
)

type economyResult struct {
	actions   int // completed: allowed (and, two-phase, committed)
	refused   int // failed before sending a request (ErrRateLimited at once, or a queued call whose time ran out)
	failed    int // failed or denied after sending at least one request: half-done
	requests  int // as the server saw them
	status429 int
	steadyOK  int // requests answered 2xx after the fake's burst was spent
	steady    time.Duration
	allowed   int64 // units of allowed decisions
	charged   int64 // units the fake executed as usage for them (a lease's once committed)
	latencies []time.Duration
	firstErr  error
}

// actionsPerMinute is the steady rate of actions scaled back to the
// documented 100 requests per 60 s: the rate of successful requests once the
// fake's initial burst is spent, divided by the successful requests per action.
func (r economyResult) actionsPerMinute(scale int) float64 {
	ok := r.requests - r.status429
	if r.steady <= 0 || r.actions == 0 || ok == 0 {
		return 0
	}
	perAction := float64(ok) / float64(r.actions)
	return float64(r.steadyOK) / r.steady.Minutes() / float64(scale) / perAction
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// sentKey tags the requests of one action, so the counting transport tells a
// gate refused before it sent anything from a half-done one.
type sentKey struct{}

// sentRequests counts the requests of one action and names them, so a
// half-done gate's error says what it had sent.
type sentRequests struct {
	mu    sync.Mutex
	names []string
}

func (s *sentRequests) add(r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names = append(s.names, r.Method+" "+r.URL.Path)
}

func (s *sentRequests) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.names)
}

func (s *sentRequests) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.names, ", ")
}

type countingTransport struct{ next http.RoundTripper }

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if s, ok := r.Context().Value(sentKey{}).(*sentRequests); ok {
		s.add(r)
	}
	return t.next.RoundTrip(r)
}

// economyTransport is the SDK's default pool (64 connections per host) with
// the counting layer on top.
func economyTransport(tb testing.TB) http.RoundTripper {
	t := pooledTransport(tb)
	t.MaxConnsPerHost = 64
	return countingTransport{next: t}
}

// usedUnits sums the units of the metric's usage events the fake executed.
func usedUnits(srv *quotastacktest.Server, exts []string) int64 {
	var n int64
	for _, e := range exts {
		for _, u := range srv.UsageEvents(e) {
			if u.MetricKey == metric {
				n += u.Units
			}
		}
	}
	return n
}

// twoPhaseAction gates through the middleware in two-phase mode: reserve,
// run a handler that answers 200, commit. allowedUnits is 1 when the handler
// ran; the error tells a refusal (the middleware's status) or a failed settle.
func twoPhaseAction(g *autobuy.Gatekeeper) func(ctx context.Context, ext string) (allowedUnits int64, err error) {
	type settled struct {
		committed bool
		err       error
	}
	type settleKey struct{}
	h := autobuy.Middleware(g, func(r *http.Request) (autobuy.Action, error) {
		return autobuy.Action{Customer: quotastack.ExternalID(r.URL.Query().Get("c")), Metric: metric}, nil
	}, autobuy.TwoPhase(time.Minute), autobuy.OnSettle(func(r *http.Request, _ autobuy.Decision, committed bool, err error) {
		*r.Context().Value(settleKey{}).(*settled) = settled{committed, err}
	}))(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	return func(ctx context.Context, ext string) (int64, error) {
		var s settled
		req := httptest.NewRequestWithContext(context.WithValue(ctx, settleKey{}, &s), http.MethodPost, "/act?c="+ext, nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code != http.StatusOK:
			return 0, &refusedError{status: rec.Code, body: rec.Body.String()}
		case s.err != nil || !s.committed:
			return 1, fmt.Errorf("allowed, settle failed: committed %v: %w", s.committed, s.err)
		}
		return 1, nil
	}
}

// refusedError is the middleware's answer to a request it did not let through.
type refusedError struct {
	status int
	body   string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("middleware answered %d: %s", e.status, e.body)
}

// runEconomy starts a fake limited to 100 requests per 60 s / scale and
// drives one client (as shipped, its budget and default timeout scaled like
// the window) from goroutines for length.
func runEconomy(tb testing.TB, run economyRun) economyResult {
	tb.Helper()
	per := quotastack.DefaultRatePeriod / time.Duration(run.scale)
	srv := newServer(tb)
	customers, maxActions := hotCustomers, 0
	if run.pop == "tail" {
		customers, maxActions = tailCustomers, tailCustomers*tailActions
	}
	exts := make([]string, customers)
	setup := srv.Client()
	for i := range exts {
		exts[i] = fmt.Sprintf("econ-%d", i)
		if run.pop == "tail" {
			// A plan bought earlier and partly used: 1 to 40 of its 50 actions.
			grantPlanCredits(tb, srv, exts[i], hourPlan.CreditsMC)
			if _, err := setup.Record(context.Background(), quotastack.UsageParams{Customer: quotastack.ExternalID(exts[i]),
				MetricKey: metric, Units: int64(1 + i%40)}); err != nil {
				tb.Fatal(err)
			}
		} else {
			grantPlanCredits(tb, srv, exts[i], 1<<40)
		}
	}
	setup.CloseIdleConnections()
	before := usedUnits(srv, exts)
	srv.SetRateLimit(quotastack.DefaultRateBudget, per)
	srv.ResetRequests()
	timeout := quotastack.DefaultTimeout / time.Duration(run.scale)
	c := srv.Client(quotastack.WithRateBudget(quotastack.DefaultRateBudget, per), // the shipped default, scaled
		quotastack.WithTimeout(timeout), quotastack.WithTransport(economyTransport(tb)))
	tb.Cleanup(c.CloseIdleConnections)

	var (
		mu  sync.Mutex
		res economyResult
	)
	// finish files one action: completed (err nil), or refused or failed by
	// whether it sent a request.
	finish := func(start time.Time, sent *sentRequests, allowedUnits int64, err error) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		res.allowed += allowedUnits
		switch {
		case err == nil:
			res.actions++
			res.latencies = append(res.latencies, now.Sub(start))
		case sent.count() == 0:
			res.refused++
		default:
			res.failed++
			if res.firstErr == nil {
				res.firstErr = fmt.Errorf("%w (after sending %s)", err, sent)
			}
		}
	}
	actionCtx := func(sent *sentRequests) (context.Context, context.CancelFunc) {
		ctx := context.WithValue(context.Background(), sentKey{}, sent)
		if run.ctx == "deadline" {
			return context.WithTimeout(ctx, timeout)
		}
		return ctx, func() {}
	}

	stop := time.Now().Add(run.length)
	var next atomic.Int64
	take := func() (int, bool) {
		i := int(next.Add(1)) - 1
		return i, time.Now().Before(stop) && (maxActions == 0 || i < maxActions)
	}
	var wg sync.WaitGroup
	switch run.mode {
	case modeGate, modeRecordFirst, modeLease, modeTwoPhase:
		var gopts []autobuy.Option
		switch run.mode {
		case modeRecordFirst:
			gopts = append(gopts, autobuy.WithRecordFirst())
		case modeLease:
			gopts = append(gopts, autobuy.WithLease(autobuy.LeaseConfig{Actions: 100, TTL: time.Minute, Linger: time.Second}))
		}
		g := sdkGate(tb, c, gopts...)
		var act func(ctx context.Context, ext string) (allowedUnits int64, err error)
		if run.mode == modeTwoPhase {
			act = twoPhaseAction(g)
		} else {
			act = func(ctx context.Context, ext string) (int64, error) {
				d, err := g.Gate(ctx, quotastack.ExternalID(ext), metric)
				var units int64
				if d.Allowed {
					units = 1
				}
				if err == nil && !d.Allowed {
					err = fmt.Errorf("gate denied: %s", d.Reason)
				}
				return units, err
			}
		}
		if run.pop == "hot" && run.mode != modeLease {
			// Returning customers: each gated once before the run, unlimited
			// (a lease would stay open and commit in the run).
			srv.SetRateLimit(0, 0)
			for _, e := range exts {
				if _, err := act(context.Background(), e); err != nil {
					tb.Fatal(err)
				}
			}
			before = usedUnits(srv, exts)
			srv.SetRateLimit(quotastack.DefaultRateBudget, per)
			srv.ResetRequests()
		}
		for range run.goroutines {
			wg.Go(func() {
				for {
					i, ok := take()
					if !ok {
						return
					}
					for {
						var sent sentRequests
						ctx, cancel := actionCtx(&sent)
						start := time.Now()
						units, err := act(ctx, exts[i%customers])
						cancel()
						finish(start, &sent, units, err)
						if err == nil || sent.count() > 0 || !time.Now().Before(stop) {
							break
						}
						// Refused before sending anything: the caller's user
						// comes back later with the same action.
						time.Sleep(100 * time.Millisecond)
					}
				}
			})
		}
		wg.Wait()
		if err := g.Close(context.Background()); err != nil { // commits what leases let through
			tb.Error(err)
		}
	case modeBatch:
		// The action is one usage event; its latency is what Add costs the caller.
		rec, err := c.NewRecorder(quotastack.WithResults(func(rs []quotastack.RecordResult) {
			mu.Lock()
			defer mu.Unlock()
			for _, r := range rs {
				if r.Err != nil {
					res.failed++
					if res.firstErr == nil {
						res.firstErr = r.Err
					}
					continue
				}
				res.actions++
			}
		}))
		if err != nil {
			tb.Fatal(err)
		}
		for range run.goroutines {
			wg.Go(func() {
				for {
					i, ok := take()
					if !ok {
						return
					}
					start := time.Now()
					ctx, cancel := context.WithDeadline(context.Background(), stop)
					err := rec.Add(ctx, fmt.Sprint("evt-", i), quotastack.UsageParams{
						Customer: quotastack.ExternalID(exts[i%customers]), MetricKey: metric, Units: 1})
					cancel()
					if err != nil {
						return
					}
					mu.Lock()
					res.allowed++
					res.latencies = append(res.latencies, time.Since(start))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if err := rec.Close(context.Background()); err != nil {
			tb.Fatal(err)
		}
	default:
		tb.Fatalf("unknown mode %q", run.mode)
	}

	res.charged = usedUnits(srv, exts) - before
	log := srv.Requests()
	res.requests = len(log)
	var burstSpent, last time.Time
	for i, r := range log {
		if r.Status == 429 {
			res.status429++
		}
		if i == quotastack.DefaultRateBudget-1 {
			burstSpent = r.Time
		}
		if !burstSpent.IsZero() && i >= quotastack.DefaultRateBudget && r.Status < 300 {
			res.steadyOK++
			last = r.Time
		}
	}
	res.steady = last.Sub(burstSpent)
	if res.steady <= 0 && len(log) > 1 { // fewer requests than the burst: the whole run
		res.steady = log[len(log)-1].Time.Sub(log[0].Time)
		res.steadyOK = len(log) - res.status429
	}
	return res
}

func logEconomy(t *testing.T, run economyRun, r economyResult) {
	t.Helper()
	reqPerAction := 0.0
	if r.actions > 0 {
		reqPerAction = float64(r.requests) / float64(r.actions)
	}
	t.Logf("economy mode=%s ctx=%s pop=%s goroutines=%d window=100/%s actions=%d requests=%d req_per_action=%.3f actions_per_min=%.1f status_429=%d failed=%d refused=%d allowed=%d charged=%d allowed_not_charged=%d p50_ms_at_100=%.0f p99_ms_at_100=%.0f first_error=%q",
		run.mode, run.ctx, run.pop, run.goroutines, quotastack.DefaultRatePeriod/time.Duration(run.scale), r.actions, r.requests, reqPerAction,
		r.actionsPerMinute(run.scale), r.status429, r.failed, r.refused, r.allowed, r.charged, max(r.allowed-r.charged, 0),
		float64(percentile(r.latencies, 0.50)*time.Duration(run.scale))/1e6,
		float64(percentile(r.latencies, 0.99)*time.Duration(run.scale))/1e6, fmt.Sprint(r.firstErr))
}

// economyRuns is the table: every mode, with context.Background() and with
// a deadline per gate, at 1, 8, 64 and 256 goroutines, for the hot
// customers and the long tail; and the Recorder once.
func economyRuns(length time.Duration, scale int) []economyRun {
	var runs []economyRun
	for _, pop := range []string{"hot", "tail"} {
		for _, mode := range []string{modeGate, modeRecordFirst, modeLease, modeTwoPhase} {
			for _, ctx := range []string{"background", "deadline"} {
				for _, g := range []int{1, 8, 64, 256} {
					runs = append(runs, economyRun{mode: mode, ctx: ctx, goroutines: g, pop: pop, scale: scale, length: length})
				}
			}
		}
	}
	return append(runs, economyRun{mode: modeBatch, ctx: "deadline", goroutines: 8, pop: "hot", scale: scale, length: length})
}

// TestRequestEconomy drives one client against the fake at its rate limit
// (scaled) and logs, per row, actions per minute at 100 requests/min,
// requests per action, failed gates (half-done: a request sent, no action),
// gates refused before sending anything, 429s and allowed units the fake
// never charged. Asserted for every mode (counts, not timings): no failed
// gate (the Recorder: no failed event) and nothing allowed uncharged.
func TestRequestEconomy(t *testing.T) {
	var runs []economyRun
	switch {
	case *economyFull:
		runs = economyRuns(*economyLength, 10)
	case *economyQuick:
		for _, g := range []int{1, 64} {
			runs = append(runs, economyRun{mode: modeGate, ctx: "background", goroutines: g, pop: "hot", scale: 20, length: 4 * time.Second})
			runs = append(runs, economyRun{mode: modeLease, ctx: "background", goroutines: g, pop: "hot", scale: 20, length: 4 * time.Second})
		}
		runs = append(runs, economyRun{mode: modeLease, ctx: "deadline", goroutines: 256, pop: "hot", scale: 20, length: 4 * time.Second})
		runs = append(runs, economyRun{mode: modeRecordFirst, ctx: "background", goroutines: 64, pop: "tail", scale: 20, length: 3 * time.Second})
	default:
		t.Skip("runs for minutes: scripts/bench (-economy.full), or -economy.quick")
	}
	for _, run := range runs {
		t.Run(fmt.Sprintf("%s/%s/%s/%d", run.mode, run.ctx, run.pop, run.goroutines), func(t *testing.T) {
			r := runEconomy(t, run)
			logEconomy(t, run, r)
			if r.failed > 0 {
				t.Errorf("%d gates failed after sending a request; first: %v", r.failed, r.firstErr)
			}
			if r.allowed != r.charged {
				t.Errorf("%d units allowed, %d charged", r.allowed, r.charged)
			}
			if r.actions == 0 {
				t.Error("no action completed")
			}
		})
	}
}

// TestGateOverloadFinishesStartedGates is issue 22's first scenario as a
// test (counts, not timings): 64 goroutines gate through one client as
// shipped with context.Background(), against the fake at its rate limit
// (scaled 30×). Every gate either completes or is refused before it sends
// anything; every allowed action is charged; and nothing is answered 429.
func TestGateOverloadFinishesStartedGates(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for seconds")
	}
	t.Parallel()
	run := economyRun{mode: modeGate, ctx: "background", goroutines: 64, pop: "hot", scale: 30, length: 3 * time.Second}
	r := runEconomy(t, run)
	logEconomy(t, run, r)
	if r.failed > 0 {
		t.Errorf("%d gates failed after sending a request (half-done); first: %v", r.failed, r.firstErr)
	}
	if r.allowed != r.charged {
		t.Errorf("%d units allowed, %d charged", r.allowed, r.charged)
	}
	if r.status429 > 0 {
		t.Errorf("%d requests answered 429", r.status429)
	}
	if r.actions == 0 || r.refused == 0 {
		t.Errorf("%d actions, %d refused: the run should complete actions and overload the budget", r.actions, r.refused)
	}
}
