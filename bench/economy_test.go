package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
)

// economyFull runs the request-economy rows at the scale BENCHMARKS.md
// reports (scripts/bench sets it); without it TestRequestEconomy runs the
// 64-goroutine gate and the recorder briefly, on a faster scaled window.
var economyFull = flag.Bool("economy.full", false, "run the request-economy table at full length (scripts/bench)")

// economyRun is one row of the request-economy table.
type economyRun struct {
	mode       string // "gate", "gate-unpaced", "record-first", "lease" or "batch"
	goroutines int
	scale      int           // the fake's window is 60 s / scale, for 100 requests
	length     time.Duration // how long actions are started
}

type economyResult struct {
	actions, failed, failedWait int // failedWait: refused at once, the deadline couldn't cover the wait
	requests, status429         int // as the server saw them
	steadyOK                    int // requests answered 2xx after the fake's burst was spent
	steady                      time.Duration
	latencies                   []time.Duration // of the actions that succeeded
	firstErr                    error
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

// runEconomy starts a fake limited to 100 requests per 60 s / scale and
// drives one client (as shipped, its budget set to the fake's limit) from
// goroutines for length: gates on customers with plenty of plan credits, or
// usage events through a Recorder.
func runEconomy(tb testing.TB, run economyRun) economyResult {
	tb.Helper()
	per := quotastack.DefaultRatePeriod / time.Duration(run.scale)
	srv := newServer(tb)
	customers := 1000
	if run.mode == "record-first" || run.mode == "lease" {
		customers = 20 // hot customers: the case these modes are for
	}
	exts := make([]string, customers)
	for i := range exts {
		exts[i] = fmt.Sprintf("econ-%d", i)
		grantPlanCredits(tb, srv, exts[i], 1<<40)
	}
	srv.SetRateLimit(quotastack.DefaultRateBudget, per)
	srv.ResetRequests()
	opts := []quotastack.Option{quotastack.WithRateBudget(quotastack.DefaultRateBudget, per)} // the shipped default, scaled
	if run.mode == "gate-unpaced" {
		opts = []quotastack.Option{quotastack.WithRateBudget(0, 0)}
	}
	c := srv.Client(opts...)
	tb.Cleanup(c.CloseIdleConnections)

	var (
		mu  sync.Mutex
		res economyResult
	)
	finish := func(start time.Time, err error) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			res.actions++
			res.latencies = append(res.latencies, now.Sub(start))
		case errors.As(err, new(*quotastack.RateLimitError)):
			res.failedWait++
		default:
			res.failed++
			if res.firstErr == nil {
				res.firstErr = err
			}
		}
	}

	stop := time.Now().Add(run.length)
	var next atomic.Int64
	var wg sync.WaitGroup
	switch run.mode {
	case "gate", "gate-unpaced", "record-first", "lease":
		var gopts []autobuy.Option
		switch run.mode {
		case "record-first":
			gopts = append(gopts, autobuy.WithRecordFirst())
		case "lease":
			gopts = append(gopts, autobuy.WithLease(autobuy.LeaseConfig{Actions: 100, TTL: time.Minute, Linger: time.Second}))
		}
		g := sdkGate(tb, c, gopts...)
		defer func() {
			if err := g.Close(context.Background()); err != nil {
				tb.Error(err)
			}
		}()
		for range run.goroutines {
			wg.Go(func() {
				for time.Now().Before(stop) {
					i := int(next.Add(1))
					start := time.Now()
					// The client's default call timeout, scaled like the window.
					ctx, cancel := context.WithTimeout(context.Background(), quotastack.DefaultTimeout/time.Duration(run.scale))
					d, err := g.Gate(ctx, quotastack.ExternalID(exts[i%customers]), metric)
					cancel()
					if err == nil && !d.Allowed {
						err = fmt.Errorf("gate denied: %s", d.Reason)
					}
					finish(start, err)
					if errors.As(err, new(*quotastack.RateLimitError)) {
						time.Sleep(100 * time.Millisecond) // the caller's user comes back later
					}
				}
			})
		}
		wg.Wait()
	case "batch":
		// The action is one usage event; its latency is what Add costs the caller.
		rec, err := c.NewRecorder(quotastack.WithResults(func(rs []quotastack.RecordResult) {
			for _, r := range rs {
				if r.Err != nil {
					finish(time.Now(), r.Err)
					continue
				}
				mu.Lock()
				res.actions++
				mu.Unlock()
			}
		}))
		if err != nil {
			tb.Fatal(err)
		}
		for range run.goroutines {
			wg.Go(func() {
				for time.Now().Before(stop) {
					i := int(next.Add(1))
					start := time.Now()
					ctx, cancel := context.WithDeadline(context.Background(), stop)
					err := rec.Add(ctx, fmt.Sprint("evt-", i), quotastack.UsageParams{
						Customer: quotastack.ExternalID(exts[i%customers]), MetricKey: metric, Units: 1})
					cancel()
					if err != nil {
						if !errors.Is(err, quotastack.ErrRecorderFull) {
							finish(start, err)
						}
						return
					}
					mu.Lock()
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
	return res
}

func logEconomy(t *testing.T, run economyRun, r economyResult) {
	t.Helper()
	reqPerAction, share := 0.0, 0.0
	if r.actions > 0 {
		reqPerAction = float64(r.requests) / float64(r.actions)
	}
	if r.requests > 0 {
		share = float64(r.status429) / float64(r.requests)
	}
	t.Logf("economy mode=%s goroutines=%d window=100/%s actions=%d requests=%d req_per_action=%.3f actions_per_min=%.1f share_429=%.4f status_429=%d failed=%d failed_wait=%d p50_ms_at_100=%.0f p99_ms_at_100=%.0f first_error=%q",
		run.mode, run.goroutines, quotastack.DefaultRatePeriod/time.Duration(run.scale), r.actions, r.requests, reqPerAction,
		r.actionsPerMinute(run.scale), share, r.status429, r.failed, r.failedWait,
		float64(percentile(r.latencies, 0.50)*time.Duration(run.scale))/1e6,
		float64(percentile(r.latencies, 0.99)*time.Duration(run.scale))/1e6, fmt.Sprint(r.firstErr))
}

// TestRequestEconomy drives one client against the fake at its rate limit
// (scaled) and logs requests per action, actions per minute at 100
// requests/min, the share of 429s, failed calls and latency. Asserted, with
// the settings as shipped: 64 goroutines gating see no failed gate whose
// deadline allowed the wait, and at most 5% of requests answered 429.
func TestRequestEconomy(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for seconds")
	}
	runs := []economyRun{
		{mode: "gate", goroutines: 64, scale: 30, length: 5 * time.Second},
		{mode: "record-first", goroutines: 8, scale: 30, length: 3 * time.Second},
		{mode: "lease", goroutines: 64, scale: 30, length: 3 * time.Second},
		{mode: "batch", goroutines: 8, scale: 30, length: 3 * time.Second},
	}
	if *economyFull {
		runs = []economyRun{
			{mode: "gate", goroutines: 1, scale: 10, length: 30 * time.Second},
			{mode: "gate", goroutines: 8, scale: 10, length: 30 * time.Second},
			{mode: "gate", goroutines: 64, scale: 10, length: 30 * time.Second},
			{mode: "gate-unpaced", goroutines: 64, scale: 10, length: 30 * time.Second},
			{mode: "record-first", goroutines: 8, scale: 10, length: 30 * time.Second},
			{mode: "lease", goroutines: 64, scale: 10, length: 30 * time.Second},
			{mode: "batch", goroutines: 8, scale: 10, length: 20 * time.Second},
		}
	}
	for _, run := range runs {
		t.Run(fmt.Sprintf("%s/%d", run.mode, run.goroutines), func(t *testing.T) {
			r := runEconomy(t, run)
			logEconomy(t, run, r)
			if run.mode == "gate-unpaced" {
				return // shown for comparison: pacing off, 429 pauses alone
			}
			if r.failed > 0 {
				t.Errorf("%d calls failed although their deadline allowed the wait; first: %v", r.failed, r.firstErr)
			}
			if r.requests > 0 && float64(r.status429) > 0.05*float64(r.requests) {
				t.Errorf("%d of %d requests answered 429 (more than 5%%)", r.status429, r.requests)
			}
			if r.actions == 0 {
				t.Error("no action completed")
			}
		})
	}
}
