package bench

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

// The contract's JSON samples (api-contract.md §5), as a server would send them.
var (
	entitlementAllowed = []byte(`{"allowed": true, "customer_id": "019d6258-07ba-7418-83be-58f5fde53e4e", "external_customer_id": "user_abc",
 "billable_metric_key": "look", "units": 1, "balance": 150000, "reserved_balance": 10000,
 "effective_balance": 140000, "estimated_cost": 1000, "balance_after": 139000,
 "subscription_status": "active", "overage_policy": "block"}`)
	entitlementDenied = []byte(`{"allowed": false, "customer_id": "019d6258-07ba-7418-83be-58f5fde53e4e", "external_customer_id": "user_abc",
 "billable_metric_key": "look", "units": 1, "balance": 500000, "reserved_balance": 0,
 "effective_balance": 500000, "estimated_cost": 1000, "balance_after": -1000,
 "subscription_status": "active", "overage_policy": "block"}`)
	usageEvent = []byte(`{"id": "evt_019d6258a1b2", "customer_id": "019d6258-07ba-7418-83be-58f5fde53e4e", "external_customer_id": "user_abc",
 "billable_metric_key": "look", "units": 1, "cost": 1000, "balance_after": 139000, "created_at": "2026-03-01T12:00:00Z"}`)
	balanceWithBlocks = []byte(`{"customer_id": "019d6258-07ba-7418-83be-58f5fde53e4e", "external_customer_id": "user_abc",
 "balance": 500000, "reserved_balance": 0, "effective_balance": 500000, "lifetime_earned": 500000, "version": 7,
 "blocks": [{"id": "blk_019d6258c3d4", "original_amount": 500000, "remaining_amount": 500000, "priority": 0,
   "expires_at": null, "source": "topup", "metadata": {}, "created_at": "2026-03-01T11:00:00Z"}]}`)
	topupGrant = []byte(`{"customer_id": "019d6258-07ba-7418-83be-58f5fde53e4e", "external_customer_id": "user_abc",
 "block": {"id": "blk_019d6258e5f6", "original_amount": 50000, "remaining_amount": 50000, "priority": 10,
   "expires_at": "2026-03-01T13:00:00Z", "source": "topup",
   "metadata": {"source": "plan_grant", "plan_type": "1hr", "order_id": "ord_1", "trigger": "auto_buy"},
   "created_at": "2026-03-01T12:00:00Z"},
 "balance": 450000, "effective_balance": 450000}`)
	notFound = []byte(`{"type": "https://quotastack.io/errors/not-found", "title": "Not Found", "status": 404, "detail": "no route"}`)
)

// Response headers are shared read-only by every canned response; neither
// client writes to a response's headers.
var (
	jsonHeader    = http.Header{"Content-Type": {jsonMIME}, "X-Request-Id": {"req_1"}}
	problemHeader = http.Header{"Content-Type": {"application/problem+json"}, "X-Request-Id": {"req_1"}}
)

// memTransport answers from memory with the contract's samples: pure client
// cost, no network and no server. With autoBuy set it plays a customer whose
// plan credits run out with every action: the entitlement check is refused
// until a topup grant (the plan) arrives, and allowed until the next usage
// event of the action. One caller at a time.
type memTransport struct {
	autoBuy  bool
	requests atomic.Int64

	mu     sync.Mutex
	bought bool
	buf    bytes.Buffer
}

type memBody struct{ bytes.Reader }

func (*memBody) Close() error { return nil }

// RoundTrip implements http.RoundTripper. Like a real transport it consumes
// and closes the request body.
func (t *memTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.requests.Add(1)
	planDebit := false
	if req.Body != nil {
		if t.autoBuy {
			t.mu.Lock()
			t.buf.Reset()
			_, _ = t.buf.ReadFrom(req.Body)
			planDebit = bytes.Contains(t.buf.Bytes(), []byte(`"plan_purchase_`))
			t.mu.Unlock()
		} else {
			_, _ = io.Copy(io.Discard, req.Body)
		}
		_ = req.Body.Close()
	}
	status, hdr, body := http.StatusOK, jsonHeader, notFound
	path := req.URL.Path
	switch {
	case req.Method == http.MethodGet && strings.Contains(path, "/entitlements/"):
		body = entitlementAllowed
		if t.autoBuy && !t.hasPlan() {
			body = entitlementDenied
		}
	case req.Method == http.MethodGet && strings.HasSuffix(path, "/credits"):
		body = balanceWithBlocks
	case req.Method == http.MethodPost && path == "/v1/usage":
		body = usageEvent
		if t.autoBuy && !planDebit {
			t.setPlan(false) // the action spent the plan's credits
		}
	case req.Method == http.MethodPost && path == "/v1/topup/grant":
		status, body = http.StatusCreated, topupGrant
		t.setPlan(true)
	default:
		status, hdr = http.StatusNotFound, problemHeader
	}
	mb := &memBody{}
	mb.Reset(body)
	return &http.Response{
		Status: http.StatusText(status), StatusCode: status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: hdr, Body: mb, ContentLength: int64(len(body)), Request: req,
	}, nil
}

func (t *memTransport) hasPlan() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bought
}

func (t *memTransport) setPlan(v bool) {
	t.mu.Lock()
	t.bought = v
	t.mu.Unlock()
}
