package quotastacktest

import (
	"fmt"
	"time"

	"github.com/quotastack/quotastack-go"
)

// Tier and Eligibility are the SDK's: one step of a graduated or volume rule,
// and which credit blocks may pay for a rule ({MinPriority: 10} is "plan
// credits only"; {MaxPriority: 0, Expiring: false} is "wallet only").
type (
	Tier        = quotastack.Tier
	Eligibility = quotastack.Eligibility
)

// ruleSpec is a metering rule as the fake stores it. Costs are in mc; CostType is "per_unit",
// "flat", "graduated" or "volume"; OveragePolicy is "block" (the default), "allow" or "notify".
type ruleSpec struct {
	MetricKey     string
	CostType      string
	UnitCost      int64
	FlatCost      int64
	Tiers         []Tier
	Eligible      *Eligibility
	OveragePolicy string
}

// BlockSpec is a credit block to seed (Server.Grant): Credits mc at Priority, expiring at
// ExpiresAt (nil: never). Source defaults to "topup".
type BlockSpec struct {
	Credits   int64
	Priority  int
	ExpiresAt *time.Time
	Source    string
	Metadata  map[string]string
}

// Ptr returns a pointer to v, for the optional fields of Tier, Eligibility and BlockSpec.
func Ptr[T any](v T) *T { return &v }

// CreateMetric adds a billable metric (key lowercase_with_underscores). It fails if the key
// is malformed or already exists.
func (s *Server) CreateMetric(key, name string) error {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	_, p := s.st.createMetric(key, name, "", s.Now())
	return asError(p)
}

// CreateRule makes r (the SDK's Rule: BillableMetricKey, CostType, costs, Tiers, Eligible,
// OveragePolicy; the other fields are ignored) the active rule of its metric, creating the
// metric if missing and replacing any active rule, and returns the rule's id.
func (s *Server) CreateRule(rule quotastack.Rule) (ruleID string, err error) {
	r := ruleSpec{MetricKey: rule.BillableMetricKey, CostType: rule.CostType, UnitCost: rule.UnitCost,
		FlatCost: rule.FlatCost, Tiers: rule.Tiers, Eligible: rule.Eligible, OveragePolicy: rule.OveragePolicy}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	now := s.Now()
	if metricKeyRE.MatchString(r.MetricKey) && s.st.metrics[r.MetricKey] == nil {
		if _, p := s.st.createMetric(r.MetricKey, r.MetricKey, "", now); p != nil {
			return "", asError(p)
		}
	}
	r.Tiers = append([]Tier(nil), r.Tiers...)
	if r.Eligible != nil {
		e := *r.Eligible
		r.Eligible = &e
	}
	nr, p := s.st.createRule(r, now)
	if p != nil {
		return "", asError(p)
	}
	return nr.id, nil
}

// CreateCustomer adds a customer and returns its customer_id. It fails if the external id
// is empty or already taken.
func (s *Server) CreateCustomer(externalID, displayName string) (customerID string, err error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	c, p := s.st.createCustomer(externalID, displayName, s.Now())
	if p != nil {
		return "", asError(p)
	}
	return c.id, nil
}

// Grant gives the customer a credit block (creating the customer if missing) and returns the
// block's id. Credits must be positive.
func (s *Server) Grant(externalID string, g BlockSpec) (blockID string, err error) {
	if g.Credits <= 0 {
		return "", fmt.Errorf("quotastacktest: grant of %d mc: credits must be positive", g.Credits)
	}
	if g.Source == "" {
		g.Source = "topup"
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	now := s.Now()
	c, p := s.st.customerRef("", externalID, true, now)
	if p != nil {
		return "", asError(p)
	}
	return s.st.addBlock(c, g, now, "").id, nil
}

func asError(p *problem) error {
	if p == nil {
		return nil
	}
	return fmt.Errorf("quotastacktest: %s", p.Detail)
}

// The metrics of the auto-buy-from-wallet recipe, as SeedRecipe creates them.
const (
	RecipeChatMetric     = "chat_message"      // 1,000 mc a message, plan credits only
	RecipePurchaseMetric = "plan_purchase_1hr" // 1 mc per unit, wallet only
)

// SeedRecipe creates the metering rules of the auto-buy-from-wallet recipe:
// RecipeChatMetric at 1,000 mc a message, payable from plan credits only
// (min_priority 10), and each purchase metric (RecipePurchaseMetric if none is
// given) at 1 mc per unit, payable from the wallet only (priority 0, no expiry).
func (s *Server) SeedRecipe(purchaseMetrics ...string) error {
	if len(purchaseMetrics) == 0 {
		purchaseMetrics = []string{RecipePurchaseMetric}
	}
	if _, err := s.CreateRule(quotastack.Rule{BillableMetricKey: RecipeChatMetric, CostType: "per_unit", UnitCost: 1000,
		Eligible: &Eligibility{MinPriority: Ptr(10)}}); err != nil {
		return err
	}
	for _, m := range purchaseMetrics {
		if _, err := s.CreateRule(quotastack.Rule{BillableMetricKey: m, CostType: "per_unit", UnitCost: 1,
			Eligible: &Eligibility{MaxPriority: Ptr(0), Expiring: Ptr(false)}}); err != nil {
			return err
		}
	}
	return nil
}
