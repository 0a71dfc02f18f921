package autobuy

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/quotastack/quotastack-go/plan"
)

// IntentState is the step a purchase intent has reached.
type IntentState string

// The states of a purchase intent. pending → debited → done is the way of a
// purchase; failed and review end it otherwise. The transitions are all in
// plan.Machine.
const (
	// IntentPending: written before the debit is first sent; whether the
	// debit landed is not known yet.
	IntentPending = IntentState(plan.StatePending)
	// IntentDebited: the debit is confirmed; the grant (with ExpiresAt) is owed.
	IntentDebited = IntentState(plan.StateDebited)
	// IntentDone: the plan was granted (closed).
	IntentDone = IntentState(plan.StateDone)
	// IntentFailed: nothing was debited (a short wallet, a refused request);
	// closed, and a new purchase may start.
	IntentFailed = IntentState(plan.StateFailed)
	// IntentReview: the gate can't finish it safely (a debit whose outcome
	// is still unknown after the server's 24 h idempotency window).
	// Hooks.PurchaseNeedsReview was called; until a person decides from the
	// ledger (Gatekeeper.ResolveReview) no auto-buy runs for the customer,
	// since a second debit could charge twice for one plan.
	IntentReview = IntentState(plan.StateReview)
)

// Open reports whether the intent must be dealt with before anything else is
// bought for the customer: pending and debited ones are finished by the next
// gate; one in review waits for a person (Gatekeeper.ResolveReview).
func (s IntentState) Open() bool {
	return s == IntentPending || s == IntentDebited || s == IntentReview
}

// Intent is one purchase the gate decided to make, recorded before its first
// request and advanced after each step, so that any gate of any replica can
// finish it from the record alone. Amounts are in millicredits; times come
// from the Gatekeeper's clock except DebitCreatedAt (the server's).
type Intent struct {
	OrderID    string // fresh per intent; both idempotency keys derive from it
	CustomerID string // the QuotaStack customer id
	Metric     string // the gated metric whose exhaustion started the purchase
	// Plan, Activation, Trigger and Metadata are the purchase as decided:
	// the intent is finished with them even if the configuration changed.
	Plan       plan.Plan
	Activation plan.Activation
	Trigger    plan.Trigger
	Metadata   map[string]string
	State      IntentState
	// ExternalCustomerID is the customer's external id when the gate knew it
	// (the caller passed it), so hooks can name the user without a request.
	ExternalCustomerID string
	// WalletBeforeMC and WalletBlockIDs are the wallet read under the lock
	// before the first debit: what its blocks held, and their ids. A debit
	// answered 202 is confirmed against these blocks only.
	WalletBeforeMC int64
	WalletBlockIDs []string
	CreatedAt      time.Time // before the first debit: the key window starts no earlier
	UpdatedAt      time.Time
	DebitCreatedAt time.Time // the debit's created_at, when the server sent one
	ExpiresAt      time.Time // the plan's expiry, fixed once the debit is confirmed
	GrantSentAt    time.Time // set before the grant is first sent
	BlockID        string    // the granted block, once done
	Note           string    // what went wrong, for failed and review
	// Rev is the revision the intent was read at; Journal.Put compares it.
	Rev int64
}

// record returns the purchase machine's record of the intent.
func (in *Intent) record() plan.Record {
	return plan.Record{Order: in.order(), State: plan.State(in.State),
		Wallet:    plan.WalletSnapshot{BlockIDs: in.WalletBlockIDs, RemainingMC: in.WalletBeforeMC},
		CreatedAt: in.CreatedAt, DebitCreatedAt: in.DebitCreatedAt, ExpiresAt: in.ExpiresAt, GrantSentAt: in.GrantSentAt,
		BlockID: in.BlockID, Note: in.Note}
}

