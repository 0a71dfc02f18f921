package quotastack_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

// A base URL holding the API key anywhere is refused at construction, and
// the error does not quote it.
func TestBaseURLWithTheKeyIsRefused(t *testing.T) {
	t.Parallel()
	const key = "qs_test_pathsegment0123456789"
	tests := []struct{ name, url string }{
		{"path segment", "https://api.example.com/" + key},
		{"path segment before /v1", "https://api.example.com/" + key + "/v1"},
		{"nested path segment", "https://api.example.com/tenants/" + key + "/api"},
		{"percent-escaped path segment", "https://api.example.com/" + url.PathEscape(strings.ReplaceAll(key, "q", "%71"))},
		{"fully percent-escaped", "https://api.example.com/" + percentAll(key)},
		{"the secret part only", "https://api.example.com/" + key[len("qs_test_"):]},
		{"user info", "https://" + key + "@api.example.com"},
		{"query", "https://api.example.com/?key=" + key},
		{"fragment", "https://api.example.com/#" + key},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := quotastack.NewClient(key, quotastack.WithBaseURL(tc.url))
			require.Error(t, err)
			assert.Nil(t, c)
			assert.True(t, errors.Is(err, quotastack.ErrInvalidInput))
			assert.NotContains(t, err.Error(), key[len("qs_test_"):len("qs_test_")+8])
		})
	}
	t.Run("an ordinary path is kept", func(t *testing.T) {
		t.Parallel()
		c, err := quotastack.NewClient(key, quotastack.WithBaseURL("https://api.example.com/quotastack"))
		require.NoError(t, err)
		assert.Equal(t, "https://api.example.com/quotastack", c.BaseURL())
	})
}

// Not parallel: it sets the environment.
func TestBaseURLWithTheKeyFromTheEnvironmentIsRefused(t *testing.T) {
	const key = "qs_test_pathsegment0123456789"
	t.Setenv(quotastack.EnvAPIKey, key)
	t.Setenv(quotastack.EnvBaseURL, "https://api.example.com/"+key)
	_, err := quotastack.NewClientFromEnv()
	require.ErrorIs(t, err, quotastack.ErrInvalidInput)
}

func percentAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteString("%")
		b.WriteString(strings.ToUpper(string("0123456789abcdef"[s[i]>>4]) + string("0123456789abcdef"[s[i]&15])))
	}
	return b.String()
}
