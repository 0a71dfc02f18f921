package otelquotastack_test

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/otelquotastack"
)

// echoServer answers every request with answer(the API key it received),
// then closes the connection. It stops (and waits for its goroutines) when
// the test ends.
func echoServer(t *testing.T, answer func(key string) string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[conn] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { _ = conn.Close() }()
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				br := bufio.NewReader(conn)
				key := ""
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
					if name, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(name, "X-Api-Key") {
						key = strings.TrimSpace(v)
					}
				}
				_, _ = conn.Write([]byte(answer(key)))
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "http://" + ln.Addr().String()
}

// quotedKey has a quote and a backslash, which net/http's %q escapes.
const (
	hostileKey = "qs_test_hostile0123456789abcdef"
	quotedKey  = `qs_test_quo"te\back0123456789`
)

// The malformed answers net/http quotes in its errors, each echoing the key.
var echoCases = []struct {
	name   string
	key    string
	answer func(k string) string
}{
	{"key as the protocol version", "", func(k string) string { return k + " 200 OK\r\n\r\n" }},
	{"key in the HTTP version", "", func(k string) string { return "HTTP/1." + k + " 200 OK\r\n\r\n" }},
	{"key as the status code", "", func(k string) string { return "HTTP/1.1 " + k + " OK\r\n\r\n" }},
	{"key after a short status code", "", func(k string) string { return "HTTP/1.1 2" + k + "\r\n\r\n" }},
	{"key as the whole status line", "", func(k string) string { return k + "\r\n\r\n" }},
	{"key quoted by %q", quotedKey, func(k string) string { return "HTTP/1.1 " + k + " OK\r\n\r\n" }},
	{"key in Content-Length", "", func(k string) string { return "HTTP/1.1 200 OK\r\nContent-Length: " + k + "\r\n\r\n{}" }},
	{"key in a second Content-Length", "", func(k string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: " + k + "\r\n\r\n{}"
	}},
	{"key in Transfer-Encoding", "", func(k string) string { return "HTTP/1.1 200 OK\r\nTransfer-Encoding: " + k + "\r\n\r\n{}" }},
	{"key as a header line without a colon", "", func(k string) string { return "HTTP/1.1 200 OK\r\n" + k + "\r\n\r\n{}" }},
	{"key in a header name with ESC", "", func(k string) string { return "HTTP/1.1 200 OK\r\nX\x1b" + k + ": v\r\n\r\n{}" }},
	{"key as a chunk size", "", func(k string) string {
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + k + "\r\n{}\r\n0\r\n\r\n"
	}},
	{"key as a chunk trailer line", "", func(k string) string {
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n" + k + "\r\n\r\n"
	}},
	{"key as a chunk extension, then garbage", "", func(k string) string {
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2;" + k + "\r\n{}\r\n" + k + "\r\n"
	}},
	{"key in the reason phrase of a 500", "", func(k string) string { return "HTTP/1.1 500 " + k + "\r\nContent-Length: 0\r\n\r\n" }},
	{"key in X-Request-Id and Location of a 302", "", func(k string) string {
		return "HTTP/1.1 302 Found\r\nX-Request-Id: " + k + "\r\nLocation: http://127.0.0.1:1/" + k + "\r\nContent-Length: 0\r\n\r\n"
	}},
	{"key in Upgrade of a 101", "", func(k string) string {
		return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + k + "\r\nConnection: Upgrade\r\n\r\n" + k
	}},
	{"key in a 200 body cut short", "", func(k string) string {
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"allowed\":\"" + k
	}},
}

// spanTexts is every text of every span: name, status, attributes, events
// (names and attributes), links' attributes and the resource.
func spanTexts(spans tracetest.SpanStubs) []string {
	var texts []string
	for _, s := range spans {
		texts = append(texts, s.Name, s.Status.Description)
		for _, kv := range s.Attributes {
			texts = append(texts, string(kv.Key), kv.Value.String())
		}
		for _, e := range s.Events {
			texts = append(texts, e.Name)
			for _, kv := range e.Attributes {
				texts = append(texts, string(kv.Key), kv.Value.String())
			}
		}
		for _, l := range s.Links {
			for _, kv := range l.Attributes {
				texts = append(texts, kv.Value.String())
			}
		}
		if s.Resource != nil {
			for _, kv := range s.Resource.Attributes() {
				texts = append(texts, kv.Value.String())
			}
		}
	}
	return texts
}

// assertNoKeyPiece fails if a text holds any 8-byte piece of the key's
// secret part, as is or with Go/JSON quoting undone.
func assertNoKeyPiece(t *testing.T, key string, texts []string) {
	t.Helper()
	secret := key[len("qs_test_"):]
	unquote := strings.NewReplacer(`\\`, `\`, `\"`, `"`)
	for _, text := range texts {
		for _, form := range []string{text, unquote.Replace(text), unquote.Replace(unquote.Replace(text))} {
			for i := 0; i+8 <= len(secret); i++ {
				if strings.Contains(form, secret[i:i+8]) {
					t.Errorf("a piece of the key (%q) in %q", secret[i:i+8], text)
					return
				}
			}
		}
	}
}

// Every span attribute, event and status of every hostile answer is free of
// the API key, through the client option and through the transport given to
// an http.Client of one's own.
func TestHostileAnswersLeaveNoKeyInSpans(t *testing.T) {
	t.Parallel()
	ways := []struct {
		name string
		opt  func(tm *telemetry) quotastack.Option
	}{
		{"ClientOption", func(tm *telemetry) quotastack.Option { return otelquotastack.ClientOption(tm.opts...) }},
		{"Transport in WithHTTPClient", func(tm *telemetry) quotastack.Option {
			return quotastack.WithHTTPClient(&http.Client{Transport: otelquotastack.Transport(nil, tm.opts...)})
		}},
	}
	for _, way := range ways {
		for _, tc := range echoCases {
			t.Run(way.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				key := tc.key
				if key == "" {
					key = hostileKey
				}
				tm := newTelemetry(t)
				url := echoServer(t, tc.answer)
				c, err := quotastack.NewClient(key, quotastack.WithBaseURL(url), way.opt(tm),
					quotastack.WithRetry(2, time.Millisecond, 2*time.Millisecond),
					quotastack.WithAttemptTimeout(500*time.Millisecond), quotastack.WithTimeout(2*time.Second))
				require.NoError(t, err)
				t.Cleanup(c.CloseIdleConnections)
				_, err = c.Check(context.Background(), quotastack.ExternalID(user), "chat_message", 1)
				require.Error(t, err)
				spans := tm.spans.GetSpans()
				require.NotEmpty(t, spans, "the attempts were traced")
				assertNoKeyPiece(t, key, append(spanTexts(spans), err.Error()))
			})
		}
	}
}

// A 4xx without a sentinel of its own is a definite answer: class
// "refused", not "unexpected_response" (which reads as an outage).
func TestErrorClassOfADefinite4xx(t *testing.T) {
	t.Parallel()
	for status, want := range map[int]string{
		403: "refused", 405: "refused", 410: "refused", 413: "refused", 418: "refused",
		401: "unauthorized", 404: "not_found", 429: "rate_limited", 503: "server_error", 200: "unexpected_response",
	} {
		require.Equal(t, want, otelquotastack.ErrorClass(&quotastack.APIError{StatusCode: status}), "status %d", status)
	}
}
