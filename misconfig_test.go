package quotastack_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

func TestNewClientRefusesKeysWithoutAQuotaStackPrefix(t *testing.T) {
	t.Parallel()
	for _, key := range []string{"sk_live_SECRETKEY123", "SECRETKEY123", "qs_prod_SECRETKEY123", "QS_TEST_SECRETKEY123", "qs_test_", "qs_live_"} {
		c, err := quotastack.NewClient(key)
		require.ErrorIs(t, err, quotastack.ErrInvalidInput, key)
		assert.Nil(t, c)
		assert.Contains(t, err.Error(), "must start with qs_live_ or qs_test_")
		assert.NotContains(t, err.Error(), "SECRETKEY", "the key is never echoed")
	}
	for _, key := range []string{"qs_live_x", "qs_test_x"} {
		_, err := quotastack.NewClient(key)
		require.NoError(t, err, key)
	}
}

func TestBaseURLEndingInV1IsTheAPIRoot(t *testing.T) {
	t.Parallel()
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.URL.EscapedPath())
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"allowed":true,"billable_metric_key":"m","units":1}`))
	}))
	defer srv.Close()
	for _, tt := range []struct{ in, want string }{
		{srv.URL + "/v1", srv.URL},
		{srv.URL + "/v1/", srv.URL},
		{srv.URL + "/gw/v1", srv.URL + "/gw"},
		{srv.URL + "/v10", srv.URL + "/v10"},
	} {
		c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(tt.in))
		require.NoError(t, err, tt.in)
		assert.Equal(t, tt.want, c.BaseURL(), tt.in)
	}
	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL+"/v1"))
	require.NoError(t, err)
	_, err = c.Check(context.Background(), quotastack.ExternalID("u1"), "m", 1)
	require.NoError(t, err)
	assert.Equal(t, []string{"/v1/customer-by-external-id/u1/entitlements/m"}, paths)
}
