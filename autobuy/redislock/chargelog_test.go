package redislock_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/chargelogtest"
	"github.com/quotastack/quotastack-go/autobuy/redislock"
)

func newChargeLog(t *testing.T, rdb redis.UniversalClient, opts ...redislock.ChargeLogOption) *redislock.ChargeLog {
	t.Helper()
	l, err := redislock.NewChargeLog(rdb, opts...)
	require.NoError(t, err)
	return l
}

func TestChargeLogConformanceMiniredis(t *testing.T) {
	t.Parallel()
	chargelogtest.Run(t, func(t *testing.T) autobuy.ChargeLog {
		_, rdb := miniClient(t)
		return newChargeLog(t, rdb)
	})
}

func TestChargeLogConformanceRedis(t *testing.T) {
	t.Parallel()
	rdb, _ := realRedis(t)
	chargelogtest.Run(t, func(t *testing.T) autobuy.ChargeLog {
		_, prefix := realRedis(t) // a prefix of each subtest's own
		return newChargeLog(t, rdb, redislock.WithChargeLogPrefix(prefix))
	})
}

func TestNewChargeLogRefusesBadOptions(t *testing.T) {
	t.Parallel()
	_, rdb := miniClient(t)
	for name, opts := range map[string][]redislock.ChargeLogOption{
		"prefix with a brace":            {redislock.WithChargeLogPrefix("app{1}:")},
		"retention under the key window": {redislock.WithChargeLogRetention(24*time.Hour - time.Nanosecond)},
		"zero retention":                 {redislock.WithChargeLogRetention(0)},
		"zero timeout":                   {redislock.WithChargeLogTimeout(0)},
	} {
		_, err := redislock.NewChargeLog(rdb, opts...)
		assert.Error(t, err, name)
	}
	_, err := redislock.NewChargeLog(nil)
	assert.Error(t, err)
	_, err = redislock.NewChargeLog(rdb, redislock.WithChargeLogRetention(redislock.MinChargeRetention))
	assert.NoError(t, err, "exactly the key window")
}

var clT0 = time.Date(2026, 3, 14, 15, 9, 26, 535897000, time.UTC)

var takes atomic.Int64

// takeID returns a take id no other take of the run has.
func takeID() string { return fmt.Sprint("take-", takes.Add(1)) }

func testCharge(customer, event string) autobuy.Charge {
	return autobuy.Charge{CustomerID: customer, EventID: event, Metric: "chat_message", Units: 1, Via: "usage",
		Ref: "k", Attempt: 1, State: autobuy.ChargePending, CreatedAt: clT0, UpdatedAt: clT0}
}

func testLease(customer, metric string) autobuy.Lease {
	return autobuy.Lease{CustomerID: customer, Metric: metric, ReservationID: "rsv", UnitsPerEvent: 1, Held: 10,
		ExpiresAt: time.Now().Add(5 * time.Minute), CreatedAt: clT0, LastUsed: clT0}
}

// hashTag is the part of a key Redis Cluster hashes: the first {...}.
func hashTag(key string) string {
	i := strings.IndexByte(key, '{')
	j := strings.IndexByte(key[i+1:], '}')
	return key[i+1 : i+1+j]
}

