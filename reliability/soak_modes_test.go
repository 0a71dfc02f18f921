package reliability_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/autobuy"
)

// gateMode is the way a replica gates an action: the soak's replicas gate
// each call in a random one of them, on one shared record of charged events
// (ChargeLog), so a retry or a replay of an event may land on another mode.
type gateMode int

const (
	modeGate        gateMode = iota // the per-action gate: check, then record
	modeRecordFirst                 // WithRecordFirst: record, check only after a 402
	modeLease                       // WithLease: actions counted on a reservation of many
	modeTwoPhase                    // Middleware with TwoPhase: hold, handler, commit or release
	numModes
)

var modeNames = [numModes]string{"gate", "record-first", "lease", "two-phase"}

func (m gateMode) String() string { return modeNames[m] }

// soakLease is the lease mode of the soak's lease gates: the default size
// and TTL (five minutes, over twice the replicas' clock skew), committed
// after a second idle so leases are settled during the run.
var soakLease = autobuy.LeaseConfig{Linger: time.Second}

// soakHoldTTL is the two-phase middleware's hold.
const soakHoldTTL = 2 * time.Minute

// soakSettleTime bounds the middleware's settle retries: long enough for
// the rate limit's windows, short enough that a request in flight when its
// process dies (its settles fail until then) does not stall the run.
const soakSettleTime = 8 * time.Second

// pHandlerFails is the chance that the two-phase middleware's handler fails
// with a 500: the hold is released and the client retries the same event id.
const pHandlerFails = 0.15

// crashLog is a replica's view of the shared ChargeLog: once its process has
// died, every call fails, as a dead process writes nothing (its background
// lease committer included). What it wrote before stays in the shared log.
type crashLog struct {
	autobuy.ChargeLog
	dead  *atomic.Bool
	takes *takeFaults
}

// takeFaults loses the answer of every takeAnswerLostEvery-th take that was
// counted (a store's connection reset after the write): the gate sends it
// again under its id, and must not charge the action twice.
type takeFaults struct {
	n, lost atomic.Int64
}

const takeAnswerLostEvery = 16

var errTakeAnswerLost = errors.New("soak: the answer of a take from a lease was lost")

func (l crashLog) Claim(ctx context.Context, c *autobuy.Charge) (autobuy.Charge, bool, error) {
	if l.dead.Load() {
		return autobuy.Charge{}, false, errProcessDied
	}
	return l.ChargeLog.Claim(ctx, c)
}

func (l crashLog) PutCharge(ctx context.Context, c *autobuy.Charge) error {
	if l.dead.Load() {
		return errProcessDied
	}
	return l.ChargeLog.PutCharge(ctx, c)
}

func (l crashLog) Lease(ctx context.Context, customerID, metric string) (autobuy.Lease, bool, error) {
	if l.dead.Load() {
		return autobuy.Lease{}, false, errProcessDied
	}
	return l.ChargeLog.Lease(ctx, customerID, metric)
}

func (l crashLog) PutLease(ctx context.Context, ls *autobuy.Lease) error {
	if l.dead.Load() {
		return errProcessDied
	}
	return l.ChargeLog.PutLease(ctx, ls)
}

func (l crashLog) TakeLease(ctx context.Context, customerID, metric string, units int64, now time.Time, take string) (autobuy.Lease, bool, error) {
	if l.dead.Load() {
		return autobuy.Lease{}, false, errProcessDied
	}
	ls, ok, err := l.ChargeLog.TakeLease(ctx, customerID, metric, units, now, take)
	if err == nil && ok && l.takes.n.Add(1)%takeAnswerLostEvery == 0 {
		l.takes.lost.Add(1)
		return autobuy.Lease{}, false, errTakeAnswerLost
	}
	return ls, ok, err
}

func (l crashLog) DeleteLease(ctx context.Context, ls autobuy.Lease) error {
	if l.dead.Load() {
		return errProcessDied
	}
	return l.ChargeLog.DeleteLease(ctx, ls)
}

func (l crashLog) Leases(ctx context.Context, idleSince time.Time, limit int) ([]autobuy.Lease, error) {
	if l.dead.Load() {
		return nil, errProcessDied
	}
	return l.ChargeLog.Leases(ctx, idleSince, limit)
}

// mwCall is one request through a replica's two-phase middleware: what the
// client sends (customer, event, whether the handler is to fail) and what
// the middleware did with it.
type mwCall struct {
	customer quotastack.Customer
	event    string
	fail     bool // the handler answers 500 (the hold is released)

	ran       bool // the handler ran, with decision d
	d         autobuy.Decision
	refusal   *autobuy.Refusal
	settled   bool
	committed bool
	settleErr error
}

type mwCallKey struct{}

func callOf(r *http.Request) *mwCall { return r.Context().Value(mwCallKey{}).(*mwCall) }

