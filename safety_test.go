package quotastack_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jarcoal/httpmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func debugLogger(w *syncBuffer) quotastack.Option {
	return quotastack.WithLogger(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

// assertNoKey checks the error text, every exported field of an *APIError,
// and the logs for the API key or its secret part.
func assertNoKey(t *testing.T, err error, logs string) {
	t.Helper()
	secret := strings.TrimPrefix(testKey, "qs_test_")[:5] // "SECRE": not even a fragment
	for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", errors.Unwrap(err)), logs} {
		assert.NotContains(t, s, testKey)
		assert.NotContains(t, s, secret)
	}
	var apiErr *quotastack.APIError
	if errors.As(err, &apiErr) {
		b, jerr := json.Marshal(apiErr)
		require.NoError(t, jerr)
		assert.NotContains(t, string(b), secret, "APIError fields")
	}
}

// TestKeyInNoErrorOrLog runs every error path with a server that echoes the
// key wherever it can, and a debug logger on.
func TestKeyInNoErrorOrLog(t *testing.T) {
	t.Parallel()
	k := testKey
	tests := []struct {
		name      string
		responder httpmock.Responder
		opts      []quotastack.Option
		ctx       func() (context.Context, context.CancelFunc)
		call      func(context.Context, *quotastack.Client) error
		noLog     bool // the client writes no log line on this path
	}{
		{name: "transport error", responder: httpmock.NewErrorResponder(errors.New("dial tcp: connection refused"))},
		{name: "400 echoing the key", responder: problemResponder(400, problem(400, "validation-error", "bad key "+k, `,"errors":[{"field":"`+k+`","message":"`+k+`"}]`))},
		{name: "401 echoing the key", responder: problemResponder(401, `{"type":"`+quotastack.ProblemTypeBase+`unauthorized","title":"`+k+`","detail":"unknown API key `+k+`","instance":"/keys/`+k+`"}`)},
		{name: "402", responder: problemResponder(402, problem(402, "insufficient-credits", k, `,"required":1,"available":0`))},
		{name: "404", responder: problemResponder(404, problem(404, "customer-not-found", "no customer for key "+k, ""))},
		{name: "409", responder: problemResponder(409, problem(409, "idempotency-key-conflict", k, ""))},
		{name: "422", responder: problemResponder(422, problem(422, "no-active-rule", k, ""))},
		{name: "429 beyond the cap", responder: problemResponder(429, problem(429, "rate-limited", k, ""), "Retry-After", "3600")},
		{name: "5xx exhausted with HTML", responder: responder(502, "text/html", "<html>proxy saw X-API-Key: "+k+"</html>")},
		{name: "loose problem", responder: responder(500, "application/json", `{"type":"`+k+`","detail":"`+k+`","status":"bad"}`)},
		{name: "malformed JSON", responder: jsonResponder(200, `{"allowed":true,"echo":"`+k+`",`)},
		{name: "key across the snippet cut", responder: responder(200, "text/plain", strings.Repeat("x", 496)+k+strings.Repeat("y", 100))},
		{name: "empty 200 body", responder: jsonResponder(200, ``, "X-Request-Id", k)},
		{name: "too large", responder: jsonResponder(200, `{"echo":"`+k+strings.Repeat(" ", 4096)+`"}`), opts: []quotastack.Option{quotastack.WithMaxBodyBytes(1024)}, noLog: true},
		{name: "redirect", responder: responder(302, "text/html", "moved "+k, "Location", "https://evil.test/?key="+k)},
		{name: "request id echo", responder: problemResponder(404, problem(404, "not-found", "", ""), "X-Request-Id", "req-"+k)},
		{name: "attempt timeout", responder: func(req *http.Request) (*http.Response, error) {
			<-req.Context().Done()
			return nil, req.Context().Err()
		}, opts: []quotastack.Option{quotastack.WithAttemptTimeout(20 * time.Millisecond)}},
		{name: "cancelled ctx", responder: jsonResponder(200, `{}`), ctx: func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}},
		{name: "deadline exceeded", responder: problemResponder(503, problem(503, "unavailable", k, "")),
			opts: []quotastack.Option{quotastack.WithRetry(4, time.Second, time.Second)},
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 50*time.Millisecond)
			}},
		{name: "invalid input", responder: jsonResponder(200, `{}`), call: func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Record(ctx, quotastack.UsageParams{Customer: quotastack.ExternalID(k), MetricKey: "look", Units: 0})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			logs := &syncBuffer{}
			c, mt := setup(t, append([]quotastack.Option{debugLogger(logs)}, tt.opts...)...)
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", tt.responder)
			ctx, cancel := context.WithCancel(context.Background())
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()
			call := tt.call
			if call == nil {
				call = func(ctx context.Context, c *quotastack.Client) error {
					_, err := record(ctx, c)
					return err
				}
			}

			err := call(ctx, c)
			require.Error(t, err)
			assertNoKey(t, err, logs.String())
			if mt.GetTotalCallCount() > 0 && !tt.noLog {
				assert.Contains(t, logs.String(), "quotastack request", "the logger was on")
			}
		})
	}
}

