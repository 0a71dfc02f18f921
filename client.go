package quotastack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/quotastack/quotastack-go/internal/idem"
	"github.com/quotastack/quotastack-go/internal/retry"
)

// Version is the version of this SDK, sent in the User-Agent.
const Version = "0.2.0"

var jsonMIME = []string{"application/json"}

// Environment variables read by NewClientFromEnv.
const (
	EnvAPIKey  = "QUOTASTACK_API_KEY"
	EnvBaseURL = "QUOTASTACK_BASE_URL"
)

// Client talks to one QuotaStack tenant environment with one API key. It is
// safe for concurrent use and should be reused: it keeps connections alive.
type Client struct {
	base      *url.URL
	apiKey    string
	red       *redactor // removes the key from foreign text
	userAgent string
	uaHeader  []string // userAgent, as a header value
	keyHeader []string // apiKey, as a header value
	cfg       config
	rc        *retryablehttp.Client
	transport http.RoundTripper // the caller's or ours, below the attempt timeout
	log       *slog.Logger
}

// ResponseMeta describes the HTTP exchange behind a result.
type ResponseMeta struct {
	StatusCode     int    // final HTTP status
	RequestID      string // X-Request-Id, when the server sent one
	IdempotencyKey string // the Idempotency-Key sent (POST only)
	Replayed       bool   // the server answered from its idempotency store: the call had already executed
	Attempts       int    // HTTP attempts made (1 = no retry)
}

