package quotastack_test

import (
	"context"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jarcoal/httpmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

func TestNewClientRefusesBadKeys(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, key string }{
		{"empty", ""},
		{"trailing newline", testKey + "\n"},
		{"inner space", "qs_test_ SECRETKEY123"},
		{"non-ASCII", testKey + "é"},
		{"control character", testKey + "\x00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := quotastack.NewClient(tt.key)
			require.ErrorIs(t, err, quotastack.ErrInvalidInput)
			assert.Nil(t, c, "never an offline client")
			if tt.key != "" {
				assert.NotContains(t, err.Error(), "SECRETKEY", "the key is never echoed, not even in part")
			}
		})
	}
}

func TestNewClientBaseURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url      string
		insecure bool
		ok       bool
		want     string
	}{
		{url: "https://api.quotastack.io", ok: true, want: "https://api.quotastack.io"},
		{url: "https://api.quotastack.io/", ok: true, want: "https://api.quotastack.io"},
		{url: "https://gw.example.com/quotastack/", ok: true, want: "https://gw.example.com/quotastack"},
		{url: "http://localhost:8080", ok: true, want: "http://localhost:8080"},
		{url: "http://127.0.0.1:9000", ok: true, want: "http://127.0.0.1:9000"},
		{url: "http://127.5.6.7", ok: true, want: "http://127.5.6.7"},
		{url: "http://[::1]:8080", ok: true, want: "http://[::1]:8080"},
		{url: "http://api.quotastack.io"},
		{url: "http://10.0.0.5:8080"},
		{url: "http://localhost.evil.com"},
		{url: "http://127.0.0.1.nip.io"},
		{url: "http://fake.internal:8080", insecure: true, ok: true, want: "http://fake.internal:8080"},
		{url: "ftp://api.quotastack.io"},
		{url: "ws://localhost"},
		{url: "api.quotastack.io"},
		{url: "/v1"},
		{url: ""},
		{url: "https://user:pw@api.quotastack.io"},
		{url: "https://api.quotastack.io?key=x"},
		{url: "https://api.quotastack.io#frag"},
		{url: "https://api.quota stack.io"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			t.Parallel()
			opts := []quotastack.Option{quotastack.WithBaseURL(tt.url)}
			if tt.insecure {
				opts = append(opts, quotastack.WithInsecureHTTP())
			}
			c, err := quotastack.NewClient(testKey, opts...)
			if !tt.ok {
				require.ErrorIs(t, err, quotastack.ErrInvalidInput)
				assert.Nil(t, c)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.BaseURL())
		})
	}
}

func TestNewClientDefaultBaseURL(t *testing.T) {
	t.Parallel()
	c, err := quotastack.NewClient(testKey)
	require.NoError(t, err)
	assert.Equal(t, quotastack.DefaultBaseURL, c.BaseURL())
	c.CloseIdleConnections() // must not panic on the default transport
}

func TestNewClientRefusesBadOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opt  quotastack.Option
	}{
		{"zero attempts", quotastack.WithRetry(0, time.Millisecond, time.Second)},
		{"zero min wait", quotastack.WithRetry(3, 0, time.Second)},
		{"max below min", quotastack.WithRetry(3, time.Second, time.Millisecond)},
		{"zero attempt timeout", quotastack.WithAttemptTimeout(0)},
		{"negative timeout", quotastack.WithTimeout(-time.Second)},
		{"zero body cap", quotastack.WithMaxBodyBytes(0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := quotastack.NewClient(testKey, tt.opt)
			assert.ErrorIs(t, err, quotastack.ErrInvalidInput)
		})
	}
}

