package webhook_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/webhook"
)

const envelope = `{"id":"evt_1","type":"subscription.renewed","created_at":"2021-02-25T15:02:10Z","data":{"plan":"starter"}}`

type ctxKey struct{}

func signedRequest(t *testing.T, method, body string) *http.Request {
	t.Helper()
	r := httptest.NewRequest(method, "/webhooks/quotastack", strings.NewReader(body))
	h, err := webhook.SignedHeaders(testSecret, vectorID, vectorTime, []byte(body))
	require.NoError(t, err)
	for k, vs := range h {
		r.Header[k] = vs
	}
	r.Header.Set("Content-Type", "application/json")
	return r.WithContext(context.WithValue(r.Context(), ctxKey{}, "request-ctx"))
}

func TestHandler(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		request    func(t *testing.T) *http.Request
		fnErr      error
		maxBody    int64
		wantStatus int
		wantCalled bool
		wantBody   string // substring of the response body
	}{
		{
			name:       "valid delivery",
			request:    func(t *testing.T) *http.Request { return signedRequest(t, http.MethodPost, envelope) },
			wantStatus: http.StatusNoContent,
			wantCalled: true,
		},
		{
			name:       "GET",
			request:    func(t *testing.T) *http.Request { return signedRequest(t, http.MethodGet, "") },
			wantStatus: http.StatusMethodNotAllowed,
		},
		{
			name:       "PUT with a valid signature",
			request:    func(t *testing.T) *http.Request { return signedRequest(t, http.MethodPut, envelope) },
			wantStatus: http.StatusMethodNotAllowed,
		},
		{
			name: "bad signature",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, http.MethodPost, envelope)
				r.Header.Set("webhook-signature", vectorSig)
				return r
			},
			wantStatus: http.StatusBadRequest,
			wantBody:   webhook.ErrNoValidSignature.Error(),
		},
		{
			name: "missing headers",
			request: func(t *testing.T) *http.Request {
				return httptest.NewRequest(http.MethodPost, "/", strings.NewReader(envelope))
			},
			wantStatus: http.StatusBadRequest,
			wantBody:   webhook.ErrMissingHeaders.Error(),
		},
		{
			name: "stale delivery",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, http.MethodPost, envelope)
				ts := vectorTime.Add(-time.Hour)
				h, err := webhook.SignedHeaders(testSecret, vectorID, ts, []byte(envelope))
				require.NoError(t, err)
				r.Header.Set("webhook-timestamp", h.Get("webhook-timestamp"))
				r.Header.Set("webhook-signature", h.Get("webhook-signature"))
				return r
			},
			wantStatus: http.StatusBadRequest,
			wantBody:   webhook.ErrTimestampTooOld.Error(),
		},
		{
			name:       "signed but not an envelope",
			request:    func(t *testing.T) *http.Request { return signedRequest(t, http.MethodPost, `{"hello":`) },
			wantStatus: http.StatusBadRequest,
			wantBody:   webhook.ErrInvalidPayload.Error(),
		},
		{
			name:       "fn fails",
			request:    func(t *testing.T) *http.Request { return signedRequest(t, http.MethodPost, envelope) },
			fnErr:      errors.New("database password=hunter2 rejected"),
			wantStatus: http.StatusInternalServerError,
			wantCalled: true,
		},
		{
			name:       "body too large",
			request:    func(t *testing.T) *http.Request { return signedRequest(t, http.MethodPost, envelope) },
			maxBody:    int64(len(envelope)) - 1,
			wantStatus: http.StatusRequestEntityTooLarge,
		},
		{
			name: "body too large without Content-Length",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, http.MethodPost, envelope)
				r.ContentLength = -1
				r.Body = io.NopCloser(io.MultiReader(strings.NewReader(envelope))) // hides the length
				return r
			},
			maxBody:    int64(len(envelope)) - 1,
			wantStatus: http.StatusRequestEntityTooLarge,
		},
		{
			name: "body under-declared in Content-Length",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, http.MethodPost, envelope)
				r.ContentLength = 10
				return r
			},
			maxBody:    int64(len(envelope)) - 1,
			wantStatus: http.StatusRequestEntityTooLarge,
		},
		{
			name:       "body exactly at the cap",
			request:    func(t *testing.T) *http.Request { return signedRequest(t, http.MethodPost, envelope) },
			maxBody:    int64(len(envelope)),
			wantStatus: http.StatusNoContent,
			wantCalled: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var opts []webhook.Option
			if tt.maxBody != 0 {
				opts = append(opts, webhook.WithMaxBodyBytes(tt.maxBody))
			}
			v := newVerifier(t, opts...)

			var called bool
			var gotEvent *webhook.Event
			var gotCtxValue any
			h := v.Handler(func(ctx context.Context, ev *webhook.Event) error {
				called = true // ServeHTTP runs on the test goroutine here
				gotEvent = ev
				gotCtxValue = ctx.Value(ctxKey{})
				return tt.fnErr
			})
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, tt.request(t))

			require.Equal(t, tt.wantStatus, rec.Code, "body: %s", rec.Body.String())
			require.Equal(t, tt.wantCalled, called)
			require.Contains(t, rec.Body.String(), tt.wantBody)
			require.Less(t, rec.Body.Len(), 200, "error bodies stay small")
			require.NotContains(t, rec.Body.String(), testSecret)
			require.NotContains(t, rec.Body.String(), "quotastack-test-secret")
			require.NotContains(t, rec.Body.String(), "hunter2", "fn's error is not echoed")
			switch tt.wantStatus {
			case http.StatusMethodNotAllowed:
				require.Equal(t, http.MethodPost, rec.Header().Get("Allow"))
			case http.StatusNoContent:
				require.Zero(t, rec.Body.Len())
			}
			if called {
				require.Equal(t, "request-ctx", gotCtxValue)
				require.Equal(t, "evt_1", gotEvent.ID)
				require.Equal(t, vectorID, gotEvent.WebhookID)
				require.Equal(t, webhook.EventSubscriptionRenewed, gotEvent.Type)
				require.JSONEq(t, `{"plan":"starter"}`, string(gotEvent.Data))
			}
		})
	}
}

