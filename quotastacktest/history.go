package quotastacktest

import (
	"fmt"
	"slices"
	"sort"
)

// DefaultHistoryLimit is the number of ledger entries the server keeps in full (see
// WithHistoryLimit).
const DefaultHistoryLimit = 100_000

// WithHistoryLimit keeps the last n ledger entries of all customers in full (default
// DefaultHistoryLimit; n <= 0 keeps the default), with their usage events, the blocks they
// granted and the plan orders they belong to, so memory stays bounded however many requests
// a soak sends. An older entry is checked as it leaves the window and folded into its
// customer's sums.
//
// Past the window CheckInvariants still checks exactly: every balance, hold and
// lifetime_earned sum; each folded entry's parts and overdraft; a usage event without its one
// debit entry; units charged against what NoteAllowed reported (an action charged twice or
// never); a plan order debited or granted twice or half done, unless the order was sound (one
// debit, one grant) when it left the window. It can't name an event id or an idempotency key
// executed twice when the two executions are a window apart (the units check still sees the
// extra charge), and a second debit of an order folded away shows as an order debited without
// a grant. Ledger, AllLedger, UsageEvents and PlanOrders return the window; a reservation
// that ended before it is forgotten (its commit answers 404). HistoryFolded counts what left.
func WithHistoryLimit(n int) Option { return func(c *config) { c.histLimit = n } }

// HistoryFolded returns how many ledger entries have left the window of WithHistoryLimit.
func (s *Server) HistoryFolded() int {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	return s.st.ledgerBase
}

// pastSums is what a customer's folded history adds up to (CheckInvariants adds the window).
type pastSums struct {
	amount, held, grants int64
	units                map[string]int64 // usage units per metric
}

// entry returns ledger entry i (a global index); usageAt returns usage event i.
func (s *state) entry(i int) *ledgerRec  { return &s.ledger[i-s.ledgerBase] }
func (s *state) usageAt(i int) *usageRec { return &s.usage[i-s.usageBase] }

// lastEntry is the global index of the newest ledger entry.
func (s *state) lastEntry() int { return s.ledgerBase + len(s.ledger) - 1 }

// foldIfFull folds the oldest entries once the ledger is a quarter past the limit (amortized:
// each entry is copied a few times at most).
func (s *state) foldIfFull() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ledger) > s.histLimit+s.histLimit/4 {
		s.fold(len(s.ledger) - s.histLimit)
	}
}

// fold checks the k oldest ledger entries and the usage events they debited, adds them to
// their customers' sums and forgets them, with the dead blocks they granted, the sound plan
// orders they finished and the reservations they ended; the caller holds the lock.
func (s *state) fold(k int) {
	cutoff := s.ledgerBase + k
	var touched []*customer
	seen := map[*customer]bool{}
	debits := map[*customer]map[string]int{}
	for i := range k {
		e := &s.ledger[i]
		c := s.customers[e.CustomerID]
		if !seen[c] {
			seen[c] = true
			touched = append(touched, c)
			debits[c] = map[string]int{}
		}
		c.past.amount += e.Amount
		c.past.held += e.Held
		if e.Kind == "grant" {
			c.past.grants += e.Amount
		}
		c.violations = append(c.violations, entryProblems(c, e)...)
		if e.Kind == "debit" || e.Kind == "commit" {
			debits[c][e.EventID]++
		}
		if e.ReservationID != "" && e.Kind != "reserve" {
			if rs := s.resv[e.ReservationID]; rs != nil && rs.status != statusActive {
				delete(s.resv, e.ReservationID)
			}
		}
	}
	n := sort.Search(len(s.usage), func(i int) bool { return s.usage[i].entry >= cutoff })
	for i := range n {
		u := &s.usage[i]
		c := s.customers[u.CustomerID]
		if d := debits[c][u.EventID]; d != 1 {
			c.violations = append(c.violations, fmt.Sprintf("usage event %s has %d debit entries", u.EventID, d))
		}
		delete(debits[c], u.EventID)
		if c.past.units == nil {
			c.past.units = map[string]int64{}
		}
		c.past.units[u.MetricKey] += u.Units
	}
	for _, c := range touched {
		for _, evt := range sortedKeys(debits[c]) {
			c.violations = append(c.violations, fmt.Sprintf("debit entry for event %s has no usage event", evt))
		}
	}
	s.ledger, s.ledgerBase = slices.Clone(s.ledger[k:]), cutoff
	s.usage, s.usageBase = slices.Clone(s.usage[n:]), s.usageBase+n
	for _, c := range touched {
		c.ledger = fromIndex(c.ledger, s.ledgerBase)
		c.usage = fromIndex(c.usage, s.usageBase)
		c.blocks = slices.DeleteFunc(c.blocks, func(b *block) bool {
			return b != c.overdraft && b.entry < cutoff && (b.expired || (b.remaining == 0 && b.held == 0))
		})
		c.orderList = slices.DeleteFunc(c.orderList, func(o *planOrder) bool {
			if len(o.debits) != 1 || len(o.grants) != 1 || o.last >= cutoff {
				return false
			}
			delete(c.orders, o.key)
			return true
		})
	}
	if len(s.rejected) > s.histLimit {
		s.rejected = slices.Clone(s.rejected[len(s.rejected)-s.histLimit:])
	}
}

// entryProblems returns what is wrong with one ledger entry on its own: debit parts that
// don't add up to its amount, an overdraft under a block policy.
func entryProblems(c *customer, e *ledgerRec) []string {
	var out []string
	var parts int64
	for _, p := range e.Parts {
		parts += p.Amount
		if c.overdraft != nil && p.BlockID == c.overdraft.id && e.policy == policyBlock {
			out = append(out, fmt.Sprintf("entry %d overdrafts block %s under a block policy", e.Seq, p.BlockID))
		}
	}
	if (e.Kind == "debit" || e.Kind == "commit") && parts != e.Amount {
		out = append(out, fmt.Sprintf("entry %d: parts sum to %d, amount is %d", e.Seq, parts, e.Amount))
	}
	return out
}

// fromIndex returns the ascending indexes from base on, in a new slice.
func fromIndex(xs []int, base int) []int {
	return slices.Clone(xs[sort.SearchInts(xs, base):])
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