// apply copies what the machine advanced in r to the intent.
func (in *Intent) apply(r *plan.Record) {
	in.State, in.DebitCreatedAt, in.ExpiresAt, in.GrantSentAt = IntentState(r.State), r.DebitCreatedAt, r.ExpiresAt, r.GrantSentAt
	in.BlockID, in.Note = r.BlockID, r.Note
}

// order returns the plan order the intent stands for.
func (in *Intent) order() plan.Order {
	return plan.Order{ID: in.OrderID, Plan: in.Plan, Customer: customerOf(in.CustomerID), Trigger: in.Trigger,
		Activation: in.Activation, Metadata: in.Metadata}
}

// Suspension stops auto-buy for one customer and metric, after a plan was
// bought and still didn't entitle the action. Until zero means until lifted.
type Suspension struct {
	CustomerID, Metric string
	Since, Until       time.Time
	Reason             string
}

// Active reports whether the suspension applies at now.
func (s Suspension) Active(now time.Time) bool { return s.Until.IsZero() || now.Before(s.Until) }

// ErrJournalConflict is returned by Journal.Put when the stored intent moved
// since it was read (its Rev differs), when a new intent's order id exists,
// or when a new intent's customer already has an open one.
var ErrJournalConflict = errors.New("autobuy: journal: intent changed since it was read")

// Journal is the durable record of purchase intents and auto-buy
// suspensions. The in-process default (NewMemoryJournal) covers one process;
// replicas share one journal (the Redis one in autobuy/redislock, or your
// own) and one Locker, so any replica can finish any purchase.
//
// To write one on SQL: a table of intents keyed by order_id, indexed by
// (customer_id, created_at) and by state, holding the Intent fields (the plan
// snapshot as columns or JSON); Put is an INSERT for Rev 0 (refused while the
// customer has an open intent: a partial unique index on customer_id where
// the state is open does it) and otherwise "UPDATE … SET …, rev = rev+1
// WHERE order_id = ? AND rev = ?" (zero rows: ErrJournalConflict); a row per
// customer whose counter the same transaction bumps on every successful Put
// (Rev; never pruned); a table of suspensions keyed by (customer_id, metric).
// Methods must be safe for concurrent use; errors refuse the purchase (never
// the entitled customers).
type Journal interface {
	// Put stores in. A new intent has Rev 0; an update carries the Rev it was
	// read at. On success in.Rev is the new revision; ErrJournalConflict if
	// the stored revision differs, or if in is new and the customer already
	// has an open intent (so a gate whose lock lapsed can't start a second
	// purchase beside another gate's). Both checks and the write are atomic.
	Put(ctx context.Context, in *Intent) error
	// Open returns the customer's open intents (pending, debited, review),
	// oldest first.
	Open(ctx context.Context, customerID string) ([]Intent, error)
	// Since returns the customer's intents created or updated at or after t,
	// in any state, oldest first. A journal may forget closed intents older
	// than its retention (keep it longer than any purchase-limit period). The
	// gate calls it only for a purchase limit, with t the start of the limit
	// window: its cost should depend on the intents in the window only.
	Since(ctx context.Context, customerID string, t time.Time) ([]Intent, error)
	// Pending returns up to limit open intents of any customers, oldest
	// first, for Gatekeeper.Resume.
	Pending(ctx context.Context, limit int) ([]Intent, error)
	// Suspension returns the customer's suspension for metric, if one is stored.
	Suspension(ctx context.Context, customerID, metric string) (Suspension, bool, error)
	// Suspend stores s unless an active one exists; created reports whether
	// this call stored it (so its hook fires once).
	Suspend(ctx context.Context, s Suspension, now time.Time) (created bool, err error)
	// Lift removes the customer's suspension for metric.
	Lift(ctx context.Context, customerID, metric string) error
	// Rev returns the customer's journal revision: 0 for a customer never
	// written, then strictly increased by every successful Put of one of the
	// customer's intents (a refused Put leaves it), never decreased, and kept
	// when intents are forgotten after the retention. The gate orders "was
	// anything bought since my check?" by it, never by clocks.
	Rev(ctx context.Context, customerID string) (int64, error)
}

