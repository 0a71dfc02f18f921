package quotastack

import (
	"context"
	"iter"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"time"
)

// Metric is a billable metric: something customers pay for.
type Metric struct {
	Key         string    `json:"key"`
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	CreatedAt   time.Time `json:"created_at,omitzero"`

	Meta ResponseMeta `json:"-"`
}

// Tier is one step of a graduated or volume rule; UpTo nil is the last tier.
type Tier struct {
	UpTo     *int64 `json:"up_to"`
	UnitCost int64  `json:"unit_cost"` // millicredits per unit
}

// Eligibility restricts which blocks may pay for a metric, e.g.
// MinPriority 10 (plan credits only) or MaxPriority 0 with Expiring false (wallet only).
type Eligibility struct {
	MinPriority *int  `json:"min_priority,omitempty"`
	MaxPriority *int  `json:"max_priority,omitempty"`
	Expiring    *bool `json:"expiring,omitempty"`
}

// Cost types of a metering rule.
const (
	CostPerUnit   = "per_unit"
	CostFlat      = "flat"
	CostGraduated = "graduated"
	CostVolume    = "volume"
)

// Overage policies of a metering rule.
const (
	OverageBlock  = "block"
	OverageAllow  = "allow"
	OverageNotify = "notify"
)

// Rule is a metering rule: how a metric is priced, in millicredits.
type Rule struct {
	ID                string       `json:"id,omitempty"`
	BillableMetricKey string       `json:"billable_metric_key"`
	CostType          string       `json:"cost_type"`
	UnitCost          int64        `json:"unit_cost,omitempty"`
	FlatCost          int64        `json:"flat_cost,omitempty"`
	Tiers             []Tier       `json:"tiers,omitempty"`
	Eligible          *Eligibility `json:"eligible,omitempty"`
	OveragePolicy     string       `json:"overage_policy,omitempty"` // default "block"
	Active            bool         `json:"active,omitempty"`
	CreatedAt         time.Time    `json:"created_at,omitzero"`

	Meta ResponseMeta `json:"-"`
}

var metricKeyRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// CreateMetric creates a billable metric; key is lowercase_with_underscores.
// Retries are safe: the idempotency key defaults to "metric:{key}".
func (c *Client) CreateMetric(ctx context.Context, m Metric, opts ...CallOption) (*Metric, error) {
	if !metricKeyRE.MatchString(m.Key) {
		return nil, inputErr("metric key", "must be lowercase_with_underscores")
	}
	body := struct {
		Key         string `json:"key"`
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
	}{m.Key, m.Name, m.Description}
	opts = append([]CallOption{WithIdempotencyKey(DeriveKey("metric", m.Key))}, opts...)
	var out Metric
	return withMeta(&out, &out.Meta)(c.do(ctx, http.MethodPost, "/v1/billable-metrics", "", body, &out, opts))
}

// GetMetric returns the billable metric with key.
func (c *Client) GetMetric(ctx context.Context, key string, opts ...CallOption) (*Metric, error) {
	if err := validateMetric(key); err != nil {
		return nil, err
	}
	var out Metric
	return withMeta(&out, &out.Meta)(c.do(ctx, http.MethodGet, "/v1/billable-metrics/"+escapeSegment(key), "", nil, &out, opts))
}

// CreateRule creates the active metering rule of a metric (replacing the
// previous one). Pass WithIdempotencyKey to make retries of a rule change safe.
func (c *Client) CreateRule(ctx context.Context, r Rule, opts ...CallOption) (*Rule, error) {
	if err := validateMetric(r.BillableMetricKey); err != nil {
		return nil, err
	}
	switch r.CostType {
	case CostPerUnit, CostFlat, CostGraduated, CostVolume:
	default:
		return nil, inputErr("cost type", "must be per_unit, flat, graduated or volume")
	}
	if r.UnitCost < 0 || r.FlatCost < 0 {
		return nil, inputErr("cost", "must be >= 0")
	}
	body := r
	body.ID, body.Active, body.CreatedAt = "", false, time.Time{}
	var out Rule
	return withMeta(&out, &out.Meta)(c.do(ctx, http.MethodPost, "/v1/metering-rules", "", body, &out, opts))
}

// GetRule returns the metering rule with id.
func (c *Client) GetRule(ctx context.Context, id string, opts ...CallOption) (*Rule, error) {
	if id == "" {
		return nil, inputErr("rule id", "empty")
	}
	var out Rule
	return withMeta(&out, &out.Meta)(c.do(ctx, http.MethodGet, "/v1/metering-rules/"+escapeSegment(id), "", nil, &out, opts))
}

// Metrics iterates over all billable metrics, fetching pages of pageSize
// (0 = server default) as it goes. It stops after yielding an error.
func (c *Client) Metrics(ctx context.Context, pageSize int, opts ...CallOption) iter.Seq2[Metric, error] {
	return list[Metric](ctx, c, "/v1/billable-metrics", pageSize, opts)
}

// Rules iterates over all metering rules, like Metrics.
func (c *Client) Rules(ctx context.Context, pageSize int, opts ...CallOption) iter.Seq2[Rule, error] {
	return list[Rule](ctx, c, "/v1/metering-rules", pageSize, opts)
}

// page is one page of a cursor-paginated list; the iterators (Metrics,
// Rules) walk the pages.
type page[T any] struct {
	Data       []T `json:"data"`
	Pagination struct {
		HasMore    bool    `json:"has_more"`
		NextCursor *string `json:"next_cursor"`
	} `json:"pagination"`
}

// maxPages stops a list whose server never says has_more: false.
const maxPages = 10000

func list[T any](ctx context.Context, c *Client, path string, pageSize int, opts []CallOption) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		var zero T
		cursor := ""
		seen := map[string]bool{}
		for range maxPages {
			q := url.Values{}
			if cursor != "" {
				q.Set("cursor", cursor)
			}
			if pageSize > 0 {
				q.Set("limit", strconv.Itoa(pageSize))
			}
			var pg page[T]
			if _, err := c.do(ctx, http.MethodGet, path, q.Encode(), nil, &pg, opts); err != nil {
				yield(zero, err)
				return
			}
			for _, item := range pg.Data {
				if !yield(item, nil) {
					return
				}
			}
			next := pg.Pagination.NextCursor
			if !pg.Pagination.HasMore || next == nil || *next == "" || len(pg.Data) == 0 {
				return
			}
			if seen[*next] {
				yield(zero, &APIError{Method: http.MethodGet, Path: path, StatusCode: http.StatusOK, cause: errRepeatedCursor})
				return
			}
			seen[*next] = true
			cursor = *next
		}
	}
}

func withMeta[T any](out *T, meta *ResponseMeta) func(*ResponseMeta, error) (*T, error) {
	return func(m *ResponseMeta, err error) (*T, error) {
		if err != nil {
			return nil, err
		}
		*meta = *m
		return out, nil
	}
}
