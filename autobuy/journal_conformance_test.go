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
// Open and Rev copy none of them, and Since (the purchase limit's window)
// copies the window's intents only. Not parallel: AllocsPerRun refuses
// parallel tests.
func TestMemoryJournalBusyCustomer(t *testing.T) {
	ctx := context.Background()
	j := autobuy.NewMemoryJournal(0)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const n = 5000
	for i := range n {
		at := t0.Add(time.Duration(i) * time.Second)
		in := autobuy.Intent{OrderID: fmt.Sprintf("ord_%d", i), CustomerID: "cus_busy", Metric: "chat",
			State: autobuy.IntentPending, CreatedAt: at, UpdatedAt: at}
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
	rev := testing.AllocsPerRun(100, func() {
		if r, err := j.Rev(ctx, "cus_busy"); err != nil || r != 2*n {
			panic("Rev is not the number of writes")
		}
	})
	assert.Zero(t, rev, "Rev")
	window := t0.Add((n - 10) * time.Second)
	since := testing.AllocsPerRun(100, func() {
		if ins, err := j.Since(ctx, "cus_busy", window); err != nil || len(ins) != 10 {
			panic("not the window's intents")
		}
	})
	assert.LessOrEqual(t, since, float64(2), "Since copies the window's 10 intents in one slice")
}

// BenchmarkMemoryJournalSinceWindow: the purchase limit's read of a 10-intent
// window, for a customer with 100 and with 10,000 intents in the retention;
// the two should cost the same (compare them as a ratio).
func BenchmarkMemoryJournalSinceWindow(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ctx := context.Background()
			j := autobuy.NewMemoryJournal(0)
			t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			for i := range n {
				at := t0.Add(time.Duration(i) * time.Second)
				in := autobuy.Intent{OrderID: fmt.Sprintf("ord_%d", i), CustomerID: "cus", State: autobuy.IntentFailed, CreatedAt: at, UpdatedAt: at}
				if err := j.Put(ctx, &in); err != nil {
					b.Fatal(err)
				}
			}
			from := t0.Add(time.Duration(n-10) * time.Second)
			for b.Loop() {
				if ins, _ := j.Since(ctx, "cus", from); len(ins) != 10 {
					b.Fatal(len(ins))
				}
			}
		})
	}
}