// Ids that a naive concatenation would confuse get keys of their own, and all
// of one customer's keys share its hash tag.
func TestChargeLogKeysInjective(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	l := newChargeLog(t, rdb, redislock.WithChargeLogPrefix("app:"))
	ctx := context.Background()
	charges := []struct{ customer, event, key string }{
		{"a:b", "c", "app:qs:charge:{a%3Ab}:c"},
		{"a", "b:c", "app:qs:charge:{a}:b%3Ac"},
		{"a%3Ab", "c", "app:qs:charge:{a%253Ab}:c"},
		{"a}:{b", "c", "app:qs:charge:{a%7D%3A%7Bb}:c"},
		{"a", "}:{b:c", "app:qs:charge:{a}:%7D%3A%7Bb%3Ac"},
	}
	for _, c := range charges {
		ch := testCharge(c.customer, c.event)
		_, created, err := l.Claim(ctx, &ch)
		require.NoError(t, err)
		assert.True(t, created, "%q/%q collides with an earlier pair", c.customer, c.event)
		assert.True(t, mr.Exists(c.key), "key %s", c.key)
	}
	leases := []struct{ customer, metric, key, member string }{
		{"a:b", "m", "app:qs:lease:{a%3Ab}:m", "a%3Ab:m"},
		{"a", "b:m", "app:qs:lease:{a}:b%3Am", "a:b%3Am"},
		{"a}b", "m", "app:qs:lease:{a%7Db}:m", "a%7Db:m"},
	}
	for _, c := range leases {
		ls := testLease(c.customer, c.metric)
		require.NoError(t, l.PutLease(ctx, &ls), "%q/%q collides with an earlier pair", c.customer, c.metric)
		assert.True(t, mr.Exists(c.key), "key %s", c.key)
		_, err := mr.ZScore("app:qs:leases", c.member)
		assert.NoError(t, err, "index entry %s", c.member)
	}
	all, err := l.Leases(ctx, time.Time{}, 0)
	require.NoError(t, err)
	require.Len(t, all, len(leases))
	for _, ls := range all {
		assert.Equal(t, int64(1), ls.Rev, "%s/%s read back as itself", ls.CustomerID, ls.Metric)
	}
	assert.Equal(t, hashTag("app:qs:charge:{a%3Ab}:c"), hashTag("app:qs:lease:{a%3Ab}:m"), "one customer, one slot")
	assert.Len(t, mr.Keys(), len(charges)+len(leases)+1)
}

// ttl reads a key's TTL from the server (-1: none).
func ttl(t *testing.T, rdb redis.UniversalClient, key string) time.Duration {
	t.Helper()
	d, err := rdb.PTTL(context.Background(), key).Result()
	require.NoError(t, err)
	return d
}

// A charge expires the retention after its last write; a replay (a claim
// that finds it) doesn't extend it; leases and the index never expire.
func TestChargeLogTTL(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"miniredis", "redis"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var rdb redis.UniversalClient
			var mr *miniredis.Miniredis
			prefix := ""
			if name == "redis" {
				rdb, prefix = realRedis(t)
			} else {
				mr, rdb = miniClient(t)
			}
			const retention = 30 * time.Hour
			l := newChargeLog(t, rdb, redislock.WithChargeLogPrefix(prefix), redislock.WithChargeLogRetention(retention))
			ctx := context.Background()
			chargeKey, leaseKey, indexKey := prefix+"qs:charge:{cus_a}:evt", prefix+"qs:lease:{cus_a}:chat", prefix+"qs:leases"
			near := func(want time.Duration, key string) {
				t.Helper()
				got := ttl(t, rdb, key)
				assert.True(t, got <= want && got > want-time.Minute, "TTL of %s: %v, want %v", key, got, want)
			}

			c := testCharge("cus_a", "evt")
			_, _, err := l.Claim(ctx, &c)
			require.NoError(t, err)
			near(retention, chargeKey)
			if mr != nil {
				mr.FastForward(10 * time.Hour)
				replay := testCharge("cus_a", "evt")
				_, created, err := l.Claim(ctx, &replay)
				require.NoError(t, err)
				require.False(t, created)
				near(retention-10*time.Hour, chargeKey)
			}
			c.State = autobuy.ChargeCharged
			require.NoError(t, l.PutCharge(ctx, &c))
			near(retention, chargeKey)

			ls := testLease("cus_a", "chat")
			require.NoError(t, l.PutLease(ctx, &ls))
			_, ok, err := l.TakeLease(ctx, "cus_a", "chat", 1, time.Now(), takeID())
			require.NoError(t, err)
			require.True(t, ok)
			assert.Equal(t, time.Duration(-1), ttl(t, rdb, leaseKey), "a lease never expires by itself")
			assert.Equal(t, time.Duration(-1), ttl(t, rdb, indexKey))
		})
	}
}

