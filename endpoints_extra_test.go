package quotastack_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

// Customers, promotional grants, reservations and the catalog.

func TestMoreEndpointRequests(t *testing.T) {
	t.Parallel()
	expires := time.Date(2026, 12, 1, 8, 0, 0, 0, time.FixedZone("EST", -5*3600))
	tests := []struct {
		name    string
		call    func(context.Context, *quotastack.Client) error
		method  string
		path    string
		query   url.Values
		body    string
		wantKey string // expected Idempotency-Key; "" = any generated one
	}{
		{
			name: "create customer", method: http.MethodPost, path: "/v1/customers",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.CreateCustomer(ctx, "user42:companion7", "Ann")
				return err
			},
			body: `{"external_id":"user42:companion7","display_name":"Ann"}`, wantKey: "customer:user42%3Acompanion7",
		},
		{
			name: "create customer, caller key wins", method: http.MethodPost, path: "/v1/customers",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.CreateCustomer(ctx, "u1", "", quotastack.WithIdempotencyKey("mine"))
				return err
			},
			body: `{"external_id":"u1"}`, wantKey: "mine",
		},
		{
			name: "get customer by external id", method: http.MethodGet, path: "/v1/customer-by-external-id/a%2Fb%3Ac",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.GetCustomer(ctx, quotastack.ExternalID("a/b:c"))
				return err
			},
		},
		{
			name: "get customer by id", method: http.MethodGet, path: "/v1/customers/" + uuid,
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.GetCustomer(ctx, quotastack.CustomerID(uuid))
				return err
			},
		},
		{
			name: "grant credits", method: http.MethodPost, path: "/v1/customer-by-external-id/u%201/credits/grant",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.GrantCredits(ctx, quotastack.ExternalID("u 1"), quotastack.CreditGrantParams{
					Credits: 5000, Source: "promotional", Reason: "signup", ExpiresAt: &expires,
					Metadata: map[string]string{"campaign": "c1"},
				}, quotastack.WithIdempotencyKey(quotastack.SignupGrantKey("u1")))
				return err
			},
			body:    `{"credits":5000,"source":"promotional","reason":"signup","priority":0,"expires_at":"2026-12-01T13:00:00Z","metadata":{"campaign":"c1"}}`,
			wantKey: "signup-grant:u1",
		},
		{
			name: "reserve", method: http.MethodPost, path: "/v1/reserve",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: quotastack.ExternalID("u"), MetricKey: "gen",
					EstimatedUnits: 3, TTL: time.Minute, Metadata: map[string]string{"job": "j1"}})
				return err
			},
			body: `{"external_customer_id":"u","billable_metric_key":"gen","estimated_units":3,"ttl_seconds":60,"metadata":{"job":"j1"}}`,
		},
		{
			name: "reserve with the default TTL", method: http.MethodPost, path: "/v1/reserve",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: quotastack.CustomerID(uuid), MetricKey: "gen", EstimatedUnits: 1})
				return err
			},
			body: `{"customer_id":"` + uuid + `","billable_metric_key":"gen","estimated_units":1}`,
		},
		{
			name: "commit escapes the id", method: http.MethodPost, path: "/v1/reserve/rsv%2F1/commit",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Commit(ctx, "rsv/1", 0)
				return err
			},
			body: `{"actual_units":0}`,
		},
		{
			name: "release", method: http.MethodPost, path: "/v1/reserve/rsv_1/release",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Release(ctx, "rsv_1")
				return err
			},
			body: `{}`,
		},
		{
			name: "create metric", method: http.MethodPost, path: "/v1/billable-metrics",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.CreateMetric(ctx, quotastack.Metric{Key: "chat_message", Name: "Chat message", CreatedAt: time.Now()})
				return err
			},
			body: `{"key":"chat_message","name":"Chat message"}`, wantKey: "metric:chat_message",
		},
		{
			name: "get metric", method: http.MethodGet, path: "/v1/billable-metrics/chat_message",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.GetMetric(ctx, "chat_message")
				return err
			},
		},
		{
			name: "create rule strips server fields", method: http.MethodPost, path: "/v1/metering-rules",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.CreateRule(ctx, quotastack.Rule{
					ID: "rule_old", Active: true, CreatedAt: time.Now(),
					BillableMetricKey: "gen", CostType: quotastack.CostGraduated, OveragePolicy: quotastack.OverageBlock,
					Tiers:    []quotastack.Tier{{UpTo: ptr(int64(10)), UnitCost: 100}, {UnitCost: 50}},
					Eligible: &quotastack.Eligibility{MinPriority: ptr(10)},
				})
				return err
			},
			body: `{"billable_metric_key":"gen","cost_type":"graduated","overage_policy":"block",
				"tiers":[{"up_to":10,"unit_cost":100},{"up_to":null,"unit_cost":50}],"eligible":{"min_priority":10}}`,
		},
		{
			name: "get rule", method: http.MethodGet, path: "/v1/metering-rules/rule%201",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.GetRule(ctx, "rule 1")
				return err
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			rec := &recorder{}
			mt.RegisterResponder(tt.method, baseURL+tt.path, rec.wrap(jsonResponder(200, `{}`)))

			require.NoError(t, tt.call(context.Background(), c))

			s := rec.only(t)
			assert.Equal(t, tt.method, s.Method)
			assert.Equal(t, "/base"+tt.path, s.Path)
			if tt.query == nil {
				tt.query = url.Values{}
			}
			assert.Equal(t, tt.query, s.Query)
			testHeaders(t, s, tt.body != "")
			testJSONBody(t, s, tt.body)
			if tt.wantKey != "" {
				assert.Equal(t, tt.wantKey, s.Header.Get("Idempotency-Key"))
			}
		})
	}
}

