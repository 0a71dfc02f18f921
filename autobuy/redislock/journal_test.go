package redislock_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/journaltest"
	"github.com/quotastack/quotastack-go/autobuy/redislock"
	"github.com/quotastack/quotastack-go/plan"
)

func newJournal(t *testing.T, rdb redis.UniversalClient, opts ...redislock.JournalOption) *redislock.Journal {
	t.Helper()
	j, err := redislock.NewJournal(rdb, opts...)
	require.NoError(t, err)
	return j
}

func TestJournalConformanceMiniredis(t *testing.T) {
	t.Parallel()
	journaltest.Run(t, func(t *testing.T) autobuy.Journal {
		_, rdb := miniClient(t)
		return newJournal(t, rdb)
	})
}

func TestJournalConformanceRedis(t *testing.T) {
	t.Parallel()
	rdb, _ := realRedis(t)
	journaltest.Run(t, func(t *testing.T) autobuy.Journal {
		_, prefix := realRedis(t) // a prefix of each subtest's own
		return newJournal(t, rdb, redislock.WithJournalPrefix(prefix))
	})
}

func TestNewJournalRefusesBadOptions(t *testing.T) {
	t.Parallel()
	_, rdb := miniClient(t)
	for name, opts := range map[string][]redislock.JournalOption{
		"prefix with a brace": {redislock.WithJournalPrefix("app{1}:")},
		"zero retention":      {redislock.WithRetention(0)},
		"zero timeout":        {redislock.WithJournalTimeout(0)},
	} {
		_, err := redislock.NewJournal(rdb, opts...)
		assert.Error(t, err, name)
	}
	_, err := redislock.NewJournal(nil)
	assert.Error(t, err)
}

var t0 = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

func testIntent(customer, order string) autobuy.Intent {
	return autobuy.Intent{OrderID: order, CustomerID: customer, Metric: "chat_message", Plan: hourPlan,
		Trigger: plan.TriggerAutoBuy, State: autobuy.IntentPending, CreatedAt: t0, UpdatedAt: t0}
}

// Closed intents expire after the retention; open ones never do, and the
// customer's index goes with the last closed intent.
func TestJournalRetention(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	j := newJournal(t, rdb, redislock.WithRetention(time.Hour))
	ctx := context.Background()
	done, open := testIntent("cus_a", "ord_done"), testIntent("cus_a", "ord_open")
	require.NoError(t, j.Put(ctx, &done))
	done.State = autobuy.IntentDone
	require.NoError(t, j.Put(ctx, &done))
	require.NoError(t, j.Put(ctx, &open)) // one open intent per customer: after the first closed

	mr.FastForward(59 * time.Minute)
	got, err := j.Since(ctx, "cus_a", t0)
	require.NoError(t, err)
	assert.Len(t, got, 2, "within the retention")

	mr.FastForward(2 * time.Minute)
	got, err = j.Since(ctx, "cus_a", t0)
	require.NoError(t, err)
	require.Len(t, got, 1, "the closed one is gone")
	assert.Equal(t, "ord_open", got[0].OrderID)
	mr.FastForward(1000 * time.Hour)
	opens, err := j.Open(ctx, "cus_a")
	require.NoError(t, err)
	assert.Len(t, opens, 1, "open intents never expire")

	open.State = autobuy.IntentFailed
	require.NoError(t, j.Put(ctx, &open))
	mr.FastForward(61 * time.Minute)
	assert.ElementsMatch(t, []string{"qs:pending", "qs:cust:{cus_a}:rev"}, mr.Keys(),
		"every intent of the customer expired (the pending hint goes at a Pending a minute later); its revision stays")
	rev, err := j.Rev(ctx, "cus_a")
	require.NoError(t, err)
	assert.Equal(t, int64(4), rev, "Rev survives the retention: 4 writes")
}

// Suspension keys expire at their Until, measured from the Suspend's now;
// a zero Until never expires.
func TestJournalSuspensionTTL(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	j := newJournal(t, rdb, redislock.WithJournalPrefix("app:"))
	ctx := context.Background()
	_, err := j.Suspend(ctx, autobuy.Suspension{CustomerID: "c:1", Metric: "m", Since: t0, Until: t0.Add(time.Hour)}, t0)
	require.NoError(t, err)
	_, err = j.Suspend(ctx, autobuy.Suspension{CustomerID: "c:1", Metric: "n", Since: t0}, t0)
	require.NoError(t, err)
	assert.Equal(t, time.Hour, mr.TTL("app:qs:susp:{c%3A1}:m"))
	assert.Equal(t, time.Duration(0), mr.TTL("app:qs:susp:{c%3A1}:n"), "no TTL")
	mr.FastForward(time.Hour)
	_, ok, err := j.Suspension(ctx, "c:1", "m")
	require.NoError(t, err)
	assert.False(t, ok, "expired with its Until")
	_, ok, err = j.Suspension(ctx, "c:1", "n")
	require.NoError(t, err)
	assert.True(t, ok)
}

