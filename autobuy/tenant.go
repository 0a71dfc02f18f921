package autobuy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// ErrRuleDiffers is returned by Setup.Apply when a metric already has an
// active metering rule that is not the one the gate needs, and
// Setup.ReplaceRules is false. Nothing was changed for that metric.
var ErrRuleDiffers = errors.New("autobuy: the active metering rule differs from the one the gate needs")

// Setup is what a tenant must configure once for the gate to work: the gated
// metric, priced per unit and payable from plan credits only
// (eligible min_priority 10), and for each plan its purchase metric
// (plan.Plan.Metric, "plan_purchase_<type>") at 1 mc per unit, payable from
// the wallet only (eligible max_priority 0, expiring false), so a plan's
// debit of PriceMC units costs PriceMC mc. Apply creates what is missing.
type Setup struct {
	Metric     string // the gated metric, e.g. "chat_message"
	MetricName string // display name of a metric Apply creates; defaults to Metric
	UnitCostMC int64  // price of one unit of Metric, in millicredits (> 0)
	Plans      []plan.Plan
	// ReplaceRules lets Apply replace an active rule that differs from the
	// one needed. Without it such a rule is left alone and Apply returns
	// ErrRuleDiffers: a rule the tenant changed on purpose is never
	// overwritten by accident.
	ReplaceRules bool
}

// SetupStep is one thing Apply did or found, for logs.
type SetupStep struct {
	Metric string
	// Action is "metric_created", "metric_exists", "rule_created",
	// "rule_kept" (an equal rule was active) or "rule_replaced".
	Action string
	RuleID string
}

// Rules returns the metering rules s needs, the gated metric's first.
func (s Setup) Rules() []quotastack.Rule {
	minPlan, maxWallet, expiring := quotastack.PlanPriority, 0, false
	rules := []quotastack.Rule{{
		BillableMetricKey: s.Metric, CostType: quotastack.CostPerUnit, UnitCost: s.UnitCostMC,
		Eligible: &quotastack.Eligibility{MinPriority: &minPlan},
	}}
	seen := map[string]bool{}
	for _, p := range s.Plans {
		m := p.Metric()
		if seen[m] {
			continue
		}
		seen[m] = true
		rules = append(rules, quotastack.Rule{
			BillableMetricKey: m, CostType: quotastack.CostPerUnit, UnitCost: 1,
			Eligible: &quotastack.Eligibility{MaxPriority: &maxWallet, Expiring: &expiring},
		})
	}
	return rules
}

func (s Setup) validate() error {
	if s.Metric == "" || s.UnitCostMC <= 0 || len(s.Plans) == 0 {
		return fmt.Errorf("%w: autobuy: setup needs a metric, a unit cost > 0 and at least one plan", quotastack.ErrInvalidInput)
	}
	for _, p := range s.Plans {
		if err := p.Validate(); err != nil {
			return fmt.Errorf("%w: %w", quotastack.ErrInvalidInput, err)
		}
		if p.Metric() == s.Metric {
			return fmt.Errorf("%w: autobuy: plan %q is bought on the gated metric itself", quotastack.ErrInvalidInput, p.Type)
		}
	}
	return nil
}

