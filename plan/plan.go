// Package plan buys plans: a usage event that debits the customer's wallet,
// then a topup grant of the plan's credits. Both steps carry idempotency keys
// derived from one order id, so calling Buy again with the same order id
// finishes a half-done purchase and never debits twice.
package plan

import (
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/quotastack/quotastack-go"
)

// Plan is one entry of a plan catalog. Amounts are in millicredits.
type Plan struct {
	Type      string        // e.g. "1hr"; part of the idempotency keys
	PriceMC   int64         // debited from the wallet
	CreditsMC int64         // granted as plan credits
	Duration  time.Duration // how long the plan credits last
	// Priority of the granted block; 0 means quotastack.PlanPriority (10).
	Priority int
	// PurchaseMetric is the billable metric of the debit, priced per_unit at
	// 1 mc per unit; "" means "plan_purchase_" + Type.
	PurchaseMetric string
	Metadata       map[string]string // copied into both steps' metadata
}

// BlockPriority returns the priority the plan's credit block is granted at.
func (p Plan) BlockPriority() int {
	if p.Priority == 0 {
		return quotastack.PlanPriority
	}
	return p.Priority
}

// Metric returns the billable metric the purchase debit is recorded on.
func (p Plan) Metric() string {
	if p.PurchaseMetric == "" {
		return "plan_purchase_" + p.Type
	}
	return p.PurchaseMetric
}

// Validate reports what makes p unusable, or nil.
func (p Plan) Validate() error {
	switch {
	case p.Type == "":
		return errors.New("plan: empty plan type")
	case p.PriceMC <= 0:
		return fmt.Errorf("plan %s: price must be > 0 mc", p.Type)
	case p.CreditsMC <= 0:
		return fmt.Errorf("plan %s: credits must be > 0 mc", p.Type)
	case p.Duration < time.Second:
		return fmt.Errorf("plan %s: duration must be at least a second", p.Type)
	case p.Priority < 0:
		return fmt.Errorf("plan %s: priority must be >= 0", p.Type)
	}
	return nil
}

func (p Plan) metadata(extra map[string]string) map[string]string {
	m := make(map[string]string, len(p.Metadata)+len(extra))
	maps.Copy(m, p.Metadata)
	maps.Copy(m, extra) // the purchase's own keys win
	return m
}

// Catalog is a set of plans by type.
type Catalog struct {
	plans []Plan
}

// NewCatalog validates plans and returns a catalog of them; types must be unique.
func NewCatalog(plans ...Plan) (*Catalog, error) {
	seen := map[string]bool{}
	for _, p := range plans {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		if seen[p.Type] {
			return nil, fmt.Errorf("plan: duplicate plan type %q", p.Type)
		}
		seen[p.Type] = true
	}
	return &Catalog{plans: append([]Plan(nil), plans...)}, nil
}

// Get returns the plan of the given type.
func (c *Catalog) Get(planType string) (Plan, bool) {
	for _, p := range c.plans {
		if p.Type == planType {
			return p, true
		}
	}
	return Plan{}, false
}

// Cheapest returns the plan with the lowest price, or false for an empty catalog.
func (c *Catalog) Cheapest() (Plan, bool) {
	if len(c.plans) == 0 {
		return Plan{}, false
	}
	best := c.plans[0]
	for _, p := range c.plans[1:] {
		if p.PriceMC < best.PriceMC {
			best = p
		}
	}
	return best, true
}

// Plans returns the plans in the order given to NewCatalog.
func (c *Catalog) Plans() []Plan { return append([]Plan(nil), c.plans...) }
