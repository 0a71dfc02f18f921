package quotastacktest

import (
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// Fault scripts a failure for the requests it matches. A status fault answers instead of
// executing (and is never stored for idempotency); a drop fault executes the request, keeps
// its idempotency result, then closes the connection without writing a response; an
// execute-then-status fault executes the request, keeps its idempotency result (so a retry
// with the same key gets the replay), then answers ExecuteThenStatus in its place, as a
// server whose proxy failed after the commit would.
type Fault struct {
	Method     string // "" matches any method
	PathPrefix string // "" matches any path; compared with the escaped request path
	Status     int    // 500, 503, 429, ...; 0 with Drop false and ExecuteThenStatus 0 means 500
	RetryAfter string // Retry-After header value, optional ("1" by default for 429)
	Drop       bool   // execute, then drop the connection before writing anything
	// ExecuteThenStatus (a 5xx, e.g. 500 or 502) executes the request, then answers this status
	// with a problem body instead of the request's own answer. Drop takes precedence.
	ExecuteThenStatus int
	Count             int // how many matching requests it hits; 0 means 1
}

// RandomFaults injects failures at random, for soak tests: each request matching PathPrefix
// draws once, deterministically for a given Seed and request order.
type RandomFaults struct {
	Seed                    int64
	P500, P503, P429, PDrop float64 // probabilities per request
	// PExecute500 is the probability that a request executes and is then answered 500
	// (its idempotency result kept, as with Fault.ExecuteThenStatus).
	PExecute500 float64
	RetryAfter  string        // Retry-After of random 429s and 503s, optional
	MaxLatency  time.Duration // each request waits a random duration below it
	PathPrefix  string        // "" matches any path
}

// FaultCounts counts the faults injected so far, scripted, random and (for ExecuteThen) of
// the execute-then-status mode.
type FaultCounts struct {
	Status500, Status503, Status429, Drops, Latency int64
	ExecuteThen                                     int64 // executed, then answered a 5xx
}

type faultState struct {
	mu      sync.Mutex
	queue   []Fault
	latency time.Duration
	random  *RandomFaults
	rng     *rand.Rand
	counts  FaultCounts
}

// faultPlan is what happens to one request.
type faultPlan struct {
	status      int
	retryAfter  string
	drop        bool
	executeThen int
	latency     time.Duration
}

func (f *faultState) pick(method, path string) faultPlan {
	f.mu.Lock()
	defer f.mu.Unlock()
	plan := faultPlan{latency: f.latency}
	matched := false
	for i := range f.queue {
		q := &f.queue[i]
		if (q.Method != "" && !strings.EqualFold(q.Method, method)) || !strings.HasPrefix(path, q.PathPrefix) {
			continue
		}
		matched = true
		plan.drop, plan.status, plan.retryAfter, plan.executeThen = q.Drop, q.Status, q.RetryAfter, q.ExecuteThenStatus
		if q.Count--; q.Count <= 0 {
			f.queue = append(f.queue[:i], f.queue[i+1:]...)
		}
		break
	}
	if rf := f.random; !matched && rf != nil && strings.HasPrefix(path, rf.PathPrefix) {
		if rf.MaxLatency > 0 {
			plan.latency += time.Duration(f.rng.Int64N(int64(rf.MaxLatency)))
		}
		x := f.rng.Float64()
		switch {
		case x < rf.P500:
			plan.status = 500
		case x < rf.P500+rf.P503:
			plan.status, plan.retryAfter = 503, rf.RetryAfter
		case x < rf.P500+rf.P503+rf.P429:
			plan.status, plan.retryAfter = 429, rf.RetryAfter
		case x < rf.P500+rf.P503+rf.P429+rf.PDrop:
			plan.drop = true
		case x < rf.P500+rf.P503+rf.P429+rf.PDrop+rf.PExecute500:
			plan.executeThen = 500
		}
		matched = plan.status != 0 || plan.drop || plan.executeThen != 0
	}
	switch {
	case plan.drop:
		plan.status, plan.executeThen = 0, 0
		f.counts.Drops++
	case plan.executeThen != 0:
		plan.status = 0
		f.counts.ExecuteThen++
	case matched && plan.status == 0:
		plan.status = 500
	}
	switch plan.status {
	case 0:
	case 429:
		f.counts.Status429++
		if plan.retryAfter == "" {
			plan.retryAfter = "1"
		}
	case 503:
		f.counts.Status503++
	default:
		f.counts.Status500++
	}
	if plan.latency > 0 {
		f.counts.Latency++
	}
	return plan
}

func faultResponse(f faultPlan, path string) response {
	var p *problem
	switch f.status {
	case 429:
		p = newProblem(429, slugRateLimited, "injected fault: rate limited")
	case 503:
		p = newProblem(503, slugUnavailable, "injected fault: service unavailable")
	default:
		p = newProblem(f.status, slugInternal, "injected fault: internal error")
	}
	resp := problemResponse(p, path)
	resp.retryAfter = f.retryAfter
	return resp
}

// InjectFault queues a scripted fault; each request takes the first queued fault it matches.
func (s *Server) InjectFault(f Fault) {
	if f.Count <= 0 {
		f.Count = 1
	}
	s.faults.mu.Lock()
	s.faults.queue = append(s.faults.queue, f)
	s.faults.mu.Unlock()
}

// FailNext makes the next n requests, whatever their path, answer status without executing.
func (s *Server) FailNext(n, status int) {
	s.InjectFault(Fault{Status: status, Count: n})
}

// DropNext makes the next n requests matching method ("" any) and pathPrefix ("" any)
// execute and then lose their connection before any response byte is written.
func (s *Server) DropNext(n int, method, pathPrefix string) {
	s.InjectFault(Fault{Method: method, PathPrefix: pathPrefix, Drop: true, Count: n})
}

// ClearFaults removes every queued fault, the fixed latency and the random faults.
func (s *Server) ClearFaults() {
	s.faults.mu.Lock()
	s.faults.queue, s.faults.latency, s.faults.random = nil, 0, nil
	s.faults.mu.Unlock()
}

// SetLatency delays every request by d before it is handled (0 turns it off).
func (s *Server) SetLatency(d time.Duration) {
	s.faults.mu.Lock()
	s.faults.latency = d
	s.faults.mu.Unlock()
}

// SetRandomFaults turns random faults on (nil turns them off). Scripted faults take
// precedence: a request that matches one draws nothing.
func (s *Server) SetRandomFaults(rf *RandomFaults) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	if rf == nil {
		s.faults.random, s.faults.rng = nil, nil
		return
	}
	c := *rf
	s.faults.random = &c
	seed := uint64(c.Seed) //nolint:gosec // any bit pattern is a fine seed
	s.faults.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

func (f *faultState) countExecuteThen() {
	f.mu.Lock()
	f.counts.ExecuteThen++
	f.mu.Unlock()
}

// FaultCounts returns how many faults have been injected so far.
func (s *Server) FaultCounts() FaultCounts {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return s.faults.counts
}
