package autobuy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// Hooks are called after the gate's notable outcomes; each may be nil. They
// run on the gating goroutine and should return quickly. Every hook that
// names a customer gets both id forms (CustomerRef).
type Hooks struct {
	// AutoBought is called once per plan bought, by the gate that completed
	// its intent (whatever number of gates or replicas raced).
	AutoBought func(ctx context.Context, customer CustomerRef, p *plan.Purchase)
	// Paywall is called for a denial the customer can lift by paying or
	// choosing a plan: the reasons whose HTTPStatus is 402 (empty_wallet,
	// purchase_limit, no_account, plan_expired, auto_buy_suspended,
	// action_too_large).
	Paywall func(ctx context.Context, customer CustomerRef, d Decision)
	// PurchaseFailed is called when a purchase step's outcome is unknown; the
	// intent stays open and the next gate of the customer resumes it.
	PurchaseFailed func(ctx context.Context, customer CustomerRef, err error)
	// PurchaseNeedsReview is called once when a purchase needs a person: an
	// intent the gate can't finish safely (IntentReview: look at order
	// in.OrderID in the ledger, then grant or refund), or a plan granted
	// again past the key window (the intent is done; the ledger may show the
	// order granted twice).
	PurchaseNeedsReview func(ctx context.Context, in Intent, why string)
	// Suspended is called once when auto-buy is suspended for a customer and
	// metric after entitlement_failed_after_purchase.
	Suspended func(ctx context.Context, customer CustomerRef, s Suspension)
	// Decided is called once per Gate call with its outcome (the decision, or
	// the error returned), for tracing and metrics; metric is the gated metric.
	Decided func(ctx context.Context, customer CustomerRef, metric string, d Decision, err error)
	// LetThrough is called when lease mode lets units of metric through
	// without knowing whether they were counted on a lease: an event claimed
	// for a lease and never marked (its take went unanswered, or its gate
	// died), or gates counted in a lease activation whose outcome stayed
	// unknown (eventID ""). Counted, they are charged with the lease; not,
	// they were free. Never charged twice. For monitoring what may go unpaid;
	// an event gated again is answered (and reported) again: count by eventID.
	LetThrough func(ctx context.Context, customer CustomerRef, metric string, units int64, eventID string)
}

// add returns h with the hooks of next added: where both are set, both run,
// h's first.
func (h Hooks) add(next Hooks) Hooks {
	if a, b := h.AutoBought, next.AutoBought; a == nil {
		h.AutoBought = b
	} else if b != nil {
		h.AutoBought = func(ctx context.Context, c CustomerRef, p *plan.Purchase) { a(ctx, c, p); b(ctx, c, p) }
	}
	if a, b := h.Paywall, next.Paywall; a == nil {
		h.Paywall = b
	} else if b != nil {
		h.Paywall = func(ctx context.Context, c CustomerRef, d Decision) { a(ctx, c, d); b(ctx, c, d) }
	}
	if a, b := h.PurchaseFailed, next.PurchaseFailed; a == nil {
		h.PurchaseFailed = b
	} else if b != nil {
		h.PurchaseFailed = func(ctx context.Context, c CustomerRef, err error) { a(ctx, c, err); b(ctx, c, err) }
	}
	if a, b := h.PurchaseNeedsReview, next.PurchaseNeedsReview; a == nil {
		h.PurchaseNeedsReview = b
	} else if b != nil {
		h.PurchaseNeedsReview = func(ctx context.Context, in Intent, why string) { a(ctx, in, why); b(ctx, in, why) }
	}
	if a, b := h.Suspended, next.Suspended; a == nil {
		h.Suspended = b
	} else if b != nil {
		h.Suspended = func(ctx context.Context, c CustomerRef, s Suspension) { a(ctx, c, s); b(ctx, c, s) }
	}
	if a, b := h.Decided, next.Decided; a == nil {
		h.Decided = b
	} else if b != nil {
		h.Decided = func(ctx context.Context, c CustomerRef, m string, d Decision, err error) {
			a(ctx, c, m, d, err)
			b(ctx, c, m, d, err)
		}
	}
	if a, b := h.LetThrough, next.LetThrough; a == nil {
		h.LetThrough = b
	} else if b != nil {
		h.LetThrough = func(ctx context.Context, c CustomerRef, m string, units int64, event string) {
			a(ctx, c, m, units, event)
			b(ctx, c, m, units, event)
		}
	}
	return h
}

