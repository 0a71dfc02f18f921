package reliability_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

// hostileCase is one misbehaving server: what it does, how the client is
// configured, which call meets it and which typed error must come out.
type hostileCase struct {
	name    string
	handler func(other *httptest.Server, otherHits *atomic.Int64) http.HandlerFunc
	opts    []quotastack.Option
	call    func(ctx context.Context, c *quotastack.Client) error
	check   func(t *testing.T, err error)
}

func checkCall(ctx context.Context, c *quotastack.Client) error {
	_, err := c.Check(ctx, quotastack.ExternalID("user42:companion7"), chatMetric, 1)
	return err
}

func balanceCall(ctx context.Context, c *quotastack.Client) error {
	_, err := c.BalanceWithBlocks(ctx, quotastack.ExternalID("user42:companion7"))
	return err
}

func recordCall(ctx context.Context, c *quotastack.Client) error {
	_, err := c.Record(ctx, quotastack.UsageParams{Customer: quotastack.ExternalID("user42:companion7"), MetricKey: chatMetric, Units: 1},
		quotastack.WithIdempotencyKey("usage:msg_1"))
	return err
}

func writeJSON(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}
}

func apiError(t *testing.T, err error, status, attempts int) *quotastack.APIError {
	t.Helper()
	var apiErr *quotastack.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, status, apiErr.StatusCode)
	assert.Equal(t, attempts, apiErr.Attempts)
	return apiErr
}

func requestError(t *testing.T, err error, attempts int) *quotastack.RequestError {
	t.Helper()
	var reqErr *quotastack.RequestError
	require.ErrorAs(t, err, &reqErr)
	assert.Equal(t, attempts, reqErr.Attempts)
	var apiErr *quotastack.APIError
	assert.False(t, errors.As(err, &apiErr), "no HTTP answer, so no APIError")
	return reqErr
}

var hostileCases = []hostileCase{
	{
		name: "body larger than the cap",
		handler: func(*httptest.Server, *atomic.Int64) http.HandlerFunc {
			return writeJSON(200, `{"allowed":true,"padding":"`+strings.Repeat("x", 64<<10)+`"}`)
		},
		opts: []quotastack.Option{quotastack.WithMaxBodyBytes(4 << 10)},
		call: checkCall,
		check: func(t *testing.T, err error) {
			assert.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
			apiError(t, err, 200, 1) // not retried: the next answer would be as big
			assert.Contains(t, err.Error(), "size limit")
		},
	},
	{
		name: "slow-loris body beyond the attempt timeout",
		handler: func(*httptest.Server, *atomic.Int64) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(200)
				_, _ = w.Write([]byte(`{"allowed":`))
				w.(http.Flusher).Flush()
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for range 100 { // one byte per 100 ms, for at most 10 s
					select {
					case <-r.Context().Done():
						return
					case <-tick.C:
					}
					if _, err := w.Write([]byte(" ")); err != nil {
						return
					}
					w.(http.Flusher).Flush()
				}
			}
		},
		opts: []quotastack.Option{quotastack.WithAttemptTimeout(100 * time.Millisecond)},
		call: checkCall,
		check: func(t *testing.T, err error) {
			requestError(t, err, 3) // a GET: retried like a transport error
			assert.Contains(t, err.Error(), "attempt timed out")
			assert.NotErrorIs(t, err, context.DeadlineExceeded, "the call's own context did not run out")
		},
	},
	{
		name: "HTML 502 instead of JSON",
		handler: func(*httptest.Server, *atomic.Int64) http.HandlerFunc {
			return func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				w.WriteHeader(http.StatusBadGateway)
				_, _ = w.Write([]byte("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"))
			}
		},
		call: balanceCall,
		check: func(t *testing.T, err error) {
			assert.ErrorIs(t, err, quotastack.ErrServer)
			apiErr := apiError(t, err, 502, 3) // retried, then given up
			assert.True(t, strings.HasPrefix(apiErr.Body, "<html>"), apiErr.Body)
			assert.Empty(t, apiErr.Type)
		},
	},
	{
		name: "JSON with wrong types on a 200",
		handler: func(*httptest.Server, *atomic.Int64) http.HandlerFunc {
			return writeJSON(200, `{"customer_id":"019d6258-07ba-7418-83be-58f5fde53e4e","balance":"lots","blocks":{}}`)
		},
		call: balanceCall,
		check: func(t *testing.T, err error) {
			assert.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
			apiError(t, err, 200, 1)
			var typeErr *json.UnmarshalTypeError
			assert.ErrorAs(t, err, &typeErr)
		},
	},
	{
		name: "a 200 with an empty body",
		handler: func(*httptest.Server, *atomic.Int64) http.HandlerFunc {
			return writeJSON(200, "")
		},
		call: recordCall,
		check: func(t *testing.T, err error) {
			assert.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
			apiErr := apiError(t, err, 200, 1)
			assert.Equal(t, "usage:msg_1", apiErr.IdempotencyKey, "the caller can retry the record with its key")
		},
	},
	{
		name: "a 302 redirect to another host",
		handler: func(other *httptest.Server, _ *atomic.Int64) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, other.URL+r.URL.RequestURI(), http.StatusFound)
			}
		},
		call: checkCall,
		check: func(t *testing.T, err error) {
			assert.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
			apiError(t, err, 302, 1)
		},
	},
	{
		name: "a 307 redirect of a POST to another host",
		handler: func(other *httptest.Server, _ *atomic.Int64) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, other.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
			}
		},
		call: recordCall,
		check: func(t *testing.T, err error) {
			assert.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
			apiError(t, err, 307, 1)
		},
	},
	{
		name: "a server that closes every connection",
		handler: func(*httptest.Server, *atomic.Int64) http.HandlerFunc {
			return func(w http.ResponseWriter, _ *http.Request) {
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					_ = conn.Close()
				}
			}
		},
		call: recordCall,
		check: func(t *testing.T, err error) {
			requestError(t, err, 3) // a POST with a key: retried like a GET
		},
	},
	{
		name: "the key echoed into a time field",
		handler: func(*httptest.Server, *atomic.Int64) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				writeJSON(200, `{"id":"evt_1","created_at":"`+r.Header.Get("X-API-Key")+`"}`)(w, r)
			}
		},
		call: recordCall,
		check: func(t *testing.T, err error) {
			assert.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
			apiError(t, err, 200, 1)
		},
	},
}

