package reliability_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// FuzzCustomerPath sends arbitrary external ids through the customer path
// (/v1/customer-by-external-id/{id}/credits) to the fake: the server must see
// exactly the id sent, as one path segment, and answer for that customer.
// Ids the client refuses (empty, not UTF-8, over 512 bytes) must be refused
// with ErrInvalidInput before any request.
func FuzzCustomerPath(f *testing.F) {
	for _, id := range []string{
		"user42:companion7", "a/b", "/", ".", "..", "...", "%2F", "%", "50% off", "x y+z", "a?b#c&d=e", "ü",
		"日本語/ユーザー", "\x00", "tab\tnew\nline", "\u2028\u2029", "<script>&amp;", `"quoted"\`, "🙂",
		strings.Repeat("é", 256), strings.Repeat("/", 512),
		"", "\xff", "\xc3", strings.Repeat("x", 513),
	} {
		f.Add(id)
	}
	srv := quotastacktest.Start(f) // one per fuzz worker, closed by f.Cleanup
	client := srv.Client(quotastack.WithRetry(1, time.Millisecond, time.Millisecond))
	f.Cleanup(client.CloseIdleConnections)

	f.Fuzz(func(t *testing.T, id string) {
		ctx := context.Background()
		cust := quotastack.ExternalID(id)
		if id == "" || !utf8.ValidString(id) || len(id) > 512 {
			srv.ResetRequests()
			_, err := client.Balance(ctx, cust)
			require.ErrorIs(t, err, quotastack.ErrInvalidInput)
			require.Empty(t, srv.Requests(), "refused before any request")
			return
		}
		_, err := srv.Grant(id, quotastacktest.BlockSpec{Credits: 1})
		require.NoError(t, err)

		srv.ResetRequests()
		bal, err := client.Balance(ctx, cust)
		require.NoError(t, err)
		require.Equal(t, id, bal.ExternalCustomerID)
		acct, ok := srv.Account(id)
		require.True(t, ok)
		require.Equal(t, acct.CustomerID, bal.CustomerID)

		reqs := srv.Requests()
		require.Len(t, reqs, 1)
		seg, ok := strings.CutPrefix(reqs[0].Path, "/v1/customer-by-external-id/")
		require.True(t, ok, reqs[0].Path)
		seg, ok = strings.CutSuffix(seg, "/credits")
		require.True(t, ok, reqs[0].Path)
		require.NotContains(t, seg, "/", "the id is one path segment")
		got, err := url.PathUnescape(seg)
		require.NoError(t, err)
		require.Equal(t, id, got, "the server saw exactly the id sent")
	})
}

// FuzzResponseDecoding answers Check, Record and BalanceWithBlocks with an
// arbitrary status, content type, Retry-After and body from an in-memory
// transport: the client must never panic, succeed only on a 2xx, and
// otherwise return an *APIError (or a *RequestError) that matches a
// sentinel and holds no API key in its text.
func FuzzResponseDecoding(f *testing.F) {
	problem := func(slug, extra string) []byte {
		return []byte(`{"type":"https://quotastack.io/errors/` + slug + `","title":"t","status":400,"detail":"d"` + extra + `}`)
	}
	f.Add(200, "application/json", "", []byte(`{"allowed":true,"balance":150000,"estimated_cost":1000}`), uint8(0))
	f.Add(200, "application/json", "", []byte(`{"allowed":"yes","balance":1e400}`), uint8(0))
	f.Add(200, "application/json", "", []byte(`{"id":"evt_1","cost":1000,"created_at":"2026-11-25T12:00:00Z"}`), uint8(1))
	f.Add(201, "application/json", "", []byte(`{"id":"evt_1","created_at":"not a time"}`), uint8(1))
	f.Add(200, "application/json", "", []byte(`{"balance":1,"blocks":[{"id":"blk_1","expires_at":12,"metadata":{"a":1}}]}`), uint8(2))
	f.Add(200, "application/json", "", []byte(`[]`), uint8(2))
	f.Add(204, "", "", []byte{}, uint8(1))
	f.Add(200, "text/html", "", []byte("<html><body>ok</body></html>"), uint8(0))
	f.Add(402, "application/problem+json", "", problem("insufficient-credits", `,"required":1000,"available":"none"`), uint8(1))
	f.Add(400, "application/problem+json", "", problem("validation-error", `,"errors":[{"field":"`+testKey+`","message":{}}]`), uint8(1))
	f.Add(401, "application/problem+json", "", []byte(`{"type":"https://quotastack.io/errors/unauthorized","detail":"unknown key `+testKey+`"}`), uint8(2))
	f.Add(429, "application/problem+json", "1", problem("rate-limited", ""), uint8(0))
	f.Add(503, "application/problem+json", "Wed, 21 Oct 2015 07:28:00 GMT", problem("unavailable", ""), uint8(0))
	f.Add(502, "text/html", "", []byte("<html><title>502 Bad Gateway</title></html>"), uint8(2))
	f.Add(302, "text/plain", "", []byte("see elsewhere"), uint8(0))
	f.Add(101, "", "", []byte{0xff, 0xfe, 0}, uint8(1))
	f.Add(599, "application/problem+json", "99999999999999999999", []byte(`{"type":`), uint8(2))
	f.Add(200, "application/json", "", []byte(`{"id":"evt_1","created_at":"`+testKey+`"}`), uint8(1))

	f.Fuzz(func(t *testing.T, status int, contentType, retryAfter string, body []byte, op uint8) {
		status = min(max(status, 100), 599)
		transport := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			h := http.Header{}
			if contentType != "" {
				h.Set("Content-Type", contentType)
			}
			if retryAfter != "" {
				h.Set("Retry-After", retryAfter)
			}
			return &http.Response{
				StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)),
				Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h, Request: r,
				Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
			}, nil
		})
		// No rate budget: with the documented one, each 429 drains the saved-up
		// slots and its retries wait 0.67 s for the next, and the fuzzer spends
		// a minute minimizing such inputs. A 429 still pauses the client.
		client, err := quotastack.NewClient(testKey, quotastack.WithTransport(transport), quotastack.WithRateBudget(0, 0),
			quotastack.WithRetry(2, time.Microsecond, time.Millisecond), quotastack.WithMaxBodyBytes(8<<10))
		require.NoError(t, err)

		ctx, cust := context.Background(), quotastack.ExternalID("user42:companion7")
		switch op % 3 {
		case 0:
			_, err = client.Check(ctx, cust, chatMetric, 1)
		case 1:
			_, err = client.Record(ctx, quotastack.UsageParams{Customer: cust, MetricKey: chatMetric, Units: 1},
				quotastack.WithIdempotencyKey("usage:msg_1"))
		default:
			_, err = client.BalanceWithBlocks(ctx, cust)
		}
		if err == nil {
			require.True(t, status >= 200 && status <= 299, "success on a %d", status)
			return
		}

		var apiErr *quotastack.APIError
		var reqErr *quotastack.RequestError
		switch {
		case errors.As(err, &apiErr):
			require.Equal(t, status, apiErr.StatusCode)
			if status >= 200 && status <= 299 {
				require.ErrorIs(t, err, quotastack.ErrUnexpectedResponse, "a 2xx that could not be decoded")
			}
			require.True(t, matchesSentinel(err), "no sentinel matches %v", err)
		case errors.As(err, &reqErr):
		default:
			t.Fatalf("untyped error %T: %v", err, err)
		}

		text := err.Error() + fmt.Sprintf("%+v", err)
		if strings.Contains(text, testKey) {
			t.Fatalf("the API key leaked into %q", text)
		}
	})
}

func matchesSentinel(err error) bool {
	for _, s := range []error{
		quotastack.ErrInsufficientCredits, quotastack.ErrNotFound, quotastack.ErrUnauthorized, quotastack.ErrRateLimited,
		quotastack.ErrIdempotencyConflict, quotastack.ErrValidation, quotastack.ErrConflict, quotastack.ErrNoActiveRule,
		quotastack.ErrServer, quotastack.ErrUnexpectedResponse,
	} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}
