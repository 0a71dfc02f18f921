package quotastack

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/quotastack/quotastack-go/internal/idem"
	"github.com/quotastack/quotastack-go/internal/retry"
)

// Defaults of a Recorder.
const (
	DefaultRecorderBatch    = MaxBatchEvents // events per request
	DefaultRecorderInterval = time.Second    // the longest an event waits for its batch to fill
	DefaultRecorderBuffer   = 1000           // events held before Add blocks
)

// maxBatchAge is how long a batch is retried under its key: the server keeps
// idempotency keys for 24 h, and a retry after that could execute twice.
const maxBatchAge = 23 * time.Hour

var (
	// ErrRecorderClosed: Add after Close, or an event Close could not send in time.
	ErrRecorderClosed = errors.New("quotastack: recorder closed")
	// ErrRecorderFull: Add's context ended while the buffer was full.
	ErrRecorderFull = errors.New("quotastack: recorder buffer full")
)

// RecordResult is the outcome of one event given to a Recorder.
type RecordResult struct {
	ID     string      // the event's id (the caller's, or one the recorder made)
	Params UsageParams // the event as added
	Event  *UsageEvent // the recorded event; nil when Err is set
	// Err is nil when the event was recorded. A per-event refusal is an
	// *APIError (e.g. ErrInsufficientCredits); a batch that got no definite
	// answer before Close gave up has the last error, and may have been
	// recorded: resend it with RecordBatch and BatchKey to find out.
	Err      error
	BatchKey string // the Idempotency-Key of the batch that carried the event
}

// RecorderStats counts what a Recorder has done so far.
type RecorderStats struct {
	Added, Recorded, Failed int64 // events
	Batches, Retries        int64 // batches answered 2xx; batch sends retried after the client's own retries
	Buffered                int   // events waiting for a batch
}

// RecorderOption configures a Recorder.
type RecorderOption func(*recorderConfig)

type recorderConfig struct {
	batch, buffer int
	interval      time.Duration
	onResults     func([]RecordResult)
}

// WithBatchSize sets the events per request, 1 to 100 (default 100).
func WithBatchSize(n int) RecorderOption { return func(c *recorderConfig) { c.batch = n } }

// WithFlushInterval sets the longest an event waits for its batch to fill (default 1 s).
func WithFlushInterval(d time.Duration) RecorderOption {
	return func(c *recorderConfig) { c.interval = d }
}

// WithBufferSize sets how many events wait for a batch before Add blocks
// (default 1,000; at least the batch size).
func WithBufferSize(n int) RecorderOption { return func(c *recorderConfig) { c.buffer = n } }

// WithResults sets the function that receives the outcome of every event,
// once per batch, on the recorder's goroutine; Flush returns after it has run
// for every event added before the Flush. Without it, outcomes are only counted.
func WithResults(f func([]RecordResult)) RecorderOption {
	return func(c *recorderConfig) { c.onResults = f }
}

// Recorder sends usage events in batches (POST /v1/usage/batch) for code that
// records without gating: one request per up to 100 events, sent when a
// batch is full or its oldest event has waited the flush interval. Each batch
// has one Idempotency-Key derived from its content and kept across every
// retry, and a batch is never re-formed, so an event is recorded at most
// once. At most buffer + batch size events are held: Add blocks while the
// buffer is full. Safe for concurrent use; Close it when done.
type Recorder struct {
	c      *Client
	cfg    recorderConfig
	cancel context.CancelFunc
	exited chan struct{}

	mu      sync.Mutex
	queue   []queuedEvent
	changed chan struct{} // closed and replaced on every change that someone may wait for
	added   uint64        // sequence number of the last event added
	done    uint64        // every event up to this one has been reported
	flushTo uint64        // send partial batches until done reaches it
	closed  bool
	stats   RecorderStats
}

type queuedEvent struct {
	id  string
	p   UsageParams
	seq uint64
	at  time.Time
}

// NewRecorder starts a Recorder sending through c.
func (c *Client) NewRecorder(opts ...RecorderOption) (*Recorder, error) {
	cfg := recorderConfig{batch: DefaultRecorderBatch, buffer: DefaultRecorderBuffer, interval: DefaultRecorderInterval}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case cfg.batch < 1 || cfg.batch > MaxBatchEvents:
		return nil, inputErr("batch size", "must be 1 to 100")
	case cfg.buffer < cfg.batch:
		return nil, inputErr("buffer size", "must be at least the batch size")
	case cfg.interval <= 0:
		return nil, inputErr("flush interval", "must be positive")
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Recorder{c: c, cfg: cfg, cancel: cancel, exited: make(chan struct{}), changed: make(chan struct{})}
	go r.run(ctx)
	return r, nil
}

