package quotastacktest

import (
	quotastack "github.com/quotastack/quotastack-go"
)

// Client returns a *quotastack.Client wired to this server (its URL and API key), with opts
// applied after those. It panics only if quotastack.NewClient fails, which cannot happen for
// the server's loopback URL and key unless opts are invalid.
func (s *Server) Client(opts ...quotastack.Option) *quotastack.Client {
	all := append([]quotastack.Option{quotastack.WithBaseURL(s.URL)}, opts...)
	c, err := quotastack.NewClient(s.APIKey, all...)
	if err != nil {
		panic("quotastacktest: " + err.Error())
	}
	return c
}
