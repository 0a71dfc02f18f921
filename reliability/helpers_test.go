package reliability_test

import (
	"context"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testKey is the API key of the clients built against hostile servers; no
// error text may contain it, nor its secret part.
const testKey = "qs_test_SECRETsecret0123456789"

// roundTripFunc is an in-memory http.RoundTripper.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// countingTransport counts the HTTP attempts a client makes (retries
// included) on top of a pooled transport of its own.
type countingTransport struct {
	base     *http.Transport
	next     http.RoundTripper // in front of base, if set (the soak's crashes)
	attempts atomic.Int64
}

func newCountingTransport() *countingTransport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 256, 64
	return &countingTransport{base: t}
}

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.attempts.Add(1)
	if t.next != nil {
		return t.next.RoundTrip(r)
	}
	return t.base.RoundTrip(r)
}

// CloseIdleConnections lets quotastack.Client.CloseIdleConnections reach the pool.
func (t *countingTransport) CloseIdleConnections() { t.base.CloseIdleConnections() }

// callCounter is a slog.Handler that counts the client's debug records: one
// "quotastack request" or "quotastack request failed" per logical call, one
// "quotastack retry" per retried attempt.
type callCounter struct {
	calls, retries atomic.Int64
}

func (c *callCounter) Enabled(context.Context, slog.Level) bool { return true }

func (c *callCounter) Handle(_ context.Context, r slog.Record) error {
	switch r.Message {
	case "quotastack request", "quotastack request failed":
		c.calls.Add(1)
	case "quotastack retry":
		c.retries.Add(1)
	}
	return nil
}

func (c *callCounter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *callCounter) WithGroup(string) slog.Handler      { return c }

// noKey fails unless text is free of the API key and of its secret part.
func noKey(t testing.TB, text string) bool {
	t.Helper()
	secret := strings.TrimPrefix(testKey, "qs_test_")
	if strings.Contains(text, testKey) || strings.Contains(text, secret) {
		t.Errorf("the API key leaked into %q", text)
		return false
	}
	return true
}

// goroutineBaseline is a goroutine count to compare with after a test has
// shut its servers and clients down; the wait lets exiting goroutines end.
type goroutineBaseline int

func countGoroutines() goroutineBaseline { return goroutineBaseline(runtime.NumGoroutine()) }

// settle waits up to 5 s for the goroutine count to come back to the
// baseline and reports the count it saw last, with the stacks on failure.
func (b goroutineBaseline) settle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	n := runtime.NumGoroutine()
	for n > int(b) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	if n > int(b) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("goroutine leak: %d goroutines before, %d after\n%s", b, n, buf)
	}
}