// PlanChooser picks the plan to auto-buy for a customer whose entitlement to
// metric failed. ok false means no plan: a plan_expired denial.
type PlanChooser func(ctx context.Context, customer CustomerRef, metric string, ent *quotastack.Entitlement) (p plan.Plan, ok bool)

// Preference tells whether the customer opted in to auto-buy.
type Preference func(ctx context.Context, customer CustomerRef) (bool, error)

// Gatekeeper gates paid actions for one QuotaStack client. Build it once with
// New and share it; it is safe for concurrent use.
type Gatekeeper struct {
	client          *quotastack.Client
	choose          PlanChooser
	fixedPlan       *plan.Plan // WithPlan's, validated by New
	preference      Preference
	locker          Locker
	journal         Journal
	hooks           Hooks
	log             *slog.Logger
	fallback        FallbackPolicy
	purchaseTimeout time.Duration
	planOpts        []plan.Option
	now             func() time.Time
	limitMax        int
	limitPeriod     time.Duration
	suspendFor      time.Duration
	recordFirst     recordFirst
	leases          *leases
	charges         ChargeLog
	ids             *idCache // external ids resolved on this tenant, in this process
}

// Option configures a Gatekeeper.
type Option func(*Gatekeeper)

// WithPlan auto-buys p whenever a customer runs out; New validates it.
func WithPlan(p plan.Plan) Option {
	return func(g *Gatekeeper) {
		g.fixedPlan = &p
		g.choose = func(context.Context, CustomerRef, string, *quotastack.Entitlement) (plan.Plan, bool) {
			return p, true
		}
	}
}

// WithPlanChooser picks the plan per customer and metric (the chosen plan
// is validated when chosen: an invalid one is an ErrInvalidInput error).
func WithPlanChooser(c PlanChooser) Option {
	return func(g *Gatekeeper) { g.choose, g.fixedPlan = c, nil }
}

// WithPreference consults the customer's auto-buy preference before buying
// (default: everyone opted in). An error refuses the purchase
// (purchase_unavailable), never the fallback policy.
func WithPreference(p Preference) Option { return func(g *Gatekeeper) { g.preference = p } }

// WithLocker serialises purchases of one customer (default: a LocalLocker,
// one process). Replicas share one, with a shared Journal.
func WithLocker(l Locker) Option { return func(g *Gatekeeper) { g.locker = l } }

// WithJournal sets the purchase journal (default: a MemoryJournal, one
// process). Replicas share one, with a shared Locker.
func WithJournal(j Journal) Option { return func(g *Gatekeeper) { g.journal = j } }

// WithChargeLog sets the record of charged events and leases (default: one
// MemoryChargeLog shared by every Gatekeeper of the process on the same
// tenant). Replicas share one (autobuy/redislock, autobuy/pgstore), with a
// shared Journal and Locker: then a replayed event is answered from it on
// any replica, and leases are shared.
func WithChargeLog(c ChargeLog) Option { return func(g *Gatekeeper) { g.charges = c } }

// WithHooks adds outcome hooks. Options compose: hooks given by several
// WithHooks all run, in the order the options were given (yours, then e.g.
// otelquotastack's).
func WithHooks(h Hooks) Option { return func(g *Gatekeeper) { g.hooks = g.hooks.add(h) } }

// WithLogger logs decisions and purchases to l (silent by default).
func WithLogger(l *slog.Logger) Option { return func(g *Gatekeeper) { g.log = l } }

// WithFallback sets the answer when QuotaStack could not answer (default ReturnError).
func WithFallback(p FallbackPolicy) Option { return func(g *Gatekeeper) { g.fallback = p } }

