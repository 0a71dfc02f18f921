package redislock_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go/autobuy/redislock"
)

func TestAssessInfo(t *testing.T) {
	t.Parallel()
	info := func(fields ...string) string {
		return "# Memory\r\n" + strings.Join(fields, "\r\n") + "\r\n# Persistence\r\nloading:0\r\n"
	}
	cases := []struct {
		name     string
		info     string
		risk     bool
		warnings []string // substrings, one per warning
	}{
		{"noeviction with AOF", info("maxmemory:1073741824", "maxmemory_policy:noeviction", "aof_enabled:1"), false, nil},
		{"volatile-lru with a limit", info("maxmemory:1073741824", "maxmemory_policy:volatile-lru", "aof_enabled:1"), true, nil},
		{"allkeys-lru with a limit", info("maxmemory:100", "maxmemory_policy:allkeys-lru", "aof_enabled:1"), true, nil},
		{"volatile-ttl without a limit", info("maxmemory:0", "maxmemory_policy:volatile-ttl", "aof_enabled:1"), false,
			[]string{"as soon as a maxmemory is set"}},
		{"AOF off", info("maxmemory:0", "maxmemory_policy:noeviction", "aof_enabled:0"), false, []string{"AOF persistence is off"}},
		{"a server that tells nothing", "# Clients\r\nconnected_clients:1\r\n", false,
			[]string{"no maxmemory_policy", "whether AOF"}},
		{"garbage", "\x00\xff:::\n#:x\n", false, []string{"no maxmemory_policy", "whether AOF"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			risk, warnings := redislock.AssessInfo(c.info)
			assert.Equal(t, c.risk, risk != "", "risk %q", risk)
			require.Len(t, warnings, len(c.warnings), "%q", warnings)
			for i, w := range c.warnings {
				assert.Contains(t, warnings[i], w)
			}
		})
	}
}

// infoServer is a Redis that answers INFO with info and refuses every other
// command (go-redis's handshake then falls back to RESP2).
func infoServer(t *testing.T, info string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					args, err := readInfoCommand(r)
					if err != nil {
						return
					}
					if len(args) > 0 && strings.EqualFold(args[0], "INFO") {
						_, _ = fmt.Fprintf(conn, "$%d\r\n%s\r\n", len(info), info)
						continue
					}
					_, _ = io.WriteString(conn, "-ERR unknown command\r\n")
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func readInfoCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "*") {
		return nil, fmt.Errorf("not a command: %q %v", line, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n > 64 {
		return nil, fmt.Errorf("bad count %q", line)
	}
	args := make([]string, n)
	for i := range args {
		if line, err = r.ReadString('\n'); err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
		if err != nil || size > 1<<16 {
			return nil, fmt.Errorf("bad size %q", line)
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		args[i] = string(buf[:size])
	}
	return args, nil
}

// TestNewJournalChecksEviction: NewJournal refuses a Redis whose
// maxmemory-policy may evict the journal's keys, unless the risk is
// accepted, in which case it says so loudly; AOF off is a warning.
func TestNewJournalChecksEviction(t *testing.T) {
	t.Parallel()
	evicting := infoServer(t, "# Memory\r\nmaxmemory:1073741824\r\nmaxmemory_policy:volatile-lru\r\n# Persistence\r\naof_enabled:0\r\n")
	client := func(addr string) *redis.Client {
		rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true, MaxRetries: -1})
		t.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	_, err := redislock.NewJournal(client(evicting), redislock.WithJournalLogger(logger))
	require.ErrorIs(t, err, redislock.ErrEvictionRisk)
	assert.Contains(t, err.Error(), "volatile-lru")
	assert.Contains(t, logs.String(), "AOF persistence is off")

	logs.Reset()
	j, err := redislock.NewJournal(client(evicting), redislock.WithJournalLogger(logger), redislock.WithEvictionRiskAccepted())
	require.NoError(t, err)
	require.NotNil(t, j)
	assert.Contains(t, logs.String(), "accepted with WithEvictionRiskAccepted")

	logs.Reset()
	safe := infoServer(t, "# Memory\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n# Persistence\r\naof_enabled:1\r\n")
	_, err = redislock.NewJournal(client(safe), redislock.WithJournalLogger(logger))
	require.NoError(t, err)
	assert.Empty(t, logs.String(), "nothing to say about a safe server")
}
