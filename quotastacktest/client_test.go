package quotastacktest_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	quotastack "github.com/quotastack/quotastack-go"
)

// TestClientHelper checks only the wiring of Server.Client; the SDK has its own tests.
func TestClientHelper(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.recipeCustomer()
	c := w.srv.Client()
	ctx := context.Background()

	ent, err := c.Check(ctx, quotastack.ExternalID(recipeUser), "chat_message", 1)
	require.NoError(t, err)
	require.False(t, ent.Allowed)
	require.Equal(t, int64(-1000), ent.BalanceAfter)

	ev, err := c.Record(ctx, quotastack.UsageParams{Customer: quotastack.ExternalID(recipeUser), MetricKey: "look", Units: 2})
	require.NoError(t, err)
	require.Equal(t, int64(2000), ev.Cost)
	require.Len(t, w.srv.UsageEvents(recipeUser), 1)
	require.Equal(t, ev.ID, w.srv.UsageEvents(recipeUser)[0].EventID)
}
