package quotastack_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// results collects what a Recorder reports, by event id.
type results struct {
	mu      sync.Mutex
	byID    map[string]quotastack.RecordResult
	calls   int
	repeats int
}

func (r *results) add(rs []quotastack.RecordResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID == nil {
		r.byID = map[string]quotastack.RecordResult{}
	}
	r.calls++
	for _, x := range rs {
		if _, dup := r.byID[x.ID]; dup {
			r.repeats++
		}
		r.byID[x.ID] = x
	}
}

func (r *results) get() (map[string]quotastack.RecordResult, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]quotastack.RecordResult, len(r.byID))
	for k, v := range r.byID {
		out[k] = v
	}
	return out, r.repeats
}

func recorderWorld(t *testing.T, clientOpts []quotastack.Option, opts ...quotastack.RecorderOption) (*quotastacktest.Server, *quotastack.Recorder, *results) {
	t.Helper()
	srv := quotastacktest.Start(t)
	_, err := srv.CreateRule(quotastack.Rule{BillableMetricKey: "api_call", CostType: "per_unit", UnitCost: 10})
	require.NoError(t, err)
	for _, u := range []string{"rita", "sam"} {
		_, err = srv.Grant(u, quotastacktest.BlockSpec{Credits: 1_000_000_000})
		require.NoError(t, err)
	}
	_, err = srv.CreateCustomer("poor", "")
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, srv.CheckInvariants()) })
	c := srv.Client(append([]quotastack.Option{quotastack.WithRetry(2, time.Millisecond, 5*time.Millisecond)}, clientOpts...)...)
	res := &results{}
	r, err := c.NewRecorder(append([]quotastack.RecorderOption{quotastack.WithResults(res.add)}, opts...)...)
	require.NoError(t, err)
	return srv, r, res
}

func usage(ext string, units int64) quotastack.UsageParams {
	return quotastack.UsageParams{Customer: quotastack.ExternalID(ext), MetricKey: "api_call", Units: units}
}

func batchRequests(srv *quotastacktest.Server) []quotastacktest.RequestRecord {
	var out []quotastacktest.RequestRecord
	for _, r := range srv.Requests() {
		if r.Path == "/v1/usage/batch" {
			out = append(out, r)
		}
	}
	return out
}

func TestRecorderSendsEveryEventOnceInBatches(t *testing.T) {
	t.Parallel()
	srv, r, res := recorderWorld(t, nil, quotastack.WithFlushInterval(time.Hour))
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 5 {
		wg.Go(func() {
			for i := range 50 {
				assert.NoError(t, r.Add(ctx, fmt.Sprintf("ev-%d-%d", g, i), usage("rita", int64(i+1))))
			}
		})
	}
	wg.Wait()
	require.NoError(t, r.Close(ctx))

	got, repeats := res.get()
	require.Len(t, got, 250)
	assert.Zero(t, repeats, "each event reported once")
	for id, x := range got {
		require.NoError(t, x.Err, id)
		require.NotNil(t, x.Event)
		assert.Equal(t, x.Params.Units*10, x.Event.Cost)
	}
	assert.Len(t, srv.UsageEvents("rita"), 250)
	var units int64
	for _, e := range srv.UsageEvents("rita") {
		units += e.Units
	}
	assert.Equal(t, int64(5*(50*51/2)), units)

	sent := batchRequests(srv)
	require.Len(t, sent, 3, "100 + 100 + 50")
	keys := map[string]bool{}
	for _, s := range sent {
		assert.Equal(t, 200, s.Status)
		assert.Regexp(t, `^usage-batch:[0-9a-f]{64}$`, s.IdempotencyKey)
		keys[s.IdempotencyKey] = true
	}
	assert.Len(t, keys, 3)
	st := r.Stats()
	assert.Equal(t, quotastack.RecorderStats{Added: 250, Recorded: 250, Batches: 3}, st)

	require.ErrorIs(t, r.Add(ctx, "late", usage("rita", 1)), quotastack.ErrRecorderClosed)
	require.NoError(t, r.Close(ctx), "Close twice is harmless")
}

