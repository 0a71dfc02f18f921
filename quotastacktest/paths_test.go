package quotastacktest_test

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCustomerPathFamiliesAndEscaping(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	cases := []struct {
		externalID string
		escaped    []string // path forms that must all reach the customer
	}{
		{"user42:companion7", []string{"user42%3Acompanion7", "user42:companion7", "user42%3acompanion7"}},
		{"org/team/user", []string{"org%2Fteam%2Fuser"}},
		{"first last", []string{"first%20last"}},
		{"100%real", []string{"100%25real"}},
		{"a+b", []string{"a+b", "a%2Bb"}},
		{"what?#frag", []string{"what%3F%23frag"}},
		{"café ☕ 用户", []string{url.PathEscape("café ☕ 用户")}},
		{"ann@example.com", []string{"ann@example.com", "ann%40example.com"}},
	}
	for i, tc := range cases {
		body, err := json.Marshal(map[string]any{"external_customer_id": tc.externalID, "credits": 1000 + i})
		require.NoError(t, err)
		r := w.post("/v1/topup/grant", "signup-grant:"+tc.externalID, string(body))
		requireStatus(t, r, 201)
		id := r.json(t)["customer_id"].(string)
		require.Equal(t, tc.externalID, r.json(t)["external_customer_id"])

		for _, esc := range tc.escaped {
			base := "/v1/customer-by-external-id/" + esc
			r = w.get(base)
			requireStatus(t, r, 200)
			require.Equal(t, tc.externalID, r.json(t)["external_customer_id"], esc)
			require.Equal(t, id, r.json(t)["customer_id"], esc)

			m := w.get(base + "/credits").json(t)
			require.Equal(t, float64(1000+i), m["balance"], esc)
			m = w.get(base + "/entitlements/look").json(t)
			require.Equal(t, tc.externalID, m["external_customer_id"])
		}
		// The UUID family reaches the same account; the external id under it does not.
		requireStatus(t, w.get("/v1/customers/"+id+"/credits"), 200)
		requireProblem(t, w.get("/v1/customers/"+tc.escaped[0]+"/credits"), 404, "customer-not-found")

		r = w.post("/v1/customer-by-external-id/"+tc.escaped[0]+"/credits/grant", "promo:"+tc.externalID, `{"credits": 1}`)
		requireStatus(t, r, 201)
		require.Equal(t, tc.externalID, r.json(t)["external_customer_id"])
		acct, ok := w.srv.Account(tc.externalID)
		require.True(t, ok)
		require.Equal(t, int64(1001+i), acct.Balance)
	}
	// A path-escaped id names one customer exactly: "org" and "org/team" are strangers.
	requireProblem(t, w.get("/v1/customer-by-external-id/org/team/user/credits"), 404, "not-found")
	requireProblem(t, w.get("/v1/customer-by-external-id/org%2Fteam/credits"), 404, "customer-not-found")

	for _, rec := range w.srv.Requests() {
		require.False(t, strings.Contains(rec.Path, " "), "the log keeps escaped paths")
	}
}
