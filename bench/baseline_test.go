package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// rawClient is the baseline: the least a correct client of the API must do
// with net/http and encoding/json. It sends the same headers as the SDK
// (X-API-Key, User-Agent, Accept; Content-Type and a random Idempotency-Key on
// POSTs), puts a deadline on every call, caps and reads the body, and decodes
// the same JSON into equivalent structs. It never retries, coalesces, locks
// or derives keys.
type rawClient struct {
	hc     *http.Client
	base   string
	apiKey string
	ua     string
}

const (
	rawTimeout = 30 * time.Second // the SDK's default per-call deadline
	rawMaxBody = 1 << 20          // the SDK's default body cap
	jsonMIME   = "application/json"
)

func newRawClient(hc *http.Client, base, apiKey string) *rawClient {
	return &rawClient{hc: hc, base: base, apiKey: apiKey,
		ua: "quotastack-go/" + quotastack.Version + " go/" + runtime.Version()}
}

type rawEntitlement struct {
	Allowed            bool   `json:"allowed"`
	CustomerID         string `json:"customer_id"`
	ExternalCustomerID string `json:"external_customer_id"`
	BillableMetricKey  string `json:"billable_metric_key"`
	Units              int64  `json:"units"`
	Balance            int64  `json:"balance"`
	ReservedBalance    int64  `json:"reserved_balance"`
	EffectiveBalance   int64  `json:"effective_balance"`
	EstimatedCost      int64  `json:"estimated_cost"`
	BalanceAfter       int64  `json:"balance_after"`
	SubscriptionStatus string `json:"subscription_status"`
	OveragePolicy      string `json:"overage_policy"`
}

type rawUsageEvent struct {
	ID                 string    `json:"id"`
	CustomerID         string    `json:"customer_id"`
	ExternalCustomerID string    `json:"external_customer_id"`
	BillableMetricKey  string    `json:"billable_metric_key"`
	Units              int64     `json:"units"`
	Cost               int64     `json:"cost"`
	BalanceAfter       int64     `json:"balance_after"`
	CreatedAt          time.Time `json:"created_at"`
}

type rawBlock struct {
	ID              string            `json:"id"`
	OriginalAmount  int64             `json:"original_amount"`
	RemainingAmount int64             `json:"remaining_amount"`
	Priority        int               `json:"priority"`
	ExpiresAt       *time.Time        `json:"expires_at"`
	Source          string            `json:"source"`
	Metadata        map[string]string `json:"metadata"`
	CreatedAt       time.Time         `json:"created_at"`
}

type rawBalance struct {
	CustomerID         string     `json:"customer_id"`
	ExternalCustomerID string     `json:"external_customer_id"`
	Balance            int64      `json:"balance"`
	ReservedBalance    int64      `json:"reserved_balance"`
	EffectiveBalance   int64      `json:"effective_balance"`
	LifetimeEarned     int64      `json:"lifetime_earned"`
	Version            int64      `json:"version"`
	Blocks             []rawBlock `json:"blocks"`
}

type rawGrant struct {
	CustomerID         string   `json:"customer_id"`
	ExternalCustomerID string   `json:"external_customer_id"`
	Block              rawBlock `json:"block"`
	Balance            int64    `json:"balance"`
	EffectiveBalance   int64    `json:"effective_balance"`
}

type rawUsageBody struct {
	ExternalCustomerID string            `json:"external_customer_id"`
	BillableMetricKey  string            `json:"billable_metric_key"`
	Units              int64             `json:"units"`
	Metadata           map[string]string `json:"metadata,omitempty"`
}

type rawTopupBody struct {
	ExternalCustomerID string            `json:"external_customer_id"`
	Credits            int64             `json:"credits"`
	PricePaid          int64             `json:"price_paid"`
	Currency           string            `json:"currency"`
	Priority           int               `json:"priority"`
	ExpiresAt          *time.Time        `json:"expires_at,omitempty"`
	Metadata           map[string]string `json:"metadata,omitempty"`
}

// rawStatusError is a non-2xx answer; Type is the problem type, if any.
type rawStatusError struct {
	Status int
	Type   string
}

func (e *rawStatusError) Error() string { return "status " + strconv.Itoa(e.Status) + " " + e.Type }

