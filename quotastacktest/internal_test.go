package quotastacktest

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestIdemStoreForgetsOldKeys checks that expired keys leave memory as new ones arrive.
func TestIdemStoreForgetsOldKeys(t *testing.T) {
	t.Parallel()
	clock := NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	s := &Server{clock: clock, idem: newIdemStore(0), closed: make(chan struct{})}
	exec := func() response { return response{status: 200, body: []byte("{}")} }
	req := httptest.NewRequest("POST", "/v1/usage", nil)
	for i := range 3000 {
		_, replayed, ok := s.idem.do(s, req, fmt.Sprint("k", i), "fp", exec)
		require.True(t, ok)
		require.False(t, replayed)
	}
	require.Len(t, s.idem.entries, 3000)
	clock.Advance(idemRetention)
	_, _, ok := s.idem.do(s, req, "fresh", "fp", exec)
	require.True(t, ok)
	require.Len(t, s.idem.entries, 1)
	require.Less(t, len(s.idem.order)-s.idem.head, 2)
}

func TestPriceOverflow(t *testing.T) {
	t.Parallel()
	r := &rule{costType: "per_unit", unitCost: 1 << 40}
	_, p := price(r, 1<<40)
	require.NotNil(t, p)
	require.Equal(t, 400, p.Status)
}

func TestUUIDv7(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 4, 13, 13, 0, 0, 0, time.UTC)
	id := newUUIDv7(now)
	require.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, id)
	require.Equal(t, fmt.Sprintf("%012x", now.UnixMilli()), id[0:8]+id[9:13])
}

// TestIdemStoreDoesNotKeep5xx: a 5xx (only a handler panic can make one) is not stored,
// so the next request with the key executes.
func TestIdemStoreDoesNotKeep5xx(t *testing.T) {
	t.Parallel()
	s := &Server{clock: NewManualClock(time.Now()), idem: newIdemStore(0), closed: make(chan struct{})}
	req := httptest.NewRequest("POST", "/v1/usage", nil)
	calls := 0
	exec := func() response {
		calls++
		if calls == 1 {
			return response{status: 500}
		}
		return response{status: 200}
	}
	resp, _, _ := s.idem.do(s, req, "k", "fp", exec)
	require.Equal(t, 500, resp.status)
	resp, replayed, _ := s.idem.do(s, req, "k", "fp", exec)
	require.Equal(t, 200, resp.status)
	require.False(t, replayed)
	_, replayed, _ = s.idem.do(s, req, "k", "fp", exec)
	require.True(t, replayed)
	require.Equal(t, 2, calls)
}

// Past its limit the store forgets expired keys first, then the oldest finished ones; keys
// inside the limit replay for 24 h and no longer.
func TestIdemStoreLimit(t *testing.T) {
	t.Parallel()
	clock := NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	s := &Server{clock: clock, idem: newIdemStore(2), closed: make(chan struct{})}
	execs := 0
	exec := func() response { execs++; return response{status: 200, body: []byte("{}")} }
	req := httptest.NewRequest("POST", "/v1/usage", nil)
	do := func(key string) bool {
		_, replayed, ok := s.idem.do(s, req, key, "fp", exec)
		require.True(t, ok)
		return replayed
	}
	require.False(t, do("a"))
	clock.Advance(23 * time.Hour)
	require.False(t, do("b"))
	require.True(t, do("a"), "inside the limit and the 24 h")
	clock.Advance(2 * time.Hour) // a expired, b not
	require.False(t, do("c"))
	require.Len(t, s.idem.entries, 2, "a, expired, went first")
	require.True(t, do("b"))
	require.True(t, do("c"))
	require.False(t, do("d"), "past the limit")
	require.Len(t, s.idem.entries, 2)
	require.False(t, do("b"), "the oldest finished key was forgotten early: it executes again")
	require.Equal(t, 5, execs)
	clock.Advance(25 * time.Hour)
	require.False(t, do("d"), "expired")
}

// A request touches the customer's live blocks only: spent and expired blocks leave the list.
func TestLiveBlocksStayFew(t *testing.T) {
	t.Parallel()
	clock := NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	srv := NewServer(WithClock(clock.Now))
	defer srv.Close()
	for i := range 500 {
		exp := clock.Now().Add(time.Hour)
		_, err := srv.Grant("cus", BlockSpec{Credits: 1000, Priority: 10, ExpiresAt: &exp})
		require.NoError(t, err)
		if i%2 == 0 {
			clock.Advance(2 * time.Hour) // every other block expires before the next grant
		}
	}
	require.Len(t, srv.Blocks("cus"), 1)
	srv.st.mu.Lock()
	live, all := len(srv.st.byExternal["cus"].live), len(srv.st.byExternal["cus"].blocks)
	srv.st.mu.Unlock()
	require.Equal(t, 1, live)
	require.Equal(t, 500, all)
	require.NoError(t, srv.CheckInvariants())
}