// MemoryJournal is the in-process Journal: exactly-once purchases within one
// process. Closed intents are forgotten after the retention (48 h by
// default), so memory stays bounded by recent purchases. Safe for
// concurrent use.
type MemoryJournal struct {
	mu        sync.Mutex
	retention time.Duration
	byCust    map[string][]*Intent // by touched time (the later of CreatedAt and UpdatedAt)
	revs      map[string]int64     // Rev per customer, never pruned
	open      map[string]int       // open intents per customer
	stored    map[[2]string]bool   // customer and order id of every intent kept
	suspended map[[2]string]Suspension
	lastPrune time.Time
	// shared: the process-wide default, written by Gatekeepers on different
	// clocks (WithClock); it prunes at no later than the wall clock, so a
	// clock set ahead can't forget another Gatekeeper's intents early.
	shared bool
}

// NewMemoryJournal returns an empty MemoryJournal keeping closed intents for
// retention (0 means 48 h).
func NewMemoryJournal(retention time.Duration) *MemoryJournal {
	if retention <= 0 {
		retention = 48 * time.Hour
	}
	return &MemoryJournal{retention: retention, byCust: map[string][]*Intent{}, open: map[string]int{},
		stored: map[[2]string]bool{}, suspended: map[[2]string]Suspension{}, revs: map[string]int64{}}
}

// keepAtLeast raises the retention to d (the process-wide default journal
// serves Gatekeepers with different purchase-limit periods).
func (j *MemoryJournal) keepAtLeast(d time.Duration) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.retention = max(j.retention, d)
}

// Rev implements Journal.
func (j *MemoryJournal) Rev(_ context.Context, customerID string) (int64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.revs[customerID], nil
}

func touched(in *Intent) time.Time {
	if in.UpdatedAt.After(in.CreatedAt) {
		return in.UpdatedAt
	}
	return in.CreatedAt
}

// insertTouched inserts c into list keeping it ordered by touched time,
// searching from the newest end (where a write almost always goes).
func insertTouched(list []*Intent, c *Intent) []*Intent {
	t := touched(c)
	i := len(list)
	for i > 0 && touched(list[i-1]).After(t) {
		i--
	}
	return slices.Insert(list, i, c)
}

func cloneIntent(in *Intent) Intent {
	out := *in
	out.Metadata = maps.Clone(in.Metadata)
	out.Plan.Metadata = maps.Clone(in.Plan.Metadata)
	out.WalletBlockIDs = slices.Clone(in.WalletBlockIDs)
	return out
}

// Put implements Journal.
func (j *MemoryJournal) Put(_ context.Context, in *Intent) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	list := j.byCust[in.CustomerID]
	i := -1
	if j.stored[[2]string{in.CustomerID, in.OrderID}] { // a create needs no scan
		i = lastIndex(list, in.OrderID)
	}
	switch {
	case i < 0 && in.Rev != 0, i >= 0 && list[i].Rev != in.Rev:
		return ErrJournalConflict
	case i < 0 && j.open[in.CustomerID] > 0:
		return ErrJournalConflict // one open intent per customer
	}
	in.Rev++
	c := cloneIntent(in)
	wasOpen := i >= 0 && list[i].State.Open()
	if i >= 0 {
		list = slices.Delete(list, i, i+1)
	} else {
		j.stored[[2]string{in.CustomerID, in.OrderID}] = true
	}
	j.byCust[in.CustomerID] = insertTouched(list, &c)
	j.revs[in.CustomerID]++
	switch {
	case c.State.Open() && !wasOpen:
		j.open[in.CustomerID]++
	case !c.State.Open() && wasOpen:
		if j.open[in.CustomerID]--; j.open[in.CustomerID] == 0 {
			delete(j.open, in.CustomerID)
		}
	}
	now := in.UpdatedAt
	if wall := time.Now(); j.shared && now.After(wall) {
		now = wall
	}
	j.prune(now)
	return nil
}

