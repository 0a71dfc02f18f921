package quotastack

import (
	"log/slog"
	"net/http"
	"time"
)

// Defaults of a new Client.
const (
	DefaultBaseURL        = "https://api.quotastack.io"
	DefaultMaxAttempts    = 4 // first try plus 3 retries
	DefaultRetryWaitMin   = 250 * time.Millisecond
	DefaultRetryWaitMax   = 5 * time.Second  // also the longest Retry-After the client waits for
	DefaultAttemptTimeout = 10 * time.Second // per HTTP attempt, headers and body
	DefaultTimeout        = 30 * time.Second // per call, all attempts, when ctx has no deadline
	DefaultMaxBodyBytes   = 1 << 20          // responses larger than this are refused
)

// Option configures a Client at construction.
type Option func(*config)

type config struct {
	baseURL        string
	httpClient     *http.Client
	transport      http.RoundTripper
	maxAttempts    int
	waitMin        time.Duration
	waitMax        time.Duration
	attemptTimeout time.Duration
	timeout        time.Duration
	maxBodyBytes   int64
	logger         *slog.Logger
	userAgent      string
	allowInsecure  bool
	pacer          Pacer // ratelimit.go
	paceSet        bool
	maxBlocksBody  int64 // credits.go
}

// WithBaseURL sets the API root, e.g. "https://api.quotastack.io" (the /v1
// prefix is added per call; a trailing "/v1" in u is dropped). Plain http is
// refused unless the host is loopback or WithInsecureHTTP is given. A URL
// that contains the API key (as user info, query, fragment or a path
// segment, in any escaping) is refused by NewClient.
func WithBaseURL(u string) Option { return func(c *config) { c.baseURL = u } }

// WithHTTPClient makes the client send through hc (its Transport, Jar and
// Timeout are used; redirects are never followed). The client does not modify hc.
func WithHTTPClient(hc *http.Client) Option { return func(c *config) { c.httpClient = hc } }

// WithTransport sets the RoundTripper of the default HTTP client, e.g. an
// instrumented one.
func WithTransport(rt http.RoundTripper) Option { return func(c *config) { c.transport = rt } }

// WithRetry sets the retry policy: maxAttempts in all (1 disables retries) and
// the bounds of the jittered exponential backoff. waitMax also caps
// Retry-After: a longer requested wait ends the call with ErrRateLimited.
func WithRetry(maxAttempts int, waitMin, waitMax time.Duration) Option {
	return func(c *config) { c.maxAttempts, c.waitMin, c.waitMax = maxAttempts, waitMin, waitMax }
}

// WithAttemptTimeout bounds each HTTP attempt (connect, headers and body); an
// attempt that runs out is retried like a transport error.
func WithAttemptTimeout(d time.Duration) Option { return func(c *config) { c.attemptTimeout = d } }

// WithTimeout sets the deadline applied to a call whose context has none
// (all attempts and waits included).
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithMaxBodyBytes caps how much of a response body is read.
func WithMaxBodyBytes(n int64) Option { return func(c *config) { c.maxBodyBytes = n } }

// WithLogger sends debug logs of each request (method, path, status, request
// id, attempt; never the API key or bodies) to l. The client is silent without it.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithUserAgent appends s (e.g. "myapp/1.2") to the User-Agent
// "quotastack-go/<version> go/<runtime>".
func WithUserAgent(s string) Option { return func(c *config) { c.userAgent = s } }

// WithInsecureHTTP allows a plain-http base URL on a non-loopback host, which
// sends the API key in clear text. Use it only inside a trusted network.
func WithInsecureHTTP() Option { return func(c *config) { c.allowInsecure = true } }

// CallOption configures one call.
type CallOption func(*callConfig)

type callConfig struct {
	idempotencyKey string
	timeout        time.Duration
	header         http.Header
	largeBody      bool // the body cap is maxBlocksBodyBytes (credits.go)
}

// WithIdempotencyKey sets the Idempotency-Key of a POST. Use a key derived
// from your business id (e.g. "usage:msg_123") so that a retry of the whole
// operation, even from another process, can't execute twice.
func WithIdempotencyKey(key string) CallOption {
	return func(c *callConfig) { c.idempotencyKey = key }
}

// WithCallTimeout bounds this call (all attempts), overriding the client's
// default; a deadline already on ctx still applies if it is earlier.
func WithCallTimeout(d time.Duration) CallOption { return func(c *callConfig) { c.timeout = d } }

// WithHeader adds a request header to this call. X-API-Key and
// Idempotency-Key can't be set this way.
func WithHeader(key, value string) CallOption {
	return func(c *callConfig) {
		if c.header == nil {
			c.header = http.Header{}
		}
		c.header.Add(key, value)
	}
}