// TestNewClientFromEnv uses t.Setenv, so it can't run in parallel.
func TestNewClientFromEnv(t *testing.T) {
	t.Run("key and base URL", func(t *testing.T) {
		t.Setenv(quotastack.EnvAPIKey, testKey)
		t.Setenv(quotastack.EnvBaseURL, "https://eu.quotastack.test")
		mt := httpmock.NewMockTransport()
		rec := &recorder{}
		mt.RegisterResponder(http.MethodGet, "https://eu.quotastack.test/v1/customer-by-external-id/u/credits",
			rec.wrap(jsonResponder(200, `{"balance":5}`)))
		c, err := quotastack.NewClientFromEnv(quotastack.WithTransport(mt))
		require.NoError(t, err)
		assert.Equal(t, "https://eu.quotastack.test", c.BaseURL())
		got, err := c.Balance(context.Background(), quotastack.ExternalID("u"))
		require.NoError(t, err)
		assert.Equal(t, int64(5), got.Balance)
		assert.Equal(t, testKey, rec.only(t).Header.Get("X-API-Key"))
	})
	t.Run("options override the environment", func(t *testing.T) {
		t.Setenv(quotastack.EnvAPIKey, testKey)
		t.Setenv(quotastack.EnvBaseURL, "https://eu.quotastack.test")
		c, err := quotastack.NewClientFromEnv(quotastack.WithBaseURL("https://us.quotastack.test"))
		require.NoError(t, err)
		assert.Equal(t, "https://us.quotastack.test", c.BaseURL())
	})
	t.Run("no base URL uses the default", func(t *testing.T) {
		t.Setenv(quotastack.EnvAPIKey, testKey)
		t.Setenv(quotastack.EnvBaseURL, "")
		c, err := quotastack.NewClientFromEnv()
		require.NoError(t, err)
		assert.Equal(t, quotastack.DefaultBaseURL, c.BaseURL())
	})
	t.Run("missing key", func(t *testing.T) {
		t.Setenv(quotastack.EnvAPIKey, "")
		c, err := quotastack.NewClientFromEnv()
		require.ErrorIs(t, err, quotastack.ErrInvalidInput)
		assert.Nil(t, c)
		assert.Contains(t, err.Error(), quotastack.EnvAPIKey)
		assert.Contains(t, err.Error(), "quotastack-fake", "it says how to get a key for a local fake")
	})
	t.Run("insecure base URL from the environment", func(t *testing.T) {
		t.Setenv(quotastack.EnvAPIKey, testKey)
		t.Setenv(quotastack.EnvBaseURL, "http://api.quotastack.test")
		_, err := quotastack.NewClientFromEnv()
		require.ErrorIs(t, err, quotastack.ErrInvalidInput)
		assert.NotContains(t, err.Error(), testKey)
	})
}

func TestUserAgent(t *testing.T) {
	t.Parallel()
	base := "quotastack-go/" + quotastack.Version + " go/" + runtime.Version()
	tests := []struct {
		name string
		opts []quotastack.Option
		want string
	}{
		{"default", nil, base},
		{"with suffix", []quotastack.Option{quotastack.WithUserAgent("myapp/1.2")}, base + " myapp/1.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t, tt.opts...)
			rec := &recorder{}
			mt.RegisterResponder(http.MethodGet, checkURL, rec.wrap(jsonResponder(200, `{}`)))
			_, err := check(context.Background(), c)
			require.NoError(t, err)
			assert.Equal(t, tt.want, rec.only(t).Header.Get("User-Agent"))
		})
	}
}

// TestDeadlines observes, from the responder, the deadline the request carries.
func TestDeadlines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		opts     []quotastack.Option
		ctx      func() (context.Context, context.CancelFunc)
		callOpts []quotastack.CallOption
		want     time.Duration // expected time left at the responder
	}{
		{
			name: "default when ctx has none",
			opts: []quotastack.Option{quotastack.WithTimeout(3 * time.Second)},
			ctx:  func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			want: 3 * time.Second,
		},
		{
			name: "caller deadline is kept",
			opts: []quotastack.Option{quotastack.WithTimeout(time.Hour)},
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 7*time.Second)
			},
			want: 7 * time.Second,
		},
		{
			name:     "per-call timeout",
			opts:     []quotastack.Option{quotastack.WithTimeout(time.Hour)},
			ctx:      func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			callOpts: []quotastack.CallOption{quotastack.WithCallTimeout(2 * time.Second)},
			want:     2 * time.Second,
		},
		{
			name: "per-call timeout can't extend an earlier ctx deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 4*time.Second)
			},
			callOpts: []quotastack.CallOption{quotastack.WithCallTimeout(time.Hour)},
			want:     4 * time.Second,
		},
		{
			name: "attempt timeout when shorter",
			opts: []quotastack.Option{quotastack.WithTimeout(time.Hour), quotastack.WithAttemptTimeout(5 * time.Second)},
			ctx:  func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			want: 5 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := append([]quotastack.Option{quotastack.WithAttemptTimeout(time.Hour)}, tt.opts...)
			c, mt := setup(t, opts...)
			left := make(chan time.Duration, 1)
			mt.RegisterResponder(http.MethodGet, checkURL, func(req *http.Request) (*http.Response, error) {
				d, ok := req.Context().Deadline()
				if !ok {
					left <- -1
				} else {
					left <- time.Until(d)
				}
				return jsonResponder(200, `{}`)(req)
			})
			ctx, cancel := tt.ctx()
			defer cancel()
			_, err := c.Check(ctx, quotastack.ExternalID("u"), "look", 1, tt.callOpts...)
			require.NoError(t, err)
			got := <-left
			assert.LessOrEqual(t, got, tt.want)
			assert.Greater(t, got, tt.want-time.Second)
		})
	}
}

