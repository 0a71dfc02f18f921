package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/quotastacktest"
)

// TestRecipeCurls replays the cookbook's four steps against the seeded world.
func TestRecipeCurls(t *testing.T) {
	start, err := time.Parse(time.RFC3339, recipeNow)
	require.NoError(t, err)
	srv := quotastacktest.Start(t, quotastacktest.WithClock(shiftedClock{offset: time.Until(start)}.Now))
	require.NoError(t, seedRecipe(srv))
	base := srv.URL + "/v1/customer-by-external-id/user42%3Acompanion7"

	call := func(method, url, key, body string) (int, map[string]any) {
		req, err := http.NewRequest(method, url, bytes.NewBufferString(body))
		require.NoError(t, err)
		req.Header.Set("X-API-Key", srv.APIKey)
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var m map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&m))
		return resp.StatusCode, m
	}

	status, m := call("GET", base+"/entitlements/chat_message", "", "")
	require.Equal(t, 200, status)
	require.Equal(t, false, m["allowed"])
	require.Equal(t, float64(-1000), m["balance_after"])

	status, m = call("GET", base+"/credits?include_blocks=true", "", "")
	require.Equal(t, 200, status)
	require.Equal(t, float64(500_000), m["balance"])

	status, _ = call("POST", srv.URL+"/v1/usage", "plan-debit:1hr:auto_msg_abc123", `{
	    "external_customer_id": "user42:companion7",
	    "billable_metric_key": "plan_purchase_1hr",
	    "units": 100000,
	    "metadata": { "plan_type": "1hr", "order_id": "auto_msg_abc123", "trigger": "auto_buy" }
	  }`)
	require.Equal(t, 200, status)
	status, _ = call("POST", srv.URL+"/v1/topup/grant", "plan-grant:1hr:auto_msg_abc123", `{
	    "external_customer_id": "user42:companion7",
	    "credits": 50000,
	    "price_paid": 0,
	    "currency": "mc",
	    "expires_at": "2026-04-13T14:00:00Z",
	    "priority": 10,
	    "metadata": { "source": "plan_grant", "plan_type": "1hr", "order_id": "auto_msg_abc123", "trigger": "auto_buy" }
	  }`)
	require.Equal(t, 201, status)
	status, m = call("POST", srv.URL+"/v1/usage", "usage:msg_abc123", `{
	    "external_customer_id": "user42:companion7",
	    "billable_metric_key": "chat_message",
	    "units": 1
	  }`)
	require.Equal(t, 200, status)
	require.Equal(t, float64(449_000), m["balance_after"])
	require.NoError(t, srv.CheckInvariants())
}

// TestModeFlag starts the fake with -mode usage202,sparse,execute-then-5xx and checks each
// over raw HTTP.
func TestModeFlag(t *testing.T) {
	opts, err := modeOptions("usage202, sparse,execute-then-5xx", 0, 503)
	require.NoError(t, err)
	srv := quotastacktest.Start(t, opts...)
	require.NoError(t, seedRecipe(srv))

	send := func(method, url, key, body string) (*http.Response, []byte) {
		req, err := http.NewRequest(method, srv.URL+url, bytes.NewBufferString(body))
		require.NoError(t, err)
		req.Header.Set("X-API-Key", srv.APIKey)
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var buf bytes.Buffer
		_, err = buf.ReadFrom(resp.Body)
		require.NoError(t, err)
		return resp, buf.Bytes()
	}
	const usage = `{"external_customer_id": "user42:companion7", "billable_metric_key": "plan_purchase_1hr", "units": 1000}`
	resp, _ := send("POST", "/v1/usage", "u1", usage)
	require.Equal(t, 503, resp.StatusCode, "execute-then-5xx")
	resp, body := send("POST", "/v1/usage", "u1", usage)
	require.Equal(t, 202, resp.StatusCode, "usage202, replayed")
	require.Empty(t, body)
	resp, body = send("GET", "/v1/customer-by-external-id/user42%3Acompanion7/credits", "", "")
	require.Equal(t, 200, resp.StatusCode)
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m))
	require.Equal(t, float64(499_000), m["balance"])
	require.NotContains(t, m, "version", "sparse")
	require.NoError(t, srv.CheckInvariants())

	for _, tc := range []struct{ list, err string }{
		{"kind,nice", `unknown mode "nice"`},
		{"execute-then-5xx", "want a 5xx"},
	} {
		_, err := modeOptions(tc.list, 0, 200)
		require.ErrorContains(t, err, tc.err)
	}
	opts, err = modeOptions("kind", 0, 500)
	require.NoError(t, err)
	require.Empty(t, opts)
	opts, err = modeOptions("rate-limited", 0, 500)
	require.NoError(t, err)
	require.Len(t, opts, 1)
}

// The banner prints the environment variables the SDK reads, ready to paste.
func TestBannerPrintsTheSDKsVariables(t *testing.T) {
	srv := quotastacktest.Start(t)
	var out bytes.Buffer
	banner(&out, srv, "kind")
	require.Contains(t, out.String(), "\nexport QUOTASTACK_API_KEY="+srv.APIKey+"\n")
	require.Contains(t, out.String(), "\nexport QUOTASTACK_BASE_URL="+srv.URL+"\n")
	require.NotContains(t, out.String(), "export API_KEY")
}
