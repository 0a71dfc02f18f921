package quotastacktest

import (
	"sync"
	"time"
)

// Clock tells the server what time it is. Block expiry, reservation TTLs, idempotency
// retention and the rate limiter all read it, so a test can jump past an expiry.
type Clock interface {
	Now() time.Time
}

// clockFunc is a Clock read through a func (WithClock).
type clockFunc func() time.Time

func (f clockFunc) Now() time.Time { return f().UTC() }

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now().UTC() }

// ManualClock is a Clock that only moves when told to. It is safe for concurrent use.
type ManualClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewManualClock returns a ManualClock reading t (in UTC).
func NewManualClock(t time.Time) *ManualClock {
	return &ManualClock{now: t.UTC()}
}

// Now returns the clock's current time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d (backward if d is negative).
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Set moves the clock to t (in UTC).
func (c *ManualClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t.UTC()
	c.mu.Unlock()
}
