package quotastack_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
)

// Two answers the public docs allow: usage answered 202 Accepted (with or
// without a body), and block metadata holding any JSON value.
func TestUsageAccepted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		status        int
		body          string
		wantErr       bool
		wantAccepted  bool
		wantConfirmed bool
	}{
		{"202 without a body is an accepted event", 202, "", false, true, false},
		{"202 with whitespace only", 202, " \n", false, true, false},
		{"202 with a body is accepted, not confirmed", 202, `{"id":"evt_1","cost":1000}`, false, true, false},
		{"200 with the event is confirmed", 200, `{"id":"evt_1","cost":1000,"balance_after":0}`, false, false, true},
		{"200 without a body is not understood", 200, "", true, false, false},
		{"201 without a body is not understood", 201, "", true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", func(*http.Request) (*http.Response, error) {
				r := &http.Response{StatusCode: tt.status, Header: http.Header{}, Body: http.NoBody}
				if tt.body != "" {
					return jsonResponder(tt.status, tt.body)(nil)
				}
				return r, nil
			})
			ev, err := c.Record(context.Background(), quotastack.UsageParams{
				Customer: quotastack.ExternalID("u1"), MetricKey: "chat_message", Units: 1,
			}, quotastack.WithIdempotencyKey("usage:m1"))
			if tt.wantErr {
				require.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.wantAccepted, ev.Accepted)
			assert.Equal(t, tt.wantConfirmed, ev.Confirmed())
			assert.Equal(t, tt.status, ev.Meta.StatusCode)
		})
	}
}

func TestBlockMetadataAnyJSON(t *testing.T) {
	t.Parallel()
	c, mt := setup(t)
	mt.RegisterResponder(http.MethodGet, baseURL+"/v1/customer-by-external-id/u1/credits",
		jsonResponder(200, `{"customer_id":"`+uuid+`","balance":1,"blocks":[
		 {"id":"blk_1","original_amount":1,"remaining_amount":1,"priority":0,"expires_at":null,
		  "metadata":{"invoice_no":10042,"gift":false,"order_id":"ord_1","tags":["a"],"nested":{"x":1.5},"none":null}}]}`))
	bal, err := c.BalanceWithBlocks(context.Background(), quotastack.ExternalID("u1"))
	require.NoError(t, err)
	m := bal.Blocks[0].Metadata
	assert.Equal(t, "ord_1", m.Get("order_id"))
	assert.Empty(t, m.Get("invoice_no"), "Get reads string values only")
	assert.Equal(t, json.Number("10042"), m["invoice_no"], "numbers stay exact, never float64")
	assert.Equal(t, false, m["gift"])
	assert.Equal(t, []any{"a"}, m["tags"])
	assert.Equal(t, map[string]any{"x": json.Number("1.5")}, m["nested"])
	assert.Nil(t, m["none"])
	assert.Equal(t, int64(1), bal.WalletMC())
}

// TestGateAnswersDecodeLikeEncodingJSON: an entitlement and a usage event
// decode through the client as encoding/json reads them (an escaped key, a
// key in another case, a null), and a value encoding/json refuses is an
// ErrUnexpectedResponse.
func TestGateAnswersDecodeLikeEncodingJSON(t *testing.T) {
	t.Parallel()
	const ent = `"customer_id":"cus_1","units":2,"balance":5000,"balance_after":3000,"overage_policy":"block"`
	const ev = `"id":"evt_1","cost":2000,"balance_after":3000,"created_at":"2026-03-01T12:00:00Z"`
	tests := []struct {
		name, entitlement, usage string
		wantErr                  bool
	}{
		{"plain", `{"allowed":true,` + ent + `}`, `{` + ev + `,"units":2}`, false},
		{"escaped key", `{"\u0061llowed":true,` + ent + `}`, `{` + ev + `,"\u0075nits":2}`, false},
		{"key in another case", `{"Allowed":true,` + ent + `}`, `{` + ev + `,"UNITS":2}`, false},
		{"a null and unknown members", `{"allowed":true,"subscription_status":null,"x":[{}],` + ent + `}`, `{` + ev + `,"units":2,"metadata":{"a":1}}`, false},
		{"a float where an integer belongs", `{"allowed":true,` + ent + `,"units":2.5}`, `{` + ev + `,"units":2.5}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, mt := setup(t)
			mt.RegisterResponder(http.MethodGet, baseURL+"/v1/customer-by-external-id/u1/entitlements/chat_message",
				jsonResponder(200, tt.entitlement))
			mt.RegisterResponder(http.MethodPost, baseURL+"/v1/usage", jsonResponder(200, tt.usage))
			ctx := context.Background()
			e, err := c.Check(ctx, quotastack.ExternalID("u1"), "chat_message", 2)
			if tt.wantErr {
				require.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
			} else {
				require.NoError(t, err)
				assert.True(t, e.Allowed)
				assert.Equal(t, "cus_1", e.CustomerID)
				assert.Equal(t, int64(2), e.Units)
				assert.Equal(t, int64(3000), e.BalanceAfter)
			}
			u, err := c.Record(ctx, quotastack.UsageParams{Customer: quotastack.ExternalID("u1"), MetricKey: "chat_message", Units: 2})
			if tt.wantErr {
				require.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "evt_1", u.ID)
			assert.Equal(t, int64(2), u.Units)
			assert.Equal(t, int64(2000), u.Cost)
			assert.True(t, u.Confirmed())
			assert.Equal(t, "2026-03-01T12:00:00Z", u.CreatedAt.Format(time.RFC3339))
		})
	}
}
