package reliability_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
)

// The deadlines of the raw hostile cases: each attempt gets rawAttempt, each
// call rawCall; a call must end by rawCall plus rawSlack (a hang detector,
// not a timing assertion).
const (
	rawAttempt = 300 * time.Millisecond
	rawCall    = 1500 * time.Millisecond
	rawSlack   = 2 * time.Second
)

// quoteKey is an API key with a quote and a backslash, which net/http's %q
// quoting escapes: the redaction must see through the escapes.
const quoteKey = `qs_test_quo"te\back0123456789`

// What a raw hostile case must end in.
type rawWant int

const (
	wantRequestError rawWant = iota // *RequestError: no usable HTTP answer
	wantUnexpected                  // *APIError matching ErrUnexpectedResponse
	wantAPIError                    // *APIError with a status (rawCase.status)
)

type rawCase struct {
	name   string
	script rawScript
	key    string // the client's key; testKey when empty
	want   rawWant
	status int
	check  func(t *testing.T, err error) // more assertions, may be nil
	op     rawOp                         // the client call (the gate always checks, then reads the balance)
}

func echoStatus(f func(key string) string) rawScript { return answerWithKey(f) }

var bomb = gzipBomb(64 << 20) // 64 MiB of zeros, about 64 KiB on the wire

var rawCases = []rawCase{
	// The key echoed into the places net/http quotes in its errors.
	{name: "key as the protocol version", want: wantRequestError,
		script: echoStatus(func(k string) string { return k + " 200 OK\r\n\r\n" })},
	{name: "key in the HTTP version", want: wantRequestError,
		script: echoStatus(func(k string) string { return "HTTP/1." + k + " 200 OK\r\n\r\n" })},
	{name: "key as the status code", want: wantRequestError,
		script: echoStatus(func(k string) string { return "HTTP/1.1 " + k + " OK\r\n\r\n" })},
	{name: "key after a short status code", want: wantRequestError,
		script: echoStatus(func(k string) string { return "HTTP/1.1 2" + k + "\r\n\r\n" })},
	{name: "key as the whole status line", want: wantRequestError,
		script: echoStatus(func(k string) string { return k + "\r\n\r\n" })},
	{name: "key quoted by %q (quote and backslash in the key)", key: quoteKey, want: wantRequestError,
		script: echoStatus(func(k string) string { return "HTTP/1.1 " + k + " OK\r\n\r\n" })},
	{name: "key in Content-Length", want: wantRequestError,
		script: echoStatus(func(k string) string { return "HTTP/1.1 200 OK\r\nContent-Length: " + k + "\r\n\r\n{}" })},
	{name: "key in a second Content-Length", want: wantRequestError,
		script: echoStatus(func(k string) string {
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: " + k + "\r\n\r\n{}"
		})},
	{name: "key in Transfer-Encoding", want: wantRequestError,
		script: echoStatus(func(k string) string { return "HTTP/1.1 200 OK\r\nTransfer-Encoding: " + k + "\r\n\r\n{}" })},
	{name: "key as a header line without a colon", want: wantRequestError,
		script: echoStatus(func(k string) string { return "HTTP/1.1 200 OK\r\n" + k + "\r\n\r\n{}" })},
	{name: "key in a header name with a space (accepted), then not JSON", want: wantUnexpected, status: 200,
		script: echoStatus(func(k string) string {
			return "HTTP/1.1 200 OK\r\nX " + k + ": v\r\nContent-Length: 8\r\n\r\nnot json"
		})},
	{name: "key in a header name with ESC (refused)", want: wantRequestError,
		script: echoStatus(func(k string) string { return "HTTP/1.1 200 OK\r\nX\x1b" + k + ": v\r\n\r\n{}" })},
	{name: "key as a chunk size", want: wantRequestError,
		script: echoStatus(func(k string) string {
			return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + k + "\r\n{}\r\n0\r\n\r\n"
		})},
	{name: "key in the reason phrase of a 500", want: wantAPIError, status: 500,
		script: echoStatus(func(k string) string { return "HTTP/1.1 500 " + k + "\r\nContent-Length: 0\r\n\r\n" })},
	{name: "key in X-Request-Id and Location of a 302", want: wantUnexpected,
		script: echoStatus(func(k string) string {
			return "HTTP/1.1 302 Found\r\nX-Request-Id: " + k + "\r\nLocation: http://127.0.0.1:1/" + k + "\r\nContent-Length: 0\r\n\r\n"
		})},
	// Echoes in bodies, escaped.
	{name: "key \\u-escaped in a problem detail", want: wantAPIError, status: 401,
		script: echoStatus(func(k string) string {
			return httpResponse(401, "", `{"type":"https://quotastack.io/errors/unauthorized","detail":"unknown key \u0071`+k[1:]+`"}`)
		})},
	{name: "key fully \\u-escaped in a problem title and errors", want: wantAPIError, status: 400,
		script: echoStatus(func(k string) string {
			return httpResponse(400, "", `{"type":"https://quotastack.io/errors/validation-error","title":"`+uEscape(k)+`","errors":[{"field":"`+uEscape(k)+`","message":"`+k+`"}]}`)
		})},
	{name: "key \\u-escaped in an HTML 502", want: wantAPIError, status: 502,
		script: echoStatus(func(k string) string {
			return "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: " + fmt.Sprint(len(uEscape(k))+len(k)+1) + "\r\n\r\n" + uEscape(k) + " " + k
		})},
	{name: "key double-escaped in a 200 that fails to decode", want: wantUnexpected,
		script: echoStatus(func(k string) string {
			return httpResponse(200, "", `{"allowed":"`+strings.ReplaceAll(uEscape(k), `\`, `\\`)+`"}`)
		})},
	{name: "key in a time field of a 200", want: wantUnexpected, op: recordOp,
		script: echoStatus(func(k string) string {
			return httpResponse(200, "", `{"id":"evt_1","created_at":"`+k+`"}`)
		})},
	{name: "key split over a cut (600 bytes of padding first)", want: wantAPIError, status: 400,
		script: echoStatus(func(k string) string {
			return httpResponse(400, "", `{"type":"https://quotastack.io/errors/validation-error","detail":"`+strings.Repeat("x", 500)+k+`"}`)
		})},
	// Log forging.
	{name: "control characters and bidi overrides in detail and request id", want: wantAPIError, status: 422,
		script: answer(httpResponse(422, "X-Request-Id: req\u202e1\u200f\xc2\x85\r\n",
			`{"type":"https://quotastack.io/errors/validation-error","title":"t\u0085","detail":"bad\nlevel=INFO msg=forged\u001b[31m \u202eevil\u2028 \u0000"}`)),
		check: func(t *testing.T, err error) {
			var apiErr *quotastack.APIError
			require.ErrorAs(t, err, &apiErr)
			assertClean(t, err.Error())
			assert.Contains(t, string(apiErr.RawBody()), `\u001b[31m`, "the raw body is kept for code that asks")
			assert.Contains(t, apiErr.Detail, "\x1b[31m", "the field keeps the server's text")
		}},
	// Informational answers and upgrades.
	{name: "101 Switching Protocols, then silence", want: wantUnexpected, status: 101,
		script: thenSilence(func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
		})},
	{name: "101 with the key in Upgrade, then a trickle", want: wantUnexpected, status: 101,
		script: func(conn net.Conn, req rawRequest, stop <-chan struct{}) {
			trickle("HTTP/1.1 101 Switching Protocols\r\nUpgrade: "+req.Key+"\r\nConnection: Upgrade\r\n\r\n", req.Key, 20*time.Millisecond)(conn, req, stop)
		}},
	{name: "101 without an Upgrade header", want: wantUnexpected, status: 101,
		script: thenSilence(func(string) string { return "HTTP/1.1 101 Switching Protocols\r\n\r\n" })},
	{name: "100 Continue, then silence", want: wantRequestError,
		script: thenSilence(func(string) string { return "HTTP/1.1 100 Continue\r\n\r\n" })},
	{name: "an endless stream of 103 Early Hints", want: wantRequestError,
		script: func(conn net.Conn, req rawRequest, stop <-chan struct{}) {
			hint := "HTTP/1.1 103 Early Hints\r\nLink: </" + req.Key + ">; rel=preload\r\n\r\n"
			for i := 0; i < 100_000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if !writeAll(conn, hint) {
					return
				}
			}
		}},
	// Sizes.
	{name: "1 MiB of response headers", want: wantRequestError,
		script: answer("HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("a", 1000)+"\r\n", 1024) + "Content-Length: 2\r\n\r\n{}")},
	{name: "one 1 MiB header line", want: wantRequestError,
		script: answer("HTTP/1.1 200 OK\r\nX-Pad: " + strings.Repeat("a", 1<<20) + "\r\nContent-Length: 2\r\n\r\n{}")},
	{name: "gzip bomb (64 MiB of zeros)", want: wantUnexpected, status: 200,
		script: answer("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: " +
			fmt.Sprint(len(bomb)) + "\r\n\r\n" + string(bomb))},
	{name: "gzip bomb without a length", want: wantUnexpected, status: 200,
		script: answer("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n" + string(bomb))},
	{name: "corrupt gzip", want: wantRequestError,
		script: answer("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot gzip!!")},
	// Connections that end badly.
	{name: "reset mid-body", want: wantRequestError,
		script: resetAfter("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"allowed\":")},
	{name: "reset before any answer", want: wantRequestError, script: resetAfter("")},
	{name: "half-closed before any answer", want: wantRequestError, script: halfClose("")},
	{name: "half-closed mid-headers", want: wantRequestError, script: halfClose("HTTP/1.1 200 OK\r\nContent-Le")},
	{name: "half-closed mid-body", want: wantRequestError,
		script: halfClose("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"allowed\":")},
	{name: "silence", want: wantRequestError, script: thenSilence(func(string) string { return "" })},
	{name: "binary garbage", want: wantRequestError, script: answer("\x00\xff\xfe\x1b[2J\r\n\r\n")},
	// Trickles.
	{name: "trickled status line", want: wantRequestError,
		script: trickle("", "HTTP/1.1 200 OK\r\n", 40*time.Millisecond)},
	{name: "trickled headers, never ending", want: wantRequestError,
		script: trickle("HTTP/1.1 200 OK\r\n", "X-A: b\r\n", 20*time.Millisecond)},
	{name: "trickled body", want: wantRequestError,
		script: trickle("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"allowed\":", " ", 20*time.Millisecond)},
	{name: "trickled chunked body", want: wantRequestError,
		script: trickle("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", "1\r\n \r\n", 10*time.Millisecond)},
}

// uEscape writes every byte of s as a JSON \u escape.
func uEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, `\u%04x`, s[i])
	}
	return b.String()
}

