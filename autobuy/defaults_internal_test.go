package autobuy

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

type sharedJournal struct{ *MemoryJournal }
type sharedLocker struct{ *LocalLocker }

// Case 8 (issue 21): a Gatekeeper on the in-process stores says once per
// process, through its logger, that replicas need a shared store; one given
// shared stores says nothing. Not parallel: it resets the process's once.
func TestLocalStoresWarnOncePerProcess(t *testing.T) {
	warnedLocal = sync.Once{}
	client, err := quotastack.NewClient("qs_test_x", quotastack.WithBaseURL("http://127.0.0.1:1"))
	require.NoError(t, err)
	p := plan.Plan{Type: "1hr", PriceMC: 100_000, CreditsMC: 50_000, Duration: time.Hour}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))

	_, err = New(client, WithPlan(p)) // silent: no logger, the warning waits for one
	require.NoError(t, err)
	assert.Zero(t, buf.Len())
	_, err = New(client, WithPlan(p), WithLogger(log), WithJournal(sharedJournal{NewMemoryJournal(0)}), WithLocker(sharedLocker{NewLocalLocker()}))
	require.NoError(t, err)
	assert.Zero(t, buf.Len(), "shared stores: nothing to warn about")
	for range 3 {
		_, err = New(client, WithPlan(p), WithLogger(log))
		require.NoError(t, err)
	}
	out := buf.String()
	assert.Equal(t, 1, strings.Count(out, "level=WARN"), out)
	assert.Contains(t, out, "replicas")
	assert.Contains(t, out, "autobuy/redislock")

	// Two Gatekeepers on the defaults share the process's journal and locker.
	a, err := New(client, WithPlan(p))
	require.NoError(t, err)
	b, err := New(client, WithPlan(p), WithPurchaseLimit(1, 72*time.Hour))
	require.NoError(t, err)
	assert.Same(t, a.journal, b.journal)
	assert.Same(t, a.locker, b.locker)
	assert.GreaterOrEqual(t, defaultJournal().retention, 144*time.Hour, "the shared journal keeps twice the longest limit period")
}
