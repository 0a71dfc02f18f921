package autobuy

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/internal/idem"
)

// usageKey makes the idempotency keys of one action's usage record:
// "usage:{customer}:{event}" first, then "usage:{customer}:{event}:{n}" for
// the n-th attempt after refused ones (a stored 402 is replayed for as long as
// the server keeps its key). Parts are escaped, so the keys are injective.
type usageKey struct {
	customerID, event string // event "" means a random key per record
	n                 int
	hold              bool  // a reservation: "hold:{customer}:{event}:{n}"
	refusal           error // the last 402 a record or hold met, with its figures
	// rec is the event's record, marked pending before each request sent
	// under the key (nil, or unclaimed: no event id, nothing to mark).
	rec *eventRecord
}

// maxUsageAttempts bounds the keys one gate walks through before giving up on
// a server that replays a 402 for every one of them.
const maxUsageAttempts = 1000

func (k *usageKey) current() string {
	switch {
	case k.event == "":
		return ""
	case k.hold:
		// A released hold's key is never reused: the next attempt holds anew.
		return idem.Join("hold", k.customerID, k.event, strconv.Itoa(max(k.n, 1)))
	case k.n <= 1:
		return idem.Join("usage", k.customerID, k.event)
	}
	return idem.Join("usage", k.customerID, k.event, strconv.Itoa(k.n))
}

// consume records the usage (or holds it with a reservation) of an action the
// check allowed. ok is false on a 402: the credits went to a concurrent action.
func (g *Gatekeeper) consume(ctx context.Context, d *Decision, customer quotastack.Customer, metric string, cfg gateConfig, key *usageKey) (ok bool, err error) {
	for {
		var opts []quotastack.CallOption
		if k := key.current(); k != "" {
			opts = append(opts, quotastack.WithIdempotencyKey(k))
		}
		if err := g.markSending(ctx, key); err != nil {
			return false, err
		}
		if cfg.reserve {
			d.Hold, err = g.client.Reserve(ctx, quotastack.ReserveParams{Customer: customer, MetricKey: metric,
				EstimatedUnits: cfg.units, TTL: cfg.reserveTTL, Metadata: cfg.metadata}, opts...)
		} else {
			d.Usage, err = g.client.Record(ctx, quotastack.UsageParams{Customer: customer, MetricKey: metric,
				Units: cfg.units, Metadata: cfg.metadata}, opts...)
			g.recordFirst.observe(d.Usage)
		}
		if err == nil {
			d.Allowed = true
			return true, nil
		}
		if !errors.Is(err, quotastack.ErrInsufficientCredits) {
			return false, err
		}
		key.refusal = err
		if key.event == "" {
			return false, nil
		}
		// Not recorded, and the server keeps this 402 under the key: any later
		// record of this event goes under the next one.
		key.n++
		if key.n > maxUsageAttempts {
			return false, fmt.Errorf("autobuy: event %q refused %d times: %w", key.event, maxUsageAttempts, err)
		}
		var apiErr *quotastack.APIError
		if !errors.As(err, &apiErr) || !apiErr.Replayed || apiErr.Attempts > 1 {
			// A fresh refusal. A replay answering a retry may be this call's
			// own first attempt, executed before its answer was lost: fresh
			// too (walking on would spend a key per refusal, without end).
			return false, nil
		}
		// A replayed 402 is an earlier gate's refusal of this event: this
		// gate's record goes under the next key (which replays if an earlier
		// gate recorded the event there).
	}
}

// refusalFrom reads a refused entitlement from a 402's figures (required and
// available, in millicredits): enough to decide on a purchase without a check.
func refusalFrom(err error, customerID, metric string, units int64) (*quotastack.Entitlement, bool) {
	var apiErr *quotastack.APIError
	if !errors.As(err, &apiErr) || !errors.Is(err, quotastack.ErrInsufficientCredits) || apiErr.Required <= 0 {
		return nil, false
	}
	return &quotastack.Entitlement{Allowed: false, CustomerID: customerID, BillableMetricKey: metric, Units: units,
		EffectiveBalance: apiErr.Available, EstimatedCost: apiErr.Required,
		BalanceAfter: apiErr.Available - apiErr.Required}, true
}