// Add queues one usage event. id names the business event (e.g. a message
// id; "" makes one up): it goes into the batch's key, so two events with the
// same content are two events. Add blocks while the buffer is full and
// returns an error matching ErrRecorderFull if ctx ends first; invalid input
// is refused at once. Add never sends: the outcome comes through WithResults.
func (r *Recorder) Add(ctx context.Context, id string, p UsageParams) error {
	if err := p.validate(); err != nil {
		return err
	}
	if id == "" {
		id = idem.New()
	} else if len(id) > idem.MaxKeyLen {
		return inputErr("event id", "longer than 255 bytes")
	}
	r.mu.Lock()
	for {
		if r.closed {
			r.mu.Unlock()
			return ErrRecorderClosed
		}
		if len(r.queue) < r.cfg.buffer {
			r.added++
			r.stats.Added++
			r.queue = append(r.queue, queuedEvent{id: id, p: p, seq: r.added, at: time.Now()})
			if n := len(r.queue); n == 1 || n == r.cfg.batch {
				r.notify() // the sender arms its timer, or sends
			}
			r.mu.Unlock()
			return nil
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrRecorderFull, ctx.Err())
		}
		r.mu.Lock()
	}
}

// Flush sends every event added before it and returns once all their
// outcomes are reported, or with ctx's error (the events stay queued and
// keep being retried).
func (r *Recorder) Flush(ctx context.Context) error {
	r.mu.Lock()
	target := r.added
	if target > r.flushTo {
		r.flushTo = target
		r.notify()
	}
	for r.done < target {
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		r.mu.Lock()
	}
	r.mu.Unlock()
	return nil
}

// Close stops taking events, sends every queued one and waits for their
// outcomes. If ctx ends first it stops retrying: the events not yet sent are
// reported with ErrRecorderClosed, a batch in flight with its last error and
// its key; nothing is dropped unreported. Close returns ctx's error then.
func (r *Recorder) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	r.notify()
	r.mu.Unlock()
	err := r.Flush(ctx)
	if err != nil {
		r.cancel()
	}
	<-r.exited
	r.cancel()
	r.mu.Lock()
	left := r.queue
	r.queue = nil
	r.mu.Unlock()
	if len(left) > 0 {
		r.report(&sentBatch{events: left}, nil, ErrRecorderClosed)
	}
	return err
}

// Stats returns the recorder's counters.
func (r *Recorder) Stats() RecorderStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Buffered = len(r.queue)
	return s
}

func (r *Recorder) notify() {
	close(r.changed)
	r.changed = make(chan struct{})
}

type sentBatch struct {
	events []queuedEvent
	key    string
	first  time.Time
}

func (r *Recorder) run(ctx context.Context) {
	defer close(r.exited)
	for {
		b := r.next(ctx)
		if b == nil {
			return
		}
		r.send(ctx, b)
	}
}

// next waits until a batch is due and takes it from the queue; nil when
// the recorder is closed and empty, or stopped.
func (r *Recorder) next(ctx context.Context) *sentBatch {
	for {
		if ctx.Err() != nil {
			return nil // Close gave up: it reports what is left
		}
		r.mu.Lock()
		n := len(r.queue)
		if n == 0 && r.closed {
			r.mu.Unlock()
			return nil
		}
		var wait time.Duration
		if n > 0 {
			wait = r.cfg.interval - time.Since(r.queue[0].at)
		}
		if n >= r.cfg.batch || (n > 0 && (r.closed || r.flushTo > r.done || wait <= 0)) {
			k := min(n, r.cfg.batch)
			b := &sentBatch{events: slices.Clone(r.queue[:k]), first: time.Now()}
			r.queue = append(r.queue[:0], r.queue[k:]...)
			r.notify()
			r.mu.Unlock()
			b.key = batchKey(b.events)
			return b
		}
		ch := r.changed
		r.mu.Unlock()
		var t *time.Timer
		var timer <-chan time.Time
		if n > 0 {
			t = time.NewTimer(wait)
			timer = t.C
		}
		select {
		case <-ch:
		case <-timer:
		case <-ctx.Done():
		}
		if t != nil {
			t.Stop()
		}
	}
}

// send sends b under its key until it gets a definite answer, the batch is
// too old to retry safely, or ctx ends; then it reports every event.
func (r *Recorder) send(ctx context.Context, b *sentBatch) {
	params := make([]UsageParams, len(b.events))
	for i, e := range b.events {
		params[i] = e.p
	}
	garbled := 0
	for attempt := 0; ; attempt++ {
		res, err := r.c.RecordBatch(ctx, params, WithIdempotencyKey(b.key))
		if err == nil {
			r.report(b, res, nil)
			return
		}
		if ctx.Err() != nil {
			r.report(b, nil, gaveUp(err))
			return
		}
		if !batchRetryable(err, &garbled) || time.Since(b.first) > maxBatchAge {
			r.report(b, nil, err)
			return
		}
		r.mu.Lock()
		r.stats.Retries++
		r.mu.Unlock()
		if retry.Sleep(ctx, recorderBackoff(attempt)) != nil {
			r.report(b, nil, gaveUp(err))
			return
		}
	}
}

