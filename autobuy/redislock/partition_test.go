package redislock_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/redislock"
)

// proxy is a TCP proxy in front of Redis that can be paused: while paused it
// forwards nothing and closes nothing, like a network partition (a blackhole,
// not a refused connection).
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	closed bool
	// dropReply: the next bytes Redis sends are not forwarded, and that
	// connection is closed (a reply lost after its command executed).
	dropReply bool
	conns     []net.Conn
	wg        sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

// Pause stops all forwarding, in both directions, on every connection.
func (p *proxy) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// Close ends the partition for good: every connection is closed.
func (p *proxy) Close() {
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = in.Close()
			_ = out.Close()
			return
		}
		p.conns = append(p.conns, in, out)
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(out, in, false)
		go p.pipe(in, out, true)
	}
}

// DropNextReply loses the next reply Redis sends: its command has executed,
// and the client sees its connection closed.
func (p *proxy) DropNextReply() {
	p.mu.Lock()
	p.dropReply = true
	p.mu.Unlock()
}

func (p *proxy) pipe(dst, src net.Conn, toClient bool) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.paused && !p.closed {
				p.cond.Wait()
			}
			closed := p.closed
			drop := toClient && p.dropReply
			if drop {
				p.dropReply = false
			}
			p.mu.Unlock()
			if closed {
				return
			}
			if drop {
				_ = dst.Close()
				_ = src.Close()
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = dst.Close()
			}
			return
		}
	}
}

// partitionable returns a Redis client through a pausable proxy, to the
// real redis-server when QUOTASTACK_TEST_REDIS_ADDR is set and to miniredis
// otherwise. The client keeps go-redis's defaults (3 s read timeout, three
// retries, context deadlines ignored on sockets): the worst case to bound.
func partitionable(t *testing.T) (*redis.Client, *proxy) {
	t.Helper()
	target := os.Getenv("QUOTASTACK_TEST_REDIS_ADDR")
	if target == "" {
		target = miniredis.RunT(t).Addr()
	}
	p := startProxy(t, target)
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr()})
	t.Cleanup(func() {
		p.Close() // first: it ends the reads go-redis is stuck in
		_ = rdb.Close()
	})
	require.NoError(t, rdb.Ping(context.Background()).Err())
	return rdb, p
}

func uniqueKey(t *testing.T) string { return t.Name() + ":" + time.Now().Format(time.RFC3339Nano) }

// hangLimit is how long a bounded call may take before it counts as a hang:
// the bound plus a generous slack, still under go-redis's own 3 s read timeout.
const hangLimit = 300*time.Millisecond + 2*time.Second

func TestReleaseIsBoundedWhenRedisIsPartitioned(t *testing.T) {
	t.Parallel()
	rdb, p := partitionable(t)
	l := redislock.New(rdb, redislock.WithLockTimeout(300*time.Millisecond), redislock.WithTTL(time.Second))
	unlock, err := l.Lock(context.Background(), uniqueKey(t))
	require.NoError(t, err)
	p.Pause()
	start := time.Now()
	err = unlock(context.WithoutCancel(context.Background())) // no deadline, as the gate calls it
	assert.Less(t, time.Since(start), hangLimit)
	assert.ErrorIs(t, err, redislock.ErrTimeout)
}

func TestLockIsBoundedWhenRedisIsPartitioned(t *testing.T) {
	t.Parallel()
	rdb, p := partitionable(t)
	l := redislock.New(rdb, redislock.WithTTL(300*time.Millisecond))
	p.Pause()
	start := time.Now()
	_, err := l.Lock(context.Background(), uniqueKey(t)) // no deadline: bounded by the TTL
	assert.Less(t, time.Since(start), hangLimit)
	assert.ErrorIs(t, err, redislock.ErrTimeout)
}

// pauseAfterLock partitions Redis as soon as the lock is taken, so the
// purchase runs with the lock held and the release meets the partition.
type pauseAfterLock struct {
	autobuy.Locker
	p *proxy
}

func (l pauseAfterLock) Lock(ctx context.Context, key string) (func(context.Context) error, error) {
	unlock, err := l.Locker.Lock(ctx, key)
	if err == nil {
		l.p.Pause()
	}
	return unlock, err
}

// TestGateNotHeldByAPartitionedRedis: Redis partitioned after the lock was
// taken must not hold the gate past the release bound once the purchase
// (which doesn't need Redis) has succeeded.
func TestGateNotHeldByAPartitionedRedis(t *testing.T) {
	t.Parallel()
	rdb, p := partitionable(t)
	w := setup(t)
	l := redislock.New(rdb, redislock.WithPrefix(uniqueKey(t)), redislock.WithLockTimeout(300*time.Millisecond))
	gate := w.replica(t, pauseAfterLock{Locker: l, p: p})

	start := time.Now()
	d, err := gate.Gate(context.Background(), w.cust, "chat_message", autobuy.WithEventID("m1"))
	elapsed := time.Since(start)
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	require.NotNil(t, d.Purchase, "the purchase went through")
	assert.Less(t, elapsed, hangLimit, "the gate was not held by the partitioned release")
	debits, grants := w.planPurchases()
	assert.Equal(t, 1, debits)
	assert.Equal(t, 1, grants)
}

