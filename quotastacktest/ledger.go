package quotastacktest

import (
	"maps"
	"sort"
	"time"
)

// BurnOrder selects which credit block a debit takes first (contract §4).
type BurnOrder int

const (
	// BurnOrderPriorityDesc is the default: priority DESC, then expires_at ASC (never last),
	// then created ASC.
	BurnOrderPriorityDesc BurnOrder = iota
	// BurnOrderPriorityAsc is the alternative order: priority ASC, then expires_at ASC (never
	// last), then promotional before other sources, then created ASC.
	BurnOrderPriorityAsc
)

// String names the order.
func (o BurnOrder) String() string {
	if o == BurnOrderPriorityAsc {
		return "priority_asc"
	}
	return "priority_desc"
}

// Overage policies of a metering rule.
const (
	policyBlock  = "block"
	policyAllow  = "allow"
	policyNotify = "notify"
)

const sourceOverdraft = "overdraft"

type customer struct {
	id, externalID, displayName string
	createdAt                   time.Time

	blocks       []*block       // the blocks granted, in creation order (for CheckInvariants), less dead ones folded
	live         []*block       // the blocks a request may touch: not expired, not spent, no overdraft
	overdraft    *block         // the negative block of allow/notify debits, if any
	reservations []*reservation // active reservations
	ledger       []int          // global indexes of its ledger entries in the window (state.entry)
	usage        []int          // global indexes of its usage events in the window (state.usageAt)
	past         pastSums       // what its folded history adds up to

	// Counters maintained incrementally; CheckInvariants recomputes them.
	balance, reserved, lifetimeEarned, version int64

	orders     map[planKey]*planOrder // plan orders, by plan type and order id
	orderList  []*planOrder           // in the order their first step executed
	unpaid     map[*planOrder]bool    // orders debited and not granted (checkExhaustion reads only these)
	violations []string               // one-plan-per-exhaustion violations, as they happened
}

type block struct {
	id                string
	original          int64
	remaining         int64
	held              int64 // held by active reservations
	priority          int
	expiresAt         *time.Time
	source            string
	metadata          map[string]string
	createdAt         time.Time
	seq               int64
	expired           bool
	overdraft         bool
	overdraftByPolicy map[string]bool
	entry             int // the global index of its grant entry
}

func (b *block) live() bool { return !b.expired && b.remaining != 0 }

func (b *block) available() int64 { return b.remaining - b.held }

type hold struct {
	blk    *block // nil: an unbacked hold of an allow/notify rule
	amount int64
}

type reservation struct {
	id             string
	status         string
	cust           *customer
	metricKey      string
	rule           *rule
	estimatedUnits int64
	reservedAmount int64
	holds          []hold
	createdAt      time.Time
	expiresAt      time.Time
	actualUnits    *int64
	committed      *int64
	eventID        string
	metadata       map[string]string
}

func (r *reservation) heldNow() int64 {
	var n int64
	for _, h := range r.holds {
		n += h.amount
	}
	return n
}

type metric struct {
	key, name, description string
	createdAt              time.Time
	seq                    int64
	active                 *rule
}

type rule struct {
	id        string
	metricKey string
	costType  string
	unitCost  int64
	flatCost  int64
	tiers     []Tier
	eligible  *Eligibility
	policy    string
	active    bool
	createdAt time.Time
	seq       int64
}

// eligibleFor tells whether a rule may debit the block. The overdraft block is never debited.
func (r *rule) eligibleFor(b *block) bool {
	if b.overdraft {
		return false
	}
	e := r.eligible
	if e == nil {
		return true
	}
	if e.MinPriority != nil && b.priority < *e.MinPriority {
		return false
	}
	if e.MaxPriority != nil && b.priority > *e.MaxPriority {
		return false
	}
	if e.Expiring != nil && *e.Expiring != (b.expiresAt != nil) {
		return false
	}
	return true
}

// ledgerRec is a LedgerEntry plus what the invariant check needs.
type ledgerRec struct {
	LedgerEntry
	policy string
}

type usageRec struct {
	UsageRecord
	batchIndex int // -1 outside a batch
	entry      int // the global index of its debit (or commit) entry
}

// burnSorted returns the customer's live, non-overdraft blocks in burn order.
func (s *state) burnSorted(c *customer) []*block {
	out := make([]*block, 0, len(c.live))
	for _, b := range c.live {
		if b.live() && !b.overdraft {
			out = append(out, b)
		}
	}
	order := s.burnOrder
	sort.SliceStable(out, func(i, j int) bool { return burnLess(order, out[i], out[j]) })
	return out
}

