package quotastacktest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	quotastack "github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// t0 is the recipe's "now": its plan grant expires an hour later.
var t0 = time.Date(2026, 4, 13, 13, 0, 0, 0, time.UTC)

const (
	problemType = "https://quotastack.io/errors/"
	recipeUser  = "user42:companion7"
)

// world is a fake server on a manual clock, seeded with the recipe's metrics and rules.
type world struct {
	t     *testing.T
	srv   *quotastacktest.Server
	clock *quotastacktest.ManualClock
	hc    *http.Client
	// broken marks a world whose test breaks an invariant on purpose: its cleanup skips
	// the CheckInvariants every other world ends with.
	broken bool
}

func newWorld(t *testing.T, opts ...quotastacktest.Option) *world {
	t.Helper()
	clock := quotastacktest.NewManualClock(t0)
	srv := quotastacktest.Start(t, append([]quotastacktest.Option{quotastacktest.WithClock(clock.Now)}, opts...)...)
	w := &world{t: t, srv: srv, clock: clock, hc: &http.Client{Timeout: 10 * time.Second}}
	_, err := srv.CreateRule(quotastack.Rule{
		BillableMetricKey: "chat_message", CostType: "per_unit", UnitCost: 1000,
		Eligible: &quotastacktest.Eligibility{MinPriority: quotastacktest.Ptr(10)},
	})
	require.NoError(t, err)
	_, err = srv.CreateRule(quotastack.Rule{
		BillableMetricKey: "plan_purchase_1hr", CostType: "per_unit", UnitCost: 1,
		Eligible: &quotastacktest.Eligibility{MaxPriority: quotastacktest.Ptr(0), Expiring: quotastacktest.Ptr(false)},
	})
	require.NoError(t, err)
	_, err = srv.CreateRule(quotastack.Rule{BillableMetricKey: "look", CostType: "per_unit", UnitCost: 1000})
	require.NoError(t, err)
	t.Cleanup(func() {
		if !t.Failed() && !w.broken {
			require.NoError(t, srv.CheckInvariants())
		}
	})
	return w
}

// recipeUser seeds user42:companion7 with a 500,000 mc wallet and returns its customer_id.
func (w *world) recipeCustomer() string {
	w.t.Helper()
	_, err := w.srv.Grant(recipeUser, quotastacktest.BlockSpec{Credits: 500_000, Metadata: map[string]string{"source": "wallet_recharge"}})
	require.NoError(w.t, err)
	acct, ok := w.srv.Account(recipeUser)
	require.True(w.t, ok)
	return acct.CustomerID
}

type result struct {
	status int
	header http.Header
	body   []byte
}

func (r result) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.body, &m), "body: %s", r.body)
	return m
}

// send issues one request with the server's key; idemKey "" sends no Idempotency-Key.
func (w *world) send(method, path, idemKey, body string) (result, error) {
	var rd io.Reader
	if body != "" {
		rd = bytes.NewBufferString(body)
	}
	req, err := http.NewRequest(method, w.srv.URL+path, rd)
	if err != nil {
		return result{}, err
	}
	req.Header.Set("X-API-Key", w.srv.APIKey)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	resp, err := w.hc.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, b}, err
}

func (w *world) do(method, path, idemKey, body string) result {
	w.t.Helper()
	r, err := w.send(method, path, idemKey, body)
	require.NoError(w.t, err)
	require.NotEmpty(w.t, r.header.Get("X-Request-Id"), "every response carries X-Request-Id")
	return r
}

func (w *world) get(path string) result { w.t.Helper(); return w.do(http.MethodGet, path, "", "") }

func (w *world) post(path, idemKey, body string) result {
	w.t.Helper()
	return w.do(http.MethodPost, path, idemKey, body)
}

// ext is the by-external-id path prefix of a customer.
func ext(externalID string) string {
	return "/v1/customer-by-external-id/" + url.PathEscape(externalID)
}

// requireStatus checks the status and, for JSON success, the content type.
func requireStatus(t *testing.T, r result, status int) {
	t.Helper()
	require.Equal(t, status, r.status, "body: %s", r.body)
	if status < 400 {
		require.Equal(t, "application/json", r.header.Get("Content-Type"))
	}
}

// requireProblem checks a problem+json answer and returns its members.
func requireProblem(t *testing.T, r result, status int, slug string) map[string]any {
	t.Helper()
	require.Equal(t, status, r.status, "body: %s", r.body)
	require.Equal(t, "application/problem+json", r.header.Get("Content-Type"))
	m := r.json(t)
	require.Equal(t, problemType+slug, m["type"])
	require.Equal(t, float64(status), m["status"])
	require.NotEmpty(t, m["title"])
	require.NotEmpty(t, m["detail"])
	require.Contains(t, m, "instance")
	return m
}

// requireKeys checks that the object has exactly these members.
func requireKeys(t *testing.T, m map[string]any, keys ...string) {
	t.Helper()
	got := make([]string, 0, len(m))
	for k := range m {
		got = append(got, k)
	}
	require.ElementsMatch(t, keys, got)
}

func usageBody(externalID, metric string, units int64) string {
	return fmt.Sprintf(`{"external_customer_id": %q, "billable_metric_key": %q, "units": %d}`, externalID, metric, units)
}

func grantBody(externalID string, credits int64, priority int, expiresAt string) string {
	exp := "null"
	if expiresAt != "" {
		exp = `"` + expiresAt + `"`
	}
	return fmt.Sprintf(`{"external_customer_id": %q, "credits": %d, "price_paid": 0, "currency": "mc", "priority": %d, "expires_at": %s}`,
		externalID, credits, priority, exp)
}
