package quotastack_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jarcoal/httpmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

const (
	// testKey is distinctive so a leak into any string is easy to find.
	testKey = "qs_test_SECRETKEY123"
	// baseURL has a path so that a method building an absolute URL (and so
	// dropping the base path) misses every registered route and fails loudly.
	baseURL = "https://api.quotastack.test/base"
)

// setup returns a client wired to a fresh mock transport (safe with
// t.Parallel) with millisecond retry waits. Unregistered routes fail the test.
func setup(t *testing.T, opts ...quotastack.Option) (*quotastack.Client, *httpmock.MockTransport) {
	t.Helper()
	mt := httpmock.NewMockTransport()
	mt.RegisterNoResponder(httpmock.NewNotFoundResponder(t.Error))
	all := append([]quotastack.Option{
		quotastack.WithBaseURL(baseURL),
		quotastack.WithTransport(mt),
		quotastack.WithRetry(4, time.Millisecond, 20*time.Millisecond),
	}, opts...)
	c, err := quotastack.NewClient(testKey, all...)
	require.NoError(t, err)
	return c, mt
}

// sent is a request as the mock transport saw it.
type sent struct {
	Method     string
	EscapedURL string // full URL with the path exactly as on the wire
	Path       string // escaped path
	Query      url.Values
	Header     http.Header
	Body       []byte
}

// recorder wraps responders and keeps every request they answer. Its
// methods are safe for concurrent use (responders run on httpmock goroutines).
type recorder struct {
	mu    sync.Mutex
	calls []sent
}

func (r *recorder) wrap(next httpmock.Responder) httpmock.Responder {
	return func(req *http.Request) (*http.Response, error) {
		var body []byte
		if req.Body != nil {
			body, _ = io.ReadAll(req.Body)
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		r.mu.Lock()
		r.calls = append(r.calls, sent{
			Method:     req.Method,
			EscapedURL: req.URL.String(),
			Path:       req.URL.EscapedPath(),
			Query:      req.URL.Query(),
			Header:     req.Header.Clone(),
			Body:       body,
		})
		r.mu.Unlock()
		return next(req)
	}
}

func (r *recorder) all() []sent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]sent(nil), r.calls...)
}

// only returns the single recorded request, failing the test otherwise.
func (r *recorder) only(t *testing.T) sent {
	t.Helper()
	calls := r.all()
	require.Len(t, calls, 1)
	return calls[0]
}

// sequence answers the n-th call with responders[n], repeating the last one.
// Unlike Responder.Times/Once it is safe under concurrency.
func sequence(responders ...httpmock.Responder) httpmock.Responder {
	var n atomic.Int64
	return func(req *http.Request) (*http.Response, error) {
		i := int(n.Add(1)) - 1
		if i >= len(responders) {
			i = len(responders) - 1
		}
		return responders[i](req)
	}
}

// jsonResponder answers with status and a raw JSON body, plus headers given
// as key/value pairs.
func jsonResponder(status int, body string, kv ...string) httpmock.Responder {
	return responder(status, "application/json", body, kv...)
}

// problemResponder answers with an RFC 7807 problem document.
func problemResponder(status int, body string, kv ...string) httpmock.Responder {
	return responder(status, "application/problem+json", body, kv...)
}

func responder(status int, contentType, body string, kv ...string) httpmock.Responder {
	h := http.Header{"Content-Type": {contentType}}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return httpmock.NewStringResponder(status, body).HeaderSet(h)
}

// testJSONBody asserts that the request body is the JSON literal want.
func testJSONBody(t *testing.T, s sent, want string) {
	t.Helper()
	if want == "" {
		assert.Empty(t, s.Body, "request body")
		return
	}
	assert.JSONEq(t, want, string(s.Body), "request body")
}

// testHeaders asserts the headers every request carries.
func testHeaders(t *testing.T, s sent, withBody bool) {
	t.Helper()
	assert.Equal(t, testKey, s.Header.Get("X-API-Key"))
	assert.Regexp(t, `^quotastack-go/`+quotastack.Version+` go/go\S+$`, s.Header.Get("User-Agent"))
	assert.Equal(t, "application/json", s.Header.Get("Accept"))
	if withBody {
		assert.Equal(t, "application/json", s.Header.Get("Content-Type"))
	} else {
		assert.Empty(t, s.Header.Get("Content-Type"))
	}
	if s.Method == http.MethodGet {
		assert.Empty(t, s.Header.Values("Idempotency-Key"), "a GET carries no Idempotency-Key")
	} else {
		assert.NotEmpty(t, s.Header.Get("Idempotency-Key"), "every POST carries an Idempotency-Key")
	}
	assert.NotContains(t, s.EscapedURL, testKey, "the key never goes in a URL")
}

// ptr returns a pointer to v.
func ptr[T any](v T) *T { return &v }

// newServer starts a real loopback HTTP server closed at the end of the test.
// Handlers that block must return when r.Context() is done.
func newServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}
