package autobuy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/plan"
)

// flightResult is what one purchase attempt tells every gate that waited for it.
type flightResult struct {
	purchase    *plan.Purchase // nil when nothing was bought
	walletShort bool
	covered     bool // live credits of the plan already covered the action
	walletMC    int64
}

// recentPurchases remembers when this process last finished a purchase per
// customer and plan, so a gate whose check predates that purchase doesn't buy
// a second plan for the exhaustion it saw. Entries older than a minute are pruned.
type recentPurchases struct {
	mu   sync.Mutex
	last map[string]time.Time
}

const recentTTL = time.Minute

func (r *recentPurchases) mark(key string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = map[string]time.Time{}
	}
	if len(r.last) > 1024 {
		for k, t := range r.last {
			if at.Sub(t) > recentTTL {
				delete(r.last, k)
			}
		}
	}
	r.last[key] = at
}

// since reports whether a purchase for key finished after t.
func (r *recentPurchases) since(key string, t time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	last, ok := r.last[key]
	return ok && last.After(t)
}

// purchase buys p for customer under the customer's lock. The order id is
// derived from the customer's lifetime_earned, which a debit doesn't change
// and the plan's own grant does: every gate of every replica that sees the
// same exhaustion sends the same idempotency keys, and a gate that finds a
// half-done purchase (debited, not granted) finishes it instead of starting
// another. lifetime_earned also moves with other grants (a wallet topup):
// a half-done order of this process is remembered so a topup can't orphan it,
// but replicas that read lifetime_earned on either side of a topup derive
// different ids, so run replicas with a shared Locker.
func (g *Gatekeeper) purchase(ctx context.Context, customer quotastack.Customer, p plan.Plan, ent *quotastack.Entitlement) (flightResult, error) {
	var fr flightResult
	unlock, err := g.locker.Lock(ctx, "quotastack:autobuy:"+customer.String())
	if err != nil {
		return fr, fmt.Errorf("autobuy: locking %s: %w", customer, err)
	}
	defer func() {
		if err := unlock(context.WithoutCancel(ctx)); err != nil {
			// The lock expired while held; the derived keys kept the purchase single.
			g.log.WarnContext(ctx, "autobuy: lock was lost before release", "customer", customer.String(), "error", err)
		}
	}()

	bal, err := g.client.BalanceWithBlocks(ctx, customer)
	if err != nil {
		return fr, err
	}
	fr.walletMC = bal.WalletMC()
	if covered(bal, p, ent) {
		// A plan of this type with enough credits appeared since the check:
		// another gate bought it. Don't buy again; the caller re-checks.
		fr.covered = true
		return fr, nil
	}

	key := customer.String() + "\x00" + p.Type
	order := g.pending.get(key)
	if order == "" {
		order = orderID(customer, p, bal)
	}
	pur, err := plan.Buy(ctx, g.client, customer, p, order,
		append([]plan.Option{plan.WithTrigger(plan.TriggerAutoBuy), plan.WithWalletBefore(fr.walletMC)}, g.planOpts...)...)
	var perr *plan.Error
	switch {
	case errors.As(err, &perr):
		// Unfinished (or unknown) in this process: the next purchase for this
		// customer resumes this order, even if a grant changed the ledger since.
		g.pending.set(key, order)
	case err == nil, errors.Is(err, plan.ErrWalletShort):
		g.pending.set(key, "")
	}
	switch {
	case errors.Is(err, plan.ErrWalletShort):
		fr.walletShort = true
		return fr, nil
	case err != nil:
		g.log.ErrorContext(ctx, "autobuy: purchase failed", "customer", customer.String(), "plan", p.Type, "error", err)
		if g.hooks.PurchaseFailed != nil {
			g.hooks.PurchaseFailed(ctx, customer, err)
		}
		return fr, err
	}
	fr.purchase = pur
	return fr, nil
}

// planUnspent reports whether live blocks of plan p still hold the cost of
// the refused action (true when the balance can't be read: the caller then
// reports the more alarming reason).
func (g *Gatekeeper) planUnspent(ctx context.Context, customer quotastack.Customer, p plan.Plan, ent *quotastack.Entitlement) bool {
	bal, err := g.client.BalanceWithBlocks(ctx, customer)
	return err != nil || covered(bal, p, ent)
}

// covered reports whether live blocks of plan p already hold the cost of the
// action that was refused.
func covered(bal *quotastack.Balance, p plan.Plan, ent *quotastack.Entitlement) bool {
	need := max(ent.EstimatedCost, 1)
	var have int64
	for _, b := range bal.PlanBlocks() {
		if b.Metadata.Get("plan_type") == p.Type && b.Priority == p.BlockPriority() {
			have += b.RemainingAmount
		}
	}
	// Holds may sit on these blocks; count them against the plan credits.
	return have-bal.ReservedBalance >= need
}

// orderID derives the purchase's order id from the ledger state that marks
// this exhaustion. lifetime_earned only grows with grants, so it is the same
// before and after this purchase's debit and changes with its grant.
func orderID(customer quotastack.Customer, p plan.Plan, bal *quotastack.Balance) string {
	switch {
	case bal.LifetimeEarned > 0:
		return plan.DeriveOrderID("autobuy", customer.String(), p.Type, "earned", strconv.FormatInt(bal.LifetimeEarned, 10))
	case bal.Version > 0:
		// A server without lifetime_earned: racing replicas that read the same
		// version still share a key; a half-done purchase is not recognised.
		return plan.DeriveOrderID("autobuy", customer.String(), p.Type, "version", strconv.FormatInt(bal.Version, 10))
	}
	// Nothing to derive from: the lock alone keeps purchases single.
	return plan.NewOrderID()
}

// pendingOrders remembers, per customer and plan, an auto-buy order that
// failed half way in this process, so the next gate finishes that order
// instead of deriving a new one.
type pendingOrders struct {
	mu     sync.Mutex
	orders map[string]string
}

func (p *pendingOrders) get(key string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.orders[key]
}

// set records order for key; "" forgets it.
func (p *pendingOrders) set(key, order string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if order == "" {
		delete(p.orders, key)
		return
	}
	if p.orders == nil {
		p.orders = map[string]string{}
	}
	p.orders[key] = order
}