// Whatever the retention setting, a charge is still there 24 h after its last
// write (a replay inside the server's key window is answered from it), and it
// is gone after the retention.
func TestChargeOutlivesIdempotencyWindow(t *testing.T) {
	t.Parallel()
	for _, retention := range []time.Duration{0, 24 * time.Hour, 25 * time.Hour, 72 * time.Hour} {
		t.Run(retention.String(), func(t *testing.T) {
			t.Parallel()
			mr, rdb := miniClient(t)
			var opts []redislock.ChargeLogOption
			want := 48 * time.Hour // the default
			if retention > 0 {
				opts, want = append(opts, redislock.WithChargeLogRetention(retention)), retention
			}
			l := newChargeLog(t, rdb, opts...)
			ctx := context.Background()
			c := testCharge("cus_a", "evt")
			_, _, err := l.Claim(ctx, &c)
			require.NoError(t, err)
			c.State = autobuy.ChargeCharged
			require.NoError(t, l.PutCharge(ctx, &c))

			mr.FastForward(24*time.Hour - time.Millisecond)
			replay := testCharge("cus_a", "evt")
			got, created, err := l.Claim(ctx, &replay)
			require.NoError(t, err)
			assert.False(t, created, "the charge outlives the key window")
			assert.Equal(t, autobuy.ChargeCharged, got.State)

			mr.FastForward(want - 24*time.Hour + 2*time.Millisecond)
			_, created, err = l.Claim(ctx, &replay)
			require.NoError(t, err)
			assert.True(t, created, "forgotten after the retention")
		})
	}
}

// Leases skips index entries whose lease is gone and drops them once a
// minute old; it never drops a lease, however long ago its reservation expired.
func TestChargeLogLeasesIndex(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	l := newChargeLog(t, rdb)
	ctx := context.Background()
	now := time.Now()
	put := func(customer string, expires time.Time) autobuy.Lease {
		ls := testLease(customer, "chat")
		ls.ExpiresAt = expires
		require.NoError(t, l.PutLease(ctx, &ls))
		return ls
	}
	put("cus_live", now.Add(time.Minute))
	put("cus_dead", now.Add(-47*time.Hour))
	put("cus_forever", time.Time{})
	put("cus_ancient", now.Add(-400*24*time.Hour))
	gone := put("cus_gone", now.Add(time.Minute))
	require.NoError(t, l.DeleteLease(ctx, gone))
	old := float64(now.Add(-2 * time.Minute).UnixMilli())
	_, err := mr.ZAdd("qs:leases", old, "cus_stale:chat")
	require.NoError(t, err)
	_, err = mr.ZAdd("qs:leases", old, "not an entry")
	require.NoError(t, err)

	got, err := l.Leases(ctx, time.Time{}, 0)
	require.NoError(t, err)
	var customers []string
	for _, ls := range got {
		customers = append(customers, ls.CustomerID)
	}
	assert.ElementsMatch(t, []string{"cus_live", "cus_dead", "cus_forever", "cus_ancient"}, customers)
	members, err := mr.ZMembers("qs:leases")
	require.NoError(t, err)
	assert.NotContains(t, members, "cus_stale:chat", "an old entry without a lease is dropped")
	assert.Contains(t, members, "cus_gone:chat", "a fresh one stays (a PutLease may be about to store it)")
	assert.Contains(t, members, "not an entry", "entries of another writer are left alone")
}

