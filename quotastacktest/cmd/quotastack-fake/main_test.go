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
	srv := quotastacktest.Start(t, quotastacktest.WithClock(shiftedClock{offset: time.Until(start)}))
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
