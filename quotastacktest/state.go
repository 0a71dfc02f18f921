package quotastacktest

import (
	"math"
	"regexp"
	"sync"
	"sync/atomic"
	"time"
)

// state is the whole ledger world. One mutex guards it: every operation is short and
// in-memory, so a single lock serves thousands of requests per second.
type state struct {
	mu         sync.Mutex
	burnOrder  BurnOrder
	seq        int64 // creation order of blocks, metrics, rules
	ledgerSeq  int64
	customers  map[string]*customer // by customer_id
	byExternal map[string]*customer
	custOrder  []*customer
	metrics    map[string]*metric
	metricList []*metric // creation order
	rules      map[string]*rule
	ruleList   []*rule // creation order
	resv       map[string]*reservation
	ledger     []ledgerRec // the window of WithHistoryLimit: entry i is ledger[i-ledgerBase]
	usage      []usageRec  // usage event i is usage[i-usageBase]
	ledgerBase int         // ledger entries folded (history.go)
	usageBase  int         // usage events folded
	histLimit  int

	async    *AsyncUsage     // nil: usage answers synchronously
	pending  []pendingUsage  // accepted asynchronous events not executed yet
	pendingN atomic.Int64    // len(pending), readable without the lock
	rejected []RejectedUsage // accepted asynchronous events that were not debited
}

func newState(order BurnOrder) *state {
	return &state{
		burnOrder:  order,
		customers:  map[string]*customer{},
		byExternal: map[string]*customer{},
		metrics:    map[string]*metric{},
		rules:      map[string]*rule{},
		resv:       map[string]*reservation{},
	}
}

const (
	statusActive    = "active"
	statusCommitted = "committed"
	statusReleased  = "released"
	statusExpired   = "expired"
)

func (s *state) createCustomer(externalID, displayName string, now time.Time) (*customer, *problem) {
	if externalID == "" {
		return nil, invalid("external_id", "required")
	}
	if _, ok := s.byExternal[externalID]; ok {
		return nil, problemf(409, slugCustomerExists, "a customer with external id %q already exists", externalID)
	}
	c := &customer{id: newUUIDv7(now), externalID: externalID, displayName: displayName, createdAt: now}
	s.customers[c.id] = c
	s.byExternal[externalID] = c
	s.custOrder = append(s.custOrder, c)
	return c, nil
}

// customerRef finds a customer by exactly one of its two ids (body endpoints); create makes
// an unknown external id into a new customer (grants).
func (s *state) customerRef(id, externalID string, create bool, now time.Time) (*customer, *problem) {
	if (id == "") == (externalID == "") {
		msg := "exactly one of customer_id or external_customer_id is required"
		return nil, validation(fieldError{"customer_id", msg}, fieldError{"external_customer_id", msg})
	}
	var c *customer
	if id != "" {
		c = s.customers[id]
	} else {
		c = s.byExternal[externalID]
		if c == nil && create {
			c, _ = s.createCustomer(externalID, "", now)
		}
	}
	if c == nil {
		return nil, customerNotFound(id, externalID)
	}
	s.refresh(c, now)
	return c, nil
}

func customerNotFound(id, externalID string) *problem {
	if id != "" {
		return problemf(404, slugCustomerNotFound, "no customer with customer_id %q", id)
	}
	return problemf(404, slugCustomerNotFound, "no customer with external id %q", externalID)
}

var metricKeyRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

func (s *state) createMetric(key, name, description string, now time.Time) (*metric, *problem) {
	if !metricKeyRE.MatchString(key) {
		return nil, invalid("key", "must be lowercase_with_underscores, starting with a letter")
	}
	if _, ok := s.metrics[key]; ok {
		return nil, problemf(409, slugMetricExists, "billable metric %q already exists", key)
	}
	if name == "" {
		name = key
	}
	m := &metric{key: key, name: name, description: description, createdAt: now, seq: s.nextSeq()}
	s.metrics[key] = m
	s.metricList = append(s.metricList, m)
	return m, nil
}

// activeRule returns the metric's active rule: 404 metric-not-found or 422 no-active-rule.
func (s *state) activeRule(key string) (*rule, *problem) {
	m := s.metrics[key]
	if m == nil {
		return nil, problemf(404, slugMetricNotFound, "no billable metric %q", key)
	}
	if m.active == nil {
		return nil, problemf(422, slugNoActiveRule, "billable metric %q has no active metering rule", key)
	}
	return m.active, nil
}

