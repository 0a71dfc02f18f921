package quotastack

import (
	"container/heap"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// LocalPacer is a request budget in this process: a token bucket
// (golang.org/x/time/rate) of n/20 tokens refilled at 90% of n per period
// (BudgetShape), and a queue (two heaps) that hands each new token first to the
// calls of operations that have already sent a request (BeginOperation;
// earliest deadline first among them), then to the first calls of new
// operations, earliest deadline first. A gate's usage record thus goes ahead
// of the checks of gates that just started, and the budget is spent on
// actions that complete rather than on half-done ones. A new operation's
// call the budget can't serve in time, counting the calls the operations
// ahead of it still need, is refused with a *RateLimitError at once, before
// it sends anything; a queued call whose time runs out is refused then. Every
// call costs O(log n) in the number of waiting calls. Safe for concurrent use.
type LocalPacer struct {
	lim *rate.Limiter

	nwait atomic.Int64 // len(waiters), read without the lock on the fast path

	mu      sync.Mutex
	waiters [2]waiterHeap // per class (classStarted, classNew): started operations' calls go first
	timer   *time.Timer
	class   [2]classStats
	// grants per class since the last decay: their ratio is the number of
	// calls an operation makes, which a new operation's estimate counts.
	grants [2]int64
}

// The classes of a waiting call: a call of an operation that has already
// sent a request (or was begun with OperationStarted), and the first call
// of a new operation (every call made without an operation).
const (
	classStarted = 0
	classNew     = 1
)

// classStats lets Wait count the calls ahead of a new one without a scan in
// the common case: same timeouts, so deadlines arrive in increasing order.
type classStats struct {
	n          int       // waiting calls
	noDeadline int       // of which without a deadline (they come last)
	maxDL      time.Time // an upper bound of their latest deadline (exact after a scan)
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
	class    int
	deadline time.Time // the call's deadline (zero: none)
	latest   time.Time // the latest grant that leaves the call its sendMargin (zero: none)
	seq      uint64    // the operation's place among equal deadlines
	ready    chan error
	index    int
	timer    *time.Timer // refuses the call at latest
}

// before is the order of the queue: class, then deadline (none last), then place.
func (a *waiter) before(b *waiter) bool {
	switch {
	case a.class != b.class:
		return a.class < b.class
	case a.deadline.IsZero() != b.deadline.IsZero():
		return !a.deadline.IsZero()
	case !a.deadline.Equal(b.deadline):
		return a.deadline.Before(b.deadline)
	}
	return a.seq < b.seq
}

type waiterHeap []*waiter

func (h waiterHeap) Len() int           { return len(h) }
func (h waiterHeap) Less(i, j int) bool { return h[i].before(h[j]) }
func (h waiterHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *waiterHeap) Push(x any)        { w := x.(*waiter); w.index = len(*h); *h = append(*h, w) }
func (h *waiterHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	w.index = -1
	return w
}

// sendMargin is the time a granted call keeps for its request and for what
// its operation does next under the same deadline: half of what it had left
// for a new operation's first call (a gate's record and, for an auto-buy,
// its purchase come after it), a tenth for a started operation's call. Under
// overload, a new operation that would get its slot only at the end of its
// time is refused at once instead, so that the operations admitted can finish.
func sendMargin(class int, left time.Duration) time.Duration {
	if class == classStarted {
		return left / 10
	}
	return left / 2
}

// Wait implements Pacer. The call's operation (BeginOperation) is read from ctx.
func (p *LocalPacer) Wait(ctx context.Context, deadline time.Time) error {
	now := time.Now()
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	w := &waiter{class: classNew}
	if op := operationOf(ctx); op != nil {
		w.seq = op.seq
		if op.started.Load() {
			w.class = classStarted
		}
	} else {
		w.seq = nextSeq()
	}
	if !deadline.IsZero() {
		w.deadline = deadline
		w.latest = deadline.Add(-sendMargin(w.class, deadline.Sub(now)))
	}
	if p.nwait.Load() == 0 && p.lim.AllowN(now, 1) {
		p.mu.Lock()
		p.granted(w.class)
		p.mu.Unlock()
		return nil // a token and nobody waiting for it (a waiter joining meanwhile only loses its place)
	}
	p.mu.Lock()
	if at := p.grantTime(now, p.ahead(w)); !w.latest.IsZero() && at.After(w.latest) {
		p.mu.Unlock()
		return &RateLimitError{Wait: at.Sub(now), Reason: "budget"}
	}
	w.ready = make(chan error, 1)
	heap.Push(&p.waiters[w.class], w)
	cs := &p.class[w.class]
	cs.n++
	if w.deadline.IsZero() {
		cs.noDeadline++
	} else if w.deadline.After(cs.maxDL) {
		cs.maxDL = w.deadline
	}
	p.nwait.Add(1)
	if !w.latest.IsZero() {
		w.timer = time.AfterFunc(w.latest.Sub(now), func() { p.expire(w) })
	}
	p.schedule(now)
	p.mu.Unlock()

	select {
	case err := <-w.ready:
		return err
	case <-ctx.Done():
		p.mu.Lock()
		if w.index >= 0 {
			p.remove(w)
		}
		p.mu.Unlock()
		return ctx.Err()
	}
}

// ahead estimates the tokens the queue hands out before w's: the waiting
// calls of w's class that come before it and, for a new operation, every
// waiting started call plus the calls that the new operations ahead of it
// will make (the recent calls per operation). Under p.mu.
func (p *LocalPacer) ahead(w *waiter) int {
	cs := &p.class[w.class]
	var n int
	switch {
	case w.deadline.IsZero():
		n = cs.n // after every other waiter of its class
	case !w.deadline.Before(cs.maxDL) || cs.n > maxScan:
		// The common case (after every waiter with a deadline), or a bound
		// on a long queue: at most that many are ahead.
		n = cs.n - cs.noDeadline
	default:
		n = p.scan(w)
	}
	if w.class == classStarted {
		return n
	}
	perOp := float64(1)
	if g := p.grants[classNew]; g > 0 {
		perOp = min(float64(g+p.grants[classStarted])/float64(g), 8)
	}
	return p.class[classStarted].n + int(float64(n)*perOp)
}

// maxScan is the longest group of waiters ahead counts exactly when
// deadlines mix; beyond it the count is an upper bound (a call may be
// refused that an exact count would have let wait), so a call's cost stays
// bounded however long the queue.
const maxScan = 1024

// scan counts the waiters of w's class before it and makes the class's
// deadline bound exact. Under p.mu.
func (p *LocalPacer) scan(w *waiter) int {
	n := 0
	var maxDL time.Time
	for _, o := range p.waiters[w.class] {
		if o.deadline.After(maxDL) {
			maxDL = o.deadline
		}
		if o.before(w) {
			n++
		}
	}
	p.class[w.class].maxDL = maxDL
	return n
}

// granted counts a token handed to a call of class. Under p.mu.
func (p *LocalPacer) granted(class int) {
	p.grants[class]++
	if p.grants[classNew] >= 1000 { // follow the recent mix of operations
		p.grants[classNew] /= 2
		p.grants[classStarted] /= 2
	}
}

// remove takes w out of the queue. Under p.mu.
func (p *LocalPacer) remove(w *waiter) {
	heap.Remove(&p.waiters[w.class], w.index)
	p.dequeued(w)
}

// dequeued updates the counts after w left the queue. Under p.mu.
func (p *LocalPacer) dequeued(w *waiter) {
	cs := &p.class[w.class]
	cs.n--
	if w.deadline.IsZero() {
		cs.noDeadline--
	}
	if cs.n == 0 {
		cs.maxDL = time.Time{}
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	p.nwait.Add(-1)
}

// expire refuses w if it is still waiting when its latest grant time has
// come: a token now would leave it less than its sendMargin.
func (p *LocalPacer) expire(w *waiter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.index < 0 {
		return
	}
	now := time.Now()
	p.remove(w)
	w.ready <- &RateLimitError{Wait: p.grantTime(now, p.queuedLocked()).Sub(now), Reason: "budget"}
}

// grantTime is when the token after the next ahead ones will be there.
func (p *LocalPacer) grantTime(now time.Time, ahead int) time.Time {
	missing := float64(ahead+1) - p.lim.TokensAt(now)
	if missing <= 0 {
		return now
	}
	return now.Add(time.Duration(missing / float64(p.lim.Limit()) * float64(time.Second)))
}

// queuedLocked is the number of waiting calls. Under p.mu.
func (p *LocalPacer) queuedLocked() int {
	return len(p.waiters[classStarted]) + len(p.waiters[classNew])
}

// head is the call the next token goes to, or nil. Under p.mu.
func (p *LocalPacer) head() *waiter {
	for c := range p.waiters {
		if len(p.waiters[c]) > 0 {
			return p.waiters[c][0]
		}
	}
	return nil
}

// schedule sets the timer for the next token, if anyone waits. Under p.mu.
func (p *LocalPacer) schedule(now time.Time) {
	if p.queuedLocked() == 0 {
		return
	}
	d := p.grantTime(now, 0).Sub(now)
	if p.timer == nil {
		p.timer = time.AfterFunc(d, p.dispatch)
		return
	}
	p.timer.Reset(d)
}

// dispatch hands the available tokens to the head of the queue, refuses
// a head whose time ran out, and sets the next timer. O(log n) per token.
func (p *LocalPacer) dispatch() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for w := p.head(); w != nil; w = p.head() {
		if !w.latest.IsZero() && now.After(w.latest) {
			heap.Pop(&p.waiters[w.class])
			p.dequeued(w)
			w.ready <- &RateLimitError{Wait: p.grantTime(now, 0).Sub(now), Reason: "budget"}
			continue
		}
		if !p.lim.AllowN(now, 1) {
			break
		}
		heap.Pop(&p.waiters[w.class])
		p.dequeued(w)
		p.granted(w.class)
		w.ready <- nil
	}
	p.schedule(now)
}

func (p *LocalPacer) drain(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := int(p.lim.TokensAt(now)); n > 0 {
		p.lim.ReserveN(now, n)
	}
	p.schedule(now)
}
