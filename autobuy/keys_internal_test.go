package autobuy

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/quotastack/quotastack-go/internal/idem"
)

// The usage keys of issue 16, case 5: event "m1" on its second attempt and
// event "m1:2" on its first are two actions, and so on for every way one
// part's text can be moved into another.
func TestUsageKeysOfNeighbouringInputsDiffer(t *testing.T) {
	t.Parallel()
	pairs := [][2]usageKey{
		{{customerID: "cus_1", event: "m1", n: 2}, {customerID: "cus_1", event: "m1:2", n: 1}},
		{{customerID: "cus_1", event: "m1", n: 12}, {customerID: "cus_1", event: "m1:1", n: 2}},
		{{customerID: "cus_1:m1", event: "x", n: 1}, {customerID: "cus_1", event: "m1:x", n: 1}},
		{{customerID: "cus_1", event: "m1%3A2", n: 1}, {customerID: "cus_1", event: "m1:2", n: 1}},
		{{customerID: "cus_1", event: "m1", n: 1}, {customerID: "cus_2", event: "m1", n: 1}},
		{{customerID: "", event: "cus_1:m1", n: 1}, {customerID: "cus_1", event: "m1", n: 1}},
	}
	for _, p := range pairs {
		assert.NotEqual(t, p[0].current(), p[1].current(), "%+v vs %+v", p[0], p[1])
	}
	k := usageKey{customerID: "cus_1", event: "m1", n: 1}
	assert.Equal(t, "usage:cus_1:m1", k.current(), "the documented first key")
	k.n = 0
	assert.Equal(t, "usage:cus_1:m1", k.current(), "n 0 and 1 are the first attempt")
	assert.Empty(t, (&usageKey{customerID: "cus_1"}).current(), "no event: a random key per record")
}

// FuzzUsageKeyInjective: two different (customer, event, attempt) triples
// never give one key, and every key is a valid Idempotency-Key.
func FuzzUsageKeyInjective(f *testing.F) {
	f.Add("cus_1", "m1", 2, "cus_1", "m1:2", 1)
	f.Add("cus_1", "m1", 12, "cus_1", "m1:1", 2)
	f.Add("cus_1:m1", "x", 1, "cus_1", "m1:x", 1)
	f.Add("cus_1", "m1%3A2", 1, "cus_1", "m1:2", 1)
	f.Add("cus_1", strings.Repeat("e", 300), 1, "cus_1", strings.Repeat("e", 300), 2)
	f.Add("cus_1", strings.Repeat("é", 120), 3, "cus_1", strings.Repeat("é", 120)+":3", 1)
	f.Fuzz(func(t *testing.T, c1, e1 string, n1 int, c2, e2 string, n2 int) {
		if e1 == "" || e2 == "" {
			return // no event: random keys, nothing derived
		}
		n1, n2 = max(n1, 1), max(n2, 1) // attempts start at 1 (0 is the first too)
		n1, n2 = min(n1, maxUsageAttempts), min(n2, maxUsageAttempts)
		// Usage keys and hold keys (hold true): one key space, no two keys alike.
		for _, holds := range [][2]bool{{false, false}, {true, true}, {false, true}} {
			a := (&usageKey{customerID: c1, event: e1, n: n1, hold: holds[0]}).current()
			b := (&usageKey{customerID: c2, event: e2, n: n2, hold: holds[1]}).current()
			if err := idem.Check(a); err != nil {
				t.Fatalf("key %q of (%q, %q, %d): %v", a, c1, e1, n1, err)
			}
			same := c1 == c2 && e1 == e2 && n1 == n2 && holds[0] == holds[1]
			if (a == b) != same {
				t.Fatalf("(%q, %q, %d, hold %v) -> %q and (%q, %q, %d, hold %v) -> %q", c1, e1, n1, holds[0], a, c2, e2, n2, holds[1], b)
			}
		}
	})
}