type rawOp int

const (
	checkOp  rawOp = iota // GET entitlements
	recordOp              // POST usage with a key
)

// TestRawHostileServers meets every raw hostile server with a real client and
// with an auto-buy gate whose purchase meets it. Every case must end in a
// typed error by its deadline, and no output (error text, its whole chain,
// the raw body, debug logs, the gate's logs, the decision, hook arguments)
// may hold the API key or a piece of it, in any escaping.
func TestRawHostileServers(t *testing.T) {
	t.Parallel()
	for _, tc := range rawCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			t.Run("client", func(t *testing.T) { runRawClient(t, tc) })
			t.Run("gate", func(t *testing.T) { runRawGate(t, tc) })
		})
	}
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Reset()
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func rawClient(t *testing.T, url, key string, logs *syncBuffer) *quotastack.Client {
	t.Helper()
	c, err := quotastack.NewClient(key, quotastack.WithBaseURL(url),
		quotastack.WithRetry(3, time.Millisecond, 5*time.Millisecond),
		quotastack.WithAttemptTimeout(rawAttempt), quotastack.WithTimeout(rawCall),
		quotastack.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	require.NoError(t, err)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func (tc rawCase) apiKey() string {
	if tc.key != "" {
		return tc.key
	}
	return testKey
}

func runRawClient(t *testing.T, tc rawCase) {
	srv := startRawServer(t, tc.script)
	var logs syncBuffer
	client := rawClient(t, srv.URL(), tc.apiKey(), &logs)
	op := checkCall
	if tc.op == recordOp {
		op = recordCall
	}
	start := time.Now()
	err := op(context.Background(), client)
	elapsed := time.Since(start)
	require.Error(t, err)
	assert.Less(t, elapsed, rawCall+rawSlack, "the call ends by its deadline")
	checkRawWant(t, tc, err)
	if tc.check != nil {
		tc.check(t, err)
	}
	texts := append(errorTexts(err), logs.String())
	var apiErr *quotastack.APIError
	if errors.As(err, &apiErr) {
		texts = append(texts, string(apiErr.RawBody()), apiErr.Body, apiErr.Detail, apiErr.Title, apiErr.Type, apiErr.RequestID, apiErr.Path)
		for _, fe := range apiErr.Errors {
			texts = append(texts, fe.Field, fe.Message)
		}
	}
	assertNoKeyAnywhere(t, tc.apiKey(), texts...)
	if srv.Requests() > 0 {
		assert.NotEmpty(t, logs.String(), "the debug log saw the call")
	}
}

func checkRawWant(t *testing.T, tc rawCase, err error) {
	t.Helper()
	var apiErr *quotastack.APIError
	var reqErr *quotastack.RequestError
	switch tc.want {
	case wantRequestError:
		require.ErrorAs(t, err, &reqErr, "%v", err)
		assert.False(t, errors.As(err, &apiErr))
	case wantUnexpected:
		require.ErrorAs(t, err, &apiErr, "%v", err)
		assert.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
		if tc.status != 0 {
			assert.Equal(t, tc.status, apiErr.StatusCode)
		}
	case wantAPIError:
		require.ErrorAs(t, err, &apiErr, "%v", err)
		assert.Equal(t, tc.status, apiErr.StatusCode)
		assert.True(t, matchesSentinel(err), "%v", err)
	}
}

// runRawGate runs a gate whose check is answered "not entitled" and whose
// purchase (the balance read) meets the hostile server; the gate fails
// closed, so an outage reaches Decision.Err, its WARN log and the
// PurchaseFailed hook, and a definite answer comes back as the error.
func runRawGate(t *testing.T, tc rawCase) {
	notEntitled := httpResponse(200, "", `{"allowed":false,"customer_id":"019d6258-07ba-7418-83be-58f5fde53e4e","balance":0,"estimated_cost":1000}`)
	srv := startRawServer(t, firstThen(notEntitled, tc.script))
	var clientLogs, gateLogs syncBuffer
	client := rawClient(t, srv.URL(), tc.apiKey(), &clientLogs)
	var hookMu sync.Mutex
	var hookTexts []string
	gate, err := autobuy.New(client, autobuy.WithPlan(soakPlan), autobuy.WithFallback(autobuy.FailClosed),
		autobuy.WithPurchaseTimeout(rawCall),
		autobuy.WithLogger(slog.New(slog.NewJSONHandler(&gateLogs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		autobuy.WithHooks(autobuy.Hooks{PurchaseFailed: func(_ context.Context, _ autobuy.CustomerRef, err error) {
			hookMu.Lock()
			defer hookMu.Unlock()
			hookTexts = append(hookTexts, errorTexts(err)...)
		}}))
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), rawCall)
	defer cancel()
	start := time.Now()
	d, err := gate.Gate(ctx, quotastack.ExternalID("user42:companion7"), chatMetric)
	elapsed := time.Since(start)
	assert.Less(t, elapsed, rawCall+rawSlack, "the gate ends by its deadline")
	assert.False(t, d.Allowed, "nothing was bought")
	var texts []string
	switch {
	case err != nil:
		// A definite answer (a 4xx problem) is not an outage: the gate returns it.
		var apiErr *quotastack.APIError
		var reqErr *quotastack.RequestError
		assert.True(t, errors.As(err, &apiErr) || errors.As(err, &reqErr), "typed: %v", err)
		texts = errorTexts(err)
	case d.Reason == autobuy.ReasonUnavailable:
		// QuotaStack could not answer: the gate fails closed and logs the outage.
		require.Error(t, d.Err)
		texts = errorTexts(d.Err)
		assert.Contains(t, gateLogs.String(), `"level":"WARN"`, "the gate logged the outage")
	}
	hookMu.Lock()
	texts = append(append(texts, hookTexts...), clientLogs.String(), gateLogs.String(), fmt.Sprintf("%+v", d))
	hookMu.Unlock()
	assertNoKeyAnywhere(t, tc.apiKey(), texts...)
}

// errorTexts is every text err can show: Error(), %+v and %#v, and the same
// for every error in its chain.
func errorTexts(err error) []string {
	var out []string
	var walk func(e error, depth int)
	walk = func(e error, depth int) {
		if e == nil || depth > 20 {
			return
		}
		out = append(out, e.Error(), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e))
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap(), depth+1)
		case interface{ Unwrap() []error }:
			for _, inner := range u.Unwrap() {
				walk(inner, depth+1)
			}
		}
	}
	walk(err, 0)
	return out
}

