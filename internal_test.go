package quotastack

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// White-box checks of what the public API can't observe.

func TestRetryClientWiring(t *testing.T) {
	t.Parallel()
	c, err := NewClient("qs_test_SECRETKEY123")
	require.NoError(t, err)
	assert.Nil(t, c.rc.Logger, "go-retryablehttp's default logger prints to stderr: it must be off")
	assert.NotNil(t, c.rc.ErrorHandler, "keeps the last response when retries run out")
	assert.Equal(t, DefaultMaxAttempts-1, c.rc.RetryMax)
	require.NotNil(t, c.rc.HTTPClient.CheckRedirect)
	assert.ErrorIs(t, c.rc.HTTPClient.CheckRedirect(nil, nil), http.ErrUseLastResponse)
	_, hides := c.rc.HTTPClient.Transport.(interface{ CloseIdleConnections() })
	assert.False(t, hides, "retryablehttp must not drop the pool after each failed call")
}

type failingTransport struct{ err error }

func (f failingTransport) RoundTrip(*http.Request) (*http.Response, error) { return nil, f.err }

func TestAttemptTransportKeepsTransportErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection refused")
	at := &attemptTransport{base: failingTransport{boom}, timeout: time.Hour}
	req := httptest.NewRequest(http.MethodGet, "https://api.quotastack.test/v1/x", nil)
	_, err := at.RoundTrip(req)
	assert.ErrorIs(t, err, boom)
	assert.NotErrorIs(t, err, errAttemptTimeout, "a transport error is not a timeout")
}

func TestEscapeSegment(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"user_abc-1.2~":     "user_abc-1.2~",
		"user42:companion7": "user42%3Acompanion7",
		"a/b":               "a%2Fb",
		"a b":               "a%20b",
		"50%":               "50%25",
		"a?b#c&d=e+f@g":     "a%3Fb%23c%26d%3De%2Bf%40g",
		"é":                 "%C3%A9",
		".":                 "%2E",
		"..":                "%2E%2E",
		"...":               "...",
	}
	for in, want := range tests {
		assert.Equal(t, want, escapeSegment(in), "escapeSegment(%q)", in)
	}
}

func TestRedactAndSnippet(t *testing.T) {
	t.Parallel()
	c := &Client{apiKey: "qs_test_SECRETKEY123", red: newRedactor("qs_test_SECRETKEY123")}
	assert.Equal(t, "key [REDACTED] and [REDACTED]", c.redact("key qs_test_SECRETKEY123 and qs_test_SECRETKEY123"))
	assert.Equal(t, "nothing here", c.redact("nothing here"))
	assert.Len(t, snippet([]byte(strings.Repeat("a", 2000))), 512)
	assert.Equal(t, "short", snippet([]byte("short")))
}
