package quotastacktest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	quotastack "github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// TestConcurrentMixedLoad runs every kind of call from several goroutines, with random
// faults and drops, then checks the ledger's invariants and that no key debited twice.
func TestConcurrentMixedLoad(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	_, err := w.srv.Grant(recipeUser, quotastacktest.BlockSpec{Credits: 200_000, Priority: 10, ExpiresAt: quotastacktest.Ptr(t0.Add(time.Hour))})
	require.NoError(t, err)
	_, err = w.srv.CreateRule(quotastack.Rule{BillableMetricKey: "burst", CostType: "per_unit", UnitCost: 700, OveragePolicy: "allow"})
	require.NoError(t, err)
	w.srv.SetRandomFaults(&quotastacktest.RandomFaults{Seed: 1, P500: 0.05, P503: 0.05, PDrop: 0.05, MaxLatency: time.Millisecond})

	const workers, perWorker = 8, 40
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Timeout: 10 * time.Second}
			ww := &world{t: t, srv: w.srv, clock: w.clock, hc: hc}
			for i := range perWorker {
				key := fmt.Sprintf("g%d:%d", g, i%10) // keys repeat: replays and retries
				var r result
				var err error
				switch i % 6 {
				case 0:
					r, err = ww.send("POST", "/v1/usage", key+":chat", usageBody(recipeUser, "chat_message", 1))
				case 1:
					r, err = ww.send("POST", "/v1/usage", key+":burst", usageBody(recipeUser, "burst", 3))
				case 2:
					r, err = ww.send("GET", ext(recipeUser)+"/entitlements/chat_message", "", "")
				case 3:
					r, err = ww.send("POST", "/v1/reserve", key+":rsv",
						`{"external_customer_id": "user42:companion7", "billable_metric_key": "look", "estimated_units": 2}`)
					if err == nil && r.status == 201 {
						var id string
						if m, ok := decode(r.body)["id"].(string); ok {
							id = m
						}
						path, body := "/commit", `{"actual_units": 1}`
						if g%2 == 0 {
							path, body = "/release", ""
						}
						r, err = ww.send("POST", "/v1/reserve/"+id+path, key+path, body)
					}
				case 4:
					r, err = ww.send("POST", "/v1/topup/grant", key+":grant", grantBody(recipeUser, 1000, 10, "2026-04-13T13:30:00Z"))
				case 5:
					r, err = ww.send("GET", ext(recipeUser)+"/credits?include_blocks=true", "", "")
				}
				if err == nil {
					assert.NotEqual(t, 0, r.status)
				}
				if i == perWorker/2 && g == 0 {
					w.clock.Advance(31 * time.Minute) // some plan grants expire mid-run
				}
			}
		}()
	}
	wg.Wait()
	w.srv.SetRandomFaults(nil)
	require.NoError(t, w.srv.CheckInvariants())
	fc := w.srv.FaultCounts()
	require.Positive(t, fc.Status500+fc.Status503+fc.Drops)
}

func decode(b []byte) map[string]any {
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}