func TestHandlerNilFnPanics(t *testing.T) {
	t.Parallel()
	require.Panics(t, func() { newVerifier(t).Handler(nil) })
}

// TestHandlerOverHTTP runs the handler behind a real server, so header canonicalization
// and the body cap go through net/http. fn runs on a server goroutine: it only counts.
func TestHandlerOverHTTP(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	v, err := webhook.NewVerifier("whsec_"+testSecret, webhook.WithSecrets(oldSecret), webhook.WithMaxBodyBytes(1024))
	require.NoError(t, err)
	srv := httptest.NewServer(v.Handler(func(ctx context.Context, ev *webhook.Event) error {
		calls.Add(1)
		return nil
	}))
	t.Cleanup(srv.Close)

	post := func(secret, id string, body []byte) int {
		req, err := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
		require.NoError(t, err)
		h, err := webhook.SignedHeaders(secret, id, time.Now(), body)
		require.NoError(t, err)
		// Send lower-case names, as the Standard Webhooks senders do.
		for k, vs := range h {
			req.Header[strings.ToLower(k)] = vs
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		require.NoError(t, err)
		return resp.StatusCode
	}

	require.Equal(t, http.StatusNoContent, post(testSecret, "msg_http", []byte(envelope)))
	require.Equal(t, http.StatusNoContent, post(oldSecret, "msg_http_2", []byte(envelope)))
	require.Equal(t, http.StatusBadRequest, post("b3RoZXItc2VjcmV0", "msg_http_3", []byte(envelope)))
	big := []byte(`{"id":"evt_big","type":"x","data":"` + strings.Repeat("a", 2048) + `"}`)
	require.Equal(t, http.StatusRequestEntityTooLarge, post(testSecret, "msg_http_4", big))
	require.Equal(t, int32(2), calls.Load())
	require.Equal(t, http.StatusNoContent, post(oldSecret, "msg_http", []byte(envelope)), "a replay: 2xx, so the sender stops")
	require.Equal(t, int32(2), calls.Load(), "a replay is not handled again")
}

func TestParseRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		request func(t *testing.T) *http.Request
		wantErr error
	}{
		{"valid", func(t *testing.T) *http.Request { return signedRequest(t, http.MethodPost, envelope) }, nil},
		{"too large", func(t *testing.T) *http.Request {
			return signedRequest(t, http.MethodPost, envelope+strings.Repeat(" ", 100))
		}, webhook.ErrBodyTooLarge},
		{"nil body", func(t *testing.T) *http.Request {
			r := signedRequest(t, http.MethodPost, "")
			r.Body = nil
			return r
		}, webhook.ErrInvalidPayload},
	}
	v := newVerifier(t, webhook.WithMaxBodyBytes(int64(len(envelope))))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := v.ParseRequest(tt.request(t))
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				require.Nil(t, ev)
				return
			}
			require.NoError(t, err)
			require.Equal(t, "evt_1", ev.ID)
		})
	}
}
