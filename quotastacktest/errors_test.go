package quotastacktest_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/quotastacktest"
)

// TestErrorTable sends one request per row of the contract's §6 table (and its variants)
// and checks status, type URI and content type.
func TestErrorTable(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	id := w.recipeCustomer()
	require.NoError(t, w.srv.CreateMetric("unpriced", "Unpriced"))
	rsv := w.post("/v1/reserve", "rsv:done", `{"external_customer_id": "user42:companion7", "billable_metric_key": "look", "estimated_units": 1}`)
	requireStatus(t, rsv, 201)
	rid := rsv.json(t)["id"].(string)
	requireStatus(t, w.post("/v1/reserve/"+rid+"/release", "rsv:done:release", ""), 200)
	requireStatus(t, w.post("/v1/usage", "dup", usageBody(recipeUser, "look", 1)), 200)

	cases := []struct {
		name         string
		method, path string
		key, body    string
		status       int
		slug         string
		field        string // for validation errors: a field named in errors[]
	}{
		{"both customer fields", "POST", "/v1/usage", "k1",
			`{"customer_id": "` + id + `", "external_customer_id": "user42:companion7", "billable_metric_key": "look", "units": 1}`,
			400, "validation-error", "customer_id"},
		{"neither customer field", "POST", "/v1/usage", "k2", `{"billable_metric_key": "look", "units": 1}`, 400, "validation-error", "external_customer_id"},
		{"units zero", "POST", "/v1/usage", "k3", usageBody(recipeUser, "look", 0), 400, "validation-error", "units"},
		{"units negative", "POST", "/v1/reserve", "k4",
			`{"external_customer_id": "user42:companion7", "billable_metric_key": "look", "estimated_units": -1}`, 400, "validation-error", "estimated_units"},
		{"units float", "POST", "/v1/usage", "k5",
			`{"external_customer_id": "user42:companion7", "billable_metric_key": "look", "units": 1.5}`, 400, "validation-error", "units"},
		{"credits zero", "POST", "/v1/topup/grant", "k6", `{"external_customer_id": "x", "credits": 0}`, 400, "validation-error", "credits"},
		{"unknown JSON field", "POST", "/v1/usage", "k7",
			`{"external_customer_id": "user42:companion7", "billable_metric_key": "look", "units": 1, "unit": 1}`, 400, "validation-error", "unit"},
		{"empty body", "POST", "/v1/customers", "k8", "", 400, "validation-error", "body"},
		{"malformed JSON", "POST", "/v1/customers", "k8b", `{"external_id": `, 400, "validation-error", "body"},
		{"trailing data", "POST", "/v1/customers", "k8c", `{"external_id": "a"} {}`, 400, "validation-error", "body"},
		{"metadata not strings", "POST", "/v1/usage", "k8d",
			`{"external_customer_id": "user42:companion7", "billable_metric_key": "look", "units": 1, "metadata": {"n": 1}}`, 400, "validation-error", "metadata"},
		{"bad expires_at", "POST", "/v1/topup/grant", "k8e", `{"external_customer_id": "x", "credits": 1, "expires_at": "tomorrow"}`, 400, "validation-error", "expires_at"},
		{"bad tiers", "POST", "/v1/metering-rules", "k8f", `{"billable_metric_key": "look", "cost_type": "volume", "tiers": [{"up_to": 5, "unit_cost": 1}]}`, 400, "validation-error", "tiers"},
		{"bad cursor", "GET", "/v1/billable-metrics?cursor=zzz", "", "", 400, "validation-error", "cursor"},
		{"bad limit", "GET", "/v1/metering-rules?limit=0", "", "", 400, "validation-error", "limit"},
		{"bad units query", "GET", ext(recipeUser) + "/entitlements/look?units=0", "", "", 400, "validation-error", "units"},
		{"ttl too long", "POST", "/v1/reserve", "k9",
			`{"external_customer_id": "user42:companion7", "billable_metric_key": "look", "estimated_units": 1, "ttl_seconds": 3601}`, 400, "validation-error", "ttl_seconds"},
		{"bad metric key", "POST", "/v1/billable-metrics", "k10", `{"key": "Bad-Key"}`, 400, "validation-error", "key"},
		{"missing idempotency key", "POST", "/v1/usage", "", usageBody(recipeUser, "look", 1), 400, "idempotency-key-required", ""},
		{"insufficient credits", "POST", "/v1/usage", "k11", usageBody(recipeUser, "chat_message", 1), 402, "insufficient-credits", ""},
		{"unknown customer uuid", "GET", "/v1/customers/019d6258-07ba-7418-83be-58f5fde53e4e/credits", "", "", 404, "customer-not-found", ""},
		{"external id under /v1/customers", "GET", "/v1/customers/user42:companion7/entitlements/chat_message", "", "", 404, "customer-not-found", ""},
		{"unknown external id", "GET", ext("nobody") + "/credits", "", "", 404, "customer-not-found", ""},
		{"unknown external id in body", "POST", "/v1/usage", "k12", usageBody("nobody", "look", 1), 404, "customer-not-found", ""},
		{"unknown metric", "GET", ext(recipeUser) + "/entitlements/nope", "", "", 404, "metric-not-found", ""},
		{"unknown metric on usage", "POST", "/v1/usage", "k13", usageBody(recipeUser, "nope", 1), 404, "metric-not-found", ""},
		{"unknown reservation", "GET", "/v1/reserve/rsv_nope", "", "", 404, "reservation-not-found", ""},
		{"commit unknown reservation", "POST", "/v1/reserve/rsv_nope/commit", "k14", `{"actual_units": 1}`, 404, "reservation-not-found", ""},
		{"unknown route", "GET", "/v1/nothing-here", "", "", 404, "not-found", ""},
		{"unknown rule", "GET", "/v1/metering-rules/rule_nope", "", "", 404, "not-found", ""},
		{"wrong method", "DELETE", "/v1/usage", "", "", 404, "not-found", ""},
		{"rule for unknown metric", "POST", "/v1/metering-rules", "k18", `{"billable_metric_key": "nope", "cost_type": "flat"}`, 404, "metric-not-found", ""},
		{"unknown metric by key", "GET", "/v1/billable-metrics/nope", "", "", 404, "metric-not-found", ""},
		{"idempotency conflict", "POST", "/v1/usage", "dup", usageBody(recipeUser, "look", 2), 409, "idempotency-key-conflict", ""},
		{"customer exists", "POST", "/v1/customers", "k15", `{"external_id": "user42:companion7"}`, 409, "customer-exists", ""},
		{"release not active", "POST", "/v1/reserve/" + rid + "/release", "k15b", "", 409, "reservation-not-active", ""},
		{"reservation not active", "POST", "/v1/reserve/" + rid + "/commit", "k16", `{"actual_units": 1}`, 409, "reservation-not-active", ""},
		{"no active rule", "GET", ext(recipeUser) + "/entitlements/unpriced", "", "", 422, "no-active-rule", ""},
		{"no active rule on usage", "POST", "/v1/usage", "k17", usageBody(recipeUser, "unpriced", 1), 422, "no-active-rule", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := w.send(tc.method, tc.path, tc.key, tc.body)
			require.NoError(t, err)
			m := requireProblem(t, r, tc.status, tc.slug)
			if tc.field != "" {
				errs, ok := m["errors"].([]any)
				require.True(t, ok, "validation errors carry errors[]: %s", r.body)
				var fields []any
				for _, e := range errs {
					requireKeys(t, e.(map[string]any), "field", "message")
					fields = append(fields, e.(map[string]any)["field"])
				}
				require.Contains(t, fields, tc.field)
			}
			if tc.slug == "insufficient-credits" {
				require.Equal(t, float64(1000), m["required"])
				require.Equal(t, float64(0), m["available"])
			}
		})
	}
}