// createRule validates r and makes it the metric's active rule, replacing the previous one.
func (s *state) createRule(r ruleSpec, now time.Time) (*rule, *problem) {
	if p := validateRule(&r); p != nil {
		return nil, p
	}
	m := s.metrics[r.MetricKey]
	if m == nil {
		return nil, problemf(404, slugMetricNotFound, "no billable metric %q", r.MetricKey)
	}
	nr := &rule{
		id: newID("rule_"), metricKey: r.MetricKey, costType: r.CostType, unitCost: r.UnitCost,
		flatCost: r.FlatCost, tiers: r.Tiers, eligible: r.Eligible, policy: r.OveragePolicy,
		active: true, createdAt: now, seq: s.nextSeq(),
	}
	if m.active != nil {
		m.active.active = false
	}
	m.active = nr
	s.rules[nr.id] = nr
	s.ruleList = append(s.ruleList, nr)
	return nr, nil
}

func validateRule(r *ruleSpec) *problem {
	var errs []fieldError
	add := func(f, m string) { errs = append(errs, fieldError{f, m}) }
	if r.MetricKey == "" {
		add("billable_metric_key", "required")
	}
	if r.UnitCost < 0 {
		add("unit_cost", "must not be negative")
	}
	if r.FlatCost < 0 {
		add("flat_cost", "must not be negative")
	}
	switch r.CostType {
	case "per_unit", "flat":
		if len(r.Tiers) > 0 {
			add("tiers", "only graduated and volume rules take tiers")
		}
	case "graduated", "volume":
		errs = append(errs, validateTiers(r.Tiers)...)
	case "":
		add("cost_type", "required")
	default:
		add("cost_type", "must be one of per_unit, flat, graduated, volume")
	}
	switch r.OveragePolicy {
	case "":
		r.OveragePolicy = policyBlock
	case policyBlock, policyAllow, policyNotify:
	default:
		add("overage_policy", "must be one of block, allow, notify")
	}
	if e := r.Eligible; e != nil && e.MinPriority != nil && e.MaxPriority != nil && *e.MinPriority > *e.MaxPriority {
		add("eligible", "min_priority is greater than max_priority")
	}
	if len(errs) > 0 {
		return validation(errs...)
	}
	return nil
}

func validateTiers(tiers []Tier) []fieldError {
	if len(tiers) == 0 {
		return []fieldError{{"tiers", "required for graduated and volume rules"}}
	}
	var errs []fieldError
	var prev int64
	for i, t := range tiers {
		last := i == len(tiers)-1
		switch {
		case t.UnitCost < 0:
			errs = append(errs, fieldError{"tiers", "unit_cost must not be negative"})
		case last && t.UpTo != nil:
			errs = append(errs, fieldError{"tiers", "the last tier must have up_to null"})
		case !last && t.UpTo == nil:
			errs = append(errs, fieldError{"tiers", "only the last tier may have up_to null"})
		case !last && *t.UpTo <= prev:
			errs = append(errs, fieldError{"tiers", "up_to must be positive and increasing"})
		}
		if t.UpTo != nil {
			prev = *t.UpTo
		}
	}
	return errs
}

// price returns the cost in mc of units under the rule.
func price(r *rule, units int64) (int64, *problem) {
	overflow := invalid("units", "the cost overflows int64 millicredits")
	switch r.costType {
	case "flat":
		return r.flatCost, nil
	case "per_unit":
		return mulCheck(units, r.unitCost, overflow)
	case "volume":
		for _, t := range r.tiers {
			if t.UpTo == nil || units <= *t.UpTo {
				return mulCheck(units, t.UnitCost, overflow)
			}
		}
	case "graduated":
		var total, lower int64
		for _, t := range r.tiers {
			upper := units
			if t.UpTo != nil && *t.UpTo < units {
				upper = *t.UpTo
			}
			if upper > lower {
				c, p := mulCheck(upper-lower, t.UnitCost, overflow)
				if p != nil || total > math.MaxInt64-c {
					return 0, overflow
				}
				total += c
				lower = upper
			}
		}
		return total, nil
	}
	return 0, overflow
}

func mulCheck(a, b int64, overflow *problem) (int64, *problem) {
	if a != 0 && b > math.MaxInt64/a {
		return 0, overflow
	}
	return a * b, nil
}