func burnLess(order BurnOrder, a, b *block) bool {
	if a.priority != b.priority {
		if order == BurnOrderPriorityAsc {
			return a.priority < b.priority
		}
		return a.priority > b.priority
	}
	switch {
	case a.expiresAt != nil && b.expiresAt == nil:
		return true
	case a.expiresAt == nil && b.expiresAt != nil:
		return false
	case a.expiresAt != nil && !a.expiresAt.Equal(*b.expiresAt):
		return a.expiresAt.Before(*b.expiresAt)
	}
	if order == BurnOrderPriorityAsc {
		ap, bp := a.source == "promotional", b.source == "promotional"
		if ap != bp {
			return ap
		}
	}
	return a.seq < b.seq
}

// listedBlocks returns the blocks the API shows: live ones in burn order, then the overdraft.
func (s *state) listedBlocks(c *customer) []*block {
	out := s.burnSorted(c)
	if c.overdraft != nil && c.overdraft.remaining != 0 {
		out = append(out, c.overdraft)
	}
	return out
}

// eligibleBalances returns what the rule's eligible blocks can still pay (available, never
// negative) and the eligible effective balance (which also counts an overdraft's debt).
func (s *state) eligibleBalances(c *customer, r *rule) (available, effective int64) {
	for _, b := range c.live {
		if b.live() && r.eligibleFor(b) {
			if a := b.available(); a > 0 {
				available += a
			}
		}
	}
	effective = available
	if c.overdraft != nil {
		effective += c.overdraft.remaining
	}
	for _, rs := range c.reservations {
		for _, h := range rs.holds {
			if h.blk == nil {
				effective -= h.amount
			}
		}
	}
	return available, effective
}

type part struct {
	blk    *block
	amount int64
}

// planTake picks amount mc from the rule's eligible blocks in burn order, without changing
// anything. short is what they could not cover.
func (s *state) planTake(c *customer, r *rule, amount int64) (parts []part, short int64) {
	need := amount
	for _, b := range s.burnSorted(c) {
		if need == 0 {
			break
		}
		if !r.eligibleFor(b) {
			continue
		}
		a := b.available()
		if a <= 0 {
			continue
		}
		take := min(a, need)
		parts = append(parts, part{b, take})
		need -= take
	}
	return parts, need
}

// debit takes cost mc from the customer's eligible blocks, overdrafting under allow/notify.
// It returns a 402 problem, changing nothing, when a block-policy rule cannot be covered.
func (s *state) debit(c *customer, r *rule, cost int64, now time.Time) ([]LedgerPart, *problem) {
	parts, short := s.planTake(c, r, cost)
	if short > 0 && r.policy == policyBlock {
		avail, _ := s.eligibleBalances(c, r)
		return nil, insufficient(cost, avail)
	}
	out := make([]LedgerPart, 0, len(parts)+1)
	for _, p := range parts {
		p.blk.remaining -= p.amount
		out = append(out, LedgerPart{BlockID: p.blk.id, Amount: -p.amount})
	}
	if short > 0 {
		od := s.overdraftBlock(c, now)
		od.remaining -= short
		od.overdraftByPolicy[r.policy] = true
		out = append(out, LedgerPart{BlockID: od.id, Amount: -short})
	}
	c.balance -= cost
	c.version++
	return out, nil
}

func (s *state) overdraftBlock(c *customer, now time.Time) *block {
	if c.overdraft == nil {
		c.overdraft = &block{
			id: newID("blk_"), source: sourceOverdraft, metadata: map[string]string{},
			createdAt: now, seq: s.nextSeq(), overdraft: true, overdraftByPolicy: map[string]bool{},
		}
		c.blocks = append(c.blocks, c.overdraft)
	}
	return c.overdraft
}

// placeHolds holds amount mc on the rule's eligible blocks; under allow/notify the part they
// cannot cover is held unbacked. It returns a 402 problem, changing nothing, under block.
func (s *state) placeHolds(c *customer, r *rule, amount int64) ([]hold, *problem) {
	parts, short := s.planTake(c, r, amount)
	if short > 0 && r.policy == policyBlock {
		avail, _ := s.eligibleBalances(c, r)
		return nil, insufficient(amount, avail)
	}
	holds := make([]hold, 0, len(parts)+1)
	for _, p := range parts {
		p.blk.held += p.amount
		holds = append(holds, hold(p))
	}
	if short > 0 {
		holds = append(holds, hold{nil, short})
	}
	c.reserved += amount
	c.version++
	return holds, nil
}

