package webhook_test

import (
	"context"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/webhook"
)

// deliver sends one delivery of id signed with the test secret at vectorTime.
func deliver(t *testing.T, h http.Handler, id string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/webhooks/quotastack", strings.NewReader(envelope))
	hdr, err := webhook.SignedHeaders(testSecret, id, vectorTime, []byte(envelope))
	require.NoError(t, err)
	for k, vs := range hdr {
		r.Header[k] = vs
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

func TestHandlerRejectsReplays(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	h := newVerifier(t).Handler(func(context.Context, *webhook.Event) error {
		calls.Add(1)
		return nil
	})
	require.Equal(t, http.StatusNoContent, deliver(t, h, "msg_1").Code)
	rec := deliver(t, h, "msg_1")
	require.Equal(t, http.StatusNoContent, rec.Code, "a replay gets a 2xx, so the sender stops")
	require.Equal(t, "true", rec.Header().Get("Webhook-Replay"))
	require.Equal(t, http.StatusNoContent, deliver(t, h, "msg_2").Code)
	require.Equal(t, int32(2), calls.Load(), "fn ran once per id")
}

func TestHandlerRetriesAFailedDelivery(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	h := newVerifier(t).Handler(func(context.Context, *webhook.Event) error {
		if calls.Add(1) == 1 {
			return errors.New("database down")
		}
		return nil
	})
	require.Equal(t, http.StatusInternalServerError, deliver(t, h, "msg_1").Code)
	require.Equal(t, http.StatusNoContent, deliver(t, h, "msg_1").Code, "the redelivery of a failed one is handled")
	require.Equal(t, http.StatusNoContent, deliver(t, h, "msg_1").Code)
	require.Equal(t, int32(2), calls.Load())
}

func TestHandlerPanicAbandonsTheClaim(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	h := newVerifier(t).Handler(func(context.Context, *webhook.Event) error {
		if calls.Add(1) == 1 {
			panic("boom")
		}
		return nil
	})
	require.Panics(t, func() { deliver(t, h, "msg_1") })
	require.Equal(t, http.StatusNoContent, deliver(t, h, "msg_1").Code)
	require.Equal(t, int32(2), calls.Load())
}

func TestHandlerDeliveryInFlight(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	h := newVerifier(t).Handler(func(context.Context, *webhook.Event) error {
		if calls.Add(1) == 1 {
			close(started)
			<-release
		}
		return nil
	})
	var wg sync.WaitGroup
	var first int
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(envelope))
		hdr, _ := webhook.SignedHeaders(testSecret, "msg_1", vectorTime, []byte(envelope))
		for k, vs := range hdr {
			r.Header[k] = vs
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		first = rec.Code
	}()
	<-started
	rec := deliver(t, h, "msg_1")
	require.Equal(t, http.StatusConflict, rec.Code, "being handled: the sender retries later")
	require.NotEmpty(t, rec.Header().Get("Retry-After"))
	close(release)
	wg.Wait()
	require.Equal(t, http.StatusNoContent, first)
	require.Equal(t, http.StatusNoContent, deliver(t, h, "msg_1").Code)
	require.Equal(t, int32(1), calls.Load())
}

// failingStore is a ReplayStore that can't be reached.
type failingStore struct{}

func (failingStore) Claim(context.Context, string, time.Duration) (webhook.ClaimResult, error) {
	return 0, errors.New("store down")
}
func (failingStore) Complete(context.Context, string, time.Duration) error { return nil }
func (failingStore) Abandon(context.Context, string) error                 { return nil }

func TestHandlerStoreDown(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	h := newVerifier(t, webhook.WithReplayStore(failingStore{})).Handler(func(context.Context, *webhook.Event) error {
		calls.Add(1)
		return nil
	})
	require.Equal(t, http.StatusServiceUnavailable, deliver(t, h, "msg_1").Code, "retried later, never handled blind")
	require.Zero(t, calls.Load())
}

func TestHandlerWithoutReplayProtection(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	h := newVerifier(t, webhook.WithoutReplayProtection()).Handler(func(context.Context, *webhook.Event) error {
		calls.Add(1)
		return nil
	})
	deliver(t, h, "msg_1")
	deliver(t, h, "msg_1")
	require.Equal(t, int32(2), calls.Load())
}

func TestForgedDeliveryDoesNotPoisonTheID(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	h := newVerifier(t).Handler(func(context.Context, *webhook.Event) error {
		calls.Add(1)
		return nil
	})
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(envelope))
	hdr, err := webhook.SignedHeaders("b3RoZXItc2VjcmV0", "msg_1", vectorTime, []byte(envelope))
	require.NoError(t, err)
	for k, vs := range hdr {
		r.Header[k] = vs
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	require.Equal(t, http.StatusBadRequest, rec.Code)
	require.Equal(t, http.StatusNoContent, deliver(t, h, "msg_1").Code)
	require.Equal(t, int32(1), calls.Load(), "the genuine delivery is handled")
}

func TestReplayOptions(t *testing.T) {
	t.Parallel()
	_, err := webhook.NewVerifier(testSecret, webhook.WithReplayRetention(time.Minute, 0))
	require.Error(t, err, "retention must exceed the 5 min tolerance")
	_, err = webhook.NewVerifier(testSecret, webhook.WithReplayRetention(time.Hour, -1))
	require.Error(t, err)
	_, err = webhook.NewVerifier(testSecret, webhook.WithReplayRetention(24*time.Hour, 2*time.Minute))
	require.NoError(t, err)
}

func TestMemoryReplayStoreConcurrentClaims(t *testing.T) {
	t.Parallel()
	s := webhook.NewMemoryReplayStore(0)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := s.Claim(context.Background(), "msg_1", time.Minute)
			if err == nil && res == webhook.ClaimNew {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int32(1), wins.Load())
}

// A tolerance past MaxTolerance is refused: twice 150 years overflowed the
// retention (a replay reached the handler twice), and math.MaxInt64 kept ids
// a minute while the timestamp check never expired.
func TestToleranceIsBounded(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		tolerance time.Duration
		ok        bool
	}{
		{"150 years", 150 * 365 * 24 * time.Hour, false},
		{"max int64", time.Duration(math.MaxInt64), false},
		{"a day and a second", webhook.MaxTolerance + time.Second, false},
		{"negative", -time.Hour, false},
		{"a day", webhook.MaxTolerance, true},
		{"a second", time.Second, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v, err := webhook.NewVerifier(testSecret, webhook.WithTolerance(tc.tolerance), webhook.WithClock(fixedClock(vectorTime)))
			if !tc.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			var calls atomic.Int32
			h := v.Handler(func(context.Context, *webhook.Event) error {
				calls.Add(1)
				return nil
			})
			require.Equal(t, http.StatusNoContent, deliver(t, h, "msg_1").Code)
			require.Equal(t, "true", deliver(t, h, "msg_1").Header().Get("Webhook-Replay"))
			require.Equal(t, int32(1), calls.Load(), "the replay never reaches the handler")
		})
	}
}
