package quotastacktest

import (
	"errors"
	"fmt"
	"github.com/quotastack/quotastack-go"
	"slices"
	"time"
)

// RequestRecord is one request as the server saw it. Fault is "" (none), "status" (an
// injected status answered instead of executing), "drop" (executed, connection dropped;
// Status is the executed status), "execute-then-status" (executed, then answered Status in
// place of its own answer) or "ratelimit" (429 of the rate limiter).
type RequestRecord struct {
	Method, Path, IdempotencyKey string
	Status                       int
	Replayed                     bool
	Fault                        string
	Time                         time.Time
}

// Requests returns a copy of the request log, in arrival order of the answers: the last
// WithRequestLogLimit requests (see RequestsForgotten).
func (s *Server) Requests() []RequestRecord {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	out := make([]RequestRecord, 0, len(s.log))
	out = append(out, s.log[s.logStart:]...)
	return append(out, s.log[:s.logStart]...)
}

// RequestsForgotten returns how many requests the log has forgotten, the oldest first, to
// stay within WithRequestLogLimit since the last ResetRequests.
func (s *Server) RequestsForgotten() int64 {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.logDropped
}

// ResetRequests empties the request log.
func (s *Server) ResetRequests() {
	s.logMu.Lock()
	s.log, s.logStart, s.logDropped = nil, 0, 0
	s.logMu.Unlock()
}

// LedgerPart is the share of one ledger entry taken from (negative) or given to (positive)
// one block, in mc.
type LedgerPart struct {
	BlockID string
	Amount  int64
}

// LedgerEntry is one change to a customer's account. Kind is "grant", "debit", "reserve",
// "commit", "release" or "expire". Amount is the signed change of balance in mc (+ grant,
// − debit, commit or block expiry); Held is the signed change of reserved_balance in mc.
// A debit or commit is exactly one entry, however many blocks it spans (see Parts).
type LedgerEntry struct {
	Seq                            int64
	Kind                           string
	CustomerID, ExternalCustomerID string
	Amount                         int64
	Held                           int64
	BlockID                        string // the (first) block involved
	EventID                        string
	ReservationID                  string
	MetricKey                      string
	IdempotencyKey                 string
	Metadata                       map[string]string
	Time                           time.Time
	Parts                          []LedgerPart
}

func (e LedgerEntry) clone() LedgerEntry {
	e.Metadata = copyMeta(e.Metadata)
	e.Parts = slices.Clone(e.Parts)
	return e
}

// Ledger returns a copy of the customer's ledger entries in order (nil for an unknown
// customer), after applying expiry at the server clock's now.
func (s *Server) Ledger(externalID string) []LedgerEntry {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	c := s.st.byExternal[externalID]
	if c == nil {
		return nil
	}
	s.st.refresh(c, s.Now())
	out := make([]LedgerEntry, 0, len(c.ledger))
	for _, i := range c.ledger {
		out = append(out, s.st.entry(i).clone())
	}
	return out
}

// AllLedger returns a copy of every customer's ledger entries in order.
func (s *Server) AllLedger() []LedgerEntry {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	s.refreshAll()
	out := make([]LedgerEntry, 0, len(s.st.ledger))
	for _, e := range s.st.ledger {
		out = append(out, e.clone())
	}
	return out
}

func (s *Server) refreshAll() {
	now := s.Now()
	for _, c := range s.st.custOrder {
		s.st.refresh(c, now)
	}
}

// Block is the SDK's credit block (amounts in mc), as the fake's ledger holds it.
type Block = quotastack.Block

