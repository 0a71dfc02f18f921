package quotastack_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

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