// TestHostileServers meets each misbehaving server with a real client: each
// gives a clear typed error within a bounded time, no error text holds the
// API key, no redirect carries it to another host, and no goroutine is left
// behind once the servers are closed. Not parallel: the goroutine counts
// must not see other tests (this package's parallel tests start after it).
func TestHostileServers(t *testing.T) {
	for _, tt := range hostileCases {
		t.Run(tt.name, func(t *testing.T) {
			before := countGoroutines()
			runHostile(t, tt)
			before.settle(t)
		})
	}
}

func runHostile(t *testing.T, tt hostileCase) {
	t.Helper()
	var otherHits, otherKeys atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherHits.Add(1)
		if r.Header.Get("X-API-Key") != "" {
			otherKeys.Add(1)
		}
		writeJSON(200, `{"allowed":true,"id":"evt_1"}`)(w, r)
	}))
	defer other.Close()
	srv := httptest.NewServer(tt.handler(other, &otherHits))
	defer srv.Close()

	opts := append([]quotastack.Option{quotastack.WithBaseURL(srv.URL),
		quotastack.WithRetry(3, time.Millisecond, 5*time.Millisecond), quotastack.WithTimeout(10 * time.Second)}, tt.opts...)
	client, err := quotastack.NewClient(testKey, opts...)
	require.NoError(t, err)
	defer client.CloseIdleConnections()

	start := time.Now()
	err = tt.call(context.Background(), client)
	elapsed := time.Since(start)
	require.Error(t, err)
	tt.check(t, err)
	assert.Less(t, elapsed, 3*time.Second, "a hostile server can't hold a call for long")
	noKey(t, err.Error())
	noKey(t, fmt.Sprintf("%+v", err))
	assert.Zero(t, otherKeys.Load(), "the API key never reaches another host")
	assert.Zero(t, otherHits.Load(), "redirects are not followed")
}
