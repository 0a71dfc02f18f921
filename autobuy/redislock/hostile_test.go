package redislock_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/redislock"
	"github.com/quotastack/quotastack-go/quotastacktest"
	"github.com/quotastack/quotastack-go/webhook"
)

// The hostile Redis kit: a raw TCP server that reads RESP commands and
// answers each with a script, like the raw HTTP servers of reliability/.

// redisScript answers one command on conn; it returns false to end the
// connection. stop closes when the server shuts down.
type redisScript func(conn net.Conn, cmd []string, stop <-chan struct{}) bool

type hostileRedis struct {
	ln    net.Listener
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startHostileRedis serves script until Close (also run by t.Cleanup), which
// closes every connection and waits for every goroutine of the server.
func startHostileRedis(t *testing.T, script redisScript) *hostileRedis {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &hostileRedis{ln: ln, stop: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept(script)
	t.Cleanup(s.Close)
	return s
}

func (s *hostileRedis) Addr() string { return s.ln.Addr().String() }

func (s *hostileRedis) accept(script redisScript) {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		select {
		case <-s.stop:
			s.mu.Unlock()
			_ = conn.Close()
			return
		default:
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(conn, script)
	}
}

func (s *hostileRedis) serve(conn net.Conn, script redisScript) {
	defer s.wg.Done()
	defer func() {
		_ = conn.Close()
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
	br := bufio.NewReader(conn)
	for {
		cmd, ok := readCommand(br)
		if !ok {
			return
		}
		switch strings.ToUpper(cmd[0]) {
		case "HELLO": // an old server: go-redis goes on in RESP2
			if !writeRESP(conn, "-ERR unknown command 'HELLO'\r\n") {
				return
			}
			continue
		case "CLIENT", "AUTH", "SELECT", "PING":
			// The handshake is honest, so the hostile answer meets the command itself.
			if !writeRESP(conn, "+OK\r\n") {
				return
			}
			continue
		}
		if !script(conn, cmd, s.stop) {
			return
		}
	}
}

// readCommand reads one RESP array of bulk strings.
func readCommand(br *bufio.Reader) ([]string, bool) {
	line, err := br.ReadString('\n')
	if err != nil || len(line) < 3 || line[0] != '*' {
		return nil, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n <= 0 || n > 1024 {
		return nil, false
	}
	cmd := make([]string, 0, n)
	for range n {
		line, err := br.ReadString('\n')
		if err != nil || len(line) < 3 || line[0] != '$' {
			return nil, false
		}
		size, err := strconv.Atoi(strings.TrimSpace(line[1:]))
		if err != nil || size < 0 || size > 1<<20 {
			return nil, false
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, false
		}
		cmd = append(cmd, string(buf[:size]))
	}
	return cmd, true
}

func writeRESP(conn net.Conn, s string) bool {
	_ = conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, err := conn.Write([]byte(s))
	return err == nil
}

// Close stops the server: listener, connections, goroutines.
func (s *hostileRedis) Close() {
	s.mu.Lock()
	select {
	case <-s.stop:
		s.mu.Unlock()
		return
	default:
	}
	close(s.stop)
	_ = s.ln.Close()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Scripts.

// reply answers every command with raw, then keeps the connection open
// (silent) until the server stops.
func reply(raw string) redisScript {
	return func(conn net.Conn, _ []string, stop <-chan struct{}) bool {
		if !writeRESP(conn, raw) {
			return false
		}
		<-stop
		return false
	}
}

// stall never answers.
func stall(conn net.Conn, _ []string, stop <-chan struct{}) bool {
	<-stop
	return false
}

// drop closes the connection at the first command.
func drop(net.Conn, []string, <-chan struct{}) bool { return false }

// trickle sends raw one byte at a time, every interval, then stalls.
func trickle(raw string, interval time.Duration) redisScript {
	return func(conn net.Conn, _ []string, stop <-chan struct{}) bool {
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := 0; i < len(raw); i++ {
			select {
			case <-stop:
				return false
			case <-t.C:
			}
			if !writeRESP(conn, raw[i:i+1]) {
				return false
			}
		}
		<-stop
		return false
	}
}

var hostileScripts = []struct {
	name   string
	script redisScript
}{
	{"bulk string of MaxInt64 bytes", reply("$9223372036854775807\r\n")},
	{"array of MaxInt64 elements", reply("*9223372036854775807\r\n")},
	{"map of 2^62 entries", reply("%4611686018427387904\r\n")},
	{"bulk string of -3 bytes", reply("$-3\r\n")},
	{"512 MiB bulk, then nothing", reply("$536870912\r\n")},
	{"nested arrays of a million, a thousand deep", reply(strings.Repeat("*1000000\r\n", 1000))},
	{"a 1 MiB status line", reply("+" + strings.Repeat("a", 1<<20) + "\r\n")},
	{"binary garbage", reply("\x00\xff\xfe\x1b[2J\r\n")},
	{"silence", stall},
	{"dropped connection", drop},
	{"one byte at a time", trickle("*2\r\n:1\r\n:0\r\n", 150*time.Millisecond)},
	{"an endless status line, one byte at a time", trickle("+"+strings.Repeat("a", 1000), 5*time.Millisecond)},
}

// hostileBound is each store's own bound in these tests; a call must end
// by it plus hostileSlack (a hang detector, not a timing assertion), while
// go-redis keeps its defaults (5 s read timeout, three retries, context
// deadlines ignored on sockets).
const (
	hostileBound = 300 * time.Millisecond
	hostileSlack = 1500 * time.Millisecond
)

// pieces are the module's stores, each making one call on rdb.
var pieces = []struct {
	name string
	call func(ctx context.Context, t *testing.T, rdb *redis.Client) error
}{
	{"Locker", func(ctx context.Context, _ *testing.T, rdb *redis.Client) error {
		l := redislock.New(rdb, redislock.WithTTL(hostileBound), redislock.WithLockTimeout(hostileBound))
		unlock, err := l.Lock(ctx, "hostile")
		if err == nil {
			return unlock(ctx)
		}
		return err
	}},
	{"Journal", func(ctx context.Context, t *testing.T, rdb *redis.Client) error {
		j, err := redislock.NewJournal(rdb, redislock.WithJournalTimeout(hostileBound))
		require.NoError(t, err)
		_, err = j.Open(ctx, "cust_1")
		return err
	}},
	{"Journal.Put", func(ctx context.Context, t *testing.T, rdb *redis.Client) error {
		j, err := redislock.NewJournal(rdb, redislock.WithJournalTimeout(hostileBound))
		require.NoError(t, err)
		in := testIntent("cust_1", "ord_1")
		return j.Put(ctx, &in)
	}},
	{"Pacer without a deadline", func(ctx context.Context, t *testing.T, rdb *redis.Client) error {
		p, err := redislock.NewPacer(rdb, "budget", 100, time.Second, redislock.WithPacerTimeout(hostileBound))
		require.NoError(t, err)
		return p.Wait(ctx, time.Time{})
	}},
	{"Pacer with a call deadline", func(ctx context.Context, t *testing.T, rdb *redis.Client) error {
		p, err := redislock.NewPacer(rdb, "budget", 100, time.Second) // its own bound: 2 s
		require.NoError(t, err)
		return p.Wait(ctx, time.Now().Add(hostileBound))
	}},
	{"ChargeLog", func(ctx context.Context, t *testing.T, rdb *redis.Client) error {
		s, err := redislock.NewChargeLog(rdb, redislock.WithChargeLogTimeout(hostileBound))
		require.NoError(t, err)
		_, _, err = s.Claim(ctx, &autobuy.Charge{CustomerID: "c", EventID: "evt", Metric: "chat", Units: 1})
		return err
	}},
	{"ChargeLog lease take", func(ctx context.Context, t *testing.T, rdb *redis.Client) error {
		s, err := redislock.NewChargeLog(rdb, redislock.WithChargeLogTimeout(hostileBound))
		require.NoError(t, err)
		_, _, err = s.TakeLease(ctx, "c", "chat", 1, time.Now(), takeID())
		return err
	}},
	{"WebhookStore", func(ctx context.Context, _ *testing.T, rdb *redis.Client) error {
		s := redislock.NewWebhookStore(rdb, redislock.WithStoreTimeout(hostileBound))
		_, err := s.Claim(ctx, "msg_1", time.Minute)
		if err != nil {
			return err
		}
		return s.Complete(ctx, "msg_1", time.Hour)
	}},
}

var _ webhook.ReplayStore = (*redislock.WebhookStore)(nil)

// hostileClient is a go-redis client with its defaults (the worst case to
// bound) on the hostile server.
func hostileClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true})
}

// TestHostileRedis meets every store with every hostile server: each call
// ends in an error by its bound, nothing panics (a panic in a goroutine of
// the module would end the test binary), a 512 MiB announcement allocates
// nothing near it, and no goroutine outlives the test.
// Not parallel: it measures allocations and goroutines.
func TestHostileRedis(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, piece := range pieces {
		for _, hs := range hostileScripts {
			t.Run(piece.name+"/"+hs.name, func(t *testing.T) {
				srv := startHostileRedis(t, hs.script)
				rdb := hostileClient(srv.Addr())
				t.Cleanup(func() {
					srv.Close() // first: it ends the reads go-redis is stuck in
					_ = rdb.Close()
				})
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				start := time.Now()
				err := piece.call(context.Background(), t, rdb)
				elapsed := time.Since(start)
				runtime.ReadMemStats(&after)
				require.Error(t, err, "a hostile Redis is an error")
				assert.Less(t, elapsed, hostileBound+hostileSlack, "the call ends by its bound")
				assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<20), "no allocation at an announced length")
			})
		}
	}
}

