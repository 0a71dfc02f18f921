package reliability_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quotastack/quotastack-go"
)

// Tokens of a FuzzRawResponse input that the server replaces by the API key
// it received: literally, and \u-escaped (as JSON would carry it).
var (
	keyToken  = []byte("{KEY}")
	ukeyToken = []byte("{UKEY}")
)

// FuzzRawResponse answers Check, Record and BalanceWithBlocks with arbitrary
// response bytes from a raw TCP listener, so net/http's own parser (status
// line, headers, chunking, gzip, 1xx) and its error text are in the loop.
// The call must never panic, must end within its deadline, and must return
// nil or a typed error; no error text, chain or debug log may hold a piece
// of the key, however the bytes echo it.
func FuzzRawResponse(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"allowed\":true}",
		"HTTP/1.1 {KEY} OK\r\n\r\n",
		"{KEY} 200 OK\r\n\r\n",
		"HTTP/1.{KEY} 200 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: {KEY}\r\n\r\n{}",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: {KEY}\r\n\r\n{}",
		"HTTP/1.1 200 OK\r\n{KEY}\r\n\r\n{}",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{KEY}\r\n{}\r\n0\r\n\r\n",
		"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n{\"type\":\"https://quotastack.io/errors/unauthorized\",\"detail\":\"{UKEY}\"}",
		"HTTP/1.1 400 Bad Request\r\nContent-Type: application/problem+json\r\n\r\n{\"type\":\"x\",\"detail\":\"a\\nb\\u001b[31m\\u202e {KEY}\"}",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
		"HTTP/1.1 103 Early Hints\r\nLink: </{KEY}>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot gzip!!",
		"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"allowed\":",
		"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/{KEY}\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\n{\"id\":\"evt_1\",\"created_at\":\"{KEY}\"}",
		"\x00\xff\xfe\r\n\r\n",
		"",
	} {
		for op := range uint8(3) {
			f.Add([]byte(seed), op)
		}
	}

	var current atomic.Pointer[[]byte]
	srv := startRawServer(f, func(conn net.Conn, req rawRequest, _ <-chan struct{}) {
		b := *current.Load()
		b = bytes.ReplaceAll(b, keyToken, []byte(req.Key))
		b = bytes.ReplaceAll(b, ukeyToken, []byte(uEscape(req.Key)))
		writeAll(conn, string(b))
	})
	var logs syncBuffer
	client, err := quotastack.NewClient(testKey, quotastack.WithBaseURL(srv.URL()),
		quotastack.WithRetry(1, time.Millisecond, time.Millisecond),
		quotastack.WithAttemptTimeout(time.Second), quotastack.WithTimeout(time.Second), quotastack.WithMaxBodyBytes(8<<10),
		quotastack.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(client.CloseIdleConnections)

	f.Fuzz(func(t *testing.T, raw []byte, op uint8) {
		current.Store(&raw)
		ctx, cust := context.Background(), quotastack.ExternalID("user42:companion7")
		start := time.Now()
		var err error
		switch op % 3 {
		case 0:
			_, err = client.Check(ctx, cust, chatMetric, 1)
		case 1:
			_, err = client.Record(ctx, quotastack.UsageParams{Customer: cust, MetricKey: chatMetric, Units: 1},
				quotastack.WithIdempotencyKey("usage:msg_1"))
		default:
			_, err = client.BalanceWithBlocks(ctx, cust)
		}
		if elapsed := time.Since(start); elapsed > time.Second+rawSlack {
			t.Fatalf("the call took %s, past its deadline of 1s", elapsed)
		}
		texts := []string{logs.String()}
		logs.Reset()
		if err != nil {
			var apiErr *quotastack.APIError
			var reqErr *quotastack.RequestError
			switch {
			case errors.As(err, &apiErr):
				if !matchesSentinel(err) {
					t.Fatalf("no sentinel matches %v", err)
				}
				texts = append(texts, string(apiErr.RawBody()), apiErr.Detail, apiErr.Title, apiErr.Body, apiErr.RequestID)
			case errors.As(err, &reqErr):
			default:
				t.Fatalf("untyped error %T: %v", err, err)
			}
			texts = append(texts, errorTexts(err)...)
		}
		assertNoKeyAnywhere(t, testKey, texts...)
	})
}
