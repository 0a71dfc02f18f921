package quotastacktest

import (
	"time"
)

// AsyncUsage turns on the docs' asynchronous debit (the postpaid use case): POST /v1/usage
// answers 202 Accepted with no body once the body is well formed, and so does each replay
// of its key. What a synchronous server answers 404, 422 or 402 is accepted too and then
// rejected silently: the event is not debited and shows up in RejectedUsage, never in the
// ledger. POST /v1/usage/batch answers 202 with no body as well; each of its events is
// accepted, executed or rejected on its own (a malformed event is rejected with 400).
type AsyncUsage struct {
	// Defer leaves an accepted event pending after the 202 is written. Pending events execute
	// in acceptance order when the server takes its next request (before handling it), at
	// FlushAsyncUsage, or at a CheckInvariants without InFlight. false executes the event
	// before the 202 is written.
	Defer bool
	// Lag keeps an event pending until the server clock is Lag past its acceptance (a later
	// request then executes it); Lag > 0 implies Defer. Events wait in one queue: an event
	// never executes before one accepted earlier.
	Lag time.Duration
}

// RejectedUsage is a usage event that was answered 202 and then not debited. Status, Type
// and Detail are what a synchronous server would have answered (402 insufficient-credits,
// 404 customer-not-found, 400 for a malformed batch event, ...).
type RejectedUsage struct {
	IdempotencyKey                 string
	BatchIndex                     int    // -1 outside a batch
	CustomerID, ExternalCustomerID string // as the body gave them
	MetricKey                      string
	Units                          int64
	Metadata                       map[string]string
	Status                         int
	Type, Detail                   string
	AcceptedAt, RejectedAt         time.Time
}

type pendingUsage struct {
	body       usageBody
	key        string
	batchIndex int
	acceptedAt time.Time
	due        time.Time
}

// WithAsyncUsage answers usage events 202 Accepted with no body (see AsyncUsage).
func WithAsyncUsage(a AsyncUsage) Option {
	return func(c *config) { c.async = &a }
}

// SetAsyncUsage switches the 202 mode at runtime: nil turns it off (usage answers 200 with
// the event, 402 when it can't be covered). Events already pending stay pending.
func (s *Server) SetAsyncUsage(a *AsyncUsage) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if a == nil {
		s.st.async = nil
		return
	}
	c := *a
	s.st.async = &c
}

// FlushAsyncUsage executes (or rejects) every pending asynchronous usage event now, whatever
// its Lag.
func (s *Server) FlushAsyncUsage() {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	s.st.drain(s.Now(), true)
}

// PendingUsage returns how many accepted usage events have not executed yet.
func (s *Server) PendingUsage() int {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	return len(s.st.pending)
}

// RejectedUsage returns a copy of the usage events answered 202 and then rejected, in order.
func (s *Server) RejectedUsage() []RejectedUsage {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	out := make([]RejectedUsage, len(s.st.rejected))
	for i, r := range s.st.rejected {
		r.Metadata = copyMeta(r.Metadata)
		out[i] = r
	}
	return out
}

// acceptUsage takes a well-formed event in the 202 mode: it executes now or waits in the
// queue; the caller holds the state lock.
func (s *state) acceptUsage(b *usageBody, key string, batchIndex int, now time.Time) {
	a := s.async
	if !a.Defer && a.Lag <= 0 && len(s.pending) == 0 {
		s.executeAsync(pendingUsage{*b, key, batchIndex, now, now}, now)
		return
	}
	s.pending = append(s.pending, pendingUsage{*b, key, batchIndex, now, now.Add(a.Lag)})
	s.pendingN.Store(int64(len(s.pending)))
}

// drain executes the pending events that are due at now (all of them if all), in order,
// stopping at the first one not due; the caller holds the state lock.
func (s *state) drain(now time.Time, all bool) {
	n := 0
	for _, p := range s.pending {
		if !all && p.due.After(now) {
			break
		}
		s.executeAsync(p, now)
		n++
	}
	clear(s.pending[:n])
	s.pending = s.pending[n:]
	if len(s.pending) == 0 {
		s.pending = nil
	}
	s.pendingN.Store(int64(len(s.pending)))
}

// drainIfPending is drain for the start of every request, cheap when nothing is pending.
func (s *state) drainIfPending(now time.Time) {
	if s.pendingN.Load() == 0 {
		return
	}
	s.mu.Lock()
	s.drain(now, false)
	s.mu.Unlock()
}

func (s *state) executeAsync(p pendingUsage, now time.Time) {
	if _, prob := s.executeUsage(&p.body, p.key, p.batchIndex, now); prob != nil {
		s.reject(p, prob, now)
	}
}

func (s *state) reject(p pendingUsage, prob *problem, now time.Time) {
	b := p.body
	var units int64
	if b.Units != nil {
		units = *b.Units
	}
	s.rejected = append(s.rejected, RejectedUsage{
		IdempotencyKey: p.key, BatchIndex: p.batchIndex, CustomerID: b.CustomerID, ExternalCustomerID: b.ExternalCustomerID,
		MetricKey: b.BillableMetricKey, Units: units, Metadata: copyMeta(b.Metadata),
		Status: prob.Status, Type: prob.Type, Detail: prob.Detail, AcceptedAt: p.acceptedAt, RejectedAt: now,
	})
}

// pendingOrders returns the plan orders that have an accepted debit still pending, by
// customer; the caller holds the state lock.
func (s *state) pendingOrders() map[*customer]map[planKey]bool {
	out := map[*customer]map[planKey]bool{}
	for _, p := range s.pending {
		k, ok := planMark(p.body.Metadata, false)
		if !ok {
			continue
		}
		c := s.customers[p.body.CustomerID]
		if p.body.CustomerID == "" {
			c = s.byExternal[p.body.ExternalCustomerID]
		}
		if c == nil {
			continue
		}
		if out[c] == nil {
			out[c] = map[planKey]bool{}
		}
		out[c][k] = true
	}
	return out
}
