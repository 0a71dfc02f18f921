// Package autobuy gates paid actions: it checks the customer's entitlement
// and, when plan credits have run out but the wallet can pay, buys the next
// plan from the wallet and lets the action through; otherwise it answers with
// a paywall or plan-picker decision. At most one plan is bought per
// exhaustion, in one process (coalescing) and across replicas (a Locker and
// purchase keys derived from the customer's ledger).
package autobuy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/internal/flight"
	"github.com/quotastack/quotastack-go/internal/idem"
	"github.com/quotastack/quotastack-go/plan"
)

// FallbackPolicy decides the answer of a gate when QuotaStack can't be asked.
type FallbackPolicy int

const (
	// ReturnError returns the error and a zero Decision (the default).
	ReturnError FallbackPolicy = iota
	// FailClosed denies the action (Reason ReasonUnavailable, Fallback true).
	FailClosed
	// FailOpen allows the action without recording usage (Reason
	// ReasonUnavailable, Fallback true): the action is free.
	FailOpen
)

// String returns the policy's name ("return_error", "fail_closed", "fail_open").
func (p FallbackPolicy) String() string {
	switch p {
	case ReturnError:
		return "return_error"
	case FailClosed:
		return "fail_closed"
	case FailOpen:
		return "fail_open"
	}
	return "FallbackPolicy(" + strconv.Itoa(int(p)) + ")"
}

// Hooks are called after the gate's notable outcomes; each may be nil. They
// run on the gating goroutine and should return quickly.
type Hooks struct {
	// AutoBought is called by the gate that bought (or finished) a plan.
	AutoBought func(ctx context.Context, customer quotastack.Customer, p *plan.Purchase)
	// Paywall is called for a denial that needs the customer to act
	// (ReasonEmptyWallet or ReasonPlanExpired).
	Paywall func(ctx context.Context, customer quotastack.Customer, d Decision)
	// PurchaseFailed is called when a purchase could not be completed.
	PurchaseFailed func(ctx context.Context, customer quotastack.Customer, err error)
	// Decided is called once per Gate call with its outcome (the decision, or
	// the error returned), for tracing and metrics; metric is the gated metric.
	Decided func(ctx context.Context, customer quotastack.Customer, metric string, d Decision, err error)
}

// PlanChooser picks the plan to auto-buy for a customer whose entitlement to
// metric failed. It must be deterministic for a given customer state, so
// racing gates pick the same plan. ok false means no plan: a plan_expired denial.
type PlanChooser func(ctx context.Context, customer quotastack.Customer, metric string, ent *quotastack.Entitlement) (p plan.Plan, ok bool)

// Preference tells whether the customer opted in to auto-buy.
type Preference func(ctx context.Context, customer quotastack.Customer) (bool, error)

// Gatekeeper gates paid actions for one QuotaStack client. Build it once with
// New and share it; it is safe for concurrent use.
type Gatekeeper struct {
	client          *quotastack.Client
	choose          PlanChooser
	preference      Preference
	locker          Locker
	hooks           Hooks
	log             *slog.Logger
	fallback        FallbackPolicy
	purchaseTimeout time.Duration
	planOpts        []plan.Option
	flights         flight.Group[flightResult]
	recent          recentPurchases
	pending         pendingOrders
}

// Option configures a Gatekeeper.
type Option func(*Gatekeeper)

// WithPlan auto-buys p whenever a customer runs out.
func WithPlan(p plan.Plan) Option {
	return func(g *Gatekeeper) {
		g.choose = func(context.Context, quotastack.Customer, string, *quotastack.Entitlement) (plan.Plan, bool) {
			return p, true
		}
	}
}

// WithPlanChooser picks the plan per customer and metric.
func WithPlanChooser(c PlanChooser) Option { return func(g *Gatekeeper) { g.choose = c } }

// WithPreference consults the customer's auto-buy preference before buying
// (default: everyone opted in).
func WithPreference(p Preference) Option { return func(g *Gatekeeper) { g.preference = p } }

// WithLocker serialises purchases across replicas (default: a LocalLocker).
func WithLocker(l Locker) Option { return func(g *Gatekeeper) { g.locker = l } }

// WithHooks sets the outcome hooks.
func WithHooks(h Hooks) Option { return func(g *Gatekeeper) { g.hooks = h } }

// WithLogger logs decisions and purchases to l (silent by default).
func WithLogger(l *slog.Logger) Option { return func(g *Gatekeeper) { g.log = l } }

// WithFallback sets the answer when QuotaStack can't be asked (default ReturnError).
func WithFallback(p FallbackPolicy) Option { return func(g *Gatekeeper) { g.fallback = p } }

// WithPurchaseTimeout bounds one purchase (lock, balance, debit, grant);
// default 30 s. A purchase runs to its end even if the caller that started it gives up.
func WithPurchaseTimeout(d time.Duration) Option {
	return func(g *Gatekeeper) { g.purchaseTimeout = d }
}

// WithPlanOptions passes options to every plan.Buy (e.g. plan.WithActivation(plan.Queued)).
func WithPlanOptions(opts ...plan.Option) Option {
	return func(g *Gatekeeper) { g.planOpts = append(g.planOpts, opts...) }
}