// Apply makes the tenant match s: it creates missing metrics and, for each
// metric without an active rule, the rule. An active rule equal to the needed
// one is kept; a different one is replaced only with ReplaceRules (else
// ErrRuleDiffers, and the remaining metrics are not touched). Apply is safe to
// run at every start-up and from several replicas: it reads before it writes,
// and its writes carry idempotency keys derived from the rule.
func (s Setup) Apply(ctx context.Context, c *quotastack.Client) ([]SetupStep, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	active, err := activeRules(ctx, c)
	if err != nil {
		return nil, err
	}
	var steps []SetupStep
	for i, want := range s.Rules() {
		name := want.BillableMetricKey
		if i == 0 && s.MetricName != "" {
			name = s.MetricName
		}
		step, err := ensureMetric(ctx, c, want.BillableMetricKey, name)
		if err != nil {
			return steps, err
		}
		steps = append(steps, step)
		have, ok := active[want.BillableMetricKey]
		switch {
		case ok && SameRule(have, want):
			steps = append(steps, SetupStep{Metric: want.BillableMetricKey, Action: "rule_kept", RuleID: have.ID})
			continue
		case ok && !s.ReplaceRules:
			return steps, fmt.Errorf("%w: metric %s has rule %s (%s); it needs %s (set ReplaceRules to replace it)",
				ErrRuleDiffers, want.BillableMetricKey, have.ID, describeRule(have), describeRule(want))
		}
		key := quotastack.DeriveKey("autobuy-setup-rule", want.BillableMetricKey, describeRule(want), replacing(have, ok))
		r, err := c.CreateRule(ctx, want, quotastack.WithIdempotencyKey(key))
		if err != nil {
			return steps, err
		}
		action := "rule_created"
		if ok {
			action = "rule_replaced"
		}
		steps = append(steps, SetupStep{Metric: want.BillableMetricKey, Action: action, RuleID: r.ID})
	}
	return steps, nil
}

// replacing names the rule a write replaces, so replacing a rule that differs
// again later (after someone changed it back) is a new operation, not a replay.
func replacing(have quotastack.Rule, ok bool) string {
	if !ok {
		return "none"
	}
	return have.ID
}

func activeRules(ctx context.Context, c *quotastack.Client) (map[string]quotastack.Rule, error) {
	out := map[string]quotastack.Rule{}
	for r, err := range c.Rules(ctx, 100) {
		if err != nil {
			return nil, err
		}
		if r.Active {
			out[r.BillableMetricKey] = r
		}
	}
	return out, nil
}

func ensureMetric(ctx context.Context, c *quotastack.Client, key, name string) (SetupStep, error) {
	_, err := c.GetMetric(ctx, key)
	switch {
	case err == nil:
		return SetupStep{Metric: key, Action: "metric_exists"}, nil
	case !errors.Is(err, quotastack.ErrNotFound):
		return SetupStep{}, err
	}
	_, err = c.CreateMetric(ctx, quotastack.Metric{Key: key, Name: name})
	if errors.Is(err, quotastack.ErrConflict) { // created meanwhile by another replica
		return SetupStep{Metric: key, Action: "metric_exists"}, nil
	}
	if err != nil {
		return SetupStep{}, err
	}
	return SetupStep{Metric: key, Action: "metric_created"}, nil
}

// SameRule reports whether a and b price the same way: cost type, costs,
// tiers, eligibility and overage policy ("" is "block"); ids, activity and
// times are ignored.
func SameRule(a, b quotastack.Rule) bool {
	return describeRule(a) == describeRule(b)
}

func describeRule(r quotastack.Rule) string {
	var b strings.Builder
	b.WriteString(r.CostType)
	switch r.CostType {
	case quotastack.CostFlat:
		fmt.Fprintf(&b, " %d mc", r.FlatCost)
	case quotastack.CostPerUnit:
		fmt.Fprintf(&b, " %d mc/unit", r.UnitCost)
	default:
		for _, t := range r.Tiers {
			if t.UpTo == nil {
				fmt.Fprintf(&b, " [rest: %d mc]", t.UnitCost)
			} else {
				fmt.Fprintf(&b, " [up to %d: %d mc]", *t.UpTo, t.UnitCost)
			}
		}
	}
	if e := r.Eligible; e != nil {
		if e.MinPriority != nil {
			fmt.Fprintf(&b, ", min_priority %d", *e.MinPriority)
		}
		if e.MaxPriority != nil {
			fmt.Fprintf(&b, ", max_priority %d", *e.MaxPriority)
		}
		if e.Expiring != nil {
			fmt.Fprintf(&b, ", expiring %t", *e.Expiring)
		}
	}
	policy := r.OveragePolicy
	if policy == "" {
		policy = quotastack.OverageBlock
	}
	return b.String() + ", overage " + policy
}