// Blocks returns the customer's live blocks (unexpired, remaining != 0) in the current burn
// order, an overdraft block last.
func (s *Server) Blocks(externalID string) []Block {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	c := s.st.byExternal[externalID]
	if c == nil {
		return nil
	}
	s.st.refresh(c, s.Now())
	var out []Block
	for _, b := range s.st.listedBlocks(c) {
		var exp *time.Time
		if b.expiresAt != nil {
			t := *b.expiresAt
			exp = &t
		}
		var meta quotastack.Metadata
		if len(b.metadata) > 0 {
			meta = make(quotastack.Metadata, len(b.metadata))
			for k, v := range b.metadata {
				meta[k] = v
			}
		}
		out = append(out, Block{ID: b.id, OriginalAmount: b.original, RemainingAmount: b.remaining, Priority: b.priority,
			ExpiresAt: exp, Source: b.source, Metadata: meta, CreatedAt: b.createdAt})
	}
	return out
}

// Account is a customer's credit account; amounts in mc.
type Account struct {
	CustomerID, ExternalCustomerID                                      string
	Balance, ReservedBalance, EffectiveBalance, LifetimeEarned, Version int64
}

// Account returns the customer's account at the server clock's now, and false for an
// unknown customer.
func (s *Server) Account(externalID string) (Account, bool) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	c := s.st.byExternal[externalID]
	if c == nil {
		return Account{}, false
	}
	s.st.refresh(c, s.Now())
	return Account{c.id, c.externalID, c.balance, c.reserved, c.balance - c.reserved, c.lifetimeEarned, c.version}, true
}

// UsageRecord is one executed usage event (a POST /v1/usage, one event of a batch, or a
// reservation commit); Cost in mc.
type UsageRecord struct {
	EventID, CustomerID, ExternalCustomerID, MetricKey, IdempotencyKey string
	ReservationID                                                      string // set for a commit
	Units, Cost                                                        int64
	Metadata                                                           map[string]string
	Time                                                               time.Time
}

// UsageEvents returns a copy of the customer's executed usage events in order: each debit
// appears exactly once, however often its request was retried.
func (s *Server) UsageEvents(externalID string) []UsageRecord {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	c := s.st.byExternal[externalID]
	if c == nil {
		return nil
	}
	out := make([]UsageRecord, 0, len(c.usage))
	for _, i := range c.usage {
		u := s.st.usageAt(i).UsageRecord
		u.Metadata = copyMeta(u.Metadata)
		out = append(out, u)
	}
	return out
}

