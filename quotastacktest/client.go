package quotastacktest

import (
	quotastack "github.com/quotastack/quotastack-go"
)

// Client returns a *quotastack.Client wired to this server (its URL and API key) and, when the
// server's rate limit is on and it runs on the wall clock, paced to it (quotastack.WithRateBudget,
// as a client of the real API is paced to the documented limit; a client's pacing and its pause
// after a 429 follow the wall clock, not a ManualClock), with opts applied after those. It panics only if quotastack.NewClient fails, which cannot happen for
// the server's loopback URL and key unless opts are invalid.
func (s *Server) Client(opts ...quotastack.Option) *quotastack.Client {
	all := []quotastack.Option{quotastack.WithBaseURL(s.URL)}
	if n, per := s.RateLimit(); n > 0 && s.onWallClock() {
		all = append(all, quotastack.WithRateBudget(n, per))
	}
	all = append(all, opts...)
	c, err := quotastack.NewClient(s.APIKey, all...)
	if err != nil {
		panic("quotastacktest: " + err.Error())
	}
	return c
}

func (s *Server) onWallClock() bool {
	_, ok := s.clock.(wallClock)
	return ok
}