// WithPurchaseTimeout bounds one purchase (debit, confirmation, grant), the
// wait for the customer's lock, a lease's settle and a lease's renewal;
// default 30 s. A purchase or a renewal runs to its end even if the caller
// that started it gives up.
func WithPurchaseTimeout(d time.Duration) Option {
	return func(g *Gatekeeper) { g.purchaseTimeout = d }
}

// WithPlanOptions passes options to every purchase (e.g. plan.WithActivation(plan.Queued)).
func WithPlanOptions(opts ...plan.Option) Option {
	return func(g *Gatekeeper) { g.planOpts = append(g.planOpts, opts...) }
}

// WithClock sets the gate's clock (default time.Now): purchase intents are
// stamped with it and the 24 h key window and limits are measured with it.
// Tests on a fake with a manual clock pass its Now.
func WithClock(now func() time.Time) Option { return func(g *Gatekeeper) { g.now = now } }

// WithPurchaseLimit allows at most max auto-buys per customer in any window
// of period (counted in the Journal, so across replicas when it is shared);
// past it the gate denies purchase_limit. Default: no limit. The count reads
// the journal's last period only (its cost doesn't grow with older history);
// the journal must keep intents at least that long (the default one keeps
// twice the longest period of the process's Gatekeepers).
func WithPurchaseLimit(max int, period time.Duration) Option {
	return func(g *Gatekeeper) { g.limitMax, g.limitPeriod = max, period }
}

// WithSuspension sets how long auto-buy stays suspended for a customer and
// metric after entitlement_failed_after_purchase (default 24 h; 0 means
// until LiftSuspension).
func WithSuspension(d time.Duration) Option { return func(g *Gatekeeper) { g.suspendFor = d } }

// New returns a Gatekeeper for client. A plan (WithPlan or WithPlanChooser)
// is required; everything that can be checked without a request is checked
// here (the plan, the plan options, the limits and timeouts).
//
// Without WithJournal and WithLocker the Gatekeeper uses the process-wide
// in-process journal and locker, shared by every Gatekeeper of the process:
// exactly one plan per exhaustion within the process. Replicas of a service
// must share a Journal and a Locker (autobuy/redislock); without them the
// gate's protection across replicas is what the server's idempotency keys
// give: an auto-buy's order id derives from the customer and its
// lifetime_earned, so replicas buying for one exhaustion send the same order
// (one debit, one grant) as long as neither the wallet nor the plan changes
// in between. New logs a warning about it once per process (through the
// first such Gatekeeper given a logger).
func New(client *quotastack.Client, opts ...Option) (*Gatekeeper, error) {
	g := &Gatekeeper{client: client, purchaseTimeout: 30 * time.Second, now: time.Now, suspendFor: 24 * time.Hour}
	for _, o := range opts {
		o(g)
	}
	switch {
	case client == nil:
		return nil, fmt.Errorf("%w: autobuy: nil client", quotastack.ErrInvalidInput)
	case g.choose == nil:
		return nil, fmt.Errorf("%w: autobuy: no plan (use WithPlan or WithPlanChooser)", quotastack.ErrInvalidInput)
	case g.purchaseTimeout <= 0:
		return nil, fmt.Errorf("%w: autobuy: the purchase timeout must be positive", quotastack.ErrInvalidInput)
	case g.limitMax < 0 || g.limitMax > 0 && g.limitPeriod <= 0 || g.limitPeriod < 0:
		return nil, fmt.Errorf("%w: autobuy: a purchase limit needs max >= 0 and a positive period", quotastack.ErrInvalidInput)
	case g.suspendFor < 0:
		return nil, fmt.Errorf("%w: autobuy: the suspension must not be negative", quotastack.ErrInvalidInput)
	case g.fallback < ReturnError || g.fallback > FailOpen:
		return nil, fmt.Errorf("%w: autobuy: unknown fallback policy %s", quotastack.ErrInvalidInput, g.fallback)
	case g.now == nil:
		return nil, fmt.Errorf("%w: autobuy: nil clock", quotastack.ErrInvalidInput)
	}
	if g.fixedPlan != nil {
		if err := g.fixedPlan.Validate(); err != nil {
			return nil, fmt.Errorf("%w: autobuy: %w", quotastack.ErrInvalidInput, err)
		}
	}
	// The plan options and metadata, on a stand-in order.
	probe := plan.Plan{Type: "probe", PriceMC: 1, CreditsMC: 1, Duration: time.Hour}
	if g.fixedPlan != nil {
		probe = *g.fixedPlan
	}
	if err := plan.NewOrder(plan.NewOrderID(), probe, customerOf("probe"), g.planOpts...).Validate(); err != nil {
		return nil, fmt.Errorf("autobuy: the plan options: %w", err)
	}
	userLog := g.log != nil
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	defaults := defaultsFor(client)
	if g.charges == nil {
		g.charges = defaults.charges
	}
	g.ids = defaults.ids
	local := g.journal == nil || g.locker == nil
	if g.locker == nil {
		g.locker = defaultLocker()
	}
	if g.journal == nil {
		j := defaultJournal()
		j.keepAtLeast(2 * g.limitPeriod)
		g.journal = j
	}
	if _, ok := g.journal.(*MemoryJournal); ok {
		local = true
	}
	if _, ok := g.locker.(*LocalLocker); ok {
		local = true
	}
	if local && userLog {
		warnLocalStores(g.log)
	}
	return g, nil
}

