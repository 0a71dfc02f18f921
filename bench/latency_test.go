package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
)

var (
	latencyRun = flag.Bool("latency", false, "run TestLatencyPerPath (scripts/bench)")
	latencyN   = flag.Int("latency.n", 30, "actions per path and mode in TestLatencyPerPath")
)

// delayTransport adds d before each request, as a network would.
type delayTransport struct {
	next http.RoundTripper
	d    time.Duration
}

func (t delayTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	tm := time.NewTimer(t.d)
	defer tm.Stop()
	select {
	case <-r.Context().Done():
		return nil, r.Context().Err()
	case <-tm.C:
	}
	return t.next.RoundTrip(r)
}

// TestLatencyPerPath measures the latency of one action per path (happy:
// plan credits; auto-buy: a wallet holding one plan's price; paywall: a
// wallet too small for the plan) in each mode, with 20 ms added to every
// request, a fresh customer per action, one action at a time, no rate limit;
// and the requests each action cost, from the fake's log. Logged only.
func TestLatencyPerPath(t *testing.T) {
	if !*latencyRun {
		t.Skip("scripts/bench (-latency)")
	}
	for _, mode := range []string{modeGate, modeRecordFirst, modeLease, modeTwoPhase} {
		for _, path := range []string{"happy", "auto-buy", "paywall"} {
			for _, who := range []string{"new", "returning"} {
				t.Run(mode+"/"+path+"/"+who, func(t *testing.T) { latencyRow(t, mode, path, who) })
			}
		}
	}
}

// latencyRow is one row of TestLatencyPerPath. A returning customer was
// gated once before by the same Gatekeeper (for auto-buy: while its wallet
// held half the plan's price, then topped up). A record-first Gatekeeper is
// armed before the measurement.
func latencyRow(t *testing.T, mode, path, who string) {
	srv := newServer(t)
	exts := make([]string, *latencyN)
	for i := range exts {
		exts[i] = fmt.Sprintf("lat-%d", i)
		switch path {
		case "happy":
			grantPlanCredits(t, srv, exts[i], 1<<40)
		case "auto-buy":
			if who == "new" {
				grantWallet(t, srv, exts[i], hourPlan.PriceMC)
			} else {
				grantWallet(t, srv, exts[i], hourPlan.PriceMC/2)
			}
		case "paywall":
			grantWallet(t, srv, exts[i], hourPlan.PriceMC/2)
		}
	}
	c := srv.Client(quotastack.WithRateBudget(0, 0),
		quotastack.WithTransport(delayTransport{next: pooledTransport(t), d: 20 * time.Millisecond}))
	t.Cleanup(c.CloseIdleConnections)
	var gopts []autobuy.Option
	switch mode {
	case modeRecordFirst:
		gopts = append(gopts, autobuy.WithRecordFirst())
	case modeLease:
		gopts = append(gopts, autobuy.WithLease(autobuy.LeaseConfig{Actions: 10, TTL: time.Minute, Linger: time.Second}))
	}
	g := sdkGate(t, c, gopts...)
	act := func(ctx context.Context, ext string) (string, error) {
		d, err := g.Gate(ctx, quotastack.ExternalID(ext), metric)
		return string(d.Reason), err
	}
	if mode == modeTwoPhase {
		tp := twoPhaseAction(g)
		act = func(ctx context.Context, ext string) (string, error) {
			_, err := tp(ctx, ext)
			var re *refusedError
			if errors.As(err, &re) {
				return fmt.Sprint("status_", re.status), nil
			}
			return "allowed", err
		}
	}
	if mode == modeRecordFirst {
		// Armed, as a running service's Gatekeeper is by its first synchronous
		// usage answer (until then it checks first): one entitled action of
		// another customer, before the measurement.
		grantPlanCredits(t, srv, "lat-armer", 1<<40)
		if _, err := act(context.Background(), "lat-armer"); err != nil {
			t.Fatal(err)
		}
	}
	if who == "returning" {
		for _, ext := range exts {
			if _, err := act(context.Background(), ext); err != nil {
				t.Fatal(err)
			}
			if path == "auto-buy" {
				grantWallet(t, srv, ext, hourPlan.PriceMC/2)
			}
		}
	}
	srv.ResetRequests()
	var lats []time.Duration
	reasons := map[string]int{}
	errs := 0
	for _, ext := range exts {
		start := time.Now()
		reason, err := act(context.Background(), ext)
		lats = append(lats, time.Since(start))
		if err != nil {
			errs++
			t.Logf("%s: %v", ext, err)
		}
		reasons[reason]++
	}
	requests := len(srv.Requests())
	if err := g.Close(context.Background()); err != nil {
		t.Error(err)
	}
	t.Logf("latency mode=%s path=%s customer=%s n=%d p50_ms=%.1f p99_ms=%.1f requests_per_action=%.2f reasons=%q errors=%d",
		mode, path, who, len(exts), float64(percentile(lats, 0.5))/1e6, float64(percentile(lats, 0.99))/1e6,
		float64(requests)/float64(len(exts)), fmt.Sprint(reasons), errs)
}
