package bench

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

var (
	scaleN        = flag.Int("scale.n", 0, "purchases per case in TestScale (scripts/bench: 100000; 0 skips)")
	scaleRequests = flag.Int("scale.requests", 1_000_000, "requests sent to the fake in TestScale's heap case")
)

// handlerTransport serves each request in process through h: no sockets,
// so a long run measures the SDK and the fake, not the kernel.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	sr := r.Clone(r.Context()) // as a server sees it: a body, never nil
	if sr.Body == nil {
		sr.Body = http.NoBody
	}
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, sr)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// window is what one stretch of work cost: CPU and allocated bytes per item,
// and the live heap after it (after a GC).
type window struct {
	cpuPer   time.Duration
	allocPer float64
	heap     uint64
}

// measure runs n items of work (each work(i)) and returns what they cost.
func measure(from, n int, work func(i int)) window {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	c0 := cpuTime()
	for i := from; i < from+n; i++ {
		work(i)
	}
	c1 := cpuTime()
	runtime.ReadMemStats(&m1)
	runtime.GC()
	var m2 runtime.MemStats
	runtime.ReadMemStats(&m2)
	return window{cpuPer: (c1 - c0) / time.Duration(n), allocPer: float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n), heap: m2.HeapInuse}
}

func logScale(t *testing.T, name string, n int, first, last window) {
	t.Helper()
	t.Logf("scale case=%s n=%d first_cpu_us=%.1f last_cpu_us=%.1f cpu_ratio=%.2f first_alloc_kb=%.1f last_alloc_kb=%.1f alloc_ratio=%.2f heap_mb_first=%.1f heap_mb_last=%.1f",
		name, n, float64(first.cpuPer)/1e3, float64(last.cpuPer)/1e3, float64(last.cpuPer)/float64(first.cpuPer),
		first.allocPer/1024, last.allocPer/1024, last.allocPer/first.allocPer, float64(first.heap)/(1<<20), float64(last.heap)/(1<<20))
}

// TestScale: per-purchase CPU and memory over one customer's N purchases
// (an hourly plan bought again each simulated 61 minutes) and over N
// distinct customers' first purchases, first 1,000 against last 1,000; and
// the fake's live heap as it serves -scale.requests requests. The SDK and
// the fake run in one process, through an in-process transport. Logged; the
// report judges the ratios.
func TestScale(t *testing.T) {
	n := *scaleN
	if n == 0 {
		t.Skip("scripts/bench (-scale.n=100000)")
	}
	const w = 1000
	if n < 2*w {
		t.Fatalf("-scale.n must be at least %d", 2*w)
	}
	t.Run("one-customer", func(t *testing.T) {
		clock := quotastacktest.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		srv := quotastacktest.NewServer(quotastacktest.WithClock(clock.Now))
		defer srv.Close()
		if err := srv.SeedRecipe(hourPlan.Metric()); err != nil {
			t.Fatal(err)
		}
		grantWallet(t, srv, "whale", int64(n)*hourPlan.PriceMC)
		c := srv.Client(quotastack.WithRateBudget(0, 0), quotastack.WithTransport(handlerTransport{srv}))
		g := sdkGate(t, c, autobuy.WithClock(clock.Now))
		buy := func(int) {
			clock.Advance(61 * time.Minute) // the last plan has expired
			d, err := g.Gate(context.Background(), quotastack.ExternalID("whale"), metric)
			if err != nil || d.Reason != autobuy.ReasonAutoBought {
				t.Fatalf("gate: %v, %v", d.Reason, err)
			}
		}
		first := measure(0, w, buy)
		for i := w; i < n-w; i += w {
			measure(i, w, buy)
		}
		last := measure(n-w, w, buy)
		logScale(t, "one-customer", n, first, last)
		if err := srv.CheckInvariants(); err != nil {
			t.Error(err)
		}
	})
	t.Run("distinct-customers", func(t *testing.T) {
		srv := quotastacktest.NewServer()
		defer srv.Close()
		if err := srv.SeedRecipe(hourPlan.Metric()); err != nil {
			t.Fatal(err)
		}
		c := srv.Client(quotastack.WithRateBudget(0, 0), quotastack.WithTransport(handlerTransport{srv}))
		g := sdkGate(t, c)
		ext := func(i int) string { return fmt.Sprint("cust-", i) }
		buy := func(i int) {
			d, err := g.Gate(context.Background(), quotastack.ExternalID(ext(i)), metric)
			if err != nil || d.Reason != autobuy.ReasonAutoBought {
				t.Fatalf("gate: %v, %v", d.Reason, err)
			}
		}
		batch := func(from int) window {
			for i := from; i < from+w; i++ { // the wallets, outside the measurement
				grantWallet(t, srv, ext(i), hourPlan.PriceMC)
			}
			return measure(from, w, buy)
		}
		first := batch(0)
		for i := w; i < n-w; i += w {
			batch(i)
		}
		last := batch(n - w)
		logScale(t, "distinct-customers", n, first, last)
	})
	t.Run("fake-heap", func(t *testing.T) {
		// Requests as a soak sends them: checks, and usage records with a key
		// each, across 1,000 customers. The heap is counted above the
		// process's before the fake starts (the scale runs before it leave the
		// SDK's process-wide journal and ChargeLog behind).
		runtime.GC()
		var m0 runtime.MemStats
		runtime.ReadMemStats(&m0)
		base := m0.HeapInuse
		srv := quotastacktest.NewServer()
		defer srv.Close()
		if err := srv.SeedRecipe(hourPlan.Metric()); err != nil {
			t.Fatal(err)
		}
		const customers = 1000
		for i := range customers {
			grantPlanCredits(t, srv, fmt.Sprint("soak-", i), 1<<50)
		}
		c := srv.Client(quotastack.WithRateBudget(0, 0), quotastack.WithTransport(handlerTransport{srv}))
		ctx := context.Background()
		req := func(i int) {
			cust := quotastack.ExternalID(fmt.Sprint("soak-", i%customers))
			var err error
			if i%2 == 0 {
				_, err = c.Check(ctx, cust, metric, 1)
			} else {
				_, err = c.Record(ctx, quotastack.UsageParams{Customer: cust, MetricKey: metric, Units: 1},
					quotastack.WithIdempotencyKey(fmt.Sprint("soak-usage-", i)))
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		total := *scaleRequests
		step := max(total/10, 1)
		var heaps []string
		var firstHeap, midHeap, lastHeap uint64
		midAt := 0
		for i := 0; i < total; i += step {
			win := measure(i, min(step, total-i), req)
			win.heap -= min(base, win.heap)
			heaps = append(heaps, fmt.Sprintf("%.0f", float64(win.heap)/(1<<20)))
			if i == 0 {
				firstHeap = win.heap
			}
			if i+step <= total/2 {
				midHeap, midAt = win.heap, i+step
			}
			lastHeap = win.heap
		}
		// Past the middle the bounded logs are full: what still grows is the
		// ledger and the usage events, per executed usage event.
		perEvent := float64(int64(lastHeap)-int64(midHeap)) / float64((total-midAt)/2)
		t.Logf("fakeheap heap_mb_before=%.1f requests=%d usage_events=%d heap_mb_after_first_tenth=%.1f heap_mb_at_half=%.1f heap_mb_at_end=%.1f heap_mb_per_tenth=%q bytes_per_usage_event_second_half=%.0f requests_forgotten=%d",
			float64(base)/(1<<20), total, total/2, float64(firstHeap)/(1<<20), float64(midHeap)/(1<<20), float64(lastHeap)/(1<<20), fmt.Sprint(heaps), perEvent, srv.RequestsForgotten())
	})
}