// partitionedLog returns a ChargeLog through a partitionable proxy, with a
// lease of 10 units stored for cus_1 on chat (ReservationID reservation).
func partitionedLog(t *testing.T, reservation string) (*redislock.ChargeLog, *proxy, autobuy.Lease) {
	t.Helper()
	rdb, p := partitionable(t)
	l, err := redislock.NewChargeLog(rdb, redislock.WithChargeLogPrefix(uniqueKey(t)))
	require.NoError(t, err)
	now := time.Now()
	ls := autobuy.Lease{CustomerID: "cus_1", Metric: "chat", ReservationID: reservation, Held: 10, ExpiresAt: now.Add(time.Minute),
		CreatedAt: now, LastUsed: now}
	require.NoError(t, l.PutLease(context.Background(), &ls)) // the scripts are loaded
	return l, p, ls
}

// go-redis resends a command whose reply was lost (its defaults: three
// retries). A take of a lease is counted once all the same: a retry of it is
// recognized by the take's id.
func TestATakeWhoseReplyIsLostIsCountedOnce(t *testing.T) {
	t.Parallel()
	l, p, _ := partitionedLog(t, "rsv_1")
	ctx := context.Background()
	now := time.Now()
	_, ok, err := l.TakeLease(ctx, "cus_1", "chat", 1, now, takeID()) // the script is loaded
	require.NoError(t, err)
	require.True(t, ok)

	p.DropNextReply()
	got, ok, err := l.TakeLease(ctx, "cus_1", "chat", 1, now, takeID())
	require.NoError(t, err, "go-redis resent the take on a new connection")
	require.True(t, ok)
	assert.Equal(t, int64(2), got.Used)
	cur, found, err := l.Lease(ctx, "cus_1", "chat")
	require.NoError(t, err)
	require.True(t, found)
	assert.Equal(t, int64(2), cur.Used, "two takes, two units: the resent one was not counted again")
}

// A lease write whose reply was lost is resent by go-redis; the resend finds
// the write done. It was answered as a conflict (the revision had moved: by
// the write itself), and the gate took its own activation for another's.
func TestALeaseWriteWhoseReplyIsLostIsDone(t *testing.T) {
	t.Parallel()
	l, p, ls := partitionedLog(t, "reserving:k")
	ctx := context.Background()
	now := time.Now()

	ls.ReservationID, ls.Used = "rsv_1", 3
	p.DropNextReply()
	require.NoError(t, l.PutLease(ctx, &ls), "go-redis resent the write: done, not a conflict")
	assert.Equal(t, int64(2), ls.Rev)
	got, ok, err := l.TakeLease(ctx, "cus_1", "chat", 1, now, takeID())
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, int64(4), got.Used)

	stale := ls
	stale.Used = 9
	assert.ErrorIs(t, l.PutLease(ctx, &stale), autobuy.ErrChargeConflict, "another write at that revision is still a conflict")
}

// A claim or a charge update whose reply was lost is resent by go-redis and
// found done: the claim is this caller's (it was answered as another
// claimer's, and the gate waited for itself, then let its own action
// through uncounted), the update is done (it was a conflict with itself).
func TestAChargeWriteWhoseReplyIsLostIsOurs(t *testing.T) {
	t.Parallel()
	l, p, _ := partitionedLog(t, "rsv_1")
	ctx := context.Background()
	warm := autobuy.Charge{CustomerID: "cus_1", EventID: "e0", Via: "lease", State: autobuy.ChargeClaimed, CreatedAt: time.Now()}
	_, _, err := l.Claim(ctx, &warm) // the scripts are loaded
	require.NoError(t, err)
	require.NoError(t, l.PutCharge(ctx, &warm))

	c := autobuy.Charge{CustomerID: "cus_1", EventID: "e1", Via: "lease", State: autobuy.ChargeClaimed, CreatedAt: time.Now()}
	p.DropNextReply()
	_, created, err := l.Claim(ctx, &c)
	require.NoError(t, err)
	assert.True(t, created, "our claim, resent by go-redis")
	assert.Equal(t, int64(1), c.Rev)

	c.State = autobuy.ChargeLeased
	p.DropNextReply()
	require.NoError(t, l.PutCharge(ctx, &c), "our update, resent by go-redis: done")
	assert.Equal(t, int64(2), c.Rev)

	other := autobuy.Charge{CustomerID: "cus_1", EventID: "e1", Via: "usage", State: autobuy.ChargeClaimed, CreatedAt: time.Now()}
	stored, created, err := l.Claim(ctx, &other)
	require.NoError(t, err)
	assert.False(t, created, "another claimer reads ours")
	assert.Equal(t, autobuy.ChargeLeased, stored.State)
}
