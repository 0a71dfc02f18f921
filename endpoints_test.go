package quotastack_test

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

const uuid = "019d6258-07ba-7418-83be-58f5fde53e4e"

// TestEndpointRequests checks the exact request line, query, headers and
// JSON body of every wrapped call, including the escaping of customer ids.
func TestEndpointRequests(t *testing.T) {
	t.Parallel()
	expires := time.Date(2026, 12, 1, 13, 0, 0, 0, time.FixedZone("CET", 3600))
	tests := []struct {
		name      string
		call      func(context.Context, *quotastack.Client) error
		method    string
		path      string // escaped, after the base path
		query     url.Values
		body      string // JSON literal; empty for no body
		respond   int
		respBody  string
		respBlobs bool
	}{
		{
			name: "check by customer id",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Check(ctx, quotastack.CustomerID(uuid), "look", 1)
				return err
			},
			method: http.MethodGet, path: "/v1/customers/" + uuid + "/entitlements/look",
			query: url.Values{"units": {"1"}},
		},
		{
			name: "check by external id escapes colon",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Check(ctx, quotastack.ExternalID("user42:companion7"), "chat_message", 3)
				return err
			},
			method: http.MethodGet, path: "/v1/customer-by-external-id/user42%3Acompanion7/entitlements/chat_message",
			query: url.Values{"units": {"3"}},
		},
		{
			name: "check escapes slash and space",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Check(ctx, quotastack.ExternalID("team/a b"), "look", 2)
				return err
			},
			method: http.MethodGet, path: "/v1/customer-by-external-id/team%2Fa%20b/entitlements/look",
			query: url.Values{"units": {"2"}},
		},
		{
			name: "check escapes unicode, percent, at and plus",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Check(ctx, quotastack.ExternalID("josé@例+50%"), "look", 1)
				return err
			},
			method: http.MethodGet, path: "/v1/customer-by-external-id/jos%C3%A9%40%E4%BE%8B%2B50%25/entitlements/look",
			query: url.Values{"units": {"1"}},
		},
		{
			name: "check escapes dot segments and the metric key",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Check(ctx, quotastack.ExternalID(".."), "a/b?c", 1)
				return err
			},
			method: http.MethodGet, path: "/v1/customer-by-external-id/%2E%2E/entitlements/a%2Fb%3Fc",
			query: url.Values{"units": {"1"}},
		},
		{
			name: "balance",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Balance(ctx, quotastack.ExternalID("user_abc"))
				return err
			},
			method: http.MethodGet, path: "/v1/customer-by-external-id/user_abc/credits",
			query: url.Values{},
		},
		{
			name: "balance with blocks",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.BalanceWithBlocks(ctx, quotastack.CustomerID(uuid))
				return err
			},
			method: http.MethodGet, path: "/v1/customers/" + uuid + "/credits",
			query: url.Values{"include_blocks": {"true"}},
		},
		{
			name: "record usage by external id with metadata",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Record(ctx, quotastack.UsageParams{
					Customer: quotastack.ExternalID("user42:companion7"), MetricKey: "chat_message", Units: 2,
					Metadata: map[string]string{"message_id": "m1"},
				})
				return err
			},
			method: http.MethodPost, path: "/v1/usage", query: url.Values{},
			body: `{"external_customer_id":"user42:companion7","billable_metric_key":"chat_message","units":2,"metadata":{"message_id":"m1"}}`,
		},
		{
			name: "record usage by customer id",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Record(ctx, quotastack.UsageParams{Customer: quotastack.CustomerID(uuid), MetricKey: "look", Units: 1})
				return err
			},
			method: http.MethodPost, path: "/v1/usage", query: url.Values{},
			body: `{"customer_id":"` + uuid + `","billable_metric_key":"look","units":1}`,
		},
		{
			name: "record batch",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.RecordBatch(ctx, []quotastack.UsageParams{
					{Customer: quotastack.ExternalID("a"), MetricKey: "look", Units: 1},
					{Customer: quotastack.CustomerID(uuid), MetricKey: "chat_message", Units: 5, Metadata: map[string]string{"k": "v"}},
				})
				return err
			},
			method: http.MethodPost, path: "/v1/usage/batch", query: url.Values{},
			body: `{"events":[{"external_customer_id":"a","billable_metric_key":"look","units":1},
				{"customer_id":"` + uuid + `","billable_metric_key":"chat_message","units":5,"metadata":{"k":"v"}}]}`,
		},
		{
			name: "topup with every field",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Topup(ctx, quotastack.TopupParams{
					Customer: quotastack.ExternalID("user_abc"), Credits: 50000, PricePaid: 499, Currency: "USD",
					PackageID: "pkg_50", ExternalPaymentID: "pay_abc123", Priority: quotastack.PlanPriority,
					ExpiresAt: &expires, Metadata: map[string]string{"trigger": "auto_buy"},
				})
				return err
			},
			method: http.MethodPost, path: "/v1/topup/grant", query: url.Values{}, respond: http.StatusCreated,
			body: `{"external_customer_id":"user_abc","credits":50000,"price_paid":499,"currency":"USD",
				"package_id":"pkg_50","external_payment_id":"pay_abc123","priority":10,
				"expires_at":"2026-12-01T12:00:00Z","metadata":{"trigger":"auto_buy"}}`,
		},
		{
			name: "topup minimal keeps priority and price_paid zero",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Topup(ctx, quotastack.TopupParams{Customer: quotastack.CustomerID(uuid), Credits: 1})
				return err
			},
			method: http.MethodPost, path: "/v1/topup/grant", query: url.Values{}, respond: http.StatusCreated,
			body: `{"customer_id":"` + uuid + `","credits":1,"price_paid":0,"priority":0}`,
		},
		{
			name: "do escape hatch with query and body",
			call: func(ctx context.Context, c *quotastack.Client) error {
				_, err := c.Do(ctx, http.MethodPost, "/v1/reserve/rsv_1/commit?dry_run=true", map[string]int{"actual_units": 3}, nil)
				return err
			},
			method: http.MethodPost, path: "/v1/reserve/rsv_1/commit", query: url.Values{"dry_run": {"true"}},
			body: `{"actual_units":3}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			rec := &recorder{}
			status := tt.respond
			if status == 0 {
				status = http.StatusOK
			}
			mt.RegisterResponder(tt.method, baseURL+tt.path, rec.wrap(jsonResponder(status, `{}`)))

			require.NoError(t, tt.call(context.Background(), c))

			s := rec.only(t)
			assert.Equal(t, tt.method, s.Method)
			assert.Equal(t, "/base"+tt.path, s.Path)
			assert.Equal(t, tt.query, s.Query)
			testHeaders(t, s, tt.body != "")
			testJSONBody(t, s, tt.body)
		})
	}
}

// TestEscapingOnTheWire checks with a real server that the escaped path is
// what arrives, not a re-encoded or normalised one.
func TestEscapingOnTheWire(t *testing.T) {
	t.Parallel()
	got := make(chan string, 1)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.RequestURI
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"allowed":true}`))
	})
	c, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL))
	require.NoError(t, err)

	_, err = c.Check(context.Background(), quotastack.ExternalID("user42:companion7/x y.é"), "look", 7)
	require.NoError(t, err)
	assert.Equal(t, "/v1/customer-by-external-id/user42%3Acompanion7%2Fx%20y.%C3%A9/entitlements/look?units=7", <-got)
}

