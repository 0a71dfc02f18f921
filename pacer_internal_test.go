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
	return len(p.waiters)
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
