package quotastack

import (
	"testing"
)

// FuzzBatchKey: a batch's key depends on every event's id and content and on
// nothing else, and two different batches never share one (fields are
// length-prefixed, so moving bytes between fields changes the key).
func FuzzBatchKey(f *testing.F) {
	f.Add("e1", "user", "api_call", int64(1), "k", "v", "e1", "user", "api_call", int64(1), "k", "v", false)
	f.Add("e1", "user", "api_call", int64(1), "", "", "e1", "user", "api_call", int64(2), "", "", false)
	f.Add("ab", "c", "m", int64(1), "", "", "a", "bc", "m", int64(1), "", "", true)
	f.Add("x", "u", "m", int64(1), "k", "", "x", "u", "m", int64(1), "", "k", false)
	f.Fuzz(func(t *testing.T, id1, cust1, metric1 string, units1 int64, mk1, mv1 string,
		id2, cust2, metric2 string, units2 int64, mk2, mv2 string, ext2 bool) {
		ev := func(id, cust, metric string, units int64, mk, mv string, ext bool) queuedEvent {
			c := CustomerID(cust)
			if ext {
				c = ExternalID(cust)
			}
			var md map[string]string
			if mk != "" || mv != "" {
				md = map[string]string{mk: mv}
			}
			return queuedEvent{id: id, p: UsageParams{Customer: c, MetricKey: metric, Units: units, Metadata: md}}
		}
		a := ev(id1, cust1, metric1, units1, mk1, mv1, true)
		b := ev(id2, cust2, metric2, units2, mk2, mv2, ext2)
		same := id1 == id2 && cust1 == cust2 && ext2 && metric1 == metric2 && units1 == units2 &&
			((mk1 == "" && mv1 == "") == (mk2 == "" && mv2 == "")) && mk1 == mk2 && mv1 == mv2
		ka, kb := batchKey([]queuedEvent{a}), batchKey([]queuedEvent{b})
		if same != (ka == kb) {
			t.Fatalf("same content %v but keys equal %v", same, ka == kb)
		}
		if batchKey([]queuedEvent{a}) != ka {
			t.Fatal("key not deterministic")
		}
		// Order and count matter: [a, b] and [b, a] are different batches unless a == b.
		if k1, k2 := batchKey([]queuedEvent{a, b}), batchKey([]queuedEvent{b, a}); same != (k1 == k2) {
			t.Fatalf("order: same %v, keys equal %v", same, k1 == k2)
		}
		if batchKey([]queuedEvent{a, a}) == ka {
			t.Fatal("a batch of two shares the key of a batch of one")
		}
		if len(ka) > 255 {
			t.Fatalf("key too long: %d", len(ka))
		}
	})
}