// Lua compares units as doubles: at the edge of the accepted range a take is
// still exact, and larger values are refused before any request.
func TestChargeLogLeaseUnitsRange(t *testing.T) {
	t.Parallel()
	_, rdb := miniClient(t)
	l := newChargeLog(t, rdb)
	ctx := context.Background()
	const top = 1<<53 - 1
	ls := testLease("cus_a", "chat")
	ls.Held, ls.Used = top, top-2
	require.NoError(t, l.PutLease(ctx, &ls))
	got, ok, err := l.TakeLease(ctx, "cus_a", "chat", 1, clT0, takeID())
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(top-1), got.Used)
	_, ok, err = l.TakeLease(ctx, "cus_a", "chat", 2, clT0, takeID())
	require.NoError(t, err)
	assert.False(t, ok, "top-1+2 > top")
	got, ok, err = l.TakeLease(ctx, "cus_a", "chat", 1, clT0, takeID())
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(top), got.Used)

	for _, units := range []int64{0, -1, top + 1, 1 << 62} {
		_, ok, err := l.TakeLease(ctx, "cus_b", "chat", units, clT0, takeID())
		assert.NoError(t, err)
		assert.False(t, ok, "units %d", units)
	}
	for _, bad := range []autobuy.Lease{{Held: top + 1}, {Held: 10, Used: -1}, {Held: -1}} {
		bad.CustomerID, bad.Metric = "cus_c", "chat"
		assert.Error(t, l.PutLease(ctx, &bad), "held %d used %d", bad.Held, bad.Used)
	}
	_, ok, err = l.Lease(ctx, "cus_c", "chat")
	require.NoError(t, err)
	assert.False(t, ok, "nothing stored")
}

// Empty ids are refused before any request: a record keyed by "" would be
// shared by every caller that forgot one.
func TestChargeLogRefusesEmptyIDs(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	l := newChargeLog(t, rdb)
	ctx := context.Background()
	for _, c := range []autobuy.Charge{testCharge("", "evt"), testCharge("cus_a", "")} {
		_, _, err := l.Claim(ctx, &c)
		assert.Error(t, err)
		assert.Error(t, l.PutCharge(ctx, &c))
	}
	for _, ls := range []autobuy.Lease{testLease("", "chat"), testLease("cus_a", "")} {
		assert.Error(t, l.PutLease(ctx, &ls))
		_, _, err := l.Lease(ctx, ls.CustomerID, ls.Metric)
		assert.Error(t, err)
		_, _, err = l.TakeLease(ctx, ls.CustomerID, ls.Metric, 1, clT0, takeID())
		assert.Error(t, err)
		assert.Error(t, l.DeleteLease(ctx, ls))
	}
	assert.Empty(t, mr.Keys())
}

// Records a hostile or foreign writer left are errors, never a panic or a
// record taken as valid.
func TestChargeLogCorruptRecords(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name  string
		setup func(mr *miniredis.Miniredis)
		op    func(l *redislock.ChargeLog) error
	}{
		{"charge without revision", func(mr *miniredis.Miniredis) { mr.HSet("qs:charge:{c}:e", "data", "{}") }, claim},
		{"charge revision not a number", func(mr *miniredis.Miniredis) { mr.HSet("qs:charge:{c}:e", "rev", "x", "data", "{}") }, claim},
		{"charge data not JSON", func(mr *miniredis.Miniredis) { mr.HSet("qs:charge:{c}:e", "rev", "1", "data", "[") }, claim},
		{"charge key of another type", func(mr *miniredis.Miniredis) { _ = mr.Set("qs:charge:{c}:e", "x") }, claim},
		{"lease committing neither 0 nor 1", func(mr *miniredis.Miniredis) { corruptLease(mr, "committing", "2") }, lease},
		{"lease used not a number", func(mr *miniredis.Miniredis) { corruptLease(mr, "used", "1e3") }, lease},
		{"lease last used not a time", func(mr *miniredis.Miniredis) { corruptLease(mr, "last", "yesterday") }, lease},
		{"lease data not JSON", func(mr *miniredis.Miniredis) { corruptLease(mr, "data", "{") }, lease},
		{"lease without data", func(mr *miniredis.Miniredis) { mr.HDel("qs:lease:{c}:m", "data") }, lease},
		{"take of a lease without used", func(mr *miniredis.Miniredis) { mr.HDel("qs:lease:{c}:m", "used") }, take},
		{"take of a lease with data not JSON", func(mr *miniredis.Miniredis) { corruptLease(mr, "data", "{") }, take},
		{"an index entry naming another lease", func(mr *miniredis.Miniredis) {
			corruptLease(mr, "data", `{"CustomerID":"other","Metric":"m"}`)
		}, leases},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mr, rdb := miniClient(t)
			l := newChargeLog(t, rdb)
			ls := testLease("c", "m")
			ls.ExpiresAt = time.Time{}
			require.NoError(t, l.PutLease(ctx, &ls))
			tc.setup(mr)
			var err error
			require.NotPanics(t, func() { err = tc.op(l) })
			assert.Error(t, err)
		})
	}
}

