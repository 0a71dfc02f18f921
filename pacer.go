package quotastack

import (
	"container/heap"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// LocalPacer is a request budget in this process: a token bucket
// (golang.org/x/time/rate) of n/20 tokens refilled at 90% of n per period
// (BudgetShape), and a
// queue that hands each new token to the waiting call with the earliest
// deadline. Earliest-deadline-first matters for gates: the usage record of an
// action whose check has passed has an earlier deadline than the checks of
// actions that just started, so it isn't starved by them and the check isn't
// wasted. A call whose deadline can't be met is refused with a
// *RateLimitError as soon as that is known, before it sends anything.
// Safe for concurrent use.
type LocalPacer struct {
	lim *rate.Limiter

	nwait atomic.Int64 // len(waiters), read without the lock on the fast path

	mu      sync.Mutex
	waiters waiterHeap
	seq     uint64
	timer   *time.Timer
}

// NewLocalPacer returns a pacer of at most n requests in any period (see BudgetShape).
func NewLocalPacer(n int, per time.Duration) *LocalPacer {
	interval, burst := BudgetShape(n, per)
	return &LocalPacer{lim: rate.NewLimiter(rate.Every(interval), burst)}
}

// BudgetShape is the token bucket that keeps a client under n requests per
// period on every reading of that limit, the strictest included (at most n
// in any window of length per, as the fake enforces): a burst of n/20 (at
// least 1) and then one request per interval, 90% of n per period. A window
// then holds at most 95% of n; the rest absorbs timing noise and other traffic.
func BudgetShape(n int, per time.Duration) (interval time.Duration, burst int) {
	steady := max(n-n/10, 1)
	return per / time.Duration(steady), max(n/20, 1)
}

type waiter struct {
	deadline time.Time // the call's deadline, the order of the queue (zero: none)
	latest   time.Time // the latest grant that leaves the call its sendMargin
	seq      uint64
	ready    chan error // receives nil (granted) or a *RateLimitError; buffered
	index    int
}

type waiterHeap []*waiter

func (h waiterHeap) Len() int { return len(h) }
func (h waiterHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	switch {
	case a.deadline.IsZero() != b.deadline.IsZero():
		return !a.deadline.IsZero()
	case !a.deadline.Equal(b.deadline):
		return a.deadline.Before(b.deadline)
	}
	return a.seq < b.seq
}
func (h waiterHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *waiterHeap) Push(x any)   { w := x.(*waiter); w.index = len(*h); *h = append(*h, w) }
func (h *waiterHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	w.index = -1
	return w
}

// sendMargin is the time a granted call keeps for its request and for what
// its caller does next under the same deadline (a gate's usage record after
// its check): half of what it had left. Under overload, a call that would get
// its slot only at the end of its time is refused at once instead, so that
// the calls admitted can finish.
func sendMargin(left time.Duration) time.Duration { return left / 2 }

// Wait implements Pacer.
func (p *LocalPacer) Wait(ctx context.Context, deadline time.Time) error {
	now := time.Now()
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	var latest time.Time
	if !deadline.IsZero() {
		latest = deadline.Add(-sendMargin(deadline.Sub(now)))
	}
	if p.nwait.Load() == 0 && p.lim.AllowN(now, 1) {
		return nil // a token and nobody waiting for it (a waiter joining meanwhile only loses its place)
	}
	p.mu.Lock()
	// The calls due before this one are those with an earlier deadline.
	ahead := 0
	for _, w := range p.waiters {
		if !deadline.IsZero() && (w.deadline.IsZero() || !w.deadline.Before(deadline)) {
			continue
		}
		ahead++
	}
	if at := p.grantTime(now, ahead); !latest.IsZero() && at.After(latest) {
		p.mu.Unlock()
		return &RateLimitError{Wait: at.Sub(now), Reason: "budget"}
	}
	p.seq++
	w := &waiter{deadline: deadline, latest: latest, seq: p.seq, ready: make(chan error, 1)}
	heap.Push(&p.waiters, w)
	p.nwait.Store(int64(len(p.waiters)))
	p.schedule(now)
	p.mu.Unlock()

	select {
	case err := <-w.ready:
		return err
	case <-ctx.Done():
		p.mu.Lock()
		if w.index >= 0 {
			heap.Remove(&p.waiters, w.index)
			p.nwait.Store(int64(len(p.waiters)))
		}
		p.mu.Unlock()
		return ctx.Err()
	}
}

// grantTime is when the token after the next ahead ones will be there.
func (p *LocalPacer) grantTime(now time.Time, ahead int) time.Time {
	missing := float64(ahead+1) - p.lim.TokensAt(now)
	if missing <= 0 {
		return now
	}
	return now.Add(time.Duration(missing / float64(p.lim.Limit()) * float64(time.Second)))
}

// schedule sets the timer for the next token, if anyone waits. Under p.mu.
func (p *LocalPacer) schedule(now time.Time) {
	if len(p.waiters) == 0 {
		return
	}
	d := p.grantTime(now, 0).Sub(now)
	if p.timer == nil {
		p.timer = time.AfterFunc(d, p.dispatch)
		return
	}
	p.timer.Reset(d)
}

// dispatch hands the available tokens to the earliest deadlines, refuses the
// waiters whose deadline has become unreachable, and sets the next timer.
func (p *LocalPacer) dispatch() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for len(p.waiters) > 0 && p.lim.AllowN(now, 1) {
		w := heap.Pop(&p.waiters).(*waiter)
		w.ready <- nil
	}
	// Waiter i in deadline order gets the (i+1)-th token from now; refuse
	// those that would get it too late (they make room for the rest).
	if len(p.waiters) > 0 {
		sorted := make([]*waiter, len(p.waiters))
		copy(sorted, p.waiters)
		byDeadline(sorted)
		ahead := 0
		for _, w := range sorted {
			at := p.grantTime(now, ahead)
			if !w.latest.IsZero() && at.After(w.latest) {
				heap.Remove(&p.waiters, w.index)
				w.ready <- &RateLimitError{Wait: at.Sub(now), Reason: "budget"}
				continue
			}
			ahead++
		}
	}
	p.nwait.Store(int64(len(p.waiters)))
	p.schedule(now)
}

// byDeadline sorts a copy of the queue (the heap's index fields untouched).
func byDeadline(ws []*waiter) {
	slices.SortFunc(ws, func(a, b *waiter) int {
		h := waiterHeap{a, b}
		switch {
		case h.Less(0, 1):
			return -1
		case h.Less(1, 0):
			return 1
		}
		return 0
	})
}

func (p *LocalPacer) drain(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := int(p.lim.TokensAt(now)); n > 0 {
		p.lim.ReserveN(now, n)
	}
	p.schedule(now)
}
