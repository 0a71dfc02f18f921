package quotastack_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

// slowTransport answers like next after d.
type slowTransport struct {
	next http.RoundTripper
	d    time.Duration
}

func (s slowTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t := time.NewTimer(s.d)
	defer t.Stop()
	select {
	case <-req.Context().Done():
		return nil, req.Context().Err()
	case <-t.C:
		return s.next.RoundTrip(req)
	}
}

// Without a deadline on ctx, the calls of one operation share one default
// timeout, counted from BeginOperation; calls outside an operation get one each.
func TestOperationSharesOneDeadline(t *testing.T) {
	t.Parallel()
	tr := &scriptedTransport{}
	c := pacedClient(t, baseURL, slowTransport{next: tr, d: 150 * time.Millisecond},
		quotastack.WithTimeout(250*time.Millisecond), quotastack.WithRateBudget(0, 0))

	// Two calls outside an operation: 150 ms each, each within its own 250 ms.
	require.NoError(t, checkCall(context.Background(), c))
	require.NoError(t, checkCall(context.Background(), c))

	ctx := quotastack.BeginOperation(context.Background())
	require.NoError(t, checkCall(ctx, c))
	err := checkCall(ctx, c) // would end 300 ms after the operation began
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// OperationTimeout overrides the client's default for the operation.
	ctx = quotastack.BeginOperation(context.Background(), quotastack.OperationTimeout(time.Second))
	require.NoError(t, checkCall(ctx, c))
	require.NoError(t, checkCall(ctx, c))

	// A deadline on ctx wins over the operation's.
	dctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, checkCall(quotastack.BeginOperation(dctx), c), context.DeadlineExceeded)
}

// BeginOperation on a context that already carries one joins it: the inner
// calls keep the outer deadline.
func TestOperationNested(t *testing.T) {
	t.Parallel()
	tr := &scriptedTransport{}
	c := pacedClient(t, baseURL, slowTransport{next: tr, d: 150 * time.Millisecond},
		quotastack.WithTimeout(250*time.Millisecond), quotastack.WithRateBudget(0, 0))
	ctx := quotastack.BeginOperation(context.Background())
	require.NoError(t, checkCall(ctx, c))
	inner := quotastack.BeginOperation(ctx)
	require.ErrorIs(t, checkCall(inner, c), context.DeadlineExceeded)
}

// Under overload, with context.Background() as users call it, operations of
// two calls either complete or are refused before they send anything: no
// operation is left half-done, and the budget goes to completed operations.
func TestOperationOverloadCompletesStartedWork(t *testing.T) {
	t.Parallel()
	tr := &scriptedTransport{}
	// 100 per second: a burst of 5, then one every 11 ms. An operation has a
	// second (300 ms once failed when the race detector and other packages
	// starved the machine: a granted call reached the transport past its
	// deadline).
	c := pacedClient(t, baseURL, tr, quotastack.WithRateBudget(100, time.Second),
		quotastack.WithTimeout(time.Second))
	var completed, refused, halfDone atomic.Int64
	var firstErr atomic.Value
	stop := time.Now().Add(1500 * time.Millisecond)
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				ctx := quotastack.BeginOperation(context.Background())
				if err := checkCall(ctx, c); err != nil {
					if !errors.Is(err, quotastack.ErrRateLimited) {
						firstErr.CompareAndSwap(nil, err)
					}
					refused.Add(1)
					time.Sleep(20 * time.Millisecond)
					continue
				}
				if err := checkCall(ctx, c); err != nil {
					firstErr.CompareAndSwap(nil, err)
					halfDone.Add(1)
					continue
				}
				completed.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("completed=%d refused=%d half_done=%d requests=%d", completed.Load(), refused.Load(), halfDone.Load(), tr.count())
	assert.Zero(t, halfDone.Load(), "operations that spent a request and did not finish; first error: %v", firstErr.Load())
	assert.Equal(t, int(2*completed.Load()), tr.count(), "every request sent belongs to a completed operation")
	assert.Positive(t, refused.Load(), "the test overloads the budget")
	// 1.5 s of budget is about 5 + 1.5*90 = 140 requests, 70 operations.
	assert.GreaterOrEqual(t, completed.Load(), int64(40))
}