var errRefused = errors.New("refused")

func corruptLease(mr *miniredis.Miniredis, field, value string) {
	mr.HSet("qs:lease:{c}:m", field, value)
}

func claim(l *redislock.ChargeLog) error {
	c := testCharge("c", "e")
	_, _, err := l.Claim(context.Background(), &c)
	return err
}

func lease(l *redislock.ChargeLog) error {
	_, _, err := l.Lease(context.Background(), "c", "m")
	return err
}

func take(l *redislock.ChargeLog) error {
	_, ok, err := l.TakeLease(context.Background(), "c", "m", 1, clT0, takeID())
	if err == nil {
		if ok {
			return nil // served: the test fails
		}
		return errRefused
	}
	return err
}

func leases(l *redislock.ChargeLog) error {
	_, err := l.Leases(context.Background(), time.Time{}, 0)
	return err
}

// clusterRedis starts a one-node Redis Cluster (every slot on one
// redis-server, which still refuses a script whose keys span slots) and
// returns a cluster client of it; skipped without redis-server on PATH.
func clusterRedis(t *testing.T) *redis.ClusterClient {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed")
	}
	var port int
	for port == 0 || port+10000 > 65535 { // the cluster bus listens on port+10000
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port = ln.Addr().(*net.TCPAddr).Port
		require.NoError(t, ln.Close())
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--dir", dir,
		"--cluster-announce-ip", "127.0.0.1")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(port)
	node := redis.NewClient(&redis.Options{Addr: addr})
	defer node.Close()
	ctx := context.Background()
	require.Eventually(t, func() bool { return node.Ping(ctx).Err() == nil }, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, node.ClusterAddSlotsRange(ctx, 0, 16383).Err())
	require.Eventually(t, func() bool {
		info, err := node.ClusterInfo(ctx).Result()
		return err == nil && strings.Contains(info, "cluster_state:ok")
	}, 10*time.Second, 20*time.Millisecond)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// On a cluster every script stays in one slot (Redis refuses CROSSSLOT
// scripts) and Leases reads leases of many slots.
func TestChargeLogConformanceCluster(t *testing.T) {
	t.Parallel()
	rdb := clusterRedis(t)
	var n atomic.Int64
	chargelogtest.Run(t, func(t *testing.T) autobuy.ChargeLog {
		return newChargeLog(t, rdb, redislock.WithChargeLogPrefix(fmt.Sprintf("t%d:", n.Add(1))))
	})
	t.Run("LeasesAcrossSlots", func(t *testing.T) {
		l := newChargeLog(t, rdb, redislock.WithChargeLogPrefix("slots:"))
		ctx := context.Background()
		const customers = 50
		for i := range customers {
			ls := testLease(fmt.Sprint("cus_", i), "chat")
			ls.LastUsed = clT0.Add(time.Duration(customers-i) * time.Second)
			require.NoError(t, l.PutLease(ctx, &ls))
			_, ok, err := l.TakeLease(ctx, ls.CustomerID, "chat", 1, ls.LastUsed, takeID())
			require.NoError(t, err)
			require.True(t, ok)
			c := testCharge(ls.CustomerID, "evt")
			_, created, err := l.Claim(ctx, &c)
			require.NoError(t, err)
			require.True(t, created)
		}
		got, err := l.Leases(ctx, time.Time{}, 0)
		require.NoError(t, err)
		require.Len(t, got, customers)
		assert.Equal(t, fmt.Sprint("cus_", customers-1), got[0].CustomerID, "least recently used first")
		for _, ls := range got {
			assert.Equal(t, int64(1), ls.Used)
		}
	})
}

