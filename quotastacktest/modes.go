package quotastacktest

import "testing"

// WithSparseAnswers makes the server leave out what a real server may not send (see
// SetSparseAnswers).
func WithSparseAnswers() Option { return func(c *config) { c.sparse = true } }

// SetSparseAnswers switches sparse answers on or off at runtime. When on, the credits answer
// has no lifetime_earned and no version, blocks (in the credits answer and in grant answers)
// have no created_at, and entitlement answers have no subscription_status. customer_id stays
// in every answer: the docs show it in each of them.
func (s *Server) SetSparseAnswers(on bool) { s.sparse.Store(on) }

// WithExecuteThenStatus makes every POST that executes answer status (a 5xx) instead of its
// own answer (see SetExecuteThenStatus).
func WithExecuteThenStatus(status int) Option { return func(c *config) { c.execThen = status } }

// SetExecuteThenStatus switches the execute-then-5xx mode at runtime (0 turns it off): every
// POST or PATCH that executes for the first time under its Idempotency-Key is executed, its
// result kept for replays, and then answered status with a problem body, as when a proxy
// fails after the commit. A retry with the same key gets the kept result (replayed); GETs,
// replays and requests that never execute (401, 429, 409 conflicts) are not affected.
func (s *Server) SetExecuteThenStatus(status int) { s.execThen.Store(int64(status)) }

// Mode is a named set of server options: one way a real server may be less kind than the
// default fake.
type Mode struct {
	Name    string
	Options []Option
}

// Modes returns the modes to run a scenario against, the default first:
//
//   - "kind": the default fake (usage answered 200 with the event, every member present).
//   - "usage202": POST /v1/usage and /v1/usage/batch answer 202 with no body; events execute
//     when the next request arrives, and one the wallet can't cover is rejected silently
//     (AsyncUsage{Defer: true}).
//   - "sparse": no lifetime_earned, version, block created_at or subscription_status.
//   - "execute-then-5xx": every POST executes and is then answered 500; its retry gets the replay.
//   - "rate-limited": the docs' 100 requests per 60 s (WithDocumentedRateLimit).
//
// Pass a mode's Options after your own (a clock, a key) to Start or NewServer.
func Modes() []Mode {
	return []Mode{
		{Name: "kind"},
		{Name: "usage202", Options: []Option{WithAsyncUsage(AsyncUsage{Defer: true})}},
		{Name: "sparse", Options: []Option{WithSparseAnswers()}},
		{Name: "execute-then-5xx", Options: []Option{WithExecuteThenStatus(500)}},
		{Name: "rate-limited", Options: []Option{WithDocumentedRateLimit()}},
	}
}

// ModeNamed returns the mode of Modes with that name.
func ModeNamed(name string) (Mode, bool) {
	for _, m := range Modes() {
		if m.Name == name {
			return m, true
		}
	}
	return Mode{}, false
}

// RunModes runs scenario once per mode of Modes, each as a subtest named after the mode.
// The scenario starts its own server with mode.Options (after its own options) and should
// end with CheckInvariants; it may call t.Parallel.
func RunModes(t *testing.T, scenario func(t *testing.T, mode Mode)) {
	t.Helper()
	for _, m := range Modes() {
		t.Run(m.Name, func(t *testing.T) { scenario(t, m) })
	}
}
