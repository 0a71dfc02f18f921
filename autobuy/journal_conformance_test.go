package autobuy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/journaltest"
)

func TestMemoryJournalConformance(t *testing.T) {
	t.Parallel()
	journaltest.Run(t, func(*testing.T) autobuy.Journal { return autobuy.NewMemoryJournal(0) })
}

// TestMemoryJournalBusyCustomer: a customer with many closed intents (every
// plan bought in the retention) costs the gate's reads nothing per intent:
// Open and DoneSince copy none of them. Before, every purchase copied and
// sorted all of them (1.15 ms and 874 KiB per in-memory auto-buy). Not
// parallel: AllocsPerRun refuses parallel tests.
func TestMemoryJournalBusyCustomer(t *testing.T) {
	ctx := context.Background()
	j := autobuy.NewMemoryJournal(0)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const n = 5000
	for i := range n {
		in := autobuy.Intent{OrderID: fmt.Sprintf("ord_%d", i), CustomerID: "cus_busy", Metric: "chat",
			State: autobuy.IntentPending, CreatedAt: t0, UpdatedAt: t0}
		require.NoError(t, j.Put(ctx, &in))
		in.State = autobuy.IntentDone
		require.NoError(t, j.Put(ctx, &in))
	}
	open := testing.AllocsPerRun(100, func() {
		ins, err := j.Open(ctx, "cus_busy")
		if err != nil || len(ins) != 0 {
			panic("an open intent where there is none")
		}
	})
	assert.Zero(t, open, "Open with no open intent")
	done := testing.AllocsPerRun(100, func() {
		if ok, err := j.DoneSince(ctx, "cus_busy", t0); err != nil || !ok {
			panic("the done intents not found")
		}
	})
	assert.Zero(t, done, "DoneSince")
	ok, err := j.DoneSince(ctx, "cus_busy", t0.Add(time.Nanosecond))
	require.NoError(t, err)
	assert.False(t, ok, "nothing done after t0")
}
