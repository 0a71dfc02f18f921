package quotastacktest_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/quotastacktest"
)

// postOnce sends a POST over a fresh connection, so net/http cannot retry it by itself.
func postOnce(w *world, path, key, body string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, w.srv.URL+path, bytes.NewBufferString(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-API-Key", w.srv.APIKey)
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Content-Type", "application/json")
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	return hc.Do(req)
}

func TestDropExecutesOnceThenReplays(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	w.srv.DropNext(1, "POST", "/v1/usage")
	body := usageBody(recipeUser, "plan_purchase_1hr", 100_000)

	resp, err := postOnce(w, "/v1/usage", "plan-debit:1hr:o1", body)
	if resp != nil {
		resp.Body.Close()
	}
	require.Error(t, err, "the client sees a transport error, no response")

	// ... yet the debit happened, exactly once.
	ev := w.srv.UsageEvents(recipeUser)
	require.Len(t, ev, 1)
	acct, _ := w.srv.Account(recipeUser)
	require.Equal(t, int64(400_000), acct.Balance)
	recs := w.srv.Requests()
	require.Equal(t, "drop", recs[len(recs)-1].Fault)
	require.Equal(t, 200, recs[len(recs)-1].Status, "the executed status is logged")

	// The client's retry with the same key is a replay of what already happened.
	r := w.post("/v1/usage", "plan-debit:1hr:o1", body)
	requireStatus(t, r, 200)
	require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"))
	require.Equal(t, ev[0].EventID, r.json(t)["id"])
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)
	require.Equal(t, int64(1), w.srv.FaultCounts().Drops)
}

// TestDropOnKeepAliveClient drops a POST sent by a keep-alive client. If the connection was
// reused, net/http itself retries a request carrying Idempotency-Key and gets the replay;
// on a fresh connection the caller sees the transport error. Either way the usage event
// executed exactly once, and a retry with the same key is a replay.
func TestDropOnKeepAliveClient(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	requireStatus(t, w.get(ext(recipeUser)+"/credits"), 200) // usually leaves an idle connection
	w.srv.DropNext(1, "POST", "")
	body := usageBody(recipeUser, "look", 1)
	r, err := w.send("POST", "/v1/usage", "usage:reused", body)
	if err == nil {
		requireStatus(t, r, 200)
		require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"), "net/http retried the dropped POST")
	}
	r = w.post("/v1/usage", "usage:reused", body)
	requireStatus(t, r, 200)
	require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"))
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)
}

func TestDropOfAGrantThenRetry(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	w.srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/topup/grant", Drop: true})
	body := grantBody(recipeUser, 50_000, 10, "2026-04-13T14:00:00Z")
	resp, err := postOnce(w, "/v1/topup/grant", "plan-grant:1hr:o1", body)
	if resp != nil {
		resp.Body.Close()
	}
	require.Error(t, err)
	r := w.post("/v1/topup/grant", "plan-grant:1hr:o1", body)
	requireStatus(t, r, 201)
	require.Equal(t, "true", r.header.Get("X-Idempotent-Replayed"))
	acct, _ := w.srv.Account(recipeUser)
	require.Equal(t, int64(550_000), acct.LifetimeEarned, "granted once")
}

func TestFaultMatchingAndCount(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	w.srv.InjectFault(quotastacktest.Fault{Method: "POST", PathPrefix: "/v1/usage", Status: 500, Count: 2})
	requireStatus(t, w.get(ext(recipeUser)+"/credits"), 200) // not matched
	for range 2 {
		requireProblem(t, w.post("/v1/usage", "u", usageBody(recipeUser, "look", 1)), 500, "internal-error")
	}
	requireStatus(t, w.post("/v1/usage", "u", usageBody(recipeUser, "look", 1)), 200)
	require.Equal(t, int64(2), w.srv.FaultCounts().Status500)

	w.srv.FailNext(1, 429)
	r := w.get("/v1/billable-metrics")
	requireProblem(t, r, 429, "rate-limited")
	require.Equal(t, "1", r.header.Get("Retry-After"))

	w.srv.InjectFault(quotastacktest.Fault{Status: 503})
	w.srv.ClearFaults()
	requireStatus(t, w.get("/v1/billable-metrics"), 200)
}

func TestLatency(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.srv.SetLatency(60 * time.Millisecond)
	start := time.Now()
	requireStatus(t, w.get("/v1/billable-metrics"), 200)
	require.GreaterOrEqual(t, time.Since(start), 60*time.Millisecond)
	w.srv.SetLatency(0)
	require.Equal(t, int64(1), w.srv.FaultCounts().Latency)
}

func TestRandomFaultsDeterministic(t *testing.T) {
	t.Parallel()
	run := func() ([]int, quotastacktest.FaultCounts) {
		w := newWorld(t)
		w.srv.SetRandomFaults(&quotastacktest.RandomFaults{Seed: 7, P500: 0.1, P503: 0.1, P429: 0.1, RetryAfter: "1"})
		var statuses []int
		for range 100 {
			statuses = append(statuses, w.get("/v1/billable-metrics").status)
		}
		w.srv.SetRandomFaults(nil)
		requireStatus(t, w.get("/v1/billable-metrics"), 200)
		return statuses, w.srv.FaultCounts()
	}
	a, ca := run()
	b, cb := run()
	require.Equal(t, a, b, "same seed, same faults")
	require.Equal(t, ca, cb)
	require.Positive(t, ca.Status500)
	require.Positive(t, ca.Status503)
	require.Positive(t, ca.Status429)
	require.Less(t, ca.Status500+ca.Status503+ca.Status429, int64(60))
}

func TestConnectionsOpened(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	for range 20 {
		requireStatus(t, w.get("/v1/billable-metrics"), 200)
	}
	keepAlive := w.srv.ConnectionsOpened()
	require.Less(t, keepAlive, int64(10), "keep-alive reuses connections")
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for range 3 {
		req, err := http.NewRequest(http.MethodGet, w.srv.URL+"/v1/billable-metrics", nil)
		require.NoError(t, err)
		req.Header.Set("X-API-Key", w.srv.APIKey)
		resp, err := hc.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	require.Equal(t, keepAlive+3, w.srv.ConnectionsOpened())
}

func TestCloseIsIdempotentAndCutsLatency(t *testing.T) {
	t.Parallel()
	srv := quotastacktest.NewServer()
	srv.SetLatency(time.Hour)
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/billable-metrics", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	srv.Close()
	srv.Close()
	require.Less(t, time.Since(start), 5*time.Second)
	<-done
}