// Every call is bounded by the log's timeout when Redis stops answering, also
// with a caller's context that has no deadline.
func TestChargeLogBoundedWhenRedisIsPartitioned(t *testing.T) {
	t.Parallel()
	tests := map[string]func(ctx context.Context, l *redislock.ChargeLog) error{
		"Claim": func(ctx context.Context, l *redislock.ChargeLog) error {
			c := testCharge("cus_a", "evt_new")
			_, _, err := l.Claim(ctx, &c)
			return err
		},
		"PutCharge": func(ctx context.Context, l *redislock.ChargeLog) error {
			c := testCharge("cus_a", "evt")
			c.Rev = 1
			return l.PutCharge(ctx, &c)
		},
		"Lease": func(ctx context.Context, l *redislock.ChargeLog) error {
			_, _, err := l.Lease(ctx, "cus_a", "chat")
			return err
		},
		"PutLease": func(ctx context.Context, l *redislock.ChargeLog) error {
			ls := testLease("cus_b", "chat")
			return l.PutLease(ctx, &ls)
		},
		"TakeLease": func(ctx context.Context, l *redislock.ChargeLog) error {
			_, _, err := l.TakeLease(ctx, "cus_a", "chat", 1, clT0, takeID())
			return err
		},
		"DeleteLease": func(ctx context.Context, l *redislock.ChargeLog) error {
			return l.DeleteLease(ctx, autobuy.Lease{CustomerID: "cus_a", Metric: "chat", Rev: 1})
		},
		"Leases": func(ctx context.Context, l *redislock.ChargeLog) error {
			_, err := l.Leases(ctx, time.Time{}, 0)
			return err
		},
	}
	for name, op := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rdb, p := partitionable(t)
			l := newChargeLog(t, rdb, redislock.WithChargeLogPrefix(uniqueKey(t)),
				redislock.WithChargeLogTimeout(300*time.Millisecond))
			ctx := context.Background()
			c := testCharge("cus_a", "evt")
			_, _, err := l.Claim(ctx, &c)
			require.NoError(t, err)
			ls := testLease("cus_a", "chat")
			require.NoError(t, l.PutLease(ctx, &ls))
			p.Pause()
			start := time.Now()
			err = op(ctx, l)
			assert.Less(t, time.Since(start), hangLimit)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
		})
	}
}

// The ids of a customer's recent takes are a minute of takes, however busy
// the customer: the set was refreshed by every take and grew for as long as
// takes kept coming (a hot customer's set never expired).
func TestRecentTakesAreAMinuteOfTakes(t *testing.T) {
	t.Parallel()
	mr, rdb := miniClient(t)
	l := newChargeLog(t, rdb)
	ctx := context.Background()
	ls := testLease("cus_a", "chat")
	ls.Held = 100
	require.NoError(t, l.PutLease(ctx, &ls))
	start := time.Now()
	takesKey := ""
	for i := range 10 {
		mr.SetTime(start.Add(time.Duration(i) * 20 * time.Second)) // a take every 20 s, for 3 minutes
		_, ok, err := l.TakeLease(ctx, "cus_a", "chat", 1, clT0, takeID())
		require.NoError(t, err)
		require.True(t, ok)
		if takesKey == "" {
			for _, k := range mr.Keys() {
				if strings.HasSuffix(k, ":takes") {
					takesKey = k
				}
			}
			require.NotEmpty(t, takesKey)
		}
	}
	n, err := rdb.ZCard(ctx, takesKey).Result()
	require.NoError(t, err)
	assert.LessOrEqual(t, n, int64(4), "the takes of the last minute (and the one at its edge)")
}