// The refusals are typed: a length over the limits is ErrBadReply, a stall
// is ErrTimeout.
func TestHostileRedisErrorsAreTyped(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		script redisScript
		want   error
	}{
		{"bulk string of MaxInt64 bytes", reply("$9223372036854775807\r\n"), redislock.ErrBadReply},
		{"array of MaxInt64 elements", reply("*9223372036854775807\r\n"), redislock.ErrBadReply},
		{"512 MiB bulk", reply("$536870912\r\n"), redislock.ErrBadReply},
		{"silence", stall, redislock.ErrTimeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startHostileRedis(t, tc.script)
			rdb := hostileClient(srv.Addr())
			t.Cleanup(func() {
				srv.Close()
				_ = rdb.Close()
			})
			s, err := redislock.NewChargeLog(rdb, redislock.WithChargeLogTimeout(hostileBound))
			require.NoError(t, err)
			_, _, err = s.Claim(context.Background(), &autobuy.Charge{CustomerID: "c", EventID: "evt", Metric: "chat", Units: 1})
			assert.ErrorIs(t, err, tc.want)
		})
	}
}

// Replies within the limits pass the guard untouched: the guard follows
// RESP, including nesting, nulls and large values under the limits.
func TestGuardPassesHonestReplies(t *testing.T) {
	t.Parallel()
	_, rdb := miniClient(t)
	redislock.Protect(rdb)
	ctx := context.Background()
	big := strings.Repeat("x", 1<<20)
	require.NoError(t, rdb.Set(ctx, "big", big, 0).Err())
	got, err := rdb.Get(ctx, "big").Result()
	require.NoError(t, err)
	assert.Equal(t, big, got)
	require.ErrorIs(t, rdb.Get(ctx, "missing").Err(), redis.Nil)
	for i := range 1000 {
		require.NoError(t, rdb.RPush(ctx, "list", strconv.Itoa(i)).Err())
	}
	vals, err := rdb.LRange(ctx, "list", 0, -1).Result()
	require.NoError(t, err)
	assert.Len(t, vals, 1000)
	res, err := rdb.Eval(ctx, `return {1, {2, {"a", false}}, "b"}`, nil).Result()
	require.NoError(t, err)
	assert.Equal(t, []any{int64(1), []any{int64(2), []any{"a", nil}}, "b"}, res)
	require.NoError(t, rdb.Ping(ctx).Err())
}