func TestDecodeEntitlement(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	// The contract's sample, verbatim.
	mt.RegisterResponder(http.MethodGet, baseURL+"/v1/customer-by-external-id/user_abc/entitlements/look",
		jsonResponder(200, `{"allowed": true, "customer_id": "019d…", "external_customer_id": "user_abc",
 "billable_metric_key": "look", "units": 1, "balance": 150000, "reserved_balance": 10000,
 "effective_balance": 140000, "estimated_cost": 1000, "balance_after": 139000,
 "subscription_status": "active", "overage_policy": "block"}`, "X-Request-Id", "req_1"))

	got, err := c.Check(context.Background(), quotastack.ExternalID("user_abc"), "look", 1)
	require.NoError(t, err)
	assert.Equal(t, quotastack.Entitlement{
		Allowed: true, CustomerID: "019d…", ExternalCustomerID: "user_abc", BillableMetricKey: "look", Units: 1,
		Balance: 150000, ReservedBalance: 10000, EffectiveBalance: 140000, EstimatedCost: 1000, BalanceAfter: 139000,
		SubscriptionStatus: "active", OveragePolicy: "block",
		Meta: quotastack.ResponseMeta{StatusCode: 200, RequestID: "req_1", Attempts: 1},
	}, *got)
}

func TestDecodeEntitlementRefusal(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	// "Plan credits exhausted": a refusal is a result, not an error; subscription_status absent.
	mt.RegisterResponder(http.MethodGet, baseURL+"/v1/customer-by-external-id/u/entitlements/chat_message",
		jsonResponder(200, `{"allowed":false,"external_customer_id":"u","billable_metric_key":"chat_message","units":1,
			"balance":500000,"reserved_balance":0,"effective_balance":500000,"estimated_cost":1000,"balance_after":-1000,
			"overage_policy":"block"}`))

	got, err := c.Check(context.Background(), quotastack.ExternalID("u"), "chat_message", 1)
	require.NoError(t, err)
	assert.False(t, got.Allowed)
	assert.Equal(t, int64(500000), got.Balance)
	assert.Equal(t, int64(-1000), got.BalanceAfter)
	assert.Empty(t, got.SubscriptionStatus)
}