// NewClient returns a client for apiKey. The key is required (an empty key
// is an error, never an offline client), must start with qs_live_ or qs_test_,
// and is sent only in the X-API-Key header.
func NewClient(apiKey string, opts ...Option) (*Client, error) {
	cfg := config{
		baseURL:        DefaultBaseURL,
		maxAttempts:    DefaultMaxAttempts,
		waitMin:        DefaultRetryWaitMin,
		waitMax:        DefaultRetryWaitMax,
		attemptTimeout: DefaultAttemptTimeout,
		timeout:        DefaultTimeout,
		maxBodyBytes:   DefaultMaxBodyBytes,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if err := checkAPIKey(apiKey); err != nil {
		return nil, err
	}
	base, err := parseBaseURL(cfg.baseURL, cfg.allowInsecure)
	if err != nil {
		return nil, err
	}
	red := newRedactor(apiKey)
	if red.redact(cfg.baseURL) != cfg.baseURL {
		// The key (or a piece of it, in any escaping) would travel in every
		// request line and show in BaseURL(), logs and spans.
		return nil, inputErr("base URL", "must not contain the API key")
	}
	switch {
	case cfg.maxAttempts < 1:
		return nil, inputErr("retry", "max attempts must be at least 1")
	case cfg.waitMin <= 0 || cfg.waitMax < cfg.waitMin:
		return nil, inputErr("retry", "need 0 < min wait <= max wait")
	case cfg.attemptTimeout <= 0 || cfg.timeout <= 0:
		return nil, inputErr("timeout", "timeouts must be positive")
	case cfg.maxBodyBytes <= 0 || cfg.maxBlocksBody < 0:
		return nil, inputErr("max body bytes", "must be positive")
	}

	c := &Client{base: base, apiKey: apiKey, red: red, cfg: cfg, log: cfg.logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.userAgent = "quotastack-go/" + Version + " go/" + runtime.Version()
	if cfg.userAgent != "" {
		c.userAgent += " " + cfg.userAgent
	}
	c.uaHeader = []string{c.userAgent}
	c.keyHeader = []string{apiKey}

	hc := &http.Client{}
	if cfg.httpClient != nil {
		*hc = *cfg.httpClient //nolint:govet // copying the caller's settings, not a lock
	}
	c.transport = hc.Transport
	if c.transport == nil {
		c.transport = cfg.transport
	}
	if c.transport == nil {
		c.transport = defaultTransport()
	}
	hc.Transport = &pacedTransport{gate: newRateGate(&cfg, base.Hostname()),
		next: &attemptTransport{base: c.transport, timeout: cfg.attemptTimeout}}
	// Never follow a redirect: the API doesn't send them, and following one
	// could carry the X-API-Key header to another host.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	rc := retryablehttp.NewClient()
	rc.HTTPClient = hc
	rc.Logger = nil // the library's default logger prints URLs to stderr
	rc.RetryMax = cfg.maxAttempts - 1
	rc.RetryWaitMin, rc.RetryWaitMax = cfg.waitMin, cfg.waitMax
	rc.CheckRetry = c.checkRetry
	rc.Backoff = retry.Backoff
	rc.ErrorHandler = retryablehttp.PassthroughErrorHandler // keep the last status and problem body
	rc.RequestLogHook = c.logAttempt
	c.rc = rc
	return c, nil
}

// NewClientFromEnv returns a client configured from QUOTASTACK_API_KEY
// (required) and QUOTASTACK_BASE_URL (optional); opts are applied after them.
func NewClientFromEnv(opts ...Option) (*Client, error) {
	key := os.Getenv(EnvAPIKey)
	if key == "" {
		return nil, inputErr("api key", EnvAPIKey+" is not set (a qs_test_ or qs_live_ key; to try the SDK without one, "+
			"go run github.com/quotastack/quotastack-go/quotastacktest/cmd/quotastack-fake prints this and "+EnvBaseURL+" for a local fake)")
	}
	if u := os.Getenv(EnvBaseURL); u != "" {
		opts = append([]Option{WithBaseURL(u)}, opts...)
	}
	return NewClient(key, opts...)
}

// BaseURL returns the API root the client sends to.
func (c *Client) BaseURL() string { return c.base.String() }

// CloseIdleConnections closes the idle keep-alive connections of the client's
// transport. The client stays usable.
func (c *Client) CloseIdleConnections() {
	if ci, ok := c.transport.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

func checkAPIKey(key string) error {
	if key == "" {
		return inputErr("api key", "empty API key")
	}
	for i := 0; i < len(key); i++ {
		if key[i] <= ' ' || key[i] > '~' {
			// Never echo the key, not even in part.
			return inputErr("api key", "API key contains whitespace or non-printable characters")
		}
	}
	if (!strings.HasPrefix(key, LiveKeyPrefix) && !strings.HasPrefix(key, TestKeyPrefix)) || len(key) == len(TestKeyPrefix) {
		// Often a key of another service, or a key pasted with a prefix missing.
		return inputErr("api key", "API key must start with "+LiveKeyPrefix+" or "+TestKeyPrefix)
	}
	return nil
}

// The prefixes of QuotaStack API keys: the prefix selects the environment.
const (
	LiveKeyPrefix = "qs_live_"
	TestKeyPrefix = "qs_test_"
)

func parseBaseURL(raw string, allowInsecure bool) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(raw, "/"))
	if err != nil || u.Host == "" {
		// The value is not echoed: it might be a key pasted in the wrong place.
		return nil, inputErr("base URL", "not an absolute URL")
	}
	// The /v1 prefix is added per call: a base URL that already ends in it
	// (as copied from the API docs) would send to /v1/v1/..., so it is dropped.
	u.Path = strings.TrimSuffix(u.Path, "/v1")
	u.RawPath = strings.TrimSuffix(u.RawPath, "/v1")
	switch {
	case u.User != nil:
		return nil, inputErr("base URL", "must not contain user info")
	case u.RawQuery != "" || u.Fragment != "":
		return nil, inputErr("base URL", "must not contain a query or fragment")
	case u.Scheme == "https":
	case u.Scheme == "http" && (allowInsecure || isLoopback(u.Hostname())):
	case u.Scheme == "http":
		return nil, inputErr("base URL", "plain http is refused for a non-loopback host (the API key would travel in clear); use https or WithInsecureHTTP")
	default:
		return nil, inputErr("base URL", "scheme must be https")
	}
	return u, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// defaultTransport keeps enough idle connections per host that concurrent
// callers reuse them instead of opening new ones (Go's default keeps 2).
func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	t.ResponseHeaderTimeout = 0 // the attempt timeout covers it
	// Bound the pool: under a burst, net/http dials for every request that
	// finds no idle connection, and the extra connections linger.
	t.MaxConnsPerHost = 64
	t.MaxResponseHeaderBytes = DefaultMaxHeaderBytes
	return t
}

// callState travels in the request's context to the retry hooks: it is that
// context (the caller's, with the state as its callStateKey value), which
// saves a context.WithValue per call.
type callState struct {
	context.Context
	safe     bool // a GET or HEAD, or a request with an Idempotency-Key the method class allows retrying
	attempts int
	deadline time.Time // the call's: the caller's, WithCallTimeout's or the client's default
	bodyCap  int64
	meta     ResponseMeta
	body     []byte
	readErr  error
}

type callStateKey struct{}

// Value implements context.Context.
func (st *callState) Value(key any) any {
	if _, ok := key.(callStateKey); ok {
		return st
	}
	return st.Context.Value(key)
}

// readBody reads a response body inside the retry loop, so a body cut short
// by a dropped connection or the attempt timeout is retried like a transport
// error. One function for every call: it finds the call through the request.
func readBody(resp *http.Response) error {
	if resp.Request == nil {
		return nil // read after the loop
	}
	st, ok := resp.Request.Context().Value(callStateKey{}).(*callState)
	if !ok {
		return nil
	}
	st.body, st.readErr = readCapped(resp.Body, st.bodyCap)
	return st.readErr
}

// Do sends one request to path (e.g. "/v1/usage" or "/v1/customers/x/credits?include_blocks=true")
// with the client's auth, retries, idempotency and error decoding, and decodes
// a JSON answer into out (if non-nil). It is the escape hatch for endpoints
// this package doesn't wrap yet; body is marshalled to JSON if non-nil.
func (c *Client) Do(ctx context.Context, method, path string, body, out any, opts ...CallOption) (*ResponseMeta, error) {
	if !strings.HasPrefix(path, "/") || strings.HasPrefix(path, "//") {
		return nil, inputErr("path", "must be an absolute path such as /v1/usage")
	}
	p, q, _ := strings.Cut(path, "?")
	query, err := url.ParseQuery(q)
	if err != nil {
		return nil, inputErr("path", "bad query string")
	}
	return c.do(ctx, method, p, query.Encode(), body, out, opts)
}

func applyCallOptions(opts []CallOption) callConfig {
	var cc callConfig
	for _, o := range opts {
		o(&cc)
	}
	return cc
}

func (c *Client) do(ctx context.Context, method, path, query string, body, out any, opts []CallOption) (*ResponseMeta, error) {
	var cc callConfig
	if len(opts) > 0 {
		cc = applyCallOptions(opts) // kept apart: the options make cc escape to the heap
	}
	if ctx == nil {
		return nil, inputErr("ctx", "nil context")
	}
	if err := ctx.Err(); err != nil {
		return nil, &RequestError{Method: method, Path: path, Err: err}
	}
	// The call's deadline is not a context of its own: each attempt's one
	// timer ends at the earlier of it and the attempt timeout, and no retry
	// starts whose backoff could pass it (attemptTransport, checkRetry).
	deadline := callDeadline(ctx, cc.timeout, c.cfg.timeout)

	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return nil, inputErr("body", err.Error())
		}
	}

	st := &callState{deadline: deadline, bodyCap: c.bodyCap(cc.largeBody)}
	meta := &st.meta
	header := make(http.Header, 6+len(cc.header))
	for k, vs := range cc.header {
		header[http.CanonicalHeaderKey(k)] = vs
	}
	header.Del("Idempotency-Key") // WithIdempotencyKey is the only way to set it; GETs carry none
	class := methodClass(method)
	safe := class == methodRead
	if class != methodRead {
		// The key is decided once, before the retry loop, so every attempt of
		// this call carries the same one; the caller's key always wins. POST
		// and PATCH always carry one; other methods only the caller's, and
		// are retried only with it (see methodClass).
		key := cc.idempotencyKey
		if key == "" && class == methodKeyed {
			key = idem.New()
		} else if key != "" {
			if err := idem.Check(key); err != nil {
				return nil, inputErr("idempotency key", err.Error())
			}
		}
		if key != "" {
			header.Set("Idempotency-Key", key)
			meta.IdempotencyKey = key
			safe = true
		}
	}
	// Canonical keys set directly: Header.Set would canonicalise them on every call.
	header["X-Api-Key"] = c.keyHeader
	header["User-Agent"] = c.uaHeader
	header["Accept"] = jsonMIME
	if raw != nil {
		header["Content-Type"] = jsonMIME
	}

	// path arrives escaped (ids are escaped by Customer.path); keep that exact
	// encoding on the wire.
	unescaped, err := url.PathUnescape(path)
	if err != nil {
		return nil, inputErr("path", "bad escaping")
	}
	u := *c.base
	u.Path = c.base.Path + unescaped
	u.RawPath = c.base.EscapedPath() + path
	u.RawQuery = query

	st.safe, st.Context = safe, ctx
	ctx = st
	// Built from the URL struct: no string to render and parse again.
	hreq := (&http.Request{Method: method, URL: &u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: header, Host: u.Host}).WithContext(ctx)
	req, err := retryablehttp.FromRequest(hreq)
	if err == nil && raw != nil {
		err = req.SetBody(raw)
	}
	if err != nil {
		return nil, inputErr("request", "cannot build request")
	}
	req.SetResponseHandler(readBody)

	var start time.Time
	if c.log.Enabled(ctx, slog.LevelDebug) {
		start = time.Now()
	}
	resp, err := c.rc.Do(req)
	meta.Attempts = st.attempts
	if err != nil {
		if resp != nil {
			_ = resp.Body.Close()
		}
		var callErr error
		var ue *upgradeError
		switch {
		case errors.Is(st.readErr, errBodyTooLarge):
			callErr = c.apiError(method, path, meta, resp, nil, st.readErr)
		case errors.As(err, &ue):
			callErr = c.upgradeAPIError(method, path, meta, ue)
		default:
			callErr = c.requestError(method, path, meta.Attempts, err)
		}
		if c.log.Enabled(ctx, slog.LevelDebug) {
			// callErr's text is redacted and sanitized; err's may not be.
			c.log.DebugContext(ctx, "quotastack request failed", "method", method, "path", c.red.text(path), "attempts", meta.Attempts, "error", callErr.Error())
		}
		return meta, callErr
	}
	defer func() { _ = resp.Body.Close() }()
	respBody, readErr := st.body, st.readErr
	if respBody == nil && readErr == nil {
		respBody, readErr = readCapped(resp.Body, st.bodyCap)
	}
	meta.StatusCode = resp.StatusCode
	meta.RequestID = c.red.text(resp.Header.Get("X-Request-Id"))
	meta.Replayed = strings.EqualFold(resp.Header.Get("X-Idempotent-Replayed"), "true")
	if c.log.Enabled(ctx, slog.LevelDebug) { // the arguments would allocate even for a discarding logger
		c.log.DebugContext(ctx, "quotastack request", "method", method, "path", c.red.text(path), "status", resp.StatusCode,
			"attempts", meta.Attempts, "request_id", meta.RequestID, "replayed", meta.Replayed, "duration", time.Since(start))
	}
	if readErr != nil {
		return meta, c.apiError(method, path, meta, resp, respBody, readErr)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return meta, c.apiError(method, path, meta, resp, respBody, nil)
	}
	if out != nil {
		if trimmed := bytes.TrimSpace(respBody); len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
			if e, ok := out.(emptyAccepter); ok && e.acceptsEmpty(resp.StatusCode) {
				return meta, nil
			}
			return meta, c.apiError(method, path, meta, resp, respBody, errEmptyBody)
		}
		if err := json.Unmarshal(respBody, out); err != nil {
			return meta, c.apiError(method, path, meta, resp, respBody, fmt.Errorf("decoding JSON: %w", err))
		}
	}
	return meta, nil
}