// CheckInvariants verifies the ledger at the server clock's now and returns every violation
// found (nil if none).
//
// The ledger: balance = sum of live blocks = sum of ledger amounts; reserved_balance = active
// holds = sum of ledger holds; lifetime_earned = sum of grants; no negative block but the
// overdraft of allow/notify debits; every usage event has exactly one debit entry of its
// cost; no idempotency key executed a usage event twice within its 24 h.
//
// Money (plan orders are matched per customer on metadata plan_type + order_id; a debit is
// an executed usage event carrying both, a grant is a block carrying both and
// source=plan_grant; see PlanOrders): no order is debited twice or granted twice (whatever
// the idempotency keys); no order is granted without a debit; no auto-buy debit (metadata
// trigger=auto_buy) executed while the customer had, for the same plan type, another order
// debited but not granted or an auto-bought block still untouched (one exhaustion, two
// plans); and, once the system is quiet, no order is debited without a grant.
//
// Actions (once quiet, for the customers and metrics the test reported with NoteAllowed):
// the units executed on the metric (usage events, batch events, reservation commits) equal
// the units allowed: fewer is an allowed action never charged, more an action charged
// twice; and no event id (usage metadata "event_id") is executed twice.
//
// By default the system is taken to be quiet: call it after the test's work is done. It
// first executes pending asynchronous usage events (AsyncUsage), as a real server
// eventually would. Pass InFlight() to check while requests may still be running (a
// purchase between its debit and its grant is then fine), and AllowHalfDone(orderIDs...)
// for purchases a test leaves half done on purpose.
func (s *Server) CheckInvariants(opts ...CheckOption) error {
	cfg := checkConfig{quiet: true, halfDone: map[string]bool{}, regranted: map[string]bool{}, uncharged: map[[2]string]int64{}}
	for _, o := range opts {
		o(&cfg)
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if cfg.quiet {
		s.st.drain(s.Now(), true)
	}
	s.refreshAll()
	pending := s.st.pendingOrders()
	var errs []error
	fail := func(c *customer, format string, args ...any) {
		errs = append(errs, fmt.Errorf("customer %q: %s", c.externalID, fmt.Sprintf(format, args...)))
	}
	for _, c := range s.st.custOrder {
		s.checkCustomer(c, fail)
		c.checkPlans(cfg, pending[c], fail)
	}
	if cfg.quiet {
		s.checkActions(cfg, fail)
	}
	return errors.Join(errs...)
}

func (s *Server) checkCustomer(c *customer, fail func(*customer, string, ...any)) {
	var blocks, held int64
	ledgerAmount, ledgerHeld, grants := c.past.amount, c.past.held, c.past.grants
	for _, b := range c.blocks {
		if b.expired {
			continue
		}
		blocks += b.remaining
		held += b.held
		switch {
		case b.overdraft && b.remaining > 0:
			fail(c, "overdraft block %s is positive (%d)", b.id, b.remaining)
		case !b.overdraft && (b.remaining < 0 || b.remaining > b.original):
			fail(c, "block %s has remaining %d of %d", b.id, b.remaining, b.original)
		case b.held < 0 || (!b.overdraft && b.held > b.remaining):
			fail(c, "block %s holds %d of remaining %d", b.id, b.held, b.remaining)
		}
	}
	var activeHolds int64
	for _, rs := range c.reservations {
		if rs.status != statusActive {
			fail(c, "reservation %s is %s but listed as active", rs.id, rs.status)
		}
		activeHolds += rs.heldNow()
		for _, h := range rs.holds {
			if h.blk == nil {
				held += h.amount
			}
		}
	}
	debits := map[string]int{}
	for _, i := range c.ledger {
		e := s.st.entry(i)
		ledgerAmount += e.Amount
		ledgerHeld += e.Held
		for _, msg := range entryProblems(c, e) {
			fail(c, "%s", msg)
		}
		if e.Kind == "grant" {
			grants += e.Amount
		}
		if e.Kind == "debit" || e.Kind == "commit" {
			debits[e.EventID]++
		}
	}
	if c.balance != blocks || c.balance != ledgerAmount {
		fail(c, "balance %d, live blocks sum to %d, ledger amounts to %d", c.balance, blocks, ledgerAmount)
	}
	if c.reserved != activeHolds || c.reserved != held || c.reserved != ledgerHeld {
		fail(c, "reserved_balance %d, active holds %d, block holds %d, ledger holds %d", c.reserved, activeHolds, held, ledgerHeld)
	}
	if c.lifetimeEarned != grants {
		fail(c, "lifetime_earned %d, grants sum to %d", c.lifetimeEarned, grants)
	}
	s.checkUsage(c, debits, fail)
}

func (s *Server) checkUsage(c *customer, debits map[string]int, fail func(*customer, string, ...any)) {
	type execKey struct {
		key   string
		index int
	}
	seen := map[execKey]UsageRecord{}
	for _, i := range c.usage {
		u := s.st.usageAt(i)
		if n := debits[u.EventID]; n != 1 {
			fail(c, "usage event %s has %d debit entries", u.EventID, n)
		}
		delete(debits, u.EventID)
		if u.IdempotencyKey == "" {
			continue
		}
		k := execKey{u.IdempotencyKey, u.batchIndex}
		if prev, ok := seen[k]; ok && u.Time.Before(prev.Time.Add(idemRetention)) {
			fail(c, "idempotency key %q executed twice within 24h (events %s and %s)", u.IdempotencyKey, prev.EventID, u.EventID)
		}
		seen[k] = u.UsageRecord
	}
	for evt := range debits {
		fail(c, "debit entry for event %s has no usage event", evt)
	}
}
