package bench

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

const (
	parallelGoroutines = 64
	parallelCustomers  = 1_000
	concurrencyGates   = 10_000
	maxConns           = 64 // the target: no more connections than goroutines
)

// concurrencyWorld is a fresh server with customers that all hold plenty of
// plan credits, and one client gating them: every gate is a happy path.
type concurrencyWorld struct {
	srv    *quotastacktest.Server
	conns0 int64
	gate   func(ctx context.Context, i int) error // gates customer i % customers
}

// newConcurrencyWorld builds the world for client "sdk" with transport
// "default" (the SDK's own), or for client "raw" with transport
// "pooled" (the SDK's pool sizes) or "godefault" (a clone of
// http.DefaultTransport: 2 idle connections per host).
func newConcurrencyWorld(tb testing.TB, client, transport string, customers int) *concurrencyWorld {
	tb.Helper()
	w := &concurrencyWorld{srv: newServer(tb)}
	exts := make([]string, customers)
	for i := range exts {
		exts[i] = fmt.Sprintf("cc-%d", i)
		grantPlanCredits(tb, w.srv, exts[i], 1<<40)
	}
	switch client {
	case "sdk":
		c := w.srv.Client()
		tb.Cleanup(c.CloseIdleConnections)
		g := sdkGate(tb, c)
		w.gate = func(ctx context.Context, i int) error {
			d, err := g.Gate(ctx, quotastack.ExternalID(exts[i%len(exts)]), metric)
			if err == nil && (!d.Allowed || d.Reason != autobuy.ReasonEntitled) {
				err = fmt.Errorf("gate: allowed %v, reason %s", d.Allowed, d.Reason)
			}
			return err
		}
	case "raw":
		var tr *http.Transport
		if transport == "godefault" {
			tr = http.DefaultTransport.(*http.Transport).Clone()
			tb.Cleanup(tr.CloseIdleConnections)
		} else {
			tr = pooledTransport(tb)
		}
		rc := newRawClient(&http.Client{Transport: tr}, w.srv.URL, w.srv.APIKey)
		w.gate = func(ctx context.Context, i int) error {
			ok, reason, err := rc.gate(ctx, exts[i%len(exts)], metric, hourPlan)
			if err == nil && (!ok || reason != string(autobuy.ReasonEntitled)) {
				err = fmt.Errorf("baseline gate: allowed %v, reason %s", ok, reason)
			}
			return err
		}
	default:
		tb.Fatalf("unknown client %q", client)
	}
	w.conns0 = w.srv.ConnectionsOpened()
	return w
}

func (w *concurrencyWorld) conns() int64 { return w.srv.ConnectionsOpened() - w.conns0 }

// run gates i in [from, to) from goroutines workers and returns the wall time.
func (w *concurrencyWorld) run(tb testing.TB, goroutines, from, to int) time.Duration {
	tb.Helper()
	next := atomic.Int64{}
	next.Store(int64(from))
	var failed atomic.Int64
	var first sync.Once
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := int(next.Add(1)) - 1; i < to; i = int(next.Add(1)) - 1 {
				if err := w.gate(ctx, i); err != nil {
					failed.Add(1)
					first.Do(func() { firstErr = err })
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if f := failed.Load(); f > 0 {
		tb.Fatalf("%d of %d gates failed; first: %v", f, to-from, firstErr)
	}
	return elapsed
}

// TestGateConcurrency gates 10,000 times from 64 goroutines across 1,000
// customers, on a fresh server per client, and counts the TCP connections the
// server accepted: during a warm-up (the first 1,000 gates, on an empty pool)
// and after it. The target is at most 64 in all; it is logged (and judged in
// BENCHMARKS.md), because net/http can exceed it by itself: during a cold
// start it dials for every request that finds no idle connection, even when a
// connection is freed before the dial ends, and under CPU starvation it drops
// a connection whose request write it can't confirm within 50 ms. What is
// asserted is the absence of churn: at most 2×64 connections plus one per 100
// requests (a client that churns opens one every few requests). The SDK's
// default transport caps connections at 64 per host, so it must stay within 64.
// Then the warm-up alone is repeated a few times to show how the cold-start
// count varies. Under -race or -short it gates 1,000 times.
func TestGateConcurrency(t *testing.T) {
	gates, warm, trials := concurrencyGates, 1_000, 3
	if raceEnabled || testing.Short() {
		gates, warm, trials = 1_000, 320, 1
	}
	for _, tc := range []struct {
		client, transport string
		gates             int
	}{
		{"sdk", "default", gates},
		{"raw", "pooled", gates},
		// Go's default transport keeps 2 idle connections per host, so 64
		// goroutines churn through connections; fewer gates keep the
		// TIME_WAIT sockets it leaves behind few.
		{"raw", "godefault", gates / 5},
	} {
		t.Run(tc.client+"/"+tc.transport, func(t *testing.T) {
			w := newConcurrencyWorld(t, tc.client, tc.transport, parallelCustomers)
			warmN := min(warm, tc.gates)
			elapsed := w.run(t, parallelGoroutines, 0, warmN)
			connsWarm := w.conns()
			elapsed += w.run(t, parallelGoroutines, warmN, tc.gates)
			conns := w.conns()
			reqs := len(w.srv.Requests())
			t.Logf("concurrency client=%s transport=%s gates=%d goroutines=%d customers=%d conns=%d warmup_gates=%d conns_warmup=%d conns_after_warmup=%d seconds=%.3f gates_per_s=%.0f roundtrips_per_gate=%.2f",
				tc.client, tc.transport, tc.gates, parallelGoroutines, parallelCustomers, conns, warmN, connsWarm, conns-connsWarm,
				elapsed.Seconds(), float64(tc.gates)/elapsed.Seconds(), float64(reqs)/float64(tc.gates))
			if reqs != 2*tc.gates {
				t.Errorf("%d requests for %d happy-path gates, want %d", reqs, tc.gates, 2*tc.gates)
			}
			if tc.client != "sdk" {
				return
			}
			if limit := int64(2*maxConns + reqs/100); conns > limit {
				t.Errorf("the SDK opened %d connections for %d gates from %d goroutines (%d after the warm-up): churn (limit %d)",
					conns, tc.gates, parallelGoroutines, conns-connsWarm, limit)
			}
			if conns > maxConns {
				t.Errorf("%d connections for %d gates from %d goroutines, target %d (%d during the warm-up)",
					conns, tc.gates, parallelGoroutines, maxConns, connsWarm)
			}
		})
	}
	t.Run("coldstart", func(t *testing.T) {
		for _, tc := range []struct{ client, transport string }{{"sdk", "default"}, {"raw", "pooled"}} {
			var counts []string
			for range trials {
				w := newConcurrencyWorld(t, tc.client, tc.transport, parallelCustomers)
				w.run(t, parallelGoroutines, 0, warm)
				counts = append(counts, fmt.Sprint(w.conns()))
				w.srv.Close()
			}
			t.Logf("coldstart client=%s transport=%s gates=%d goroutines=%d conns=%s",
				tc.client, tc.transport, warm, parallelGoroutines, strings.Join(counts, ","))
		}
	})
}
