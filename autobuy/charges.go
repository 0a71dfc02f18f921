package autobuy

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// ChargeState is how far the charge of one event has got.
type ChargeState string

// The states of a Charge. A charge is claimed before anything is sent for
// it, pending from just before its charging request is sent, and moved on
// after it; void frees the event for a later attempt under the next key.
const (
	// ChargeClaimed: a gate has the event and has sent nothing that charges
	// it under this attempt's key. A later gate of the same event decides
	// it afresh (its check counts no charge of this event).
	ChargeClaimed ChargeState = "claimed"
	// ChargePending: the request that charges it (a usage record, a hold,
	// under this attempt's key) is being sent, or its outcome is unknown. A
	// later gate of the same event resends it under the same key, and no
	// check that may count its own charge decides it otherwise. With Via
	// "hold" and Ref set: the hold's commit is under way (committing).
	ChargePending ChargeState = "pending"
	// ChargeCharged: the usage was recorded (200, 201 or 202) or the hold
	// committed. Final.
	ChargeCharged ChargeState = "charged"
	// ChargeHeld: a two-phase hold (reservation Ref) is reserved for it; the
	// commit or release is owed.
	ChargeHeld ChargeState = "held"
	// ChargeLeased: let through on lease reservation Ref; it is charged when
	// that lease commits (the lease counts it in the store). Final for the gate.
	ChargeLeased ChargeState = "leased"
	// ChargeVoid: nothing was charged (refused with 402, or the hold was
	// released); a later gate of the event claims it again under the next
	// attempt's key.
	ChargeVoid ChargeState = "void"
)

// Final reports whether the event counts as paid: a replay of it is answered
// from the record, with no check, purchase or charge.
func (s ChargeState) Final() bool { return s == ChargeCharged || s == ChargeLeased }

// Charge is the record of one business event of one customer: what the gate
// decided and how it was charged. Every mode (per-action gate, record-first,
// lease, two-phase middleware) claims it before charging and updates it
// before answering, so a replay of the event in any mode, on any replica,
// with either id form of the customer, is answered from it.
type Charge struct {
	CustomerID string // the QuotaStack customer id (never the external id)
	EventID    string // the caller's event id (WithEventID)
	Metric     string
	Units      int64
	// Via is how the event is charged: "usage" (a usage record under key
	// Ref), "hold" (a reservation, id in Ref) or "lease" (counted on lease
	// reservation Ref).
	Via string
	Ref string
	// Attempt numbers the claims of the event: the n-th attempt charges under
	// keys ending in n (a voided attempt's key is never reused).
	Attempt int
	State   ChargeState
	Reason  Reason // the reason of the allowed decision (entitled, auto_bought)
	// OrderID is the plan order bought for this event, if any.
	OrderID   string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Rev is the revision the charge was read at; ChargeLog.PutCharge compares it.
	Rev int64
}

// Lease is one lease: a reservation holding Held units of Metric for the
// customer, of which Used were let through. Used is counted in the store
// before an action goes through, so any replica (or a restarted process)
// sharing the store can commit exactly what was used.
type Lease struct {
	CustomerID    string
	Metric        string
	ReservationID string
	UnitsPerEvent int64 // units of one action when the lease was sized (informational)
	Held, Used    int64 // units
	// Committing is set, once, before the commit is first sent: from then on
	// the lease serves nothing and its commit is resent with the same Used.
	Committing bool
	ExpiresAt  time.Time // the reservation's expiry, as the server stated it
	CreatedAt  time.Time // by the store's writer's clock; for pruning only
	LastUsed   time.Time
	Rev        int64
}

// ErrChargeConflict is returned by ChargeLog writes whose Rev differs from the
// stored record (it moved since it was read), or that create a record that exists.
var ErrChargeConflict = errors.New("autobuy: charge log: record changed since it was read")

// ChargeLog is the durable record of charged events and of leases, shared by
// every Gatekeeper of a process (the default) or by replicas (the Redis or
// PostgreSQL store). Records are keyed by the QuotaStack customer id. Methods
// must be safe for concurrent use; each write is atomic.
type ChargeLog interface {
	// Claim stores c (Rev 0) unless a charge of the same customer and event
	// exists. It returns the stored charge and whether this call created it;
	// on creation c.Rev is set.
	Claim(ctx context.Context, c *Charge) (stored Charge, created bool, err error)
	// PutCharge updates c if the stored Rev equals c.Rev (ErrChargeConflict
	// otherwise); on success c.Rev is the new revision.
	PutCharge(ctx context.Context, c *Charge) error

	// Lease returns the customer's lease on metric, if one is stored.
	Lease(ctx context.Context, customerID, metric string) (Lease, bool, error)
	// PutLease creates l (Rev 0; ErrChargeConflict if one exists for the
	// customer and metric) or updates it if the stored Rev equals l.Rev.
	PutLease(ctx context.Context, l *Lease) error
	// TakeLease adds units to Used of the customer's lease on metric, if it
	// is not committing and Held covers it, and sets LastUsed to now. ok is
	// false (and nothing changed) otherwise, or if there is no lease. take
	// names the take (unique per take, never empty): a take sent again with
	// the same id within a minute (its answer was lost) is not counted
	// again; it answers ok with the customer's lease as stored, or, if it is
	// gone, a Lease with CustomerID, Metric and Committing set.
	TakeLease(ctx context.Context, customerID, metric string, units int64, now time.Time, take string) (l Lease, ok bool, err error)
	// DeleteLease removes l if the stored Rev equals l.Rev.
	DeleteLease(ctx context.Context, l Lease) error
	// Leases returns up to limit leases of any customers whose LastUsed is
	// before idleSince (every lease for a zero time), least recently used first.
	Leases(ctx context.Context, idleSince time.Time, limit int) ([]Lease, error)
}