// New returns a Gatekeeper for client. A plan (WithPlan or WithPlanChooser) is required.
func New(client *quotastack.Client, opts ...Option) (*Gatekeeper, error) {
	g := &Gatekeeper{client: client, purchaseTimeout: 30 * time.Second}
	for _, o := range opts {
		o(g)
	}
	if client == nil {
		return nil, errors.New("autobuy: nil client")
	}
	if g.choose == nil {
		return nil, errors.New("autobuy: no plan (use WithPlan or WithPlanChooser)")
	}
	if g.locker == nil {
		g.locker = NewLocalLocker()
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
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

// WithEventID names the business event of the action (e.g. a message id): the
// usage record gets the key "usage:{event}" ("usage:{event}:2" when that key
// already holds a 402 answer), so gating the same event again never charges
// twice. Without it each Gate call is a new event.
func WithEventID(id string) GateOption { return func(c *gateConfig) { c.eventID = id } }

// WithMetadata attaches metadata to the usage record.
func WithMetadata(m map[string]string) GateOption { return func(c *gateConfig) { c.metadata = m } }

// WithAutoBuy overrides the gate's preference for this call.
func WithAutoBuy(enabled bool) GateOption { return func(c *gateConfig) { c.autoBuy = &enabled } }

// WithReservation holds the credits with a reservation (ttl 0 = server
// default) instead of recording usage: an allowed Decision carries Hold, which
// the caller commits with the actual units (or releases) when the long action ends.
func WithReservation(ttl time.Duration) GateOption {
	return func(c *gateConfig) { c.reserve, c.reserveTTL = true, ttl }
}

// Gate decides whether customer may do one action on metric, auto-buying a
// plan from the wallet when plan credits have run out, and records the usage
// of an allowed action. Denials are Decisions; the error is non-nil only when
// QuotaStack couldn't be asked (and the fallback policy is ReturnError) or
// the input is invalid. Round trips: 2 when entitled, at most 6 with an auto-buy.
func (g *Gatekeeper) Gate(ctx context.Context, customer quotastack.Customer, metric string, opts ...GateOption) (Decision, error) {
	cfg := gateConfig{units: 1}
	for _, o := range opts {
		o(&cfg)
	}
	if customer.IsZero() || metric == "" || cfg.units <= 0 {
		return Decision{}, fmt.Errorf("%w: autobuy: need a customer, a metric and units > 0", quotastack.ErrInvalidInput)
	}
	var key usageKey
	if cfg.eventID != "" {
		key.base = "usage:" + cfg.eventID
		if err := idem.Check(key.base + ":2"); err != nil {
			return Decision{}, fmt.Errorf("%w: autobuy: event id: %w", quotastack.ErrInvalidInput, err)
		}
	}
	d, err := g.gate(ctx, customer, metric, cfg, &key)
	if err != nil && !errors.Is(err, quotastack.ErrInvalidInput) {
		d, err = g.fallbackDecision(ctx, customer, metric, d, err)
	}
	if g.hooks.Decided != nil {
		g.hooks.Decided(ctx, customer, metric, d, err)
	}
	return d, err
}

func (g *Gatekeeper) gate(ctx context.Context, customer quotastack.Customer, metric string, cfg gateConfig, key *usageKey) (Decision, error) {
	var d Decision
	started := time.Now()
	ent, err := g.client.Check(ctx, customer, metric, cfg.units)
	if err != nil {
		return d, err
	}
	d.Entitlement = ent
	if ent.Allowed {
		ok, err := g.consume(ctx, &d, customer, metric, cfg, key)
		if err != nil || ok {
			d.Reason = ReasonEntitled
			return d, err
		}
		// 402: spent by a concurrent action since the check; go on as not entitled.
	}

	enabled := true
	if cfg.autoBuy != nil {
		enabled = *cfg.autoBuy
	} else if g.preference != nil {
		if enabled, err = g.preference(ctx, customer); err != nil {
			return d, fmt.Errorf("autobuy: reading the auto-buy preference: %w", err)
		}
	}
	if !enabled {
		return g.deny(ctx, customer, d, ReasonPlanExpired), nil
	}
	p, ok := g.choose(ctx, customer, metric, ent)
	if !ok {
		return g.deny(ctx, customer, d, ReasonPlanExpired), nil
	}

	flightKey := customer.String() + "\x00" + p.Type
	var fr flightResult
	shared := true
	if !g.recent.since(flightKey, started) {
		// No purchase for this customer finished since this gate's check began
		// (one that did was for the exhaustion this gate saw): buy, or join the
		// purchase in flight.
		fr, shared, err = g.flights.Do(ctx, flightKey, func(fctx context.Context) (flightResult, error) {
			fctx, cancel := context.WithTimeout(fctx, g.purchaseTimeout)
			defer cancel()
			fr, err := g.purchase(fctx, customer, p, ent)
			if fr.purchase != nil {
				g.recent.mark(flightKey, time.Now())
			}
			return fr, err
		})
		if err != nil {
			return d, err
		}
	}
	d.WalletMC = fr.walletMC
	if fr.walletShort {
		return g.deny(ctx, customer, d, ReasonEmptyWallet), nil
	}
	d.Purchase = fr.purchase
	if fr.purchase != nil && !shared {
		g.log.InfoContext(ctx, "autobuy: plan bought", "customer", customer.String(), "plan", p.Type,
			"order_id", fr.purchase.OrderID, "debit_replayed", fr.purchase.DebitReplayed, "grant_replayed", fr.purchase.GrantReplayed)
		if g.hooks.AutoBought != nil {
			g.hooks.AutoBought(ctx, customer, fr.purchase)
		}
	}

	// Re-check once; never buy again from here, whatever it says.
	ent, err = g.client.Check(ctx, customer, metric, cfg.units)
	if err != nil {
		return d, err
	}
	d.Entitlement = ent
	if !ent.Allowed {
		// Usually the plan bought for this exhaustion went to concurrent actions.
		reason := ReasonInsufficientCredits
		if ((fr.purchase != nil && !shared) || fr.covered) && g.planUnspent(ctx, customer, p, ent) {
			// The plan's credits are there and still don't entitle: a
			// misconfigured plan or rule. (One more read, on this rare path only.)
			reason = ReasonEntitlementFailedAfterPurchase
		}
		return g.deny(ctx, customer, d, reason), nil
	}
	ok, err = g.consume(ctx, &d, customer, metric, cfg, key)
	if err != nil {
		return d, err
	}
	if !ok {
		return g.deny(ctx, customer, d, ReasonInsufficientCredits), nil
	}
	d.Reason = ReasonAutoBought
	if fr.purchase == nil {
		// Another replica's plan covered it (seen in the ledger under the lock).
		d.Reason = ReasonEntitled
	}
	return d, nil
}

// usageKey holds the idempotency key of one action's usage record:
// "usage:{event}", then "usage:{event}:2" once the first holds a stored 402
// (the server replays that 402 for as long as it keeps the key).
type usageKey struct {
	base   string // "" without an event id: each record gets a random key
	second bool
}

func (k *usageKey) current() string {
	if k.base == "" || !k.second {
		return k.base
	}
	return k.base + ":2"
}

// consume records the usage (or holds it with a reservation) of an action the
// check allowed. ok is false on a 402: the credits went to a concurrent action.
func (g *Gatekeeper) consume(ctx context.Context, d *Decision, customer quotastack.Customer, metric string, cfg gateConfig, key *usageKey) (ok bool, err error) {
	for {
		var opts []quotastack.CallOption
		if k := key.current(); k != "" {
			opts = append(opts, quotastack.WithIdempotencyKey(k))
		}
		if cfg.reserve {
			d.Hold, err = g.client.Reserve(ctx, quotastack.ReserveParams{Customer: customer, MetricKey: metric,
				EstimatedUnits: cfg.units, TTL: cfg.reserveTTL, Metadata: cfg.metadata}, opts...)
		} else {
			d.Usage, err = g.client.Record(ctx, quotastack.UsageParams{Customer: customer, MetricKey: metric,
				Units: cfg.units, Metadata: cfg.metadata}, opts...)
		}
		if err == nil {
			d.Allowed = true
			return true, nil
		}
		if !errors.Is(err, quotastack.ErrInsufficientCredits) {
			return false, err
		}
		// Not recorded. The server stored this 402 under the key, so any later
		// record of this event must use the second key.
		if key.base == "" || key.second {
			return false, nil
		}
		key.second = true
		var apiErr *quotastack.APIError
		if !errors.As(err, &apiErr) || !apiErr.Replayed {
			return false, nil
		}
		// A replayed 402 is an earlier gate's of this event: the record of
		// this one goes under the second key (which replays if that earlier
		// gate recorded it there).
	}
}

func (g *Gatekeeper) deny(ctx context.Context, customer quotastack.Customer, d Decision, r Reason) Decision {
	d.Allowed, d.Reason = false, r
	g.log.InfoContext(ctx, "autobuy: denied", "customer", customer.String(), "reason", string(r))
	if (r == ReasonEmptyWallet || r == ReasonPlanExpired) && g.hooks.Paywall != nil {
		g.hooks.Paywall(ctx, customer, d)
	}
	return d
}

func (g *Gatekeeper) fallbackDecision(ctx context.Context, customer quotastack.Customer, metric string, d Decision, err error) (Decision, error) {
	g.log.WarnContext(ctx, "autobuy: QuotaStack unavailable", "customer", customer.String(), "metric", metric,
		"policy", g.fallback.String(), "error", err)
	switch g.fallback {
	case FailClosed:
		return Decision{Allowed: false, Reason: ReasonUnavailable, Fallback: true, Err: err, Entitlement: d.Entitlement, Purchase: d.Purchase}, nil
	case FailOpen:
		return Decision{Allowed: true, Reason: ReasonUnavailable, Fallback: true, Err: err, Entitlement: d.Entitlement, Purchase: d.Purchase}, nil
	}
	return d, err
}