// lastIndex finds an order in a customer's list from its newest end, where
// the intent being advanced almost always is.
func lastIndex(list []*Intent, orderID string) int {
	for i := len(list) - 1; i >= 0; i-- {
		if list[i].OrderID == orderID {
			return i
		}
	}
	return -1
}

// prune drops closed intents past the retention, at most once a minute of
// journal time: the cost is amortised over the purchases in between.
func (j *MemoryJournal) prune(now time.Time) {
	if d := now.Sub(j.lastPrune); d < time.Minute && d > -time.Minute {
		return
	}
	j.lastPrune = now
	for cust, list := range j.byCust {
		kept := list[:0]
		for _, in := range list {
			if in.State.Open() || now.Sub(in.UpdatedAt) < j.retention {
				kept = append(kept, in)
			} else {
				delete(j.stored, [2]string{cust, in.OrderID})
			}
		}
		if len(kept) == 0 {
			delete(j.byCust, cust)
			continue
		}
		clear(list[len(kept):])
		j.byCust[cust] = kept
	}
	for k, s := range j.suspended {
		if !s.Active(now) {
			delete(j.suspended, k)
		}
	}
}

func (j *MemoryJournal) collect(customerID string, keep func(*Intent) bool) []Intent {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []Intent
	for _, in := range j.byCust[customerID] {
		if keep(in) {
			out = append(out, cloneIntent(in))
		}
	}
	// Oldest first by CreatedAt, whatever order the intents were stored in.
	slices.SortStableFunc(out, func(a, b Intent) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out
}

// Open implements Journal.
func (j *MemoryJournal) Open(_ context.Context, customerID string) ([]Intent, error) {
	j.mu.Lock()
	none := j.open[customerID] == 0
	j.mu.Unlock()
	if none {
		return nil, nil // the common case, without a scan
	}
	return j.collect(customerID, func(in *Intent) bool { return in.State.Open() }), nil
}

// Since implements Journal: a binary search on the intents ordered by
// touched time, so it costs what the window holds, not the customer's history.
func (j *MemoryJournal) Since(_ context.Context, customerID string, t time.Time) ([]Intent, error) {
	j.mu.Lock()
	list := j.byCust[customerID]
	i, _ := slices.BinarySearchFunc(list, t, func(in *Intent, t time.Time) int {
		if touched(in).Before(t) {
			return -1
		}
		return 1
	})
	out := make([]Intent, 0, len(list)-i)
	for _, in := range list[i:] {
		out = append(out, cloneIntent(in))
	}
	j.mu.Unlock()
	slices.SortStableFunc(out, func(a, b Intent) int { return a.CreatedAt.Compare(b.CreatedAt) })
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// Pending implements Journal.
func (j *MemoryJournal) Pending(_ context.Context, limit int) ([]Intent, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []Intent
	for _, list := range j.byCust {
		for _, in := range list {
			if in.State.Open() {
				out = append(out, cloneIntent(in))
			}
		}
	}
	slices.SortFunc(out, func(a, b Intent) int { return a.CreatedAt.Compare(b.CreatedAt) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// Suspension implements Journal.
func (j *MemoryJournal) Suspension(_ context.Context, customerID, metric string) (Suspension, bool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	s, ok := j.suspended[[2]string{customerID, metric}]
	return s, ok, nil
}

// Suspend implements Journal.
func (j *MemoryJournal) Suspend(_ context.Context, s Suspension, now time.Time) (bool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	k := [2]string{s.CustomerID, s.Metric}
	if old, ok := j.suspended[k]; ok && old.Active(now) {
		return false, nil
	}
	j.suspended[k] = s
	return true, nil
}

// Lift implements Journal.
func (j *MemoryJournal) Lift(_ context.Context, customerID, metric string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.suspended, [2]string{customerID, metric})
	return nil
}