func TestUnauthorized(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithAPIKey("qs_test_right"))
	for _, key := range []string{"", "qs_test_wrong"} {
		// A POST without Idempotency-Key and a bad key: 401 comes first.
		req, err := http.NewRequest(http.MethodPost, w.srv.URL+"/v1/usage", nil)
		require.NoError(t, err)
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, err := w.hc.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 401, resp.StatusCode)
		require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	}
	requireStatus(t, w.get(ext("nobody")+"/credits"), 404) // the right key passes
}

func TestInjectedStatusErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		status     int
		slug       string
		retryAfter string
	}{
		{500, "internal-error", ""},
		{503, "unavailable", "2"},
		{429, "rate-limited", "1"},
	}
	for _, tc := range cases {
		w := newWorld(t)
		w.srv.InjectFault(quotastacktest.Fault{Status: tc.status, RetryAfter: tc.retryAfter})
		r := w.get("/v1/billable-metrics")
		requireProblem(t, r, tc.status, tc.slug)
		require.Equal(t, tc.retryAfter, r.header.Get("Retry-After"))
		requireStatus(t, w.get("/v1/billable-metrics"), 200)
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	w := newWorld(t, quotastacktest.WithRateLimit(3, time.Minute))
	for range 3 {
		requireStatus(t, w.get("/v1/billable-metrics"), 200)
	}
	r := w.get("/v1/billable-metrics")
	requireProblem(t, r, 429, "rate-limited")
	require.Equal(t, "60", r.header.Get("Retry-After"), "the window's oldest request leaves it in 60 s")
	w.clock.Advance(20 * time.Second)
	r = w.get("/v1/billable-metrics")
	requireProblem(t, r, 429, "rate-limited")
	require.Equal(t, "40", r.header.Get("Retry-After"), "a sliding window: no refill before the oldest leaves")
	w.clock.Advance(40 * time.Second)
	for range 3 {
		requireStatus(t, w.get("/v1/billable-metrics"), 200)
	}
	requireProblem(t, w.get("/v1/billable-metrics"), 429, "rate-limited")

	w.srv.SetRateLimit(0, 0) // off
	for range 10 {
		requireStatus(t, w.get("/v1/billable-metrics"), 200)
	}
	var limited int
	for _, rec := range w.srv.Requests() {
		if rec.Fault == "ratelimit" {
			limited++
			require.Equal(t, 429, rec.Status)
		}
	}
	require.Equal(t, 3, limited)
}