func TestDecodeBalanceWithBlocks(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodGet, baseURL+"/v1/customer-by-external-id/user_abc/credits",
		jsonResponder(200, `{"customer_id":"`+uuid+`","external_customer_id":"user_abc","balance":160000,
			"reserved_balance":10000,"effective_balance":150000,"lifetime_earned":900000,"version":42,
			"blocks":[
			 {"id":"blk_wallet","original_amount":100000,"remaining_amount":100000,"priority":0,"expires_at":null,
			  "source":"topup","metadata":{"package_id":"pkg_100"},"created_at":"2026-11-01T10:00:00Z"},
			 {"id":"blk_plan","original_amount":60000,"remaining_amount":50000,"priority":10,
			  "expires_at":"2026-11-02T10:00:00Z","source":"topup","created_at":"2026-11-01T11:00:00Z"},
			 {"id":"blk_promo","original_amount":10000,"remaining_amount":10000,"priority":5,"expires_at":null,
			  "source":"promotional","created_at":"2026-11-01T12:00:00Z"}]}`))

	got, err := c.BalanceWithBlocks(context.Background(), quotastack.ExternalID("user_abc"))
	require.NoError(t, err)
	assert.Equal(t, uuid, got.CustomerID)
	assert.Equal(t, "user_abc", got.ExternalCustomerID)
	assert.Equal(t, int64(160000), got.Balance)
	assert.Equal(t, int64(10000), got.ReservedBalance)
	assert.Equal(t, int64(150000), got.EffectiveBalance)
	assert.Equal(t, int64(900000), got.LifetimeEarned)
	assert.Equal(t, int64(42), got.Version)
	require.Len(t, got.Blocks, 3)
	assert.Equal(t, quotastack.Block{
		ID: "blk_plan", OriginalAmount: 60000, RemainingAmount: 50000, Priority: 10,
		ExpiresAt: ptr(time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)), Source: "topup",
		CreatedAt: time.Date(2026, 11, 1, 11, 0, 0, 0, time.UTC),
	}, got.Blocks[1])
	assert.Nil(t, got.Blocks[0].ExpiresAt)
	assert.Equal(t, quotastack.Metadata{"package_id": "pkg_100"}, got.Blocks[0].Metadata)
	assert.Equal(t, int64(100000), got.WalletMC())
	assert.Equal(t, int64(50000), got.PlanMC())
	assert.Equal(t, []string{"blk_wallet"}, blockIDs(got.WalletBlocks()))
	assert.Equal(t, []string{"blk_plan"}, blockIDs(got.PlanBlocks()))
	assert.Equal(t, int64(160000), quotastack.SumRemaining(got.Blocks))
}

func blockIDs(bs []quotastack.Block) []string {
	var ids []string
	for _, b := range bs {
		ids = append(ids, b.ID)
	}
	return ids
}

func TestDecodeUsageEvent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		body   string
		want   quotastack.UsageEvent
	}{
		{
			name: "prepaid 200", status: 200,
			body: `{"id":"evt_1","customer_id":"` + uuid + `","external_customer_id":"u","billable_metric_key":"look",
				"units":2,"cost":2000,"balance_after":148000,"created_at":"2026-11-01T10:00:00Z"}`,
			want: quotastack.UsageEvent{ID: "evt_1", CustomerID: uuid, ExternalCustomerID: "u", BillableMetricKey: "look",
				Units: 2, Cost: 2000, BalanceAfter: 148000, CreatedAt: time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)},
		},
		{name: "201 accepted as success", status: 201, body: `{"id":"evt_2","units":2}`, want: quotastack.UsageEvent{ID: "evt_2", Units: 2}},
		{name: "postpaid 202 with fewer fields", status: 202, body: `{"id":"evt_3"}`, want: quotastack.UsageEvent{ID: "evt_3", Accepted: true}},
		{name: "unknown fields ignored", status: 200, body: `{"id":"evt_4","new_field":{"x":1}}`, want: quotastack.UsageEvent{ID: "evt_4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", jsonResponder(tt.status, tt.body))

			got, err := c.Record(context.Background(), quotastack.UsageParams{
				Customer: quotastack.ExternalID("u"), MetricKey: "look", Units: 2,
			}, quotastack.WithIdempotencyKey("usage:msg_1"))
			require.NoError(t, err)
			assert.Equal(t, tt.status, got.Meta.StatusCode)
			assert.Equal(t, "usage:msg_1", got.Meta.IdempotencyKey)
			got.Meta = quotastack.ResponseMeta{}
			assert.Equal(t, tt.want, *got)
		})
	}
}