func TestKeyInNoSuccessLog(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	c, mt := setup(t, debugLogger(logs))
	mt.RegisterResponder(http.MethodGet, checkURL, sequence(
		problemResponder(503, problem(503, "unavailable", testKey, "")),
		jsonResponder(200, `{"allowed":true}`, "X-Request-Id", "req-"+testKey),
	))

	got, err := check(context.Background(), c)
	require.NoError(t, err)
	assert.NotContains(t, got.Meta.RequestID, testKey)
	out := logs.String()
	assert.Contains(t, out, "quotastack retry")
	assert.Contains(t, out, "status=200")
	assert.NotContains(t, out, testKey)
	assert.NotContains(t, out, "SECRE")
}

// TestServerEchoesKey uses a real server that copies the X-API-Key header it
// received into its problem detail.
func TestServerEchoesKey(t *testing.T) {
	t.Parallel()
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = fmt.Fprintf(w, `{"type":"%sunauthorized","title":"Unauthorized","status":401,"detail":"unknown key %s"}`,
			quotastack.ProblemTypeBase, r.Header.Get("X-API-Key"))
	})
	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL))
	require.NoError(t, err)

	_, err = c.Balance(context.Background(), quotastack.ExternalID("u"))
	require.ErrorIs(t, err, quotastack.ErrUnauthorized)
	assert.False(t, strings.Contains(err.Error(), testKey), err.Error())
	assert.Contains(t, err.Error(), "unknown key [REDACTED]")
}

// TestAttemptTimeoutIsRetried: an attempt that runs out of time, waiting for
// headers or in the middle of the body, is retried like a transport error.
func TestAttemptTimeoutIsRetried(t *testing.T) {
	t.Parallel()
	for _, slowBody := range []bool{false, true} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(fmt.Sprintf("%s slowBody=%v", method, slowBody), func(t *testing.T) {
				t.Parallel()
				var n atomic.Int64
				keys := make(chan string, 8)
				srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
					keys <- r.Header.Get("Idempotency-Key")
					// Read the body so the server notices the client hanging up.
					_, _ = io.Copy(io.Discard, r.Body)
					w.Header().Set("Content-Type", "application/json")
					if n.Add(1) == 1 {
						if slowBody {
							w.WriteHeader(200)
							_, _ = w.Write([]byte(`{"allowed":`))
							w.(http.Flusher).Flush()
						}
						select {
						case <-r.Context().Done():
						case <-time.After(5 * time.Second):
						}
						return
					}
					_, _ = w.Write([]byte(`{"allowed":true,"id":"evt_1"}`))
				})
				c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL),
					quotastack.WithAttemptTimeout(50*time.Millisecond), quotastack.WithRetry(4, time.Millisecond, 5*time.Millisecond))
				require.NoError(t, err)

				var meta quotastack.ResponseMeta
				if method == http.MethodGet {
					got, err := check(context.Background(), c)
					require.NoError(t, err)
					assert.True(t, got.Allowed)
					meta = got.Meta
				} else {
					got, err := record(context.Background(), c)
					require.NoError(t, err)
					assert.Equal(t, "evt_1", got.ID)
					meta = got.Meta
				}
				// Only the first attempt is slow; on a loaded machine a later one may
				// also run out, so don't insist on exactly two.
				assert.GreaterOrEqual(t, meta.Attempts, 2)
				assert.Equal(t, int64(meta.Attempts), n.Load())
				// Read as many keys as the server saw (an attempt that ran out
				// before it reached the server sent none): never wait for more.
				first := <-keys
				for range n.Load() - 1 {
					assert.Equal(t, first, <-keys, "the retry keeps its key")
				}
			})
		}
	}
}

func TestAttemptTimeoutExhausted(t *testing.T) {
	t.Parallel()
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL),
		quotastack.WithAttemptTimeout(30*time.Millisecond), quotastack.WithRetry(2, time.Millisecond, time.Millisecond))
	require.NoError(t, err)

	start := time.Now()
	_, err = check(context.Background(), c)
	assert.Less(t, time.Since(start), 2*time.Second)
	var reqErr *quotastack.RequestError
	require.ErrorAs(t, err, &reqErr)
	assert.Equal(t, 2, reqErr.Attempts)
	assert.Contains(t, err.Error(), "attempt timed out")
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "the call's own context did not expire")
}

