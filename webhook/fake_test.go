package webhook_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/quotastacktest"
	"github.com/quotastack/quotastack-go/webhook"
)

// The fake signs deliveries on its own (it shares no code with this package);
// the verifier must accept them, and refuse them under another secret.
func TestVerifierAcceptsTheFakesDeliveries(t *testing.T) {
	t.Parallel()
	srv := quotastacktest.Start(t)
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("tenant-webhook-secret-0123456789"))
	v, err := webhook.NewVerifier(secret, webhook.WithClock(srv.Now))
	require.NoError(t, err)

	got := make(chan *webhook.Event, 1)
	receiver := httptest.NewServer(v.Handler(func(_ context.Context, ev *webhook.Event) error {
		got <- ev
		return nil
	}))
	t.Cleanup(receiver.Close)

	d, err := srv.DeliverWebhook(context.Background(), receiver.URL, secret, webhook.EventSubscriptionRenewed,
		map[string]any{"customer_id": "019d6258-07ba-7418-83be-58f5fde53e4e"})
	require.NoError(t, err)
	assert.Equal(t, http.StatusNoContent, d.Status)
	ev := <-got
	assert.Equal(t, d.ID, ev.ID)
	assert.Equal(t, webhook.EventSubscriptionRenewed, ev.Type)
	var data map[string]string
	require.NoError(t, json.Unmarshal(ev.Data, &data))
	assert.Equal(t, "019d6258-07ba-7418-83be-58f5fde53e4e", data["customer_id"])

	other := "whsec_" + base64.StdEncoding.EncodeToString([]byte("another-secret-of-another-tenant"))
	d, err = srv.DeliverWebhook(context.Background(), receiver.URL, other, webhook.EventSubscriptionRenewed, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadRequest, d.Status)
}