func TestDeriveKey(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "signup-grant:u1", quotastack.SignupGrantKey("u1"))
	assert.Equal(t, "action-grant:u1:a1", quotastack.ActionGrantKey("u1", "a1"))
	assert.Equal(t, "plan:starter", quotastack.DeriveKey("plan", "starter"))
	tests := []struct{ id, want string }{
		{"has space", "customer:has%20space"},
		{"clé", "customer:cl%C3%A9"},
		{"user42:companion7", "customer:user42%3Acompanion7"},
		{strings.Repeat("x", 300), "customer:%h"},
	}
	for _, tt := range tests {
		k := quotastack.DeriveKey("customer", tt.id)
		assert.True(t, strings.HasPrefix(k, tt.want) && (k == tt.want || strings.HasSuffix(tt.want, "%h")), "%q: %s", tt.id, k)
		assert.Equal(t, k, quotastack.DeriveKey("customer", tt.id), "deterministic")
	}
	assert.NotEqual(t, quotastack.DeriveKey("p", "a b"), quotastack.DeriveKey("p", "a  b"))
	// The collision of the issue: a compound user id against a compound action id.
	assert.NotEqual(t, quotastack.ActionGrantKey("user42:companion7", "like"), quotastack.ActionGrantKey("user42", "companion7:like"))
}

// FuzzGrantKeysInjective: two different (user, action) pairs never share an
// action-grant key, and a signup key never equals another user's.
func FuzzGrantKeysInjective(f *testing.F) {
	f.Add("user42:companion7", "like", "user42", "companion7:like")
	f.Add("a%3Ab", "c", "a:b", "c")
	f.Fuzz(func(t *testing.T, u1, a1, u2, a2 string) {
		if (u1 != u2 || a1 != a2) && quotastack.ActionGrantKey(u1, a1) == quotastack.ActionGrantKey(u2, a2) {
			t.Fatalf("ActionGrantKey(%q,%q) == ActionGrantKey(%q,%q)", u1, a1, u2, a2)
		}
		if u1 != u2 && quotastack.SignupGrantKey(u1) == quotastack.SignupGrantKey(u2) {
			t.Fatalf("SignupGrantKey(%q) == SignupGrantKey(%q)", u1, u2)
		}
	})
}