// assertNoKeyAnywhere fails if any text holds 8 consecutive bytes of the
// key's secret part, literally or under up to three layers of escaping (the
// depth the SDK's redactor promises).
func assertNoKeyAnywhere(t *testing.T, key string, texts ...string) {
	t.Helper()
	secret := strings.TrimPrefix(key, "qs_test_")
	for _, text := range texts {
		layer := text
		for depth := 0; depth <= 3; depth++ {
			for i := 0; i+8 <= len(secret); i++ {
				if strings.Contains(layer, secret[i:i+8]) {
					t.Errorf("a piece of the API key (%q) leaked into %q", secret[i:i+8], trimForReport(text))
					return
				}
			}
			layer = testUnescape(layer)
		}
	}
}

func trimForReport(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "..."
	}
	return s
}

// testUnescape undoes one layer of \uXXXX, \xHH, \" and \\ escapes (an
// implementation of its own, not the SDK's).
func testUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case 'u':
			if i+6 <= len(s) {
				if v, err := strconv.ParseUint(s[i+2:i+6], 16, 16); err == nil && !strings.ContainsAny(s[i+2:i+6], "+-_") {
					if v < 0x80 {
						b.WriteByte(byte(v))
					} else {
						b.WriteByte(0) // not part of any key
					}
					i += 5
					continue
				}
			}
		case 'x':
			if i+4 <= len(s) {
				if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil && !strings.ContainsAny(s[i+2:i+4], "+-_") {
					b.WriteByte(byte(v))
					i += 3
					continue
				}
			}
		default:
			b.WriteByte(s[i+1])
			i++
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// assertClean fails if s holds a control character, a line separator or a
// bidi override.
func assertClean(t *testing.T, s string) {
	t.Helper()
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' || (r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069') {
			t.Errorf("control character %U in %q", r, s)
			return
		}
	}
}
