package quotastacktest_test

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	quotastack "github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

func benchServer(b *testing.B) (*quotastacktest.Server, *http.Client) {
	b.Helper()
	srv := quotastacktest.Start(b)
	if _, err := srv.CreateRule(quotastack.Rule{BillableMetricKey: "look", CostType: "per_unit", UnitCost: 1}); err != nil {
		b.Fatal(err)
	}
	if _, err := srv.Grant("bench", quotastacktest.BlockSpec{Credits: 1 << 40}); err != nil {
		b.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	b.Cleanup(tr.CloseIdleConnections)
	return srv, &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func benchDo(b *testing.B, hc *http.Client, req *http.Request) {
	resp, err := hc.Do(req)
	if err != nil {
		b.Error(err)
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Errorf("status %d", resp.StatusCode)
	}
}

// BenchmarkServerEntitlement measures GET .../entitlements over loopback HTTP.
func BenchmarkServerEntitlement(b *testing.B) {
	srv, hc := benchServer(b)
	url := srv.URL + "/v1/customer-by-external-id/bench/entitlements/look?units=3"
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Header.Set("X-API-Key", srv.APIKey)
			benchDo(b, hc, req)
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}

// BenchmarkServerUsage measures POST /v1/usage (a debit, a fresh idempotency key each).
func BenchmarkServerUsage(b *testing.B) {
	srv, hc := benchServer(b)
	body := []byte(`{"external_customer_id": "bench", "billable_metric_key": "look", "units": 1}`)
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/usage", bytes.NewReader(body))
			req.Header.Set("X-API-Key", srv.APIKey)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", "usage:"+strconv.FormatInt(n.Add(1), 10))
			benchDo(b, hc, req)
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
	b.StopTimer()
	if err := srv.CheckInvariants(); err != nil {
		b.Fatal(err)
	}
}
