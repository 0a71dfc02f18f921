package quotastacktest

import (
	"sort"
	"strconv"
	"strings"
	"time"
)

// Page sizes of the list endpoints.
const (
	defaultLimit = 20
	maxLimit     = 100
)

type metricJSON struct {
	Key          string    `json:"key"`
	Name         string    `json:"name"`
	Description  string    `json:"description"`
	ActiveRuleID *string   `json:"active_rule_id"`
	CreatedAt    time.Time `json:"created_at"`
}

func metricView(m *metric) metricJSON {
	out := metricJSON{Key: m.key, Name: m.name, Description: m.description, CreatedAt: m.createdAt}
	if m.active != nil {
		out.ActiveRuleID = &m.active.id
	}
	return out
}

type ruleJSON struct {
	ID                string       `json:"id"`
	BillableMetricKey string       `json:"billable_metric_key"`
	CostType          string       `json:"cost_type"`
	UnitCost          int64        `json:"unit_cost"`
	FlatCost          int64        `json:"flat_cost"`
	Tiers             []Tier       `json:"tiers,omitempty"`
	Eligible          *Eligibility `json:"eligible,omitempty"`
	OveragePolicy     string       `json:"overage_policy"`
	Active            bool         `json:"active"`
	CreatedAt         time.Time    `json:"created_at"`
}

func ruleView(r *rule) ruleJSON {
	return ruleJSON{r.id, r.metricKey, r.costType, r.unitCost, r.flatCost, r.tiers, r.eligible, r.policy, r.active, r.createdAt}
}

type pageJSON struct {
	HasMore    bool    `json:"has_more"`
	NextCursor *string `json:"next_cursor"`
}

type listJSON[T any] struct {
	Data       []T      `json:"data"`
	Pagination pageJSON `json:"pagination"`
}

// page cuts a list sorted by seq after the request's cursor; cursors are "cur_<seq>".
func page[E any, T any](rq *request, items []E, seq func(E) int64, view func(E) T) (listJSON[T], *problem) {
	q := rq.r.URL.Query()
	limit := defaultLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return listJSON[T]{}, invalid("limit", "must be an integer from 1 to 100")
		}
		limit = min(n, maxLimit)
	}
	start := 0
	if v := q.Get("cursor"); v != "" {
		after, err := strconv.ParseInt(strings.TrimPrefix(v, "cur_"), 10, 64)
		if err != nil || !strings.HasPrefix(v, "cur_") {
			return listJSON[T]{}, invalid("cursor", "not a cursor this server returned")
		}
		start = sort.Search(len(items), func(i int) bool { return seq(items[i]) > after })
	}
	out := listJSON[T]{Data: []T{}}
	end := min(start+limit, len(items))
	for _, it := range items[start:end] {
		out.Data = append(out.Data, view(it))
	}
	if end < len(items) {
		c := "cur_" + strconv.FormatInt(seq(items[end-1]), 10)
		out.Pagination = pageJSON{HasMore: true, NextCursor: &c}
	}
	return out, nil
}

// POST /v1/billable-metrics
func handleCreateMetric(rq *request) (int, any, *problem) {
	var body struct {
		Key         string `json:"key"`
		Name        string `json:"name"`
		Description string `json:"description"`
	}
	if p := decodeBody(rq.body, &body); p != nil {
		return 0, nil, p
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	m, p := st.createMetric(body.Key, body.Name, body.Description, rq.now)
	if p != nil {
		return 0, nil, p
	}
	return 201, metricView(m), nil
}

// GET /v1/billable-metrics/{key}
func handleGetMetric(rq *request) (int, any, *problem) {
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	m := st.metrics[rq.segs[2]]
	if m == nil {
		return 0, nil, problemf(404, slugMetricNotFound, "no billable metric %q", rq.segs[2])
	}
	return 200, metricView(m), nil
}

// GET /v1/billable-metrics?cursor=&limit=, in creation order.
func handleListMetrics(rq *request) (int, any, *problem) {
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	out, p := page(rq, st.metricList, func(m *metric) int64 { return m.seq }, metricView)
	if p != nil {
		return 0, nil, p
	}
	return 200, out, nil
}

// POST /v1/metering-rules: the new rule replaces the metric's active rule.
func handleCreateRule(rq *request) (int, any, *problem) {
	var body struct {
		BillableMetricKey string       `json:"billable_metric_key"`
		CostType          string       `json:"cost_type"`
		UnitCost          int64        `json:"unit_cost"`
		FlatCost          int64        `json:"flat_cost"`
		Tiers             []Tier       `json:"tiers"`
		Eligible          *Eligibility `json:"eligible"`
		OveragePolicy     string       `json:"overage_policy"`
	}
	if p := decodeBody(rq.body, &body); p != nil {
		return 0, nil, p
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	r, p := st.createRule(ruleSpec{
		MetricKey: body.BillableMetricKey, CostType: body.CostType, UnitCost: body.UnitCost, FlatCost: body.FlatCost,
		Tiers: body.Tiers, Eligible: body.Eligible, OveragePolicy: body.OveragePolicy,
	}, rq.now)
	if p != nil {
		return 0, nil, p
	}
	return 201, ruleView(r), nil
}

// GET /v1/metering-rules/{id}
func handleGetRule(rq *request) (int, any, *problem) {
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	r := st.rules[rq.segs[2]]
	if r == nil {
		return 0, nil, problemf(404, slugNotFound, "no metering rule %q", rq.segs[2])
	}
	return 200, ruleView(r), nil
}

// GET /v1/metering-rules?cursor=&limit=[&billable_metric_key=], in creation order.
func handleListRules(rq *request) (int, any, *problem) {
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	rules := st.ruleList
	if key := rq.r.URL.Query().Get("billable_metric_key"); key != "" {
		rules = nil
		for _, r := range st.ruleList {
			if r.metricKey == key {
				rules = append(rules, r)
			}
		}
	}
	out, p := page(rq, rules, func(r *rule) int64 { return r.seq }, ruleView)
	if p != nil {
		return 0, nil, p
	}
	return 200, out, nil
}