// freeHolds gives back every hold of the reservation and returns how much was freed.
func freeHolds(rs *reservation) int64 {
	var freed int64
	for i, h := range rs.holds {
		if h.blk != nil {
			h.blk.held -= h.amount
		}
		freed += h.amount
		rs.holds[i].amount = 0
	}
	rs.cust.reserved -= freed
	rs.cust.version++
	rs.holds = nil
	return freed
}

// addBlock grants a block to the customer and records the grant.
func (s *state) addBlock(c *customer, g BlockSpec, now time.Time, idemKey string) *block {
	var exp *time.Time
	if g.ExpiresAt != nil {
		t := g.ExpiresAt.UTC()
		exp = &t
	}
	b := &block{
		id: newID("blk_"), original: g.Credits, remaining: g.Credits, priority: g.Priority,
		expiresAt: exp, source: g.Source, metadata: copyMeta(g.Metadata), createdAt: now, seq: s.nextSeq(),
	}
	c.blocks = append(c.blocks, b)
	c.live = append(c.live, b)
	c.balance += g.Credits
	c.lifetimeEarned += g.Credits
	c.version++
	s.record(c, ledgerRec{LedgerEntry: LedgerEntry{
		Kind: "grant", Amount: g.Credits, BlockID: b.id, IdempotencyKey: idemKey,
		Metadata: copyMeta(g.Metadata), Time: now,
		Parts: []LedgerPart{{BlockID: b.id, Amount: g.Credits}},
	}})
	b.entry = s.lastEntry()
	c.notePlanGrant(b)
	s.refresh(c, now) // a grant may already be expired
	return b
}

// refresh applies what the clock says: block expiry, then reservation TTL expiry; and drops
// expired and spent blocks from the live list, so a request costs O(live blocks), not
// O(blocks ever granted).
func (s *state) refresh(c *customer, now time.Time) {
	defer c.pruneLive()
	for _, b := range c.live {
		if b.expired || b.expiresAt == nil || b.expiresAt.After(now) {
			continue
		}
		b.expired = true
		held := b.held
		if held > 0 {
			for _, rs := range c.reservations {
				for i := range rs.holds {
					if rs.holds[i].blk == b {
						rs.holds[i].amount = 0
					}
				}
			}
			b.held = 0
			c.reserved -= held
		}
		if b.remaining == 0 && held == 0 {
			continue
		}
		c.balance -= b.remaining
		c.version++
		s.record(c, ledgerRec{LedgerEntry: LedgerEntry{
			Kind: "expire", Amount: -b.remaining, Held: -held, BlockID: b.id, Time: *b.expiresAt,
			Parts: []LedgerPart{{BlockID: b.id, Amount: -b.remaining}},
		}})
	}
	kept := c.reservations[:0]
	for _, rs := range c.reservations {
		if rs.status == statusActive && !rs.expiresAt.After(now) {
			rs.status = statusExpired
			freed := freeHolds(rs)
			s.record(c, ledgerRec{LedgerEntry: LedgerEntry{
				Kind: "expire", Held: -freed, ReservationID: rs.id, MetricKey: rs.metricKey, Time: rs.expiresAt,
			}})
		}
		if rs.status == statusActive {
			kept = append(kept, rs)
		}
	}
	clear(c.reservations[len(kept):])
	c.reservations = kept
}

// pruneLive drops the blocks no request can touch any more: expired ones, and spent ones
// with nothing held (a block's remaining never grows back).
func (c *customer) pruneLive() {
	kept := c.live[:0]
	for _, b := range c.live {
		if !b.expired && (b.remaining != 0 || b.held != 0) {
			kept = append(kept, b)
		}
	}
	clear(c.live[len(kept):])
	c.live = kept
}

// record appends a ledger entry for the customer, numbering it.
func (s *state) record(c *customer, e ledgerRec) {
	s.ledgerSeq++
	e.Seq = s.ledgerSeq
	e.CustomerID, e.ExternalCustomerID = c.id, c.externalID
	c.ledger = append(c.ledger, s.ledgerBase+len(s.ledger))
	s.ledger = append(s.ledger, e)
}

func (s *state) nextSeq() int64 {
	s.seq++
	return s.seq
}

func copyMeta(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return maps.Clone(m)
}