// MemoryChargeLog is the in-process ChargeLog. Charges are kept for the
// retention (48 h by default: the server's 24 h key window with a margin),
// leases until deleted. Safe for concurrent use.
type MemoryChargeLog struct {
	mu        sync.Mutex
	retention time.Duration
	charges   map[[2]string]*Charge
	order     []chargeAge // creation order, for pruning
	leases    map[[2]string]*Lease
	takes     map[[3]string]bool // recent takes by customer, metric and id
	takeOrder []takeAge          // their order, for pruning
}

type takeAge struct {
	key [3]string
	at  time.Time
}

// takeMemory is how long a ChargeLog keeps a take's id: a resend of a take
// whose answer was lost comes well within it.
const takeMemory = time.Minute

type chargeAge struct {
	key [2]string
	at  time.Time
}

// NewMemoryChargeLog returns an empty MemoryChargeLog keeping charges for
// retention (0 means 48 h).
func NewMemoryChargeLog(retention time.Duration) *MemoryChargeLog {
	if retention <= 0 {
		retention = 48 * time.Hour
	}
	return &MemoryChargeLog{retention: retention, charges: map[[2]string]*Charge{}, leases: map[[2]string]*Lease{},
		takes: map[[3]string]bool{}}
}

// Claim implements ChargeLog.
func (m *MemoryChargeLog) Claim(_ context.Context, c *Charge) (Charge, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Retention runs on this process's wall clock, never a caller's: a
	// Gatekeeper with a clock set ahead must not prune the others' records.
	now := time.Now()
	m.prune(now)
	k := [2]string{c.CustomerID, c.EventID}
	if old, ok := m.charges[k]; ok {
		return *old, false, nil
	}
	c.Rev = 1
	stored := *c
	m.charges[k] = &stored
	m.order = append(m.order, chargeAge{key: k, at: now})
	return stored, true, nil
}

// PutCharge implements ChargeLog.
func (m *MemoryChargeLog) PutCharge(_ context.Context, c *Charge) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.charges[[2]string{c.CustomerID, c.EventID}]
	if !ok || old.Rev != c.Rev {
		return ErrChargeConflict
	}
	c.Rev++
	*old = *c
	return nil
}

// prune forgets charges created more than the retention before now, oldest
// first: amortised O(1) per claim.
func (m *MemoryChargeLog) prune(now time.Time) {
	n := 0
	for n < len(m.order) && now.Sub(m.order[n].at) > m.retention {
		delete(m.charges, m.order[n].key)
		n++
	}
	if n > 0 {
		m.order = slices.Delete(m.order, 0, n)
	}
}

// Lease implements ChargeLog.
func (m *MemoryChargeLog) Lease(_ context.Context, customerID, metric string) (Lease, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.leases[[2]string{customerID, metric}]
	if !ok {
		return Lease{}, false, nil
	}
	return *l, true, nil
}

// PutLease implements ChargeLog.
func (m *MemoryChargeLog) PutLease(_ context.Context, l *Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{l.CustomerID, l.Metric}
	old, ok := m.leases[k]
	switch {
	case l.Rev == 0 && ok, l.Rev != 0 && (!ok || old.Rev != l.Rev):
		return ErrChargeConflict
	}
	l.Rev++
	stored := *l
	m.leases[k] = &stored
	return nil
}

// TakeLease implements ChargeLog.
func (m *MemoryChargeLog) TakeLease(_ context.Context, customerID, metric string, units int64, now time.Time, take string) (Lease, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	wall := time.Now() // the store's clock, never the caller's now
	for len(m.takeOrder) > 0 && wall.Sub(m.takeOrder[0].at) > takeMemory {
		delete(m.takes, m.takeOrder[0].key)
		m.takeOrder = m.takeOrder[1:]
	}
	if take == "" {
		return Lease{}, false, errors.New("autobuy: memory charge log: a take needs an id")
	}
	tk := [3]string{customerID, metric, take}
	l, ok := m.leases[[2]string{customerID, metric}]
	if m.takes[tk] {
		if !ok {
			return Lease{CustomerID: customerID, Metric: metric, Committing: true}, true, nil
		}
		return *l, true, nil
	}
	if !ok || l.Committing || units <= 0 || l.Used+units > l.Held {
		return Lease{}, false, nil
	}
	l.Used += units
	l.LastUsed = now
	l.Rev++
	m.takes[tk] = true
	m.takeOrder = append(m.takeOrder, takeAge{key: tk, at: wall})
	return *l, true, nil
}

// DeleteLease implements ChargeLog.
func (m *MemoryChargeLog) DeleteLease(_ context.Context, l Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{l.CustomerID, l.Metric}
	old, ok := m.leases[k]
	if !ok || old.Rev != l.Rev {
		return ErrChargeConflict
	}
	delete(m.leases, k)
	return nil
}

// Leases implements ChargeLog.
func (m *MemoryChargeLog) Leases(_ context.Context, idleSince time.Time, limit int) ([]Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Lease
	for _, l := range m.leases {
		if idleSince.IsZero() || l.LastUsed.Before(idleSince) {
			out = append(out, *l)
		}
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.LastUsed.Compare(b.LastUsed) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}
