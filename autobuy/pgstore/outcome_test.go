package pgstore_test

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/pgstore"
)

// cutProxy relays PostgreSQL connections; once armed, it forwards the
// client's next request to the server, lets it run, and then drops the
// connection before the answer reaches the client: the statement's outcome
// is unknown to the client.
type cutProxy struct {
	ln    net.Listener
	armed atomic.Bool
	cuts  atomic.Int32
	wg    sync.WaitGroup
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{ln: ln}
	t.Cleanup(func() { _ = ln.Close(); p.wg.Wait() })
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.wg.Add(2)
			var cut atomic.Bool
			go func() { // server to client, unless cut
				defer p.wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 && !cut.Load() {
						_, _ = c.Write(buf[:n])
					}
					if err != nil {
						_ = c.Close()
						return
					}
				}
			}()
			go func() { // client to server
				defer p.wg.Done()
				defer s.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if p.armed.CompareAndSwap(true, false) {
							cut.Store(true)
							_, _ = s.Write(buf[:n])
							time.Sleep(300 * time.Millisecond) // it runs and commits
							p.cuts.Add(1)
							_ = c.Close()
							_, _ = io.Copy(io.Discard, c)
							return
						}
						_, _ = s.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

// proxiedStore returns a store whose single pooled connection goes through
// a cutProxy.
func proxiedStore(t *testing.T) (*pgstore.Store, *cutProxy) {
	t.Helper()
	u, err := url.Parse(postgresURL(t))
	require.NoError(t, err)
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "5432")
	}
	p := startCutProxy(t, host)
	direct := testPool(t, 2)
	schema := freshSchema(t, direct)
	u.Host = p.ln.Addr().String()
	pool := func() *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(u.String())
		require.NoError(t, err)
		cfg.MaxConns = 1
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(t, err)
		t.Cleanup(pool.Close)
		return pool
	}()
	s, err := pgstore.New(pool, pgstore.WithSchema(schema))
	require.NoError(t, err)
	require.NoError(t, s.Migrate(ctx))
	return s, p
}

// TestPutUnknownOutcome: the connection drops after the journal write was
// sent and committed, before its answer: Put reads the intent back and
// reports the write as done (the gate would otherwise treat a done intent as
// unfinished, and nobody would fire its AutoBought hook). A write that didn't
// land stays an error.
func TestPutUnknownOutcome(t *testing.T) {
	t.Parallel()
	s, p := proxiedStore(t)
	j := s.Journal()
	in := pending("cus_a", "ord_1")
	require.NoError(t, j.Put(ctx, &in))
	in.State = autobuy.IntentDebited
	require.NoError(t, j.Put(ctx, &in)) // both statements are prepared on the connection now

	in.State, in.BlockID = autobuy.IntentDone, "blk_1"
	p.armed.Store(true)
	require.NoError(t, j.Put(ctx, &in), "committed, answer lost: read back")
	require.Equal(t, int32(1), p.cuts.Load(), "the answer was cut")
	assert.Equal(t, int64(3), in.Rev)
	since, err := j.Since(ctx, "cus_a", time.Time{})
	require.NoError(t, err)
	require.Len(t, since, 1)
	assert.Equal(t, autobuy.IntentDone, since[0].State)
	assert.Equal(t, int64(3), since[0].Rev)

	// A stale write whose answer is lost: the read-back shows it didn't land.
	stale := in
	stale.Rev, stale.Note = 1, "stale"
	p.armed.Store(true)
	err = j.Put(ctx, &stale)
	require.Error(t, err)
	assert.Equal(t, int32(2), p.cuts.Load())
	assert.Equal(t, int64(1), stale.Rev)
}

