package quotastacktest

import (
	"net/http"
	"sync"
	"time"
)

// idemRetention is how long a stored response is replayed (contract §2), on the server clock.
const idemRetention = 24 * time.Hour

// idemStore keeps one entry per (API key, Idempotency-Key). Its mutex is held only to read or
// change the map: a request waiting for a same-key request in flight waits on that entry's
// channel, not on a lock.
type idemStore struct {
	mu      sync.Mutex
	entries map[string]*idemEntry
	order   []idemRef // entries in creation order, for expiring the oldest first
	head    int       // order[:head] is already expired
	limit   int       // at most this many entries, in-flight ones aside
}

type idemRef struct {
	key string
	e   *idemEntry
}

type idemEntry struct {
	fingerprint string
	done        chan struct{} // closed when the first request has finished
	stored      bool          // resp is kept (the first request's status was below 500)
	resp        response
	storedAt    time.Time
}

func newIdemStore(limit int) *idemStore {
	if limit <= 0 {
		limit = DefaultIdempotencyLimit
	}
	return &idemStore{entries: map[string]*idemEntry{}, limit: limit}
}

// do executes exec at most once per key while its result is kept: a replay gets the stored
// response (replayed true); a different fingerprint gets 409 idempotency-key-conflict without
// executing; a same-key request in flight is waited for. ok is false if the client or the
// server went away while waiting.
func (st *idemStore) do(s *Server, r *http.Request, key, fingerprint string, exec func() response) (resp response, replayed, ok bool) {
	for {
		now := s.Now()
		st.mu.Lock()
		e := st.entries[key]
		if e != nil && e.stored && !now.Before(e.storedAt.Add(idemRetention)) {
			delete(st.entries, key)
			e = nil
		}
		if e == nil {
			e = &idemEntry{fingerprint: fingerprint, done: make(chan struct{})}
			st.entries[key] = e
			st.order = append(st.order, idemRef{key, e})
			st.expireOldestLocked(now)
			st.mu.Unlock()
			return st.execute(s, key, e, exec), false, true
		}
		st.mu.Unlock()

		if e.fingerprint != fingerprint {
			p := newProblem(409, slugIdemConflict,
				"this Idempotency-Key was used with a different method, path or body")
			return problemResponse(p, r.URL.EscapedPath()), false, true
		}
		select {
		case <-e.done:
		case <-r.Context().Done():
			return response{}, false, false
		case <-s.closed:
			return response{}, false, false
		}
		if e.stored {
			return e.resp, true, true
		}
		// The first request answered 5xx, which is not kept: try to execute again.
	}
}

// execute runs the first request of a key and keeps its response unless it is a 5xx.
func (st *idemStore) execute(s *Server, key string, e *idemEntry, exec func() response) response {
	resp := response{status: 500}
	defer func() {
		st.mu.Lock()
		if resp.status < 500 {
			e.resp, e.stored, e.storedAt = resp, true, s.Now()
		} else if st.entries[key] == e {
			delete(st.entries, key)
		}
		st.mu.Unlock()
		close(e.done)
	}()
	resp = exec()
	return resp
}

// expireOldestLocked forgets expired entries from the oldest on, stopping at the first one
// still kept or in flight, then, while the store holds more than its limit, the oldest
// finished entries even if unexpired (stopping at one in flight), so each insert costs O(1)
// amortized; the caller holds st.mu.
func (st *idemStore) expireOldestLocked(now time.Time) {
	for ; st.head < len(st.order); st.head++ {
		ref := st.order[st.head]
		if st.entries[ref.key] == ref.e { // not already replaced or dropped after a 5xx
			if !ref.e.stored || (len(st.entries) <= st.limit && now.Before(ref.e.storedAt.Add(idemRetention))) {
				break
			}
			delete(st.entries, ref.key)
		}
		st.order[st.head] = idemRef{}
	}
	if st.head > 1024 && st.head > len(st.order)/2 {
		st.order = append([]idemRef(nil), st.order[st.head:]...)
		st.head = 0
	}
}
