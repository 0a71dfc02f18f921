package quotastacktest

import (
	"maps"
	"sort"
	"sync"
)

// actionNotes are the actions the SDK under test let through, as the test reported them.
type actionNotes struct {
	mu    sync.Mutex
	notes map[[2]string]*metricNotes // customer (either id form, as given) and metric
}

type metricNotes struct {
	units  int64
	events map[string]bool
}

// NoteAllowed tells the server that the SDK let an action through: units of metric for the
// customer (its external id or its QuotaStack id), once per eventID ("" for an action
// without one). A later note of the same event id (a replay the SDK answered from its
// record) is not counted again. CheckInvariants then requires, for every customer and metric
// noted, that the units executed on the metric (usage events, batch events and reservation
// commits, wherever they came from) add up to exactly the units noted: fewer is an allowed
// action never charged, more is an action charged twice. Note every action of a customer and
// metric the test checks, and none it charges outside the SDK. Safe for concurrent use.
func (s *Server) NoteAllowed(customer, metric, eventID string, units int64) {
	a := &s.actions
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.notes == nil {
		a.notes = map[[2]string]*metricNotes{}
	}
	k := [2]string{customer, metric}
	n := a.notes[k]
	if n == nil {
		n = &metricNotes{events: map[string]bool{}}
		a.notes[k] = n
	}
	if eventID != "" {
		if n.events[eventID] {
			return
		}
		n.events[eventID] = true
	}
	n.units += units
}

// AllowUncharged lets up to units of metric allowed for customer (as given to NoteAllowed)
// stay uncharged, for a test that crashes a process holding uncommitted lease units on
// purpose (the documented exception). An action charged twice is still a violation.
func AllowUncharged(customer, metric string, units int64) CheckOption {
	return func(c *checkConfig) { c.uncharged[[2]string{customer, metric}] += units }
}

// checkActions compares the noted actions with what was executed; the state lock is held.
func (s *Server) checkActions(cfg checkConfig, fail func(*customer, string, ...any)) {
	a := &s.actions
	a.mu.Lock()
	type noted struct {
		key [2]string
		c   *customer
		n   metricNotes
	}
	var all []noted
	for k, n := range a.notes {
		c := s.st.customers[k[0]]
		if c == nil {
			c = s.st.byExternal[k[0]]
		}
		all = append(all, noted{key: k, c: c, n: metricNotes{units: n.units}})
	}
	a.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].key[0]+"\x00"+all[i].key[1] < all[j].key[0]+"\x00"+all[j].key[1] })
	// Both id forms of one customer may have been noted: add them up per customer.
	allowed := map[*customer]map[string]int64{}
	var order []*customer
	for _, x := range all {
		if x.c == nil {
			fail(&customer{externalID: x.key[0]}, "actions of metric %s were allowed for an unknown customer", x.key[1])
			continue
		}
		if allowed[x.c] == nil {
			allowed[x.c] = map[string]int64{}
			order = append(order, x.c)
		}
		allowed[x.c][x.key[1]] += x.n.units
	}
	for _, c := range order {
		charged := maps.Clone(c.past.units) // the folded history's units, then the window's
		if charged == nil {
			charged = map[string]int64{}
		}
		events := map[[2]string]int{}
		for _, i := range c.usage {
			u := s.st.usageAt(i)
			charged[u.MetricKey] += u.Units
			if id := u.Metadata["event_id"]; id != "" {
				events[[2]string{u.MetricKey, id}]++
			}
		}
		metrics := make([]string, 0, len(allowed[c]))
		for m := range allowed[c] {
			metrics = append(metrics, m)
		}
		sort.Strings(metrics)
		for _, m := range metrics {
			want, got := allowed[c][m], charged[m]
			slack := cfg.uncharged[[2]string{c.externalID, m}] + cfg.uncharged[[2]string{c.id, m}]
			switch {
			case got > want:
				fail(c, "%d units of %s charged but only %d allowed: an action charged twice", got, m, want)
			case got < want-slack:
				fail(c, "%d units of %s allowed but only %d charged: an allowed action never charged", want, m, got)
			}
		}
		keys := make([][2]string, 0, len(events))
		for k, n := range events {
			if n > 1 {
				keys = append(keys, k)
			}
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i][1] < keys[j][1] })
		for _, k := range keys {
			fail(c, "event %q of %s executed %d times: an action charged twice", k[1], k[0], events[k])
		}
	}
}