// TestClaimUnknownOutcome: a claim whose answer is lost after it committed
// is this caller's claim (created), not another claimer's.
func TestClaimUnknownOutcome(t *testing.T) {
	t.Parallel()
	s, p := proxiedStore(t)
	l := s.ChargeLog()
	warm := autobuy.Charge{CustomerID: "cus_a", EventID: "e0", State: autobuy.ChargePending, CreatedAt: time.Now()}
	_, _, err := l.Claim(ctx, &warm)
	require.NoError(t, err)

	c := autobuy.Charge{CustomerID: "cus_a", EventID: "e1", Via: "usage", State: autobuy.ChargePending, CreatedAt: time.Now()}
	p.armed.Store(true)
	stored, created, err := l.Claim(ctx, &c)
	require.NoError(t, err)
	require.Equal(t, int32(1), p.cuts.Load(), "the answer was cut")
	assert.True(t, created, "the record read back is exactly ours")
	assert.Equal(t, int64(1), c.Rev)
	assert.Equal(t, "e1", stored.EventID)
}

// TestPutChargeUnknownOutcome: an update whose answer is lost after it
// committed is reported done (a retry at the same revision would conflict).
func TestPutChargeUnknownOutcome(t *testing.T) {
	t.Parallel()
	s, p := proxiedStore(t)
	l := s.ChargeLog()
	c := autobuy.Charge{CustomerID: "cus_a", EventID: "e1", Via: "usage", State: autobuy.ChargePending, CreatedAt: time.Now()}
	_, _, err := l.Claim(ctx, &c)
	require.NoError(t, err)
	c.State = autobuy.ChargeHeld
	require.NoError(t, l.PutCharge(ctx, &c)) // prepared on the connection now
	c.State, c.UpdatedAt = autobuy.ChargeCharged, time.Now()
	p.armed.Store(true)
	require.NoError(t, l.PutCharge(ctx, &c), "committed, answer lost: read back")
	require.Equal(t, int32(1), p.cuts.Load())
	assert.Equal(t, int64(3), c.Rev)
}

// TestTakeLeaseUnknownOutcome: a take whose answer is lost after it
// committed is sent again under its id and answered counted, once.
func TestTakeLeaseUnknownOutcome(t *testing.T) {
	t.Parallel()
	s, p := proxiedStore(t)
	l := s.ChargeLog()
	ls := autobuy.Lease{CustomerID: "cus_a", Metric: "m", ReservationID: "rsv_1", Held: 5, LastUsed: time.Now()}
	require.NoError(t, l.PutLease(ctx, &ls))
	_, ok, err := l.TakeLease(ctx, "cus_a", "m", 1, time.Now(), "t0") // prepared on the connection now
	require.NoError(t, err)
	require.True(t, ok)
	p.armed.Store(true)
	got, ok, err := l.TakeLease(ctx, "cus_a", "m", 1, time.Now(), "t1")
	require.NoError(t, err, "committed, answer lost: sent again")
	require.Equal(t, int32(1), p.cuts.Load(), "the answer was cut")
	assert.True(t, ok)
	assert.Equal(t, "rsv_1", got.ReservationID)
	cur, _, err := l.Lease(ctx, "cus_a", "m")
	require.NoError(t, err)
	assert.Equal(t, int64(2), cur.Used, "two takes, two units")
}

// TestATerminatedIdleConnectionIsReplaced: a pooled connection that the
// server terminated while it sat idle (a failover, an idle timeout, an
// administrator) fails the next statement before it runs; the store runs it
// again on a fresh connection instead of failing the gate.
func TestATerminatedIdleConnectionIsReplaced(t *testing.T) {
	t.Parallel()
	admin := testPool(t, 1)
	app := "qs_terminated_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	pool := testPool(t, 1, func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["application_name"] = app })
	s := newStore(t, pool)
	l := s.ChargeLog()
	for i := range 3 {
		_, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			var n int
			return admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&n) == nil && n == 0
		}, 5*time.Second, 5*time.Millisecond)
		c := autobuy.Charge{CustomerID: "cus_a", EventID: fmt.Sprint("e", i), Via: "usage", State: autobuy.ChargeClaimed, CreatedAt: time.Now()}
		_, created, err := l.Claim(ctx, &c)
		require.NoError(t, err, "claim %d on a connection terminated while idle", i)
		assert.True(t, created)
	}
}
