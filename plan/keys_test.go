package plan_test

import (
	"testing"

	"github.com/quotastack/quotastack-go/plan"
)

// FuzzPlanKeysInjective: two different (plan type, order id) pairs never
// share a debit or a grant key, and a debit key never equals a grant key.
func FuzzPlanKeysInjective(f *testing.F) {
	f.Add("1hr", "ord:1", "1hr:ord", "1")
	f.Add("a%3Ab", "c", "a:b", "c")
	f.Fuzz(func(t *testing.T, t1, o1, t2, o2 string) {
		p1, p2 := plan.Plan{Type: t1}, plan.Plan{Type: t2}
		same := t1 == t2 && o1 == o2
		if !same && plan.DebitKey(p1, o1) == plan.DebitKey(p2, o2) {
			t.Fatalf("DebitKey(%q,%q) == DebitKey(%q,%q)", t1, o1, t2, o2)
		}
		if !same && plan.GrantKey(p1, o1) == plan.GrantKey(p2, o2) {
			t.Fatalf("GrantKey(%q,%q) == GrantKey(%q,%q)", t1, o1, t2, o2)
		}
		if plan.DebitKey(p1, o1) == plan.GrantKey(p2, o2) {
			t.Fatalf("a debit key equals a grant key: %q", plan.DebitKey(p1, o1))
		}
	})
}