// callDeadline is the deadline of a call: ctx's (else its operation's, see
// BeginOperation), or now plus the call's timeout (WithCallTimeout, else the
// client's) if that is earlier or there is none.
func callDeadline(ctx context.Context, callTimeout, clientTimeout time.Duration) time.Time {
	d, ok := ctx.Deadline()
	if !ok {
		if op := operationOf(ctx); op != nil {
			d, ok = op.deadline(clientTimeout), true // one default timeout for the whole operation
		}
	}
	switch {
	case callTimeout > 0:
		if own := time.Now().Add(callTimeout); !ok || own.Before(d) {
			return own
		}
	case !ok:
		return time.Now().Add(clientTimeout)
	}
	return d
}

// checkRetry retries transport errors, 429 and 5xx (not 501), and only for
// requests marked safe: GETs and HEADs, POSTs and PATCHes (always keyed), and
// other methods only when the caller gave an Idempotency-Key.
func (c *Client) checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err == nil && !retry.RetryableStatus(resp.StatusCode) {
		return false, nil // the common case: an answer to keep
	}
	st, _ := ctx.Value(callStateKey{}).(*callState)
	if st == nil || !st.safe {
		return false, nil
	}
	if !time.Now().Before(st.deadline) {
		return false, context.DeadlineExceeded
	}
	if !st.fits(backoffBound(c.cfg.waitMin, c.cfg.waitMax, st.attempts-1, resp)) {
		return false, nil // the next attempt could not start before the deadline
	}
	if err != nil {
		if errors.Is(err, errBodyTooLarge) || errors.Is(err, errUpgrade) || errors.As(err, new(*RateLimitError)) {
			return false, nil // the next answer would be the same; a rate-limit refusal is already final
		}
		return retryablehttp.DefaultRetryPolicy(ctx, nil, err)
	}
	if d, ok := retry.RetryAfter(resp, time.Now()); ok && (d > c.cfg.waitMax || !st.fits(d)) {
		// Not worth (or too late for) waiting: the caller gets ErrRateLimited with the wait.
		return false, nil
	}
	return retry.RetryableStatus(resp.StatusCode), nil
}

func (c *Client) logAttempt(_ retryablehttp.Logger, req *http.Request, attempt int) {
	if st, ok := req.Context().Value(callStateKey{}).(*callState); ok {
		st.attempts = attempt + 1
		st.body, st.readErr = nil, nil
	}
	if attempt > 0 {
		c.log.DebugContext(req.Context(), "quotastack retry", "method", req.Method, "path", c.red.text(req.URL.Path), "attempt", attempt+1)
	}
}

// RequestError is a call that got no usable HTTP answer: a connection failure,
// a timeout, or a cancelled context (errors.Is works on the cause).
type RequestError struct {
	Method, Path string
	Attempts     int
	Err          error
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("quotastack: %s %s: %v (attempts: %d)", e.Method, e.Path, e.Err, e.Attempts)
}

// Unwrap returns the cause.
func (e *RequestError) Unwrap() error { return e.Err }

// unwrapURLError drops the *url.Error layer, whose text repeats the full URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
