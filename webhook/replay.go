package webhook

import (
	"container/list"
	"context"
	"math"
	"sync"
	"time"
)

// ClaimResult is what a [ReplayStore] knows of a delivery id.
type ClaimResult int

const (
	// ClaimNew: the id was unknown; the caller now holds it and must
	// Complete or Abandon it.
	ClaimNew ClaimResult = iota
	// ClaimInFlight: another delivery with this id is being handled now.
	ClaimInFlight
	// ClaimDone: a delivery with this id was handled already (a replay).
	ClaimDone
)

// ReplayStore remembers the webhook-id of deliveries, so that [Verifier.Handler]
// passes each delivery to its callback once. Implementations must be safe
// for concurrent use and Claim must be atomic: of concurrent claims of one
// id, one gets ClaimNew. The in-memory [MemoryReplayStore] is the default;
// autobuy/redislock has a Redis one for several replicas.
type ReplayStore interface {
	// Claim marks id as being handled for at most ttl (then the claim lapses,
	// as if abandoned), unless it is known already.
	Claim(ctx context.Context, id string, ttl time.Duration) (ClaimResult, error)
	// Complete marks id as handled and remembers it for retention.
	Complete(ctx context.Context, id string, retention time.Duration) error
	// Abandon forgets a claim whose handling failed, so the sender's
	// redelivery is handled.
	Abandon(ctx context.Context, id string) error
}

// Defaults of the replay protection.
const (
	// DefaultClaimTTL bounds how long a claim blocks redeliveries of an id
	// whose handler crashed before it could Complete or Abandon.
	DefaultClaimTTL = time.Minute
	// DefaultReplayStoreSize caps the ids a MemoryReplayStore keeps.
	DefaultReplayStoreSize = 100_000
)

// replayRetention is how long a handled id is remembered: a delivery's
// timestamp passes the check during twice the tolerance (it may be up to the
// tolerance early or late), plus a minute for clock steps.
// It saturates rather than overflow (NewVerifier bounds the tolerance anyway).
func replayRetention(tolerance time.Duration) time.Duration {
	if tolerance > (math.MaxInt64-time.Minute)/2 {
		return math.MaxInt64
	}
	return 2*tolerance + time.Minute
}

// MemoryReplayStore is an in-process [ReplayStore] with bounded memory: at
// most max ids, expired ones dropped as new ones arrive; past max, the oldest
// id is forgotten early. Safe for concurrent use. It protects one process;
// replicas behind a load balancer need a shared store.
type MemoryReplayStore struct {
	mu    sync.Mutex
	max   int
	now   func() time.Time
	ids   map[string]*list.Element
	order *list.List // of *replayEntry, oldest expiry first (mostly: see Complete)
}

type replayEntry struct {
	id      string
	done    bool
	expires time.Time
}

// NewMemoryReplayStore returns an empty store of at most maxIDs ids
// (DefaultReplayStoreSize when maxIDs <= 0).
func NewMemoryReplayStore(maxIDs int) *MemoryReplayStore {
	if maxIDs <= 0 {
		maxIDs = DefaultReplayStoreSize
	}
	return &MemoryReplayStore{max: maxIDs, now: time.Now, ids: map[string]*list.Element{}, order: list.New()}
}

// Len returns the number of ids held (expired ones may still be counted).
func (s *MemoryReplayStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// Claim implements [ReplayStore].
func (s *MemoryReplayStore) Claim(_ context.Context, id string, ttl time.Duration) (ClaimResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.sweep(now)
	if el, ok := s.ids[id]; ok {
		e := el.Value.(*replayEntry)
		if now.Before(e.expires) {
			if e.done {
				return ClaimDone, nil
			}
			return ClaimInFlight, nil
		}
		s.remove(el)
	}
	for len(s.ids) >= s.max {
		s.remove(s.order.Front())
	}
	s.ids[id] = s.order.PushBack(&replayEntry{id: id, expires: now.Add(ttl)})
	return ClaimNew, nil
}

// Complete implements [ReplayStore].
func (s *MemoryReplayStore) Complete(_ context.Context, id string, retention time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.ids[id]
	if !ok {
		if len(s.ids) >= s.max {
			s.remove(s.order.Front())
		}
		el = s.order.PushBack(&replayEntry{id: id})
		s.ids[id] = el
	}
	e := el.Value.(*replayEntry)
	e.done, e.expires = true, s.now().Add(retention)
	s.order.MoveToBack(el) // retention is the longest expiry: it belongs at the back
	return nil
}

// Abandon implements [ReplayStore].
func (s *MemoryReplayStore) Abandon(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.ids[id]; ok && !el.Value.(*replayEntry).done {
		s.remove(el)
	}
	return nil
}

// sweep drops expired ids from the front of the order.
func (s *MemoryReplayStore) sweep(now time.Time) {
	for el := s.order.Front(); el != nil; el = s.order.Front() {
		if now.Before(el.Value.(*replayEntry).expires) {
			return
		}
		s.remove(el)
	}
}

func (s *MemoryReplayStore) remove(el *list.Element) {
	delete(s.ids, el.Value.(*replayEntry).id)
	s.order.Remove(el)
}