func TestRecorderFlushesByTime(t *testing.T) {
	t.Parallel()
	srv, r, res := recorderWorld(t, nil, quotastack.WithFlushInterval(20*time.Millisecond))
	ctx := context.Background()
	for i := range 3 {
		require.NoError(t, r.Add(ctx, fmt.Sprint("t", i), usage("sam", 1)))
	}
	require.Eventually(t, func() bool { got, _ := res.get(); return len(got) == 3 }, 10*time.Second, 5*time.Millisecond)
	assert.Len(t, batchRequests(srv), 1)
	require.NoError(t, r.Close(ctx))
}

func TestRecorderFlushWaitsForTheOutcomes(t *testing.T) {
	t.Parallel()
	srv, r, res := recorderWorld(t, nil, quotastack.WithFlushInterval(time.Hour))
	ctx := context.Background()
	require.NoError(t, r.Add(ctx, "f1", usage("sam", 2)))
	require.NoError(t, r.Flush(ctx))
	got, _ := res.get()
	require.Contains(t, got, "f1")
	require.NoError(t, got["f1"].Err)
	assert.Len(t, srv.UsageEvents("sam"), 1)
	require.NoError(t, r.Flush(ctx), "nothing left: returns at once")
	require.NoError(t, r.Close(ctx))
}

func TestRecorderReportsPerEventFailures(t *testing.T) {
	t.Parallel()
	srv, r, res := recorderWorld(t, nil)
	ctx := context.Background()
	require.NoError(t, r.Add(ctx, "ok", usage("rita", 1)))
	require.NoError(t, r.Add(ctx, "broke", usage("poor", 1)))
	require.NoError(t, r.Add(ctx, "ghost", usage("nobody", 1)))
	require.NoError(t, r.Add(ctx, "ok2", usage("sam", 1)))
	require.NoError(t, r.Close(ctx))

	got, _ := res.get()
	require.NoError(t, got["ok"].Err)
	require.NoError(t, got["ok2"].Err)
	require.ErrorIs(t, got["broke"].Err, quotastack.ErrInsufficientCredits)
	var apiErr *quotastack.APIError
	require.ErrorAs(t, got["broke"].Err, &apiErr)
	assert.Equal(t, 402, apiErr.StatusCode)
	assert.Equal(t, int64(10), apiErr.Required)
	assert.Equal(t, got["broke"].BatchKey, apiErr.IdempotencyKey)
	require.ErrorIs(t, got["ghost"].Err, quotastack.ErrNotFound)
	assert.Len(t, batchRequests(srv), 1)
	assert.Equal(t, quotastack.RecorderStats{Added: 4, Recorded: 2, Failed: 2, Batches: 1}, r.Stats())
}

// Faults: the batch keeps its key through the client's retries and the
// recorder's own, so an executed batch whose answer was lost is replayed,
// never executed twice, and a batch is never re-formed.
func TestRecorderFaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		inject func(srv *quotastacktest.Server)
	}{
		{"5xx beyond the client's retries", func(srv *quotastacktest.Server) { srv.FailNext(3, 503) }},
		{"dropped after executing", func(srv *quotastacktest.Server) { srv.DropNext(3, "POST", "/v1/usage/batch") }},
		{"429", func(srv *quotastacktest.Server) {
			srv.InjectFault(quotastacktest.Fault{PathPrefix: "/v1/usage/batch", Status: 429, RetryAfter: "1", Count: 2})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, r, res := recorderWorld(t, nil, quotastack.WithBatchSize(10), quotastack.WithFlushInterval(time.Hour))
			ctx := context.Background()
			tc.inject(srv)
			for i := range 25 {
				require.NoError(t, r.Add(ctx, fmt.Sprint("f", i), usage("rita", 1)))
			}
			require.NoError(t, r.Close(ctx))

			got, repeats := res.get()
			require.Len(t, got, 25)
			assert.Zero(t, repeats)
			for id, x := range got {
				require.NoError(t, x.Err, id)
			}
			assert.Len(t, srv.UsageEvents("rita"), 25, "every event exactly once")

			// Each key was sent for one batch content only: the fake answers a
			// key reused with another body 409, and none was.
			perKey := map[string]int{}
			for _, s := range batchRequests(srv) {
				assert.NotEqual(t, 409, s.Status)
				perKey[s.IdempotencyKey]++
			}
			assert.Len(t, perKey, 3, "10 + 10 + 5 events, one key each")
			assert.Positive(t, r.Stats().Retries+int64(len(batchRequests(srv))-3), "the fault made somebody retry")
		})
	}
}