func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	for _, status := range []int{301, 302, 307, 308} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			var otherHits atomic.Int64
			other := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				otherHits.Add(1)
				assert.Empty(t, r.Header.Get("X-API-Key"), "the other host must never see the key")
				_, _ = w.Write([]byte(`{"id":"evt_1"}`))
			})
			var hits atomic.Int64
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				http.Redirect(w, r, other.URL+r.URL.Path, status)
			})
			c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL))
			require.NoError(t, err)

			_, err = record(context.Background(), c)
			require.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
			var apiErr *quotastack.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, status, apiErr.StatusCode)
			assert.Equal(t, 1, apiErr.Attempts)
			assert.Zero(t, otherHits.Load())
			assert.Equal(t, int64(1), hits.Load(), "a redirect is not retried")
		})
	}
}

func TestBodySizeCap(t *testing.T) {
	t.Parallel()
	const limit = 1024
	pad := func(json string, size int) string {
		return json[:len(json)-1] + strings.Repeat(" ", size-len(json)) + "}"
	}
	tests := []struct {
		name    string
		status  int
		body    string
		endless bool
		wantErr []error
	}{
		{name: "exactly at the cap", status: 200, body: pad(`{"allowed":true}`, limit)},
		{name: "one byte over", status: 200, body: pad(`{"allowed":true}`, limit+1), wantErr: []error{quotastack.ErrUnexpectedResponse}},
		{name: "large 200", status: 200, body: pad(`{"allowed":true}`, 64*limit), wantErr: []error{quotastack.ErrUnexpectedResponse}},
		{name: "large 400 problem", status: 400, body: pad(problem(400, "validation-error", "x", ""), 8*limit),
			wantErr: []error{quotastack.ErrUnexpectedResponse}},
		{name: "large 503 after retries", status: 503, body: pad(problem(503, "unavailable", "", ""), 8*limit),
			wantErr: []error{quotastack.ErrUnexpectedResponse, quotastack.ErrServer}},
		{name: "endless stream", status: 200, endless: true, wantErr: []error{quotastack.ErrUnexpectedResponse}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tt.status)
				if !tt.endless {
					_, _ = w.Write([]byte(tt.body))
					return
				}
				chunk := bytes.Repeat([]byte(" "), 4096)
				for r.Context().Err() == nil {
					if _, err := w.Write(chunk); err != nil {
						return
					}
				}
			})
			c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL), quotastack.WithMaxBodyBytes(limit),
				quotastack.WithRetry(2, time.Millisecond, time.Millisecond))
			require.NoError(t, err)

			start := time.Now()
			got, err := check(context.Background(), c)
			assert.Less(t, time.Since(start), 5*time.Second)
			if tt.wantErr == nil {
				require.NoError(t, err)
				assert.True(t, got.Allowed)
				return
			}
			for _, w := range tt.wantErr {
				assert.ErrorIs(t, err, w)
			}
			var apiErr *quotastack.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, tt.status, apiErr.StatusCode)
			assert.Contains(t, err.Error(), "size limit")
		})
	}
}

// TestAPIKeyOnlyInHeader checks with a real server that the key travels in
// the X-API-Key header and nowhere else in the request.
func TestAPIKeyOnlyInHeader(t *testing.T) {
	t.Parallel()
	type seen struct{ uri, key, body string }
	got := make(chan seen, 1)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(r.Body)
		got <- seen{uri: r.RequestURI, key: r.Header.Get("X-API-Key"), body: buf.String()}
		_, _ = w.Write([]byte(`{"id":"evt_1"}`))
	})
	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL))
	require.NoError(t, err)

	_, err = record(context.Background(), c)
	require.NoError(t, err)
	s := <-got
	assert.Equal(t, testKey, s.key)
	assert.NotContains(t, s.uri, testKey)
	assert.NotContains(t, s.body, testKey)
}

// TestTruncatedBody: a connection dropped in the middle of the body is
// retried like a transport error and ends as a typed *RequestError.
func TestTruncatedBody(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		conn, buf, err := w.(http.Hijacker).Hijack()
		if !assert.NoError(t, err) {
			return
		}
		defer conn.Close()
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"allowed\":tr")
		_ = buf.Flush()
	})
	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL), quotastack.WithRetry(3, time.Millisecond, time.Millisecond))
	require.NoError(t, err)

	got, err := check(context.Background(), c)
	assert.Nil(t, got)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	var reqErr *quotastack.RequestError
	require.ErrorAs(t, err, &reqErr)
	assert.Equal(t, 3, reqErr.Attempts)
	assert.Equal(t, int64(3), hits.Load())
}

// TestUntrustedCertificateNotRetried: a TLS verification failure is final,
// not a transient transport error (nor a timeout).
func TestUntrustedCertificateNotRetried(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the handshake must fail before any request")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the server logs the failed handshake
	t.Cleanup(srv.Close)
	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL))
	require.NoError(t, err)

	_, err = check(context.Background(), c)
	var certErr *tls.CertificateVerificationError
	require.ErrorAs(t, err, &certErr)
	var reqErr *quotastack.RequestError
	require.ErrorAs(t, err, &reqErr)
	assert.Equal(t, 1, reqErr.Attempts)
	assert.NotContains(t, err.Error(), "timed out")
}