// gaveUp is the outcome of a batch Close stopped retrying: it may have been
// recorded (an earlier attempt may have executed).
func gaveUp(last error) error {
	return fmt.Errorf("%w before the batch got a definite answer (it may have been recorded; resend it with its BatchKey to know): %w",
		ErrRecorderClosed, last)
}

// batchRetryable: no answer, 429 and 5xx are retried under the same key; a
// 2xx that could not be read is retried a few times (the key replays it).
func batchRetryable(err error, garbled *int) bool {
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		return !errors.Is(err, ErrInvalidInput)
	}
	switch {
	case apiErr.StatusCode == http.StatusTooManyRequests || apiErr.StatusCode >= 500:
		return true
	case apiErr.StatusCode >= 200 && apiErr.StatusCode < 300:
		*garbled++
		return *garbled <= 3
	}
	return false
}

func recorderBackoff(attempt int) time.Duration {
	d := time.Second << min(attempt, 5) // 1 s to 32 s
	return d/2 + rand.N(d/2)
}

// report hands the outcome of every event of b to the result function, then
// marks them done.
func (r *Recorder) report(b *sentBatch, res *UsageBatch, err error) {
	out := make([]RecordResult, len(b.events))
	for i, e := range b.events {
		out[i] = RecordResult{ID: e.id, Params: e.p, BatchKey: b.key, Err: err}
	}
	allTaken := res != nil && res.Accepted && len(res.Results) == 0
	if allTaken {
		// 202 without results: the server took every event of the batch.
		for i := range out {
			out[i].Event = &UsageEvent{Accepted: true, Meta: res.Meta}
		}
	}
	if res != nil && !allTaken {
		seen := make([]bool, len(out))
		for _, br := range res.Results {
			i := br.Index
			if i < 0 || i >= len(out) || seen[i] {
				continue
			}
			seen[i] = true
			switch {
			case br.Problem != nil || br.Status < 200 || br.Status > 299:
				out[i].Err = r.eventError(b.key, br)
			case br.Event == nil && (br.Status == http.StatusAccepted || res.Accepted):
				// Taken without an event yet (an asynchronous debit).
				out[i].Event = &UsageEvent{Accepted: true, Meta: res.Meta}
			case br.Event == nil:
				out[i].Err = r.eventError(b.key, br)
			default:
				ev := *br.Event
				ev.Meta = res.Meta
				out[i].Event = &ev
			}
		}
		for i := range out {
			if !seen[i] {
				out[i].Err = &APIError{StatusCode: res.Meta.StatusCode, Method: http.MethodPost, Path: "/v1/usage/batch",
					IdempotencyKey: b.key, RequestID: res.Meta.RequestID, cause: errors.New("no result for the event")}
			}
		}
	}
	var ok, failed int64
	for i := range out {
		if out[i].Err == nil {
			ok++
		} else {
			failed++
		}
	}
	if r.cfg.onResults != nil {
		r.cfg.onResults(out)
	}
	r.mu.Lock()
	r.stats.Recorded += ok
	r.stats.Failed += failed
	if res != nil {
		r.stats.Batches++
	}
	if last := b.events[len(b.events)-1].seq; last > r.done {
		r.done = last
	}
	r.notify()
	r.mu.Unlock()
}

// eventError is the *APIError of one refused event of a batch.
func (r *Recorder) eventError(key string, br BatchResult) error {
	e := &APIError{StatusCode: br.Status, Method: http.MethodPost, Path: "/v1/usage/batch", IdempotencyKey: key}
	if br.Problem == nil {
		e.cause = errors.New("event result without an event")
		return e
	}
	e.Type, e.Title, e.Detail = r.c.redact(br.Problem.Type), r.c.redact(br.Problem.Title), r.c.redact(br.Problem.Detail)
	e.Required, e.Available = br.Problem.Required, br.Problem.Available
	return e
}

// batchKey derives a batch's Idempotency-Key from its events (ids and
// content, each field length-prefixed, so no two different batches share
// a key): the same batch always gets the same key, and only it.
func batchKey(events []queuedEvent) string {
	h := sha256.New()
	var n [8]byte
	field := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	binary.BigEndian.PutUint64(n[:], uint64(len(events)))
	h.Write(n[:])
	for _, e := range events {
		field(e.id)
		field(e.p.Customer.String())
		field(e.p.MetricKey)
		binary.BigEndian.PutUint64(n[:], uint64(e.p.Units)) //nolint:gosec // units are > 0
		h.Write(n[:])
		keys := make([]string, 0, len(e.p.Metadata))
		for k := range e.p.Metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		binary.BigEndian.PutUint64(n[:], uint64(len(keys)))
		h.Write(n[:])
		for _, k := range keys {
			field(k)
			field(e.p.Metadata[k])
		}
	}
	return "usage-batch:" + hex.EncodeToString(h.Sum(nil))
}