var defaultGate atomic.Pointer[Gatekeeper]

// SetDefault makes g the gate used by the package-level Gate (set it once at
// start-up, as with slog.SetDefault).
func SetDefault(g *Gatekeeper) { defaultGate.Store(g) }

// Default returns the gate set by SetDefault, or nil.
func Default() *Gatekeeper { return defaultGate.Load() }

// ErrNoDefault is returned by the package-level Gate before SetDefault.
var ErrNoDefault = errors.New("autobuy: no default gate (call autobuy.SetDefault at start-up)")

// Gate gates an action with the default gate; see Gatekeeper.Gate.
func Gate(ctx context.Context, customer quotastack.Customer, metric string, opts ...GateOption) (Decision, error) {
	g := Default()
	if g == nil {
		return Decision{}, ErrNoDefault
	}
	return g.Gate(ctx, customer, metric, opts...)
}

// GateOption configures one Gate call.
type GateOption func(*gateConfig)

type gateConfig struct {
	units      int64
	eventID    string
	metadata   map[string]string
	autoBuy    *bool
	reserve    bool
	reserveTTL time.Duration
}

// WithUnits sets the units of the action (default 1).
func WithUnits(n int64) GateOption { return func(c *gateConfig) { c.units = n } }

// WithEventID names the business event of the action (e.g. a message id). It
// must be unique per customer (not across customers): the usage record's key
// is "usage:{customer_id}:{event}", then "usage:{customer_id}:{event}:{n}"
// for the n-th attempt after earlier attempts were refused (402), so gating
// the same event again never charges twice. Without it each Gate call is a
// new event.
func WithEventID(id string) GateOption { return func(c *gateConfig) { c.eventID = id } }

// WithUsageMetadata attaches metadata to the usage record (plan.WithMetadata is
// the purchase's).
func WithUsageMetadata(m map[string]string) GateOption { return func(c *gateConfig) { c.metadata = m } }

// WithAutoBuy overrides the gate's preference for this call.
func WithAutoBuy(enabled bool) GateOption { return func(c *gateConfig) { c.autoBuy = &enabled } }

// WithReservation holds the credits with a reservation (ttl 0 = server
// default) instead of recording usage: an allowed Decision carries Hold, which
// the caller commits with the actual units (or releases) when the long action ends.
func WithReservation(ttl time.Duration) GateOption {
	return func(c *gateConfig) { c.reserve, c.reserveTTL = true, ttl }
}