// A full buffer blocks Add (back-pressure), and Add gives up with its context.
func TestRecorderBackPressure(t *testing.T) {
	t.Parallel()
	srv, r, res := recorderWorld(t, nil, quotastack.WithBatchSize(10), quotastack.WithBufferSize(10), quotastack.WithFlushInterval(time.Millisecond))
	srv.FailNext(1000, 503) // the sender is stuck retrying its first batch
	ctx := context.Background()
	for i := range 10 {
		require.NoError(t, r.Add(ctx, fmt.Sprint("a", i), usage("rita", 1)))
	}
	require.Eventually(t, func() bool { return r.Stats().Buffered == 0 }, 10*time.Second, time.Millisecond, "the first batch is taken")
	for i := range 10 {
		require.NoError(t, r.Add(ctx, fmt.Sprint("b", i), usage("rita", 1)))
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	err := r.Add(short, "c", usage("rita", 1))
	require.ErrorIs(t, err, quotastack.ErrRecorderFull)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, 10, r.Stats().Buffered)

	srv.ClearFaults()
	require.NoError(t, r.Close(ctx))
	got, _ := res.get()
	assert.Len(t, got, 20)
	assert.Len(t, srv.UsageEvents("rita"), 20)
}

// Close that runs out of time reports every event it could not send; none
// is dropped unreported.
func TestRecorderCloseGivesUpLoudly(t *testing.T) {
	t.Parallel()
	srv, r, res := recorderWorld(t, nil, quotastack.WithBatchSize(10), quotastack.WithFlushInterval(time.Hour))
	srv.FailNext(1000, 503)
	ctx := context.Background()
	for i := range 25 {
		require.NoError(t, r.Add(ctx, fmt.Sprint("z", i), usage("rita", 1)))
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, r.Close(short), context.DeadlineExceeded)

	got, repeats := res.get()
	require.Len(t, got, 25)
	assert.Zero(t, repeats)
	for id, x := range got {
		require.ErrorIs(t, x.Err, quotastack.ErrRecorderClosed, id)
	}
	assert.Empty(t, srv.UsageEvents("rita"))
	assert.Equal(t, int64(25), r.Stats().Failed)
}

func TestRecorderInput(t *testing.T) {
	t.Parallel()
	_, r, _ := recorderWorld(t, nil)
	ctx := context.Background()
	require.ErrorIs(t, r.Add(ctx, "", quotastack.UsageParams{Customer: quotastack.ExternalID("rita"), MetricKey: "api_call"}), quotastack.ErrInvalidInput)
	require.ErrorIs(t, r.Add(ctx, string(make([]byte, 300)), usage("rita", 1)), quotastack.ErrInvalidInput)
	assert.Zero(t, r.Stats().Added)
	require.NoError(t, r.Close(ctx))

	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(baseURL))
	require.NoError(t, err)
	for _, opts := range [][]quotastack.RecorderOption{
		{quotastack.WithBatchSize(0)},
		{quotastack.WithBatchSize(101)},
		{quotastack.WithBatchSize(50), quotastack.WithBufferSize(49)},
		{quotastack.WithFlushInterval(0)},
	} {
		_, err := c.NewRecorder(opts...)
		require.ErrorIs(t, err, quotastack.ErrInvalidInput)
	}
}

// A batch answered 202 Accepted without a body (the docs' asynchronous debit)
// took every event: none is reported failed, which would invite a re-send.
func TestRecorderBatchAcceptedWithoutBody(t *testing.T) {
	t.Parallel()
	srv, r, res := recorderWorld(t, nil, quotastack.WithBatchSize(3))
	srv.SetAsyncUsage(&quotastacktest.AsyncUsage{})
	for i := range 3 {
		require.NoError(t, r.Add(context.Background(), fmt.Sprint("evt-", i), usage("rita", 1)))
	}
	require.NoError(t, r.Close(context.Background()))
	got, _ := res.get()
	require.Len(t, got, 3)
	for id, x := range got {
		require.NoError(t, x.Err, "event %s was taken by the server", id)
		require.NotNil(t, x.Event, id)
		assert.True(t, x.Event.Accepted, "event %s is accepted, not confirmed", id)
	}
	st := r.Stats()
	assert.Equal(t, int64(3), st.Recorded)
	assert.Zero(t, st.Failed)
	assert.Len(t, srv.UsageEvents("rita"), 3, "every event executed once")
}