// Every key of one customer carries the customer's hash tag, so the Put
// script's keys are in one Redis Cluster slot; ids are escaped.
func TestJournalKeysShareTheCustomersHashTag(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	j := newJournal(t, rdb, redislock.WithJournalPrefix("app:"))
	ctx := context.Background()
	in := testIntent("ext:{x}%", "ord:1")
	require.NoError(t, j.Put(ctx, &in))
	_, err := j.Suspend(ctx, autobuy.Suspension{CustomerID: "ext:{x}%", Metric: "chat:message", Until: t0.Add(time.Hour)}, t0)
	require.NoError(t, err)
	const tag = "{ext%3A%7Bx%7D%25}"
	for _, k := range mr.Keys() {
		if k == "app:qs:pending" {
			continue
		}
		open, close := strings.IndexByte(k, '{'), strings.IndexByte(k, '}')
		require.True(t, open >= 0 && close > open, k)
		assert.Equal(t, tag, k[open:close+1], "the hash tag of %s", k)
	}
	assert.ElementsMatch(t, []string{"app:qs:pending", "app:qs:intent:" + tag + ":ord%3A1", "app:qs:cust:" + tag + ":touched",
		"app:qs:cust:" + tag + ":open", "app:qs:cust:" + tag + ":rev", "app:qs:susp:" + tag + ":chat%3Amessage"}, mr.Keys())
}

// A Redis that accepts connections and never answers: every method returns
// an error at the journal's deadline, though the caller's context has none
// and the client doesn't apply context deadlines to its socket.
func TestJournalCallsAreBounded(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = c.Close() })
		}
	}()
	rdb := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), ReadTimeout: time.Minute, WriteTimeout: time.Minute,
		DialTimeout: time.Minute, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	j := newJournal(t, rdb, redislock.WithJournalTimeout(50*time.Millisecond))
	ctx := context.Background()
	in := testIntent("cus_a", "ord_1")
	calls := map[string]func() error{
		"Put":  func() error { return j.Put(ctx, &in) },
		"Open": func() error { _, err := j.Open(ctx, "cus_a"); return err },
		"Since": func() error {
			_, err := j.Since(ctx, "cus_a", t0)
			return err
		},
		"Pending":    func() error { _, err := j.Pending(ctx, 10); return err },
		"Suspension": func() error { _, _, err := j.Suspension(ctx, "cus_a", "m"); return err },
		"Suspend": func() error {
			_, err := j.Suspend(ctx, autobuy.Suspension{CustomerID: "cus_a", Metric: "m"}, t0)
			return err
		},
		"Lift": func() error { return j.Lift(ctx, "cus_a", "m") },
	}
	for name, call := range calls {
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case err := <-done:
			assert.ErrorIs(t, err, context.DeadlineExceeded, name)
		case <-time.After(30 * time.Second):
			t.Fatalf("%s hung past the journal's deadline", name)
		}
	}
}

// The pending hint: a customer without open intents leaves it once its entry
// is a minute old; one with open intents stays whatever the entry's age.
func TestJournalPendingHintIsPruned(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	j := newJournal(t, rdb)
	ctx := context.Background()
	open, closed := testIntent("cus_open", "ord_1"), testIntent("cus_closed", "ord_2")
	require.NoError(t, j.Put(ctx, &open))
	require.NoError(t, j.Put(ctx, &closed))
	closed.State = autobuy.IntentDone
	require.NoError(t, j.Put(ctx, &closed))
	// A hint that landed just now without its script (yet): kept.
	_, err := mr.ZAdd("qs:pending", float64(time.Now().UnixMilli()), "cus_recent_but_empty")
	require.NoError(t, err)
	for _, c := range []string{"cus_open", "cus_closed"} {
		_, err := mr.ZAdd("qs:pending", float64(time.Now().Add(-2*time.Minute).UnixMilli()), c)
		require.NoError(t, err)
	}
	got, err := j.Pending(ctx, 10)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "ord_1", got[0].OrderID)
	members, err := mr.ZMembers("qs:pending")
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"cus_open", "cus_recent_but_empty"}, members)
}