func TestDecodeUsageBatch(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage/batch", jsonResponder(200, `{"results":[
		{"index":0,"status":200,"event":{"id":"evt_1","units":1,"cost":1000}},
		{"index":1,"status":402,"error":{"type":"https://quotastack.io/errors/insufficient-credits",
		 "title":"Insufficient credits","detail":"need more","required":5000,"available":10}}]}`))

	got, err := c.RecordBatch(context.Background(), []quotastack.UsageParams{
		{Customer: quotastack.ExternalID("a"), MetricKey: "look", Units: 1},
		{Customer: quotastack.ExternalID("b"), MetricKey: "look", Units: 5},
	})
	require.NoError(t, err, "per-event failures are in the results, not the error")
	require.Len(t, got.Results, 2)
	assert.Equal(t, 200, got.Results[0].Status)
	require.NotNil(t, got.Results[0].Event)
	assert.Equal(t, "evt_1", got.Results[0].Event.ID)
	assert.Nil(t, got.Results[0].Problem)
	assert.Equal(t, 1, got.Results[1].Index)
	assert.Nil(t, got.Results[1].Event)
	assert.Equal(t, &quotastack.BatchProblem{
		Type: "https://quotastack.io/errors/insufficient-credits", Title: "Insufficient credits",
		Detail: "need more", Required: 5000, Available: 10,
	}, got.Results[1].Problem)
}

func TestDecodeTopupGrant(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodPost, baseURL+"/v1/topup/grant", jsonResponder(201, `{"customer_id":"`+uuid+`",
		"external_customer_id":"user_abc","block":{"id":"blk_1","original_amount":50000,"remaining_amount":50000,
		"priority":10,"expires_at":"2026-11-02T10:00:00Z","source":"topup","metadata":{"trigger":"auto_buy"},
		"created_at":"2026-11-01T10:00:00Z"},"balance":200000,"effective_balance":190000}`,
		"X-Idempotent-Replayed", "true", "X-Request-Id", "req_9"))

	got, err := c.Topup(context.Background(), quotastack.TopupParams{
		Customer: quotastack.ExternalID("user_abc"), Credits: 50000, Priority: 10,
	}, quotastack.WithIdempotencyKey("plan-grant:starter:ord_1"))
	require.NoError(t, err)
	assert.Equal(t, quotastack.Grant{
		CustomerID: uuid, ExternalCustomerID: "user_abc",
		Block: quotastack.Block{ID: "blk_1", OriginalAmount: 50000, RemainingAmount: 50000, Priority: 10,
			ExpiresAt: ptr(time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)), Source: "topup",
			Metadata: quotastack.Metadata{"trigger": "auto_buy"}, CreatedAt: time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)},
		Balance: 200000, EffectiveBalance: 190000,
		Meta: quotastack.ResponseMeta{StatusCode: 201, RequestID: "req_9", IdempotencyKey: "plan-grant:starter:ord_1",
			Replayed: true, Attempts: 1},
	}, *got)
	assert.True(t, got.Block.IsPlan())
	assert.False(t, got.Block.IsWallet())
}

func TestCustomer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		c        quotastack.Customer
		str      string
		json     string
		external bool
	}{
		{quotastack.CustomerID(uuid), "customer:" + uuid, `{"customer_id":"` + uuid + `"}`, false},
		{quotastack.ExternalID("user42:companion7"), "external:user42:companion7", `{"external_customer_id":"user42:companion7"}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.str, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.str, tt.c.String())
			assert.Equal(t, tt.external, tt.c.IsExternal())
			assert.False(t, tt.c.IsZero())
			b, err := tt.c.MarshalJSON()
			require.NoError(t, err)
			assert.JSONEq(t, tt.json, string(b))
		})
	}
	assert.True(t, quotastack.Customer{}.IsZero())
}