func TestDoEscapeHatch(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	rec := &recorder{}
	mt.RegisterResponder(http.MethodGet, baseURL+"/v1/customers/"+uuid+"/credits",
		rec.wrap(jsonResponder(200, `{"balance":7,"blocks":[]}`, "X-Request-Id", "req_7")))

	var out struct {
		Balance int64 `json:"balance"`
	}
	meta, err := c.Do(context.Background(), http.MethodGet, "/v1/customers/"+uuid+"/credits?include_blocks=true", nil, &out)
	require.NoError(t, err)
	assert.Equal(t, int64(7), out.Balance)
	assert.Equal(t, &quotastack.ResponseMeta{StatusCode: 200, RequestID: "req_7", Attempts: 1}, meta)
	s := rec.only(t)
	assert.Equal(t, "true", s.Query.Get("include_blocks"))
	testHeaders(t, s, false)
}

func TestDoNilOutSkipsDecoding(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/reserve/rsv_1/release", responder(204, "text/plain", ""))
	meta, err := c.Do(context.Background(), http.MethodPost, "/v1/reserve/rsv_1/release", nil, nil)
	require.NoError(t, err)
	assert.Equal(t, 204, meta.StatusCode)
	assert.NotEmpty(t, meta.IdempotencyKey)
}

func TestDoRejectsAbsoluteURLs(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"//evil.com/x", "http://x", "https://evil.com/v1/usage", "", "v1/usage", "evil.com/x", "/v1/x?%zz"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			_, err := c.Do(context.Background(), http.MethodGet, path, nil, nil)
			require.ErrorIs(t, err, quotastack.ErrInvalidInput)
			assert.Zero(t, mt.GetTotalCallCount())
		})
	}
}

func TestWithHeader(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	rec := &recorder{}
	mt.RegisterResponder(http.MethodGet, checkURL, rec.wrap(jsonResponder(200, `{}`)))
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", rec.wrap(jsonResponder(200, `{}`)))

	headers := []quotastack.CallOption{
		quotastack.WithHeader("X-Trace", "abc"),
		quotastack.WithHeader("x-api-key", "qs_live_OTHER"),
		quotastack.WithHeader("Idempotency-Key", "from-header"),
	}
	_, err := c.Check(context.Background(), quotastack.ExternalID("u"), "look", 1, headers...)
	require.NoError(t, err)
	_, err = record(context.Background(), c, headers...)
	require.NoError(t, err)

	calls := rec.all()
	require.Len(t, calls, 2)
	for _, s := range calls {
		assert.Equal(t, "abc", s.Header.Get("X-Trace"))
		assert.Equal(t, []string{testKey}, s.Header.Values("X-API-Key"), "X-API-Key can't be set per call")
		assert.NotEqual(t, "from-header", s.Header.Get("Idempotency-Key"), "Idempotency-Key can't be set by WithHeader")
	}
	assert.Empty(t, calls[0].Header.Values("Idempotency-Key"), "a GET carries no Idempotency-Key")
}

func TestWithHTTPClient(t *testing.T) {
	t.Parallel()
	mt := httpmock.NewMockTransport()
	rec := &recorder{}
	mt.RegisterResponder(http.MethodGet, checkURL, rec.wrap(jsonResponder(200, `{"allowed":true}`)))
	hc := &http.Client{Transport: mt}
	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(baseURL), quotastack.WithHTTPClient(hc))
	require.NoError(t, err)

	got, err := check(context.Background(), c)
	require.NoError(t, err)
	assert.True(t, got.Allowed)
	assert.Len(t, rec.all(), 1)
	assert.Same(t, mt, hc.Transport, "the caller's client is not modified")
	assert.Nil(t, hc.CheckRedirect)
}

// TestConcurrentUse runs many calls on one client; -race checks the rest.
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	rec := &recorder{}
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", rec.wrap(sequence(
		problemResponder(503, problem(503, "unavailable", "", "")),
		jsonResponder(200, `{"id":"evt"}`),
	)))
	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := record(context.Background(), c)
			errs <- err
		}()
	}
	for range n {
		assert.NoError(t, <-errs)
	}
	keys := map[string]int{}
	for _, s := range rec.all() {
		keys[s.Header.Get("Idempotency-Key")]++
	}
	assert.Len(t, keys, n, "one key per call")
	assert.Len(t, rec.all(), n+1, "one 503 then successes")
	for k := range keys {
		assert.True(t, strings.HasPrefix(k, "qsk_"))
	}
}
