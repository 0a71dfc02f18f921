package quotastack_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/jarcoal/httpmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

// TestRetryPolicyByMethod sends every method through Do against a server
// that fails (a 503, then a connection reset) and counts the sends: GET and
// HEAD are retried without a key; POST and PATCH always carry a key (the
// caller's or a random one, the same on every attempt) and are retried; PUT,
// DELETE and other methods carry a key and are retried only when the caller
// gave one, else they are sent once.
func TestRetryPolicyByMethod(t *testing.T) {
	t.Parallel()
	tests := []struct {
		method    string
		callerKey string
		wantSends int
		wantKey   bool
	}{
		{http.MethodGet, "", 4, false},
		{http.MethodHead, "", 4, false},
		{http.MethodGet, "ignored:1", 4, false},
		{http.MethodPost, "", 4, true},
		{http.MethodPost, "op:1", 4, true},
		{http.MethodPatch, "", 4, true},
		{http.MethodPatch, "op:1", 4, true},
		{http.MethodPut, "", 1, false},
		{http.MethodPut, "op:1", 4, true},
		{http.MethodDelete, "", 1, false},
		{http.MethodDelete, "op:1", 4, true},
		{http.MethodOptions, "", 1, false},
		{http.MethodOptions, "op:1", 4, true},
	}
	for _, fault := range []string{"503", "reset"} {
		for _, tt := range tests {
			t.Run(fault+"/"+tt.method+"/key="+tt.callerKey, func(t *testing.T) {
				t.Parallel()
				c, mt := setup(t)
				var mu sync.Mutex
				var keys []string
				mt.RegisterResponder(tt.method, baseURL+"/v1/things/x", func(r *http.Request) (*http.Response, error) {
					mu.Lock()
					keys = append(keys, r.Header.Get("Idempotency-Key"))
					mu.Unlock()
					if fault == "reset" {
						return nil, errors.New("read: connection reset by peer")
					}
					return httpmock.NewStringResponse(503, `{"type":"https://quotastack.io/errors/unavailable","title":"down"}`), nil
				})
				var opts []quotastack.CallOption
				if tt.callerKey != "" {
					opts = append(opts, quotastack.WithIdempotencyKey(tt.callerKey))
				}
				meta, err := c.Do(context.Background(), tt.method, "/v1/things/x", nil, nil, opts...)
				require.Error(t, err)
				mu.Lock()
				defer mu.Unlock()
				assert.Len(t, keys, tt.wantSends, "sends")
				assert.Equal(t, tt.wantSends, meta.Attempts)
				for _, k := range keys {
					assert.Equal(t, tt.wantKey, k != "", "key sent: %q", k)
					assert.Equal(t, keys[0], k, "one key for every attempt")
				}
				if tt.wantKey {
					assert.Equal(t, keys[0], meta.IdempotencyKey)
					if tt.callerKey != "" {
						assert.Equal(t, tt.callerKey, keys[0])
					}
				} else {
					assert.Empty(t, meta.IdempotencyKey)
				}
			})
		}
	}
}