func TestDecodeCustomerAndReservation(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/customers", jsonResponder(201, `{"customer_id":"`+uuid+`",
		"external_customer_id":"u1","display_name":"Ann","created_at":"2026-11-01T10:00:00Z"}`))
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/reserve", jsonResponder(201, `{"id":"rsv_1","status":"active",
		"customer_id":"`+uuid+`","external_customer_id":"u1","billable_metric_key":"gen","estimated_units":3,
		"reserved_amount":3000,"expires_at":"2026-11-01T10:05:00Z"}`))

	cust, err := c.CreateCustomer(context.Background(), "u1", "Ann")
	require.NoError(t, err)
	assert.Equal(t, uuid, cust.CustomerID)
	assert.Equal(t, "Ann", cust.DisplayName)
	assert.Equal(t, time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC), cust.CreatedAt)
	assert.Equal(t, quotastack.CustomerID(uuid), cust.Ref())
	assert.Equal(t, 201, cust.Meta.StatusCode)

	r, err := c.Reserve(context.Background(), quotastack.ReserveParams{Customer: cust.Ref(), MetricKey: "gen", EstimatedUnits: 3})
	require.NoError(t, err)
	assert.Equal(t, "rsv_1", r.ID)
	assert.Equal(t, "active", r.Status)
	assert.Equal(t, int64(3000), r.ReservedAmount)
	assert.Equal(t, time.Date(2026, 11, 1, 10, 5, 0, 0, time.UTC), r.ExpiresAt)
}

func TestMoreInputMistakes(t *testing.T) {
	t.Parallel()
	u := quotastack.ExternalID("u")
	tests := []struct {
		name string
		call func(context.Context, *quotastack.Client) error
	}{
		{"create customer empty id", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.CreateCustomer(ctx, "", "x")
			return err
		}},
		{"get customer empty", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.GetCustomer(ctx, quotastack.Customer{})
			return err
		}},
		{"grant zero credits", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.GrantCredits(ctx, u, quotastack.CreditGrantParams{})
			return err
		}},
		{"grant negative priority", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.GrantCredits(ctx, u, quotastack.CreditGrantParams{Credits: 1, Priority: -1})
			return err
		}},
		{"reserve zero units", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: u, MetricKey: "gen"})
			return err
		}},
		{"reserve empty metric", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: u, EstimatedUnits: 1})
			return err
		}},
		{"reserve TTL under a second", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: u, MetricKey: "gen", EstimatedUnits: 1, TTL: 500 * time.Millisecond})
			return err
		}},
		{"reserve TTL over an hour", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Reserve(ctx, quotastack.ReserveParams{Customer: u, MetricKey: "gen", EstimatedUnits: 1, TTL: 2 * time.Hour})
			return err
		}},
		{"commit empty id", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Commit(ctx, "", 1)
			return err
		}},
		{"commit negative units", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Commit(ctx, "rsv_1", -1)
			return err
		}},
		{"release empty id", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.Release(ctx, "")
			return err
		}},
		{"metric key not lowercase_with_underscores", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.CreateMetric(ctx, quotastack.Metric{Key: "Chat-Message"})
			return err
		}},
		{"rule unknown cost type", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.CreateRule(ctx, quotastack.Rule{BillableMetricKey: "gen", CostType: "free"})
			return err
		}},
		{"rule negative cost", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.CreateRule(ctx, quotastack.Rule{BillableMetricKey: "gen", CostType: quotastack.CostPerUnit, UnitCost: -1})
			return err
		}},
		{"get rule empty id", func(ctx context.Context, c *quotastack.Client) error {
			_, err := c.GetRule(ctx, "")
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			assert.ErrorIs(t, tt.call(context.Background(), c), quotastack.ErrInvalidInput)
			assert.Zero(t, mt.GetTotalCallCount())
		})
	}
}

func TestRunReserved(t *testing.T) {
	t.Parallel()
	errWork := errors.New("work failed")
	tests := []struct {
		name        string
		fn          func(context.Context, *quotastack.Reservation) (int64, error)
		cancelInFn  bool
		releaseFail bool
		wantErr     error
		wantPath    string // the settling call
		wantBody    string
		wantKey     string
	}{
		{
			name:     "commits the reported units",
			fn:       func(context.Context, *quotastack.Reservation) (int64, error) { return 4, nil },
			wantPath: "/v1/reserve/rsv_1/commit", wantBody: `{"actual_units":4}`, wantKey: "commit:rsv_1",
		},
		{
			name:    "releases when fn fails",
			fn:      func(context.Context, *quotastack.Reservation) (int64, error) { return 0, errWork },
			wantErr: errWork, wantPath: "/v1/reserve/rsv_1/release", wantBody: `{}`, wantKey: "release:rsv_1",
		},
		{
			name: "releases when ctx ends during fn", cancelInFn: true,
			fn:      func(context.Context, *quotastack.Reservation) (int64, error) { return 4, nil },
			wantErr: context.Canceled, wantPath: "/v1/reserve/rsv_1/release", wantBody: `{}`, wantKey: "release:rsv_1",
		},
		{
			name: "a failed release is joined", releaseFail: true,
			fn:      func(context.Context, *quotastack.Reservation) (int64, error) { return 0, errWork },
			wantErr: quotastack.ErrConflict, wantPath: "/v1/reserve/rsv_1/release", wantBody: `{}`, wantKey: "release:rsv_1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			settle := &recorder{}
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/reserve", jsonResponder(201, `{"id":"rsv_1","status":"active"}`))
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/reserve/rsv_1/commit", settle.wrap(jsonResponder(200, `{"id":"rsv_1","status":"committed","cost":4000}`)))
			release := jsonResponder(200, `{"id":"rsv_1","status":"released"}`)
			if tt.releaseFail {
				release = problemResponder(409, problem(409, "reservation-not-active", "", ""))
			}
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/reserve/rsv_1/release", settle.wrap(release))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			fn := tt.fn
			if tt.cancelInFn {
				fn = func(ctx context.Context, r *quotastack.Reservation) (int64, error) {
					cancel()
					return tt.fn(ctx, r)
				}
			}

			res, err := c.RunReserved(ctx, quotastack.ReserveParams{Customer: quotastack.ExternalID("u"), MetricKey: "gen", EstimatedUnits: 5}, fn)
			if tt.wantErr == nil {
				require.NoError(t, err)
				assert.Equal(t, "committed", res.Status)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
				if tt.releaseFail {
					assert.ErrorIs(t, err, errWork, "fn's error is kept")
				}
			}
			s := settle.only(t)
			assert.Equal(t, "/base"+tt.wantPath, s.Path)
			testJSONBody(t, s, tt.wantBody)
			assert.Equal(t, tt.wantKey, s.Header.Get("Idempotency-Key"))
		})
	}
}

func TestRunReservedReleasesOnPanic(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	settle := &recorder{}
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/reserve", jsonResponder(201, `{"id":"rsv_1","status":"active"}`))
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/reserve/rsv_1/release", settle.wrap(jsonResponder(200, `{"status":"released"}`)))

	assert.PanicsWithValue(t, "boom", func() {
		_, _ = c.RunReserved(context.Background(), quotastack.ReserveParams{Customer: quotastack.ExternalID("u"), MetricKey: "gen", EstimatedUnits: 1},
			func(context.Context, *quotastack.Reservation) (int64, error) { panic("boom") })
	})
	assert.Equal(t, "/base/v1/reserve/rsv_1/release", settle.only(t).Path)
}

func TestMetricsPagination(t *testing.T) {
	t.Parallel()
	pages := map[string]string{
		"":   `{"data":[{"key":"a"},{"key":"b"}],"pagination":{"has_more":true,"next_cursor":"c1"}}`,
		"c1": `{"data":[{"key":"c"}],"pagination":{"has_more":false,"next_cursor":null}}`,
		"c2": `{"data":[{"key":"x"}],"pagination":{"has_more":true,"next_cursor":"c2"}}`, // a server stuck on one cursor
	}
	serve := func(rec *recorder) func(*http.Request) (*http.Response, error) {
		return rec.wrap(func(req *http.Request) (*http.Response, error) {
			return jsonResponder(200, pages[req.URL.Query().Get("cursor")])(req)
		})
	}

	t.Run("walks every page", func(t *testing.T) {
		t.Parallel()
		c, mt := setup(t)
		rec := &recorder{}
		mt.RegisterResponder(http.MethodGet, baseURL+"/v1/billable-metrics", serve(rec))
		var keys []string
		for m, err := range c.Metrics(context.Background(), 2) {
			require.NoError(t, err)
			keys = append(keys, m.Key)
		}
		assert.Equal(t, []string{"a", "b", "c"}, keys)
		calls := rec.all()
		require.Len(t, calls, 2)
		assert.Equal(t, url.Values{"limit": {"2"}}, calls[0].Query)
		assert.Equal(t, url.Values{"limit": {"2"}, "cursor": {"c1"}}, calls[1].Query)
	})
	t.Run("stops when the caller breaks", func(t *testing.T) {
		t.Parallel()
		c, mt := setup(t)
		rec := &recorder{}
		mt.RegisterResponder(http.MethodGet, baseURL+"/v1/billable-metrics", serve(rec))
		for range c.Metrics(context.Background(), 0) {
			break
		}
		require.Len(t, rec.all(), 1)
		assert.Empty(t, rec.all()[0].Query)
	})
	t.Run("a repeated cursor is an error", func(t *testing.T) {
		t.Parallel()
		c, mt := setup(t)
		pagesStuck := func(req *http.Request) (*http.Response, error) {
			if req.URL.Query().Get("cursor") == "" {
				return jsonResponder(200, `{"data":[{"key":"a"}],"pagination":{"has_more":true,"next_cursor":"c2"}}`)(req)
			}
			return jsonResponder(200, pages["c2"])(req)
		}
		mt.RegisterResponder(http.MethodGet, baseURL+"/v1/metering-rules", pagesStuck)
		var n int
		var last error
		for _, err := range c.Rules(context.Background(), 0) {
			n++
			last = err
		}
		assert.ErrorIs(t, last, quotastack.ErrUnexpectedResponse)
		assert.Less(t, n, 10)
	})
	t.Run("an error ends the walk", func(t *testing.T) {
		t.Parallel()
		c, mt := setup(t)
		mt.RegisterResponder(http.MethodGet, baseURL+"/v1/billable-metrics", problemResponder(401, problem(401, "unauthorized", "", "")))
		var errs []error
		for _, err := range c.Metrics(context.Background(), 0) {
			errs = append(errs, err)
		}
		require.Len(t, errs, 1)
		assert.ErrorIs(t, errs[0], quotastack.ErrUnauthorized)
	})
}
