package quotastack

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func (p *LocalPacer) queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queuedLocked()
}

// The next token goes to the earliest deadline, not to the first in line;
// a call whose deadline the queue can't meet is refused before it waits.
func TestLocalPacerEarliestDeadlineFirst(t *testing.T) {
	t.Parallel()
	p := NewLocalPacer(20, time.Second) // burst 1, then a token every 55 ms
	ctx := context.Background()
	require.NoError(t, p.Wait(ctx, time.Time{}))
	order := make(chan string, 3)
	start := func(name string, timeout time.Duration) {
		c, cancel := context.WithTimeout(ctx, timeout)
		go func() {
			defer cancel()
			if err := p.Wait(c, time.Time{}); err != nil {
				order <- name + ": " + err.Error()
				return
			}
			order <- name
		}()
	}
	start("hour", time.Hour)
	require.Eventually(t, func() bool { return p.queued() == 1 }, 5*time.Second, time.Millisecond)
	start("late", 30*time.Second)
	require.Eventually(t, func() bool { return p.queued() == 2 }, 5*time.Second, time.Millisecond)
	start("soon", 10*time.Second)
	got := []string{<-order, <-order, <-order}
	assert.Equal(t, []string{"soon", "late", "hour"}, got)

	// A deadline shorter than the queue ahead of it: refused at once.
	for range 3 {
		go func() { _ = p.Wait(ctx, time.Time{}) }()
	}
	require.Eventually(t, func() bool { return p.queued() >= 2 }, 5*time.Second, time.Millisecond)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	err := p.Wait(short, time.Time{})
	var rl *RateLimitError
	require.True(t, errors.As(err, &rl), "%v", err)
	assert.Equal(t, "budget", rl.Reason)
	assert.Positive(t, rl.Wait)
	assert.NoError(t, short.Err(), "refused at once")
}

// A call of an operation that has already sent a request goes ahead of the
// first calls of new operations, whatever their deadlines.
func TestLocalPacerStartedOperationsFirst(t *testing.T) {
	t.Parallel()
	p := NewLocalPacer(20, time.Second) // burst 1, then a token every 55 ms
	bg := context.Background()
	require.NoError(t, p.Wait(bg, time.Time{}))
	order := make(chan string, 4)
	start := func(name string, ctx context.Context, deadline time.Duration) {
		go func() {
			if err := p.Wait(ctx, time.Now().Add(deadline)); err != nil {
				order <- name + ": " + err.Error()
				return
			}
			order <- name
		}()
	}
	for i, name := range []string{"new1", "new2"} {
		start(name, BeginOperation(bg), 10*time.Second)
		require.Eventually(t, func() bool { return p.queued() == i+1 }, 5*time.Second, time.Millisecond)
	}
	started := BeginOperation(bg)
	operationOf(started).started.Store(true) // as after its first request
	start("started", started, time.Minute)
	require.Eventually(t, func() bool { return p.queued() == 3 }, 5*time.Second, time.Millisecond)
	start("resumed", BeginOperation(bg, OperationStarted()), 2*time.Minute)
	got := []string{<-order, <-order, <-order, <-order}
	assert.Equal(t, []string{"started", "resumed", "new1", "new2"}, got)
}

// A new operation is refused at once when the calls queued ahead of it,
// started operations' included, fill its time.
func TestLocalPacerRefusesNewOperationAtOnce(t *testing.T) {
	t.Parallel()
	p := NewLocalPacer(20, time.Second) // a token every 55 ms
	bg := context.Background()
	require.NoError(t, p.Wait(bg, time.Time{}))
	for range 4 {
		go func() { _ = p.Wait(BeginOperation(bg, OperationStarted()), time.Now().Add(time.Minute)) }()
	}
	require.Eventually(t, func() bool { return p.queued() == 4 }, 5*time.Second, time.Millisecond)
	// 5 tokens ahead (about 275 ms) against half of 400 ms.
	begun := time.Now()
	err := p.Wait(BeginOperation(bg), time.Now().Add(400*time.Millisecond))
	var rl *RateLimitError
	require.True(t, errors.As(err, &rl), "%v", err)
	assert.Less(t, time.Since(begun), 100*time.Millisecond, "refused at once")
	// A started operation with the same deadline waits its turn.
	require.NoError(t, p.Wait(BeginOperation(bg, OperationStarted()), time.Now().Add(400*time.Millisecond)))
}

// A queued call that started operations pushed back past its latest grant
// time is refused then, before its deadline, and sends nothing.
func TestLocalPacerExpiresQueuedWaiter(t *testing.T) {
	t.Parallel()
	p := NewLocalPacer(20, time.Second) // a token every 55 ms
	bg := context.Background()
	require.NoError(t, p.Wait(bg, time.Time{}))
	begun := time.Now()
	res := make(chan error, 1)
	go func() { res <- p.Wait(BeginOperation(bg), begun.Add(300*time.Millisecond)) }() // admitted: first in line
	require.Eventually(t, func() bool { return p.queued() == 1 }, 5*time.Second, time.Millisecond)
	for range 4 {
		go func() { _ = p.Wait(BeginOperation(bg, OperationStarted()), time.Now().Add(time.Minute)) }()
	}
	err := <-res
	var rl *RateLimitError
	require.True(t, errors.As(err, &rl), "%v", err)
	assert.Less(t, time.Since(begun), 300*time.Millisecond, "refused before its deadline")
}
