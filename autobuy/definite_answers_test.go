package autobuy_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
)

// fixedAnswer is a QuotaStack that answers every request with status, the
// headers and body.
func fixedAnswer(t *testing.T, status int, contentType, body string, header map[string]string) *quotastack.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	c, err := quotastack.NewClient("qs_test_definite0123456789", quotastack.WithBaseURL(srv.URL),
		quotastack.WithRetry(2, time.Millisecond, 2*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// definiteAnswers are 4xx answers the SDK has no sentinel of its own for (or
// a body that is no problem document): each is QuotaStack's definite answer.
var definiteAnswers = []struct {
	name        string
	status      int
	contentType string
	body        string
}{
	{"403 problem", 403, "application/problem+json", `{"type":"https://quotastack.io/errors/forbidden","title":"Forbidden","status":403}`},
	{"403 plain JSON", 403, "application/json", `{"error":"forbidden"}`},
	{"403 WAF HTML page", 403, "text/html", `<html><body><h1>Access denied</h1>Request blocked by WAF</body></html>`},
	{"405", 405, "application/json", `{"error":"method not allowed"}`},
	{"410", 410, "text/plain", `gone`},
	{"413", 413, "text/html", `<html>Request Entity Too Large</html>`},
	{"418 unlisted", 418, "", ``},
	{"451 unlisted", 451, "application/problem+json", `{"type":"https://quotastack.io/errors/legal","title":"Unavailable For Legal Reasons"}`},
}

// A definite 4xx is never an outage: FailOpen must not give the action away
// and FailClosed must not call it unavailable; the gate returns the typed error.
func TestGateDefinite4xxIsNeverAFallback(t *testing.T) {
	t.Parallel()
	for _, tc := range definiteAnswers {
		for _, policy := range []autobuy.FallbackPolicy{autobuy.FailOpen, autobuy.FailClosed, autobuy.ReturnError} {
			t.Run(tc.name+"/"+policy.String(), func(t *testing.T) {
				t.Parallel()
				c := fixedAnswer(t, tc.status, tc.contentType, tc.body, nil)
				g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithFallback(policy))
				require.NoError(t, err)
				d, err := g.Gate(t.Context(), quotastack.ExternalID(user), "chat_message")
				var apiErr *quotastack.APIError
				require.ErrorAs(t, err, &apiErr, "a definite answer is an error, whatever the policy")
				assert.Equal(t, tc.status, apiErr.StatusCode)
				assert.False(t, d.Allowed)
				assert.False(t, d.Fallback)
				assert.False(t, quotastack.IsOutage(t.Context(), err))
			})
		}
	}
}

// The middleware answers a definite 4xx as a misconfiguration (500), never
// 503 and never the handler.
func TestMiddlewareDefinite4xxIsMisconfiguration(t *testing.T) {
	t.Parallel()
	for _, tc := range definiteAnswers {
		for _, policy := range []autobuy.FallbackPolicy{autobuy.FailOpen, autobuy.FailClosed, autobuy.ReturnError} {
			t.Run(tc.name+"/"+policy.String(), func(t *testing.T) {
				t.Parallel()
				c := fixedAnswer(t, tc.status, tc.contentType, tc.body, nil)
				g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithFallback(policy))
				require.NoError(t, err)
				served := false
				h := autobuy.Middleware(g, chatAction)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { served = true }))
				rec := serve(h, user, "m1")
				assert.False(t, served, "the paid action must not run")
				assert.Equal(t, http.StatusInternalServerError, rec.Code)
				assert.Equal(t, "billing_misconfigured", denialOf(t, rec).Error)
				assert.Empty(t, rec.Header().Get("Retry-After"))
			})
		}
	}
}

// QuotaStack's Retry-After reaches the app's clients capped at an hour, in
// whole seconds, never negative.
func TestMiddlewareRetryAfterIsCapped(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, retryAfter string
		policy           autobuy.FallbackPolicy
		want             string
	}{
		{"overflowing seconds, ReturnError", "99999999999", autobuy.ReturnError, "3600"},
		{"overflowing seconds, FailClosed", "99999999999", autobuy.FailClosed, "3600"},
		{"1000 days, ReturnError", "86400000", autobuy.ReturnError, "3600"},
		{"1000 days, FailClosed", "86400000", autobuy.FailClosed, "3600"},
		{"max int64", "9223372036854775807", autobuy.ReturnError, "3600"},
		{"an hour and a second", "3601", autobuy.ReturnError, "3600"},
		{"7 s", "7", autobuy.ReturnError, "7"},
		{"negative", "-5", autobuy.ReturnError, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := fixedAnswer(t, 503, "application/json", `{}`, map[string]string{"Retry-After": tc.retryAfter})
			g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithFallback(tc.policy))
			require.NoError(t, err)
			h := autobuy.Middleware(g, chatAction)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
				t.Error("the handler must not run")
			}))
			rec := serve(h, user, "m1")
			assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
			assert.Equal(t, tc.want, rec.Header().Get("Retry-After"))
			if got := rec.Header().Get("Retry-After"); got != "" {
				secs, err := strconv.ParseInt(got, 10, 64)
				require.NoError(t, err)
				assert.Positive(t, secs)
				assert.LessOrEqual(t, secs, int64(autobuy.MaxRetryAfter/time.Second))
			}
		})
	}
}