// A Redis pacer on a lying Redis fails the attempt, which is an outage: the
// gate's fallback policy decides, by the call's bound.
func TestGateFallsBackWhenThePacerRedisLies(t *testing.T) {
	t.Parallel()
	for _, hs := range []struct {
		name   string
		script redisScript
	}{
		{"bulk string of MaxInt64 bytes", reply("$9223372036854775807\r\n")},
		{"silence", stall},
	} {
		t.Run(hs.name, func(t *testing.T) {
			t.Parallel()
			hr := startHostileRedis(t, hs.script)
			rdb := hostileClient(hr.Addr())
			t.Cleanup(func() {
				hr.Close()
				_ = rdb.Close()
			})
			p, err := redislock.NewPacer(rdb, "budget", 100, time.Second, redislock.WithPacerTimeout(hostileBound))
			require.NoError(t, err)
			srv := quotastacktest.Start(t)
			require.NoError(t, srv.SeedRecipe())
			c := srv.Client(quotastack.WithPacer(p), quotastack.WithRetry(1, time.Millisecond, time.Millisecond))
			g, err := autobuy.New(c, autobuy.WithPlan(hourPlan), autobuy.WithFallback(autobuy.FailClosed))
			require.NoError(t, err)
			start := time.Now()
			d, err := g.Gate(context.Background(), quotastack.ExternalID("user_1"), "chat_message")
			require.NoError(t, err)
			assert.Less(t, time.Since(start), hostileBound+hostileSlack)
			assert.True(t, d.Fallback)
			assert.False(t, d.Allowed)
			assert.Equal(t, autobuy.ReasonUnavailable, d.Reason)
			assert.True(t, quotastack.IsOutage(context.Background(), d.Err), "%v", d.Err)
			assert.Empty(t, srv.Requests(), "no attempt was sent")
		})
	}
}