// newTwoPhase is the replica's gated HTTP endpoint: the two-phase
// middleware over g in front of a handler that does the work (or fails).
func newTwoPhase(g *autobuy.Gatekeeper) http.Handler {
	action := func(r *http.Request) (autobuy.Action, error) {
		c := callOf(r)
		return autobuy.Action{Customer: c.customer, Metric: chatMetric, EventID: c.event}, nil
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := callOf(r)
		c.d, _ = autobuy.DecisionFrom(r.Context())
		c.ran = true
		if c.fail {
			http.Error(w, "the work failed", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("done"))
	})
	return autobuy.Middleware(g, action, autobuy.TwoPhase(soakHoldTTL), autobuy.SettleTimeout(soakSettleTime),
		autobuy.OnRefusal(func(w http.ResponseWriter, r *http.Request, ref autobuy.Refusal) {
			callOf(r).refusal = &ref
			w.WriteHeader(ref.Status)
		}),
		autobuy.OnSettle(func(r *http.Request, _ autobuy.Decision, committed bool, err error) {
			c := callOf(r)
			c.settled, c.committed, c.settleErr = true, committed, err
		}))(handler)
}

// serve sends one request through h and returns what happened.
func (c *mwCall) serve(h http.Handler) {
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), mwCallKey{}, c), time.Minute)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/chat", strings.NewReader("hello"))
	h.ServeHTTP(httptest.NewRecorder(), req)
}

// modeFigures are the soak's figures of one gate mode: of the actions it
// answered first (a retry or replay may land on another mode).
type modeFigures struct {
	Actions, Allowed int
	Leased           int // allowed on a lease (any mode's gate may take from one)
	Replays          int // answers from the record of charged events (Decision.Replayed)
	ReplaysAsked     int // replays of allowed events the soak sent on purpose
	// DoubleCharges counts actions charged more than once (or charged and
	// denied); NeverCharged allowed actions with no charge. Both must be 0.
	DoubleCharges, NeverCharged int
	BlockedPayers               int // customers left debited without a plan by a purchase of this mode
	HandlerFailures             int // two-phase: handler 500s, hold released, same event retried
	SettleErrors                int // two-phase: commits or releases that failed (OnSettle)
}

func (f *soakFigures) modesReport(b *strings.Builder) {
	if !f.Modes {
		return
	}
	fmt.Fprintf(b, "\n  per mode (the gate that answered an action first): actions, allowed (on a lease), replays answered from the record (asked on purpose), "+
		"double charges, allowed never charged, blocked payers")
	for m := range numModes {
		mf := f.ByMode[m]
		fmt.Fprintf(b, "\n    %-12s %6d actions, allowed %6d (%5d on a lease), replays %4d (%d asked), %d double charges, %d allowed never charged, %d blocked payers",
			m, mf.Actions, mf.Allowed, mf.Leased, mf.Replays, mf.ReplaysAsked, mf.DoubleCharges, mf.NeverCharged, mf.BlockedPayers)
		if m == modeTwoPhase {
			fmt.Fprintf(b, "; handler failures retried %d, settle errors %d", mf.HandlerFailures, mf.SettleErrors)
		}
	}
	fmt.Fprintf(b, "\n  leases: %d actions served on leases, %d units committed for them (%d double, %d never charged); %d leases reserved, %d commits, %d expired leases charged by a usage record; %d lease reservations still holding credits at the end; %d take answers lost after the take was counted",
		f.LeaseActions, f.LeaseUnits, f.LeaseDouble, f.LeaseNeverCharged, f.LeasesReserved, f.LeaseCommits, f.LeaseSettles, f.LeaseOrphans, f.TakeAnswersLost)
	fmt.Fprintf(b, "\n  allowed but never charged, accepted as the exception (AllowUncharged, not counted as charged): %d units, of %d events answered as let through after the process that claimed them for a lease died",
		f.UnchargedAllowed, f.LetThrough)
}

// letThrough collects, by QuotaStack customer id, the events the replicas'
// Gatekeepers answered as let through (Hooks.LetThrough): claimed for a
// lease by a process that died between its claim and its mark, so whether
// it counted the action on the lease before dying is unknown. Counted, it is
// charged with the lease; not counted, it was free: the one allowed-but-never-
// charged case the soak accepts (AllowUncharged), at most once per such
// event, reported apart from the charged ones. An activation whose outcome
// stayed unknown lets its gates through the same way (their units count).
type letThrough struct {
	mu     sync.Mutex
	events map[string]map[string]bool // customer id: event ids
	units  map[string]int             // customer id: units of activations of unknown outcome
}

func (l *letThrough) hook(_ context.Context, c autobuy.CustomerRef, _ string, units int64, event string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.events == nil {
		l.events, l.units = map[string]map[string]bool{}, map[string]int{}
	}
	if event == "" {
		l.units[c.ID] += int(units) // an activation's gates: one unit each here
		return
	}
	if l.events[c.ID] == nil {
		l.events[c.ID] = map[string]bool{}
	}
	l.events[c.ID][event] = true
}

// count returns how many actions of the customer were let through: its
// events answered so, and its gates counted in activations of unknown outcome.
func (l *letThrough) count(customerID string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events[customerID]) + l.units[customerID]
}
