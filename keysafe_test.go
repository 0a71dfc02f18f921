package quotastack_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

type failingBody struct{ err error }

func (b failingBody) Read([]byte) (int, error) { return 0, b.err }
func (b failingBody) Close() error             { return b.err }

func TestRedactingTransport(t *testing.T) {
	t.Parallel()
	const key = "qs_test_keysafe0123456789abcdef"
	secret := key[len("qs_test_"):]
	leak := fmt.Errorf("net/http: malformed HTTP status code %q", key)
	req := func(withKey bool) *http.Request {
		r, err := http.NewRequest(http.MethodGet, "http://127.0.0.1/v1/x", nil)
		require.NoError(t, err)
		if withKey {
			r.Header.Set("X-API-Key", key)
		}
		return r
	}

	t.Run("transport error", func(t *testing.T) {
		t.Parallel()
		rt := quotastack.RedactingTransport(roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, leak }))
		_, err := rt.RoundTrip(req(true))
		require.Error(t, err)
		assert.NotContains(t, err.Error(), secret[:8])
		assert.Contains(t, err.Error(), "malformed HTTP status code")
		for e := err; e != nil; e = errors.Unwrap(e) {
			assert.NotContains(t, e.Error(), secret[:8], "nothing in the chain holds the key")
		}
	})
	t.Run("an error without the key is kept as is", func(t *testing.T) {
		t.Parallel()
		plain := errors.New("connection refused")
		rt := quotastack.RedactingTransport(roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, plain }))
		_, err := rt.RoundTrip(req(true))
		assert.Same(t, plain, err)
	})
	t.Run("body errors, status text, EOF", func(t *testing.T) {
		t.Parallel()
		rt := quotastack.RedactingTransport(roundTripFunc(func(*http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 500, Status: "500 " + key, Body: failingBody{leak}}, nil
		}))
		resp, err := rt.RoundTrip(req(true))
		require.NoError(t, err)
		assert.NotContains(t, resp.Status, secret[:8])
		_, err = resp.Body.Read(make([]byte, 8))
		require.Error(t, err)
		assert.NotContains(t, err.Error(), secret[:8])
		require.Error(t, resp.Body.Close())
		assert.NotContains(t, resp.Body.Close().Error(), secret[:8])

		rt = quotastack.RedactingTransport(roundTripFunc(func(*http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("{}"))}, nil
		}))
		resp, err = rt.RoundTrip(req(true))
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		assert.Equal(t, "{}", string(b))
		n, err := resp.Body.Read(make([]byte, 1))
		assert.Zero(t, n)
		assert.Same(t, io.EOF, err, "io.EOF is returned unwrapped")
	})
	t.Run("a request without a key passes through", func(t *testing.T) {
		t.Parallel()
		rt := quotastack.RedactingTransport(roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, leak }))
		_, err := rt.RoundTrip(req(false))
		assert.Same(t, leak, err)
	})
}