func insufficient(err error) bool {
	var se *rawStatusError
	return errors.As(err, &se) && se.Status == http.StatusPaymentRequired
}

// do is the whole exchange: deadline, body, headers, send, capped read, decode.
func (c *rawClient) do(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, rawTimeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", c.apiKey)
	req.Header.Set("User-Agent", c.ua)
	req.Header.Set("Accept", jsonMIME)
	if in != nil {
		req.Header.Set("Content-Type", jsonMIME)
		req.Header.Set("Idempotency-Key", "qsk_"+rand.Text())
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, rawMaxBody+1))
	if err != nil {
		return err
	}
	if len(b) > rawMaxBody {
		return errors.New("response body too large")
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var p struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(b, &p)
		return &rawStatusError{Status: resp.StatusCode, Type: p.Type}
	}
	return json.Unmarshal(b, out)
}

func customerPath(ext string) string { return "/v1/customer-by-external-id/" + url.PathEscape(ext) }

func (c *rawClient) check(ctx context.Context, ext, metric string, units int64) (*rawEntitlement, error) {
	var out rawEntitlement
	path := customerPath(ext) + "/entitlements/" + url.PathEscape(metric) + "?units=" + strconv.FormatInt(units, 10)
	if err := c.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *rawClient) record(ctx context.Context, ext, metric string, units int64, meta map[string]string) (*rawUsageEvent, error) {
	var out rawUsageEvent
	in := rawUsageBody{ExternalCustomerID: ext, BillableMetricKey: metric, Units: units, Metadata: meta}
	if err := c.do(ctx, http.MethodPost, "/v1/usage", in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *rawClient) balanceWithBlocks(ctx context.Context, ext string) (*rawBalance, error) {
	var out rawBalance
	if err := c.do(ctx, http.MethodGet, customerPath(ext)+"/credits?include_blocks=true", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *rawClient) topup(ctx context.Context, in rawTopupBody) (*rawGrant, error) {
	var out rawGrant
	if err := c.do(ctx, http.MethodPost, "/v1/topup/grant", in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// gate is the seed recipe done by hand: check; allowed: record. Not allowed:
// sum the wallet blocks; if they cover the plan, debit it, grant its credits,
// check again and record. It returns the same reasons as autobuy.
func (c *rawClient) gate(ctx context.Context, ext, metric string, p plan.Plan) (allowed bool, reason string, err error) {
	ent, err := c.check(ctx, ext, metric, 1)
	if err != nil {
		return false, "", err
	}
	if ent.Allowed {
		if _, err = c.record(ctx, ext, metric, 1, nil); err == nil {
			return true, "entitled", nil
		} else if !insufficient(err) {
			return false, "", err
		}
	}
	bal, err := c.balanceWithBlocks(ctx, ext)
	if err != nil {
		return false, "", err
	}
	var wallet int64
	for _, b := range bal.Blocks {
		if b.Priority == 0 && b.ExpiresAt == nil {
			wallet += b.RemainingAmount
		}
	}
	if wallet < p.PriceMC {
		return false, "empty_wallet", nil
	}
	order := rand.Text()
	debit, err := c.record(ctx, ext, p.Metric(), p.PriceMC,
		map[string]string{"plan_type": p.Type, "order_id": order, "trigger": "auto_buy"})
	if insufficient(err) {
		return false, "empty_wallet", nil
	}
	if err != nil {
		return false, "", err
	}
	exp := debit.CreatedAt.UTC().Truncate(time.Second).Add(p.Duration)
	if _, err := c.topup(ctx, rawTopupBody{ExternalCustomerID: ext, Credits: p.CreditsMC, Currency: "mc",
		Priority: quotastack.PlanPriority, ExpiresAt: &exp,
		Metadata: map[string]string{"source": "plan_grant", "plan_type": p.Type, "order_id": order, "trigger": "auto_buy"}}); err != nil {
		return false, "", fmt.Errorf("grant: %w", err)
	}
	if ent, err = c.check(ctx, ext, metric, 1); err != nil {
		return false, "", err
	}
	if !ent.Allowed {
		return false, "entitlement_failed_after_purchase", nil
	}
	if _, err := c.record(ctx, ext, metric, 1, nil); insufficient(err) {
		return false, "insufficient_credits", nil
	} else if err != nil {
		return false, "", err
	}
	return true, "auto_bought", nil
}
