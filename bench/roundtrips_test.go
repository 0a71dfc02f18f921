package bench

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// TestRoundTripsPerPath counts, from the server's request log, the requests
// one gate sends on each path, for the SDK and for the baseline (the seed
// recipe by hand), and logs them for BENCHMARKS.md. The targets: 2 on the
// happy path, 2 for a paywall (check, wallet), 5 with an auto-buy.
func TestRoundTripsPerPath(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	sdk := srv.Client()
	t.Cleanup(sdk.CloseIdleConnections)
	gate := sdkGate(t, sdk)
	raw := newRawClient(&http.Client{Transport: pooledTransport(t)}, srv.URL, srv.APIKey)
	ctx := context.Background()

	for _, p := range []struct {
		name      string
		plan, wal int64 // plan and wallet credits seeded, in mc
		optOut    bool
		reason    autobuy.Reason
		max       int  // the SDK's bound
		exact     bool // the bound is the only acceptable count
	}{
		{name: "happy", plan: 1_000_000, reason: autobuy.ReasonEntitled, max: 2, exact: true},
		{name: "auto_buy", wal: hourPlan.PriceMC, reason: autobuy.ReasonAutoBought, max: 6, exact: true}, // the recipe's re-check included
		{name: "paywall", wal: hourPlan.PriceMC / 2, reason: autobuy.ReasonEmptyWallet, max: 2, exact: true},
		{name: "opted_out", wal: 500_000, optOut: true, reason: autobuy.ReasonPlanExpired, max: 1, exact: true},
	} {
		seed := func(ext string) {
			if p.plan > 0 {
				grantPlanCredits(t, srv, ext, p.plan)
			}
			if p.wal > 0 {
				grantWallet(t, srv, ext, p.wal)
			}
		}

		ext := p.name + "-sdk"
		seed(ext)
		srv.ResetRequests()
		d, err := gate.Gate(ctx, quotastack.ExternalID(ext), metric, autobuy.WithAutoBuy(!p.optOut))
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		sdkLog := srv.Requests()
		if d.Reason != p.reason {
			t.Errorf("%s: reason %s, want %s", p.name, d.Reason, p.reason)
		}

		ext = p.name + "-raw"
		seed(ext)
		srv.ResetRequests()
		var reason string
		if p.optOut {
			// The recipe's opted-out customer gets the plan picker after the check.
			if _, err = raw.check(ctx, ext, metric, 1); err == nil {
				reason = string(autobuy.ReasonPlanExpired)
			}
		} else {
			_, reason, err = raw.gate(ctx, ext, metric, hourPlan)
		}
		if err != nil {
			t.Fatalf("%s baseline: %v", p.name, err)
		}
		rawLog := srv.Requests()
		if reason != string(p.reason) {
			t.Errorf("%s baseline: reason %s, want %s", p.name, reason, p.reason)
		}

		n := len(sdkLog)
		t.Logf("roundtrips path=%s sdk=%d raw=%d reason=%s sdk_sequence=%q raw_sequence=%q",
			p.name, n, len(rawLog), d.Reason, sequence(sdkLog), sequence(rawLog))
		switch {
		case p.exact && n != p.max:
			t.Errorf("%s: %d round trips, want %d", p.name, n, p.max)
		case n > p.max:
			t.Errorf("%s: %d round trips, want at most %d", p.name, n, p.max)
		}
	}
}

// sequence renders a request log as "GET entitlements 200, POST usage 402, ...".
func sequence(log []quotastacktest.RequestRecord) string {
	parts := make([]string, len(log))
	for i, r := range log {
		what := r.Path
		switch {
		case strings.Contains(what, "/entitlements/"):
			what = "entitlements"
		case strings.HasSuffix(what, "/credits"):
			what = "credits"
		default:
			what = strings.TrimPrefix(what, "/v1/")
		}
		parts[i] = fmt.Sprintf("%s %s %d", r.Method, what, r.Status)
	}
	return strings.Join(parts, ", ")
}

// TestScenarios runs every benchmarked operation a few times, on both
// transports and both clients, and checks its round trips: the benchmarks'
// set-up, run as a quick test.
func TestScenarios(t *testing.T) {
	t.Parallel()
	for _, s := range []scenario{opCheck, opRecord, opGateHappy, opGateAutoBuy} {
		for _, via := range []string{"mem", "loop"} {
			for _, client := range []string{"raw", "sdk"} {
				t.Run(string(s)+"/"+via+"/"+client, func(t *testing.T) {
					t.Parallel()
					const n = 3
					op, requests := setup(t, s, via, client, n)
					before := requests()
					for i := range n {
						if err := op(context.Background(), i); err != nil {
							t.Fatal(err)
						}
					}
					got, want := requests()-before, n*wantRoundTrips[s]
					switch {
					case s == opGateAutoBuy && client == "sdk" && got > want:
						t.Errorf("%d requests for %d operations, want at most %d", got, n, want)
					case (s != opGateAutoBuy || client == "raw") && got != want:
						t.Errorf("%d requests for %d operations, want %d", got, n, want)
					}
				})
			}
		}
	}
}
