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
	s := &Server{clock: clock, idem: newIdemStore(), closed: make(chan struct{})}
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
	s := &Server{clock: NewManualClock(time.Now()), idem: newIdemStore(), closed: make(chan struct{})}
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
